//! Exactly-once processing of one input partition: every record its batches
//! produce (outputs, dead letters, changelog changes) goes through the
//! partition's transactional producer, and every `commit_interval` the open
//! transaction commits together with the partition's next offset. The local
//! state is checkpointed only after the commit, so it never runs ahead of the
//! committed offset. A transaction that fails is aborted and the run stops with
//! [`Error::TransactionAborted`]; the application then starts again from the
//! committed offsets and checkpoints (a rewind).

use std::sync::Arc;
use std::time::{Duration, Instant};

use std::ops::ControlFlow;

use flumen_kafka::{Producer, TopicPartition};
use flumen_state::WriteBatch;

use crate::runtime::pipeline::BatchOutcome;
use crate::runtime::processing::{CommitStrategy, LoopEnd};
use crate::runtime::stop::StopMode;
use crate::runtime::worker::{wait_for_deliveries, Worker};
use crate::state::PartitionState;
use crate::{Error, Result};

/// How often a retriable failure of a commit is retried before the
/// transaction is aborted.
const COMMIT_ATTEMPTS: u32 = 5;

/// The brokers cannot run transactions: a configuration error, not one a
/// restart cures.
fn unsupported(error: &flumen_kafka::KafkaError) -> Error {
    Error::Config(format!(
        "exactly-once processing needs Kafka transactions, which these brokers do not \
         support ({error}); use ProcessingGuarantee::AtLeastOnce or brokers with \
         transactions (Apache Kafka 2.5 or later)"
    ))
}

/// The open transaction of one partition.
pub(crate) struct Transaction<'a> {
    worker: &'a Worker,
    tp: &'a TopicPartition,
    producer: Arc<Producer>,
    state: Option<Arc<PartitionState>>,
    /// Batches processed inside the open transaction, in order.
    batches: Vec<BatchOutcome>,
    /// When the open transaction is due to commit (`None`: none is open).
    due: Option<Instant>,
}

impl<'a> Transaction<'a> {
    /// The strategy for partition `tp` of `worker`, whose transactional
    /// producer is `producer`; no transaction is open yet.
    pub(crate) fn new(
        worker: &'a Worker,
        tp: &'a TopicPartition,
        producer: Arc<Producer>,
        state: Option<Arc<PartitionState>>,
    ) -> Self {
        Transaction {
            worker,
            tp,
            producer,
            state,
            batches: Vec::new(),
            due: None,
        }
    }
}

impl CommitStrategy for Transaction<'_> {
    fn due(&self) -> Option<Instant> {
        self.due
    }

    async fn on_due(&mut self) -> Result<()> {
        self.commit().await
    }

    async fn before_batch(&mut self) -> Result<()> {
        self.begin().await
    }

    async fn after_batch(&mut self, outcome: BatchOutcome) -> Result<ControlFlow<()>> {
        self.batches.push(outcome);
        if self.due.is_some_and(|due| Instant::now() >= due) {
            self.commit().await?;
        }
        Ok(ControlFlow::Continue(()))
    }

    async fn finish(mut self, end: LoopEnd) -> Result<()> {
        match end {
            LoopEnd::Failed(error) => {
                self.abort().await;
                Err(error)
            }
            // The records before the bad one are committed; the run stops at it.
            LoopEnd::Stopped(error) => {
                self.commit().await?;
                Err(error)
            }
            LoopEnd::Drained => match self.worker.mode() {
                // As a crash would: the open transaction stays open until the
                // partition's next owner fences this producer and aborts it.
                StopMode::Kill => Ok(()),
                _ if self.worker.failed() => {
                    self.abort().await;
                    Ok(())
                }
                _ => self.commit().await,
            },
        }
    }
}

impl Transaction<'_> {
    fn aborted(&self, reason: impl std::fmt::Display) -> Error {
        Error::TransactionAborted {
            topic: self.tp.topic.clone(),
            partition: self.tp.partition,
            reason: reason.to_string(),
        }
    }

    /// Runs a blocking transactional call of the producer off the async threads.
    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Producer) -> flumen_kafka::Result<T> + Send + 'static,
    ) -> Result<T> {
        let producer = Arc::clone(&self.producer);
        tokio::task::spawn_blocking(move || f(&producer))
            .await
            .map_err(|e| Error::Task {
                task: "a transactional call".into(),
                source: Box::new(e),
            })?
            .map_err(Error::from)
    }

    /// Runs a transactional call, again while it fails with an error that
    /// allows retrying it (up to [`COMMIT_ATTEMPTS`] times).
    async fn retrying(
        &self,
        what: &'static str,
        f: impl Fn(&Producer) -> flumen_kafka::Result<()> + Send + Sync + 'static,
    ) -> Result<()> {
        let f = Arc::new(f);
        let mut attempt = 1;
        loop {
            let call = Arc::clone(&f);
            match self.call(move |p| call(p)).await {
                Err(Error::Kafka(e)) if e.transaction_retriable() && attempt < COMMIT_ATTEMPTS => {
                    tracing::warn!(tp = %self.tp, attempt, error = %e, "{what} failed; retrying");
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    /// Opens a transaction unless one is open.
    async fn begin(&mut self) -> Result<()> {
        if self.due.is_none() {
            self.call(|p| p.begin_transaction())
                .await
                .map_err(|e| self.aborted(e))?;
            self.due = Some(Instant::now() + self.worker.settings.commit_interval);
        }
        Ok(())
    }

    /// Commits the open transaction with the partition's next offset, then
    /// checkpoints the state. On failure, aborts it.
    async fn commit(&mut self) -> Result<()> {
        if self.due.take().is_none() {
            return Ok(());
        }
        let batches = std::mem::take(&mut self.batches);
        let Some(next_offset) = batches.last().map(|b| b.next_offset) else {
            // Opened, but nothing was processed: nothing to commit.
            self.abort_open().await;
            return Ok(());
        };
        for batch in &batches {
            if let Err(error) = wait_for_deliveries(self.tp, &batch.ack, batch.next_offset).await {
                self.abort_open().await;
                return Err(self.aborted(error));
            }
        }
        let Some(group) = self.worker.group_metadata() else {
            self.abort_open().await;
            return Err(self.aborted("the consumer has no group metadata"));
        };
        let offsets = vec![(self.tp.clone(), next_offset)];
        let timeout = self.timeout();
        let sent = self
            .retrying("sending the offsets", move |p| {
                p.send_offsets_to_transaction(&offsets, &group, timeout)
            })
            .await;
        let committed = match sent {
            Ok(()) => {
                self.retrying("committing", move |p| p.commit_transaction(timeout))
                    .await
            }
            Err(error) => Err(error),
        };
        if let Err(error) = committed {
            if let Error::Kafka(e) = &error {
                if e.is_unsupported_feature() {
                    return Err(unsupported(e));
                }
            }
            self.abort_open().await;
            return Err(self.aborted(error));
        }
        self.worker.stats.add_transaction(true);
        if let Some(state) = &self.state {
            let mut changes = WriteBatch::default();
            for batch in batches {
                changes.extend(batch.state);
            }
            state.commit(changes, next_offset)?;
        }
        tracing::debug!(tp = %self.tp, next_offset, "transaction committed");
        Ok(())
    }

    /// Aborts the open transaction (if any) and forgets its batches.
    async fn abort(&mut self) {
        if self.due.take().is_some() {
            self.batches.clear();
            self.abort_open().await;
        }
    }

    async fn abort_open(&self) {
        let timeout = self.timeout();
        match self.call(move |p| p.abort_transaction(timeout)).await {
            Ok(()) => tracing::warn!(tp = %self.tp, "transaction aborted"),
            // The partition's next owner (or this application's next run)
            // fences this producer, which aborts the transaction then.
            Err(error) => tracing::warn!(tp = %self.tp, %error, "aborting the transaction failed"),
        }
        self.worker.stats.add_transaction(false);
    }

    fn timeout(&self) -> Duration {
        self.worker
            .transactions
            .as_ref()
            .map_or(Duration::from_secs(60), |t| t.timeout)
    }
}
