//! The consuming side of a run: one polling thread that cuts micro-batches per
//! partition, one task per assigned partition, and offset commits.

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use datafusion::prelude::SessionContext;
use flumen_kafka::{
    GroupConsumer, GroupMetadata, KafkaConfig, Producer, RawBatch, RebalanceListener,
    TopicPartition,
};
use futures::FutureExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::runtime::at_least_once::AtLeastOnce;
use crate::runtime::exactly_once::{KafkaTransactions, Transaction, TransactionTiming};
use crate::runtime::lock;
use crate::runtime::pipeline::{PartitionPipeline, SourcePlan};
use crate::runtime::poller::{Batcher, Cut, Dispatch};
use crate::runtime::processing::{self, RunControl};
use crate::runtime::stats::Stats;
use crate::runtime::stop::{StopHandle, StopMode};
use crate::state::{self, StateSettings};
use crate::{Error, Result};

/// How micro-batches are cut and offsets committed.
#[derive(Debug, Clone)]
pub(crate) struct BatchSettings {
    pub(crate) max_records: usize,
    pub(crate) max_bytes: usize,
    pub(crate) max_delay: Duration,
    pub(crate) commit_interval: Duration,
    pub(crate) queued_batches: usize,
    /// Batches processed and awaiting their acknowledgements, per partition
    /// (at-least-once): enough to keep processing going while the broker
    /// acknowledges earlier batches.
    pub(crate) unacknowledged_batches: usize,
    /// About this many bytes at most are held by batches awaiting
    /// acknowledgements, over every partition of the worker: their state
    /// changes and their records in the producer's queue (bounds memory when
    /// every record changes a window).
    pub(crate) unacknowledged_bytes: usize,
    pub(crate) drain_timeout: Duration,
}

/// Exactly-once mode: how partitions' transactional producers are made.
#[derive(Debug, Clone)]
pub(crate) struct TransactionSettings {
    /// The producer configuration (the application's plus producer settings).
    pub(crate) config: KafkaConfig,
    /// Prefix of every `transactional.id`: the consumer group.
    pub(crate) id_prefix: String,
    /// How long a transactional call (init, commit, abort) may take.
    pub(crate) timeout: Duration,
    /// The topics the producers write to (connected before the first record).
    pub(crate) topics: Vec<String>,
}

impl TransactionSettings {
    /// The `transactional.id` of a partition's producer: stable across runs
    /// and instances, so the partition's next owner fences the previous one
    /// and aborts its open transaction.
    pub(crate) fn transactional_id(&self, tp: &TopicPartition) -> String {
        format!("{}-{}-{}", self.id_prefix, tp.topic, tp.partition)
    }
}

/// Everything that configures a run of a [`Worker`].
pub(crate) struct RunSettings {
    pub(crate) batches: BatchSettings,
    pub(crate) state: StateSettings,
    pub(crate) transactions: Option<TransactionSettings>,
}

/// The longest the polling thread waits for a record: how soon an idle run
/// notices a stop (or cuts a batch older than `max_delay`).
const POLL_TIMEOUT: Duration = Duration::from_millis(10);

struct PartitionTask {
    tx: mpsc::Sender<RawBatch>,
    join: JoinHandle<()>,
}

/// State shared by the polling thread, the rebalance callbacks and the partition tasks.
pub(crate) struct Worker {
    pub(crate) sources: HashMap<String, Arc<SourcePlan>>,
    pub(crate) producer: Option<Arc<Producer>>,
    pub(crate) ctx: Arc<SessionContext>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) runtime: tokio::runtime::Handle,
    pub(crate) settings: BatchSettings,
    pub(crate) stop: StopHandle,
    pub(crate) state: StateSettings,
    /// Exactly-once mode (`None`: at-least-once).
    pub(crate) transactions: Option<TransactionSettings>,
    /// The consumer's group metadata since the last assignment (exactly-once).
    group_metadata: Mutex<Option<Arc<GroupMetadata>>>,
    /// Transactional producers made for partitions about to be assigned.
    txn_producers: Mutex<HashMap<TopicPartition, Result<Arc<Producer>>>>,
    tasks: Mutex<HashMap<TopicPartition, PartitionTask>>,
    committable: Mutex<HashMap<TopicPartition, i64>>,
    revoked: Mutex<Vec<TopicPartition>>,
    revoked_flag: AtomicBool,
    /// The partitions assigned now: only these are committed.
    assigned: Mutex<HashSet<TopicPartition>>,
    /// Set when an offset commit failed: the next commit repeats every offset.
    recommit: AtomicBool,
    failure: Mutex<Option<Error>>,
    /// Becomes `true` at the first fatal error.
    failed_tx: tokio::sync::watch::Sender<bool>,
    /// The budget of `BatchSettings::unacknowledged_bytes`, in KiB.
    unacknowledged: Arc<tokio::sync::Semaphore>,
}

/// The budget of unacknowledged bytes in KiB (a semaphore's permits are u32).
fn unacknowledged_kib(settings: &BatchSettings) -> usize {
    (settings.unacknowledged_bytes >> 10).clamp(1, 1 << 30)
}

impl Worker {
    pub(crate) fn new(
        sources: HashMap<String, Arc<SourcePlan>>,
        producer: Option<Arc<Producer>>,
        ctx: Arc<SessionContext>,
        stats: Arc<Stats>,
        stop: StopHandle,
        settings: RunSettings,
    ) -> Self {
        let runtime = tokio::runtime::Handle::current();
        let RunSettings {
            batches: settings,
            state,
            transactions,
        } = settings;
        let budget_kib = unacknowledged_kib(&settings);
        Worker {
            sources,
            producer,
            ctx,
            stats,
            runtime,
            settings,
            stop,
            state,
            transactions,
            group_metadata: Mutex::new(None),
            txn_producers: Mutex::new(HashMap::new()),
            tasks: Mutex::new(HashMap::new()),
            committable: Mutex::new(HashMap::new()),
            revoked: Mutex::new(Vec::new()),
            revoked_flag: AtomicBool::new(false),
            assigned: Mutex::new(HashSet::new()),
            recommit: AtomicBool::new(false),
            failure: Mutex::new(None),
            failed_tx: tokio::sync::watch::Sender::new(false),
            unacknowledged: Arc::new(tokio::sync::Semaphore::new(budget_kib)),
        }
    }

    /// Records the first fatal error; the run then stops (see [`Worker::mode`]).
    pub(crate) fn fail(&self, error: Error) {
        tracing::error!(%error, "stopping");
        lock(&self.failure).get_or_insert(error);
        self.failed_tx.send_replace(true);
    }

    /// Resolves once a fatal error was recorded.
    pub(crate) async fn wait_failed(&self) {
        let mut failed = self.failed_tx.subscribe();
        // The sender lives as long as `self`, so this cannot fail.
        let _ = failed.wait_for(|failed| *failed).await;
    }

    /// The first fatal error, taken (when the run returns it before the
    /// polling thread has finished closing).
    pub(crate) fn take_failure(&self) -> Option<Error> {
        lock(&self.failure).take()
    }

    pub(crate) fn failed(&self) -> bool {
        *self.failed_tx.borrow()
    }

    /// How this run should go on: the application's stop handle, or a
    /// graceful stop once a task failed.
    pub(crate) fn mode(&self) -> StopMode {
        match self.stop.mode() {
            StopMode::Running if self.failed() => StopMode::Graceful,
            mode => mode,
        }
    }

    /// The group metadata of the consumer's current generation.
    pub(crate) fn group_metadata(&self) -> Option<Arc<GroupMetadata>> {
        lock(&self.group_metadata).clone()
    }

    fn spawn_partition(
        self: &Arc<Self>,
        tp: TopicPartition,
        committed: Option<i64>,
    ) -> Option<PartitionTask> {
        let source = Arc::clone(self.sources.get(&tp.topic)?);
        let (tx, rx) = mpsc::channel(self.settings.queued_batches);
        let worker = Arc::clone(self);
        let txn_producer = match lock(&self.txn_producers).remove(&tp) {
            Some(Ok(producer)) => Some(producer),
            Some(Err(error)) => {
                self.fail(error);
                None
            }
            None if self.transactions.is_some() => {
                self.fail(Error::Internal(
                    "no transactional producer was made for a partition",
                ));
                None
            }
            None => None,
        };
        let join = self.runtime.spawn(async move {
            let run = worker.run_partition(&tp, committed, source, rx, txn_producer);
            match AssertUnwindSafe(run).catch_unwind().await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => worker.fail(error),
                // A panic (in user code or ours) stops the application: the
                // partition must not go on half-dead.
                Err(panic) => worker.fail(Error::Panic {
                    topic: tp.topic.clone(),
                    partition: tp.partition,
                    message: panic_message(panic.as_ref()),
                }),
            }
        });
        Some(PartitionTask { tx, join })
    }

    /// Exactly-once mode: makes (and initializes, fencing their previous
    /// owners) the transactional producers of `partitions`, in parallel.
    fn make_txn_producers(&self, partitions: &[TopicPartition]) {
        let Some(settings) = &self.transactions else {
            return;
        };
        let made: Vec<(TopicPartition, Result<Arc<Producer>>)> = std::thread::scope(|scope| {
            let handles: Vec<_> = partitions
                .iter()
                .filter(|tp| self.sources.contains_key(&tp.topic))
                .map(|tp| {
                    let handle = scope.spawn(move || make_txn_producer(settings, tp));
                    (tp.clone(), handle)
                })
                .collect();
            handles
                .into_iter()
                .map(|(tp, handle)| {
                    let made = handle.join().unwrap_or_else(|_| {
                        Err(Error::Task {
                            task: format!("making the transactional producer of {tp}"),
                            source: "it panicked".into(),
                        })
                    });
                    (tp, made)
                })
                .collect()
        });
        lock(&self.txn_producers).extend(made);
    }

    async fn run_partition(
        self: &Arc<Self>,
        tp: &TopicPartition,
        committed: Option<i64>,
        source: Arc<SourcePlan>,
        mut rx: mpsc::Receiver<RawBatch>,
        txn_producer: Option<Arc<Producer>>,
    ) -> Result<()> {
        let producer = txn_producer.clone().or_else(|| self.producer.clone());
        let mut pipeline =
            PartitionPipeline::new(source, producer, Arc::clone(&self.stats), &self.ctx)?;
        let source = pipeline.source();
        let stores = source.plan.store_names();
        let topics = state::StoreTopics {
            changelogs: &source.changelogs,
            replay_logs: &source.replay_logs,
        };
        let opened = state::open(&self.state, tp, (&stores, topics), committed, &self.stats);
        let state = opened.await?.map(Arc::new);
        if let Some(state) = &state {
            pipeline.attach(Arc::clone(state))?;
        }
        let failed = || self.failed();
        match txn_producer {
            Some(producer) => {
                let worker = Arc::clone(self);
                let calls = KafkaTransactions {
                    producer,
                    group: Arc::new(move || worker.group_metadata()),
                };
                let timing = TransactionTiming {
                    commit_interval: self.settings.commit_interval,
                    timeout: self
                        .transactions
                        .as_ref()
                        .map_or(Duration::from_secs(60), |t| t.timeout),
                };
                let run = Arc::clone(self) as Arc<dyn RunControl>;
                let stats = Arc::clone(&self.stats);
                let transaction =
                    Transaction::new(run, tp, Arc::new(calls), (state, stats), timing);
                processing::run(failed, &mut pipeline, transaction, &mut rx).await
            }
            None => {
                let budget = (
                    Arc::clone(&self.unacknowledged),
                    unacknowledged_kib(&self.settings),
                );
                let run = Arc::clone(self) as Arc<dyn RunControl>;
                let in_flight = self.settings.unacknowledged_batches;
                let strategy = AtLeastOnce::start(run, tp, state, in_flight, budget);
                processing::run(failed, &mut pipeline, strategy, &mut rx).await
            }
        }
    }

    /// Closes the tasks of `partitions` and waits until they have drained.
    fn close_tasks(&self, partitions: Option<&[TopicPartition]>) {
        let closing: Vec<(TopicPartition, PartitionTask)> = {
            let mut tasks = lock(&self.tasks);
            match partitions {
                Some(ps) => ps.iter().filter_map(|tp| tasks.remove_entry(tp)).collect(),
                None => tasks.drain().collect(),
            }
        };
        let joins: Vec<_> = closing
            .into_iter()
            .map(|(tp, task)| {
                drop(task.tx);
                (tp, task.join)
            })
            .collect();
        // One deadline for all: the tasks drain at once, so waiting for each
        // in turn must not add their timeouts up.
        let deadline = tokio::time::Instant::now() + self.settings.drain_timeout;
        self.runtime.block_on(async {
            for (tp, mut join) in joins {
                match tokio::time::timeout_at(deadline, &mut join).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => self.fail(Error::Task {
                        task: format!("the task of {tp}"),
                        source: Box::new(e),
                    }),
                    Err(_) => {
                        // Stopped for certain: nothing more is produced,
                        // checkpointed or made committable for it.
                        join.abort();
                        let _ = join.await;
                        let timeout = self.settings.drain_timeout;
                        tracing::warn!(%tp, ?timeout, "partition task did not drain in time and was stopped; its uncommitted records will be read again");
                    }
                }
            }
        });
    }

    fn take_committable(&self, partitions: &[TopicPartition]) -> Vec<(TopicPartition, i64)> {
        let mut committable = lock(&self.committable);
        partitions
            .iter()
            .filter_map(|tp| committable.remove(tp).map(|o| (tp.clone(), o)))
            .collect()
    }

    /// Polls, cuts micro-batches and commits until asked to stop. Runs on its own thread.
    pub(crate) fn poll_loop(self: &Arc<Self>, consumer: &GroupConsumer) -> Result<()> {
        let mut batcher = Batcher::new(Cut {
            max_records: self.settings.max_records,
            max_bytes: self.settings.max_bytes,
            max_delay: self.settings.max_delay,
        });
        let mut committed: HashMap<TopicPartition, i64> = HashMap::new();
        let mut last_commit = Instant::now();
        let poll_timeout = POLL_TIMEOUT.min(self.settings.max_delay);
        while self.mode() == StopMode::Running {
            match consumer.poll(poll_timeout) {
                Some(Ok(message)) => {
                    self.forget_revoked(&mut batcher);
                    batcher.push(&message, self.as_ref(), consumer);
                }
                Some(Err(error)) => tracing::warn!(%error, "consumer error (librdkafka retries)"),
                None => {}
            }
            self.forget_revoked(&mut batcher);
            batcher.tick(self.as_ref(), consumer);
            if self.recommit.swap(false, Ordering::AcqRel) {
                // An asynchronous commit failed: commit everything again.
                committed.clear();
            }
            if last_commit.elapsed() >= self.settings.commit_interval {
                self.commit(consumer, &mut committed, false);
                last_commit = Instant::now();
            }
        }
        self.shutdown(consumer, batcher, &mut committed)
    }

    fn forget_revoked(&self, batcher: &mut Batcher) {
        if self.revoked_flag.swap(false, Ordering::AcqRel) {
            let revoked = std::mem::take(&mut *lock(&self.revoked));
            batcher.forget(&revoked);
        }
    }

    fn commit(
        &self,
        consumer: &GroupConsumer,
        committed: &mut HashMap<TopicPartition, i64>,
        sync: bool,
    ) {
        let assigned = lock(&self.assigned).clone();
        let changed: Vec<(TopicPartition, i64)> = lock(&self.committable)
            .iter()
            // Never for a partition no longer assigned (a task that missed
            // its drain deadline must not commit for the partition's new owner).
            .filter(|(tp, o)| assigned.contains(*tp) && committed.get(*tp) != Some(*o))
            .map(|(tp, o)| (tp.clone(), *o))
            .collect();
        if changed.is_empty() {
            return;
        }
        match consumer.commit(&changed, sync) {
            Ok(()) => {
                tracing::debug!(?changed, "committed");
                self.stats.add_offset_commit();
                committed.extend(changed);
            }
            Err(error) => {
                tracing::warn!(%error, "offset commit failed; retrying at the next interval")
            }
        }
    }

    fn shutdown(
        self: &Arc<Self>,
        consumer: &GroupConsumer,
        batcher: Batcher,
        committed: &mut HashMap<TopicPartition, i64>,
    ) -> Result<()> {
        if self.mode() == StopMode::Kill {
            for (_, task) in lock(&self.tasks).drain() {
                task.join.abort();
            }
            return Ok(());
        }
        if !self.failed() {
            batcher.drain(self.as_ref());
        }
        let started = Instant::now();
        self.close_tasks(None);
        tracing::debug!(elapsed = ?started.elapsed(), "shutdown: tasks closed");
        self.commit(consumer, committed, true);
        tracing::debug!(elapsed = ?started.elapsed(), "shutdown: committed");
        consumer.unsubscribe();
        tracing::debug!(elapsed = ?started.elapsed(), "shutdown: unsubscribed");
        if let Some(producer) = &self.producer {
            if let Err(error) = producer.flush(Duration::from_secs(10)) {
                tracing::warn!(%error, "producer flush at shutdown");
            }
        }
        tracing::debug!(elapsed = ?started.elapsed(), "shutdown: flushed");
        match self.take_failure() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

impl RunControl for Worker {
    fn mode(&self) -> StopMode {
        Worker::mode(self)
    }

    fn failed(&self) -> bool {
        Worker::failed(self)
    }

    fn committable(&self, tp: &TopicPartition, next_offset: i64) {
        lock(&self.committable).insert(tp.clone(), next_offset);
    }

    fn fail(&self, error: Error) {
        Worker::fail(self, error);
    }
}

impl Dispatch for Worker {
    fn try_dispatch(&self, tp: &TopicPartition, raw: RawBatch) -> Option<RawBatch> {
        let tx = lock(&self.tasks).get(tp).map(|t| t.tx.clone());
        let Some(tx) = tx else {
            tracing::debug!(%tp, "no task for partition; batch dropped (uncommitted)");
            return None;
        };
        match tx.try_send(raw) {
            Ok(()) => None,
            Err(mpsc::error::TrySendError::Full(raw)) => Some(raw),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::debug!(%tp, "partition task has stopped; batch dropped (uncommitted)");
                None
            }
        }
    }

    fn dispatch_within(
        &self,
        tp: &TopicPartition,
        raw: RawBatch,
        wait: Duration,
    ) -> Option<RawBatch> {
        let raw = self.try_dispatch(tp, raw)?;
        let tx = lock(&self.tasks).get(tp).map(|t| t.tx.clone())?;
        match self.runtime.block_on(tx.send_timeout(raw, wait)) {
            Ok(()) => None,
            Err(mpsc::error::SendTimeoutError::Timeout(raw)) => Some(raw),
            Err(mpsc::error::SendTimeoutError::Closed(_)) => {
                tracing::debug!(%tp, "partition task has stopped; batch dropped (uncommitted)");
                None
            }
        }
    }

    fn dispatch_blocking(&self, tp: &TopicPartition, raw: RawBatch) {
        let tx = lock(&self.tasks).get(tp).map(|t| t.tx.clone());
        if let Some(tx) = tx {
            if tx.blocking_send(raw).is_err() {
                tracing::debug!(%tp, "partition task has stopped; batch dropped (uncommitted)");
            }
        }
    }
}

/// Connects rebalance callbacks (run on the polling thread) to the worker.
pub(crate) struct Rebalancer(pub(crate) std::sync::Weak<Worker>);

impl RebalanceListener for Rebalancer {
    fn before_assign(&self, partitions: &[TopicPartition]) {
        let Some(worker) = self.0.upgrade() else {
            return;
        };
        if worker.mode() == StopMode::Running {
            worker.make_txn_producers(partitions);
        }
    }

    fn on_assign(
        &self,
        partitions: &[(TopicPartition, Option<i64>)],
        group: Option<Arc<GroupMetadata>>,
    ) {
        let Some(worker) = self.0.upgrade() else {
            return;
        };
        *lock(&worker.group_metadata) = group;
        if worker.mode() != StopMode::Running {
            // Assignments served while the consumer closes start nothing.
            lock(&worker.txn_producers).clear();
            return;
        }
        for (tp, committed) in partitions {
            if let Some(task) = worker.spawn_partition(tp.clone(), *committed) {
                lock(&worker.tasks).insert(tp.clone(), task);
                lock(&worker.assigned).insert(tp.clone());
            }
        }
        worker.stats.add_assigned(partitions.len());
    }

    fn on_assign_failed(&self, partitions: &[TopicPartition], error: flumen_kafka::KafkaError) {
        let Some(worker) = self.0.upgrade() else {
            return;
        };
        // Nothing is started for these partitions: the run stops, and a
        // restart reads the offsets again.
        lock(&worker.txn_producers).clear();
        tracing::error!(?partitions, %error, "the assigned partitions' committed offsets cannot be read");
        worker.fail(error.into());
    }

    fn on_revoke(&self, partitions: &[TopicPartition]) -> Vec<(TopicPartition, i64)> {
        let Some(worker) = self.0.upgrade() else {
            return Vec::new();
        };
        lock(&worker.revoked).extend_from_slice(partitions);
        worker.revoked_flag.store(true, Ordering::Release);
        worker.stats.remove_assigned(partitions.len());
        if worker.mode() == StopMode::Kill {
            return Vec::new();
        }
        worker.close_tasks(Some(partitions));
        let offsets = worker.take_committable(partitions);
        let mut assigned = lock(&worker.assigned);
        for tp in partitions {
            assigned.remove(tp);
        }
        offsets
    }

    fn on_commit_failed(&self, error: &flumen_kafka::KafkaError) {
        tracing::warn!(%error, "an offset commit failed; committing again at the next interval");
        if let Some(worker) = self.0.upgrade() {
            worker.recommit.store(true, Ordering::Release);
        }
    }
}

/// Attempts at making a partition's transactional producer before the run stops.
const TXN_PRODUCER_ATTEMPTS: u32 = 5;

/// Makes, initializes (fencing its previous owner) and connects the
/// transactional producer of `tp`; a transient failure (a coordinator
/// loading or moving, a timeout) is retried instead of stopping the run.
fn make_txn_producer(settings: &TransactionSettings, tp: &TopicPartition) -> Result<Arc<Producer>> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let made = Producer::transactional(
            &settings.config,
            &settings.transactional_id(tp),
            settings.timeout,
        )
        .and_then(|producer| {
            producer.connect(&settings.topics, settings.timeout)?;
            Ok(producer)
        });
        match made {
            Ok(producer) => return Ok(Arc::new(producer)),
            Err(error)
                if attempt < TXN_PRODUCER_ATTEMPTS && error.is_retriable() && !error.is_fatal() =>
            {
                tracing::warn!(%tp, %error, attempt, "making the transactional producer failed; retrying");
                std::thread::sleep(Duration::from_millis(500 << attempt));
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// A spawned task that is aborted when this handle is dropped: a helper task
/// (the delivery waiter) ends with the partition task that owns it, also when
/// that task is aborted.
pub(crate) struct AbortOnDrop<T>(pub(crate) JoinHandle<T>);

impl<T> AbortOnDrop<T> {
    /// Waits for the task to end.
    pub(crate) async fn join(mut self) -> std::result::Result<T, tokio::task::JoinError> {
        (&mut self.0).await
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Waits for a batch's deliveries, warning every 10 s while some are pending
/// (a broker or sink that stops acknowledging shows up in the logs).
pub(crate) async fn wait_for_deliveries(
    tp: &TopicPartition,
    ack: &flumen_kafka::DeliveryBatch,
    next_offset: i64,
) -> std::result::Result<(), flumen_kafka::KafkaError> {
    let started = Instant::now();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ack.wait()).await {
            Ok(result) => return result,
            Err(_) => tracing::warn!(
                %tp, next_offset, pending = ack.pending(),
                waited_s = started.elapsed().as_secs(),
                "outputs of a batch are still not acknowledged"
            ),
        }
    }
}

/// The message of a caught panic (`panic!` with a literal or a formatted string).
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(a panic without a message)".into())
}

/// `name` with every character that is not safe in a file name replaced by `_`.
pub(crate) fn file_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;
    use crate::prelude::*;
    use crate::state::StateSettings;

    /// A worker for the stateless pipeline `readings` -> filter -> print,
    /// without a broker: partitions are assigned and revoked by hand.
    async fn worker() -> Result<Arc<Worker>> {
        worker_draining_for(Duration::from_secs(10)).await
    }

    async fn worker_draining_for(drain_timeout: Duration) -> Result<Arc<Worker>> {
        let app = Application::builder()
            .brokers("unused:9092")
            .consumer_group("worker-test")
            .build()?;
        let schema = Schema::new(vec![
            Field::new("device", DataType::Utf8, false),
            Field::new("ts", DataType::Int64, false),
        ]);
        app.dataframe(Topic::json("readings").schema(schema).timestamp_field("ts"))?
            .filter(col("ts").lt(lit(0)))
            .print();
        let ctx = Arc::new(SessionContext::new());
        let sources = app.in_memory_sources(&ctx).await?;
        let batches = BatchSettings {
            max_records: 100,
            max_bytes: 1 << 20,
            max_delay: Duration::from_millis(10),
            commit_interval: Duration::from_millis(100),
            queued_batches: 2,
            unacknowledged_batches: 4,
            unacknowledged_bytes: 1 << 20,
            drain_timeout,
        };
        let state = StateSettings {
            kafka: KafkaConfig::new("unused:9092"),
            dir: PathBuf::from("/nonexistent"),
            application: "worker-test".into(),
            cache: flumen_state::BlockCache::new(1 << 20),
            replay: None,
        };
        let settings = RunSettings {
            batches,
            state,
            transactions: None,
        };
        let stats = app.stats();
        let stop = StopHandle::default();
        Ok(Arc::new(Worker::new(
            sources, None, ctx, stats, stop, settings,
        )))
    }

    fn batch(offsets: std::ops::Range<i64>) -> RawBatch {
        let mut batch = RawBatch::new(Arc::from("readings"), 0);
        for offset in offsets {
            let value = format!(r#"{{"device":"d","ts":{offset}}}"#);
            batch.push(None, Some(value.as_bytes()), None, offset, None);
        }
        batch
    }

    /// On a revoke, the partition's queued batches are processed and their
    /// offsets returned for the final commit, and the partition is closed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_revoke_drains_the_partition_and_returns_its_offsets() -> Result<()> {
        let worker = worker().await?;
        let rebalancer = Rebalancer(Arc::downgrade(&worker));
        let tp = TopicPartition {
            topic: "readings".into(),
            partition: 0,
        };
        let (assigned, revoked) = (tp.clone(), tp.clone());
        let on_poll_thread = Arc::clone(&worker);
        let offsets = tokio::task::spawn_blocking(move || {
            rebalancer.on_assign(&[(assigned.clone(), None)], None);
            on_poll_thread.dispatch_blocking(&assigned, batch(0..3));
            on_poll_thread.dispatch_blocking(&assigned, batch(3..5));
            rebalancer.on_revoke(&[revoked])
        })
        .await
        .map_err(|e| Error::Task {
            task: "the test's poll thread".into(),
            source: Box::new(e),
        })?;
        assert_eq!(offsets, [(tp.clone(), 5)]);
        assert!(lock(&worker.tasks).is_empty(), "the task is closed");
        assert!(!lock(&worker.assigned).contains(&tp));
        assert_eq!(worker.stats.records_in(), 5);
        assert!(!worker.failed());
        Ok(())
    }

    /// A killed run gives nothing back for the final commit.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_revoke_while_killed_commits_nothing() -> Result<()> {
        let worker = worker().await?;
        let rebalancer = Rebalancer(Arc::downgrade(&worker));
        let tp = TopicPartition {
            topic: "readings".into(),
            partition: 0,
        };
        let on_poll_thread = Arc::clone(&worker);
        let offsets = tokio::task::spawn_blocking(move || {
            rebalancer.on_assign(&[(tp.clone(), None)], None);
            on_poll_thread.dispatch_blocking(&tp, batch(0..3));
            on_poll_thread.stop.kill();
            rebalancer.on_revoke(&[tp])
        })
        .await
        .map_err(|e| Error::Task {
            task: "the test's poll thread".into(),
            source: Box::new(e),
        })?;
        assert!(offsets.is_empty(), "{offsets:?}");
        Ok(())
    }

    /// Tasks that do not drain are stopped at one deadline for all of them,
    /// not one after another (four tasks took four drain timeouts).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tasks_that_do_not_drain_are_stopped_at_one_deadline() -> Result<()> {
        let timeout = Duration::from_millis(300);
        let worker = worker_draining_for(timeout).await?;
        for partition in 0..4 {
            let (tx, _rx) = mpsc::channel(1);
            let join = tokio::spawn(std::future::pending::<()>());
            let tp = TopicPartition::new("readings", partition);
            lock(&worker.tasks).insert(tp, PartitionTask { tx, join });
        }
        let closing = Arc::clone(&worker);
        let started = Instant::now();
        tokio::task::spawn_blocking(move || closing.close_tasks(None))
            .await
            .map_err(|e| Error::Task {
                task: "the test's poll thread".into(),
                source: Box::new(e),
            })?;
        let took = started.elapsed();
        assert!(took >= timeout, "{took:?}");
        assert!(took < timeout * 3, "four stuck tasks took {took:?}");
        assert!(lock(&worker.tasks).is_empty());
        Ok(())
    }
}
