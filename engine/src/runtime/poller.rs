//! The polling thread's micro-batches: records are appended to their
//! partition's open batch, which is cut by size or age and handed to the
//! partition's task without ever blocking the thread.
//!
//! A task whose queue stays full for 50 ms gets its batch *parked* and its partition
//! paused in the consumer (as Kafka Streams pauses a partition whose buffer
//! is full): the thread keeps polling, so the other partitions go on and the
//! group membership (`max.poll.interval.ms`) is kept. A parked batch is handed
//! over as soon as its task takes it, and the partition is resumed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use flumen_kafka::rdkafka::message::BorrowedMessage;
use flumen_kafka::rdkafka::Message;
use flumen_kafka::{GroupConsumer, RawBatch, TopicPartition};

/// How long a cut waits for room in a full partition queue before the
/// partition is paused (the polling thread serves no one meanwhile).
const FULL_QUEUE_WAIT: Duration = Duration::from_millis(50);

/// Where micro-batches are cut.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cut {
    pub(crate) max_records: usize,
    pub(crate) max_bytes: usize,
    pub(crate) max_delay: Duration,
}

/// Hands batches to partition tasks.
pub(crate) trait Dispatch {
    /// Hands `raw` over without blocking; gives it back when the task's
    /// queue is full.
    fn try_dispatch(&self, tp: &TopicPartition, raw: RawBatch) -> Option<RawBatch>;
    /// Hands `raw` over, waiting up to `wait` for room; gives it back when the
    /// queue stayed full.
    fn dispatch_within(
        &self,
        tp: &TopicPartition,
        raw: RawBatch,
        wait: Duration,
    ) -> Option<RawBatch>;
    /// Hands `raw` over, waiting for room (only while shutting down).
    fn dispatch_blocking(&self, tp: &TopicPartition, raw: RawBatch);
}

struct Open {
    tp: TopicPartition,
    raw: RawBatch,
    started: Instant,
}

/// The open and parked batches of the polling thread.
pub(crate) struct Batcher {
    cut: Cut,
    open: Vec<Open>,
    parked: Vec<(TopicPartition, RawBatch)>,
}

impl Batcher {
    pub(crate) fn new(cut: Cut) -> Self {
        Batcher {
            cut,
            open: Vec::new(),
            parked: Vec::new(),
        }
    }

    /// Appends `message` to its partition's batch, cutting it when full.
    pub(crate) fn push(
        &mut self,
        message: &BorrowedMessage<'_>,
        to: &impl Dispatch,
        consumer: &GroupConsumer,
    ) {
        let (topic, partition) = (message.topic(), message.partition());
        let index = match self
            .open
            .iter()
            .position(|o| o.tp.partition == partition && o.tp.topic == topic)
        {
            Some(i) => i,
            None => {
                self.open.push(Open {
                    tp: TopicPartition::new(topic, partition),
                    raw: RawBatch::new(Arc::from(topic), partition),
                    started: Instant::now(),
                });
                self.open.len() - 1
            }
        };
        let open = &mut self.open[index];
        if open.raw.is_empty() {
            open.started = Instant::now();
        }
        open.raw.push_message(message);
        if open.raw.len() >= self.cut.max_records || open.raw.byte_size() >= self.cut.max_bytes {
            self.cut_at(index, to, consumer);
        }
    }

    /// Cuts every batch older than `max_delay`, and hands parked batches over.
    pub(crate) fn tick(&mut self, to: &impl Dispatch, consumer: &GroupConsumer) {
        self.unpark(to, consumer);
        let now = Instant::now();
        for index in 0..self.open.len() {
            let open = &self.open[index];
            if !open.raw.is_empty() && now.duration_since(open.started) >= self.cut.max_delay {
                self.cut_at(index, to, consumer);
            }
        }
    }

    /// Whether `tp` has a batch waiting for room in its task's queue.
    fn is_parked(&self, tp: &TopicPartition) -> bool {
        self.parked.iter().any(|(p, _)| p == tp)
    }

    /// Hands the open batch at `index` to its task; parks it (and pauses the
    /// partition) when the task's queue is full. A partition with a parked
    /// batch keeps collecting into its open batch until the parked one is taken.
    fn cut_at(&mut self, index: usize, to: &impl Dispatch, consumer: &GroupConsumer) {
        if self.is_parked(&self.open[index].tp) {
            return;
        }
        let open = &mut self.open[index];
        let fresh = RawBatch::new(Arc::clone(open.raw.topic_arc()), open.tp.partition);
        let raw = std::mem::replace(&mut open.raw, fresh);
        // A queue that is full for a moment (the usual backpressure of a busy
        // partition) is waited for briefly: pausing drops the partition's
        // prefetched records, which are then fetched again.
        if let Some(raw) = to.dispatch_within(&open.tp, raw, FULL_QUEUE_WAIT) {
            tracing::debug!(tp = %open.tp, "partition queue full: pausing the partition");
            if let Err(error) = consumer.pause(std::slice::from_ref(&open.tp)) {
                tracing::warn!(%error, "pausing a partition failed; its records wait in memory");
            }
            self.parked.push((open.tp.clone(), raw));
        }
    }

    /// Hands parked batches to their tasks where there is room, resuming
    /// their partitions.
    fn unpark(&mut self, to: &impl Dispatch, consumer: &GroupConsumer) {
        let parked = std::mem::take(&mut self.parked);
        for (tp, raw) in parked {
            match to.try_dispatch(&tp, raw) {
                None => {
                    tracing::debug!(%tp, "partition queue has room again: resuming");
                    if let Err(error) = consumer.resume(std::slice::from_ref(&tp)) {
                        tracing::warn!(%error, %tp, "resuming a partition failed");
                    }
                }
                Some(raw) => self.parked.push((tp, raw)),
            }
        }
    }

    /// Drops the batches of partitions no longer assigned (their records were
    /// not committed; their next owner reads them again).
    pub(crate) fn forget(&mut self, revoked: &[TopicPartition]) {
        self.open.retain(|o| !revoked.contains(&o.tp));
        self.parked.retain(|(tp, _)| !revoked.contains(tp));
    }

    /// Graceful stop: hands every batch over, parked ones first, waiting for room.
    pub(crate) fn drain(self, to: &impl Dispatch) {
        let open: Vec<(TopicPartition, RawBatch)> = self
            .open
            .into_iter()
            .filter(|o| !o.raw.is_empty())
            .map(|o| (o.tp, o.raw))
            .collect();
        for (tp, raw) in self.parked.into_iter().chain(open) {
            to.dispatch_blocking(&tp, raw);
        }
    }
}
