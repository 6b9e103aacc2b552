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

use flumen_kafka::{GroupMetadata, Producer, TopicPartition};
use flumen_state::WriteBatch;

use crate::runtime::pipeline::BatchOutcome;
use crate::runtime::processing::{CommitStrategy, LoopEnd, RunControl};
use crate::runtime::stats::Stats;
use crate::runtime::stop::StopMode;
use crate::runtime::worker::wait_for_deliveries;
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

/// The transactional calls of a partition's producer. They block: the
/// strategy runs them off the async threads.
pub(crate) trait Transactional: Send + Sync + 'static {
    /// Opens a transaction.
    fn begin(&self) -> flumen_kafka::Result<()>;
    /// Adds the consumer group's `offsets` to the open transaction.
    fn send_offsets(
        &self,
        offsets: &[(TopicPartition, i64)],
        timeout: Duration,
    ) -> flumen_kafka::Result<()>;
    /// Commits the open transaction.
    fn commit(&self, timeout: Duration) -> flumen_kafka::Result<()>;
    /// Aborts the open transaction.
    fn abort(&self, timeout: Duration) -> flumen_kafka::Result<()>;
}

/// A transactional producer, with the group metadata of the consumer's
/// current generation for the offsets.
pub(crate) struct KafkaTransactions {
    pub(crate) producer: Arc<Producer>,
    pub(crate) group: Arc<dyn Fn() -> Option<Arc<GroupMetadata>> + Send + Sync>,
}

impl Transactional for KafkaTransactions {
    fn begin(&self) -> flumen_kafka::Result<()> {
        self.producer.begin_transaction()
    }

    fn send_offsets(
        &self,
        offsets: &[(TopicPartition, i64)],
        timeout: Duration,
    ) -> flumen_kafka::Result<()> {
        let group = (self.group)().ok_or(flumen_kafka::KafkaError::NoGroupMetadata)?;
        self.producer
            .send_offsets_to_transaction(offsets, &group, timeout)
    }

    fn commit(&self, timeout: Duration) -> flumen_kafka::Result<()> {
        self.producer.commit_transaction(timeout)
    }

    fn abort(&self, timeout: Duration) -> flumen_kafka::Result<()> {
        self.producer.abort_transaction(timeout)
    }
}

/// How a partition's transactions are timed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TransactionTiming {
    /// How long a transaction stays open for batches.
    pub(crate) commit_interval: Duration,
    /// How long a transactional call may take.
    pub(crate) timeout: Duration,
}

/// The open transaction of one partition.
pub(crate) struct Transaction {
    run: Arc<dyn RunControl>,
    tp: TopicPartition,
    calls: Arc<dyn Transactional>,
    state: Option<Arc<PartitionState>>,
    timing: TransactionTiming,
    stats: Arc<Stats>,
    /// Batches processed inside the open transaction, in order.
    batches: Vec<BatchOutcome>,
    /// When the open transaction is due to commit (`None`: none is open).
    due: Option<Instant>,
}

impl Transaction {
    /// The strategy for partition `tp` of `run`, whose transactional calls
    /// are `calls`; no transaction is open yet.
    pub(crate) fn new(
        run: Arc<dyn RunControl>,
        tp: &TopicPartition,
        calls: Arc<dyn Transactional>,
        (state, stats): (Option<Arc<PartitionState>>, Arc<Stats>),
        timing: TransactionTiming,
    ) -> Self {
        Transaction {
            run,
            tp: tp.clone(),
            calls,
            state,
            timing,
            stats,
            batches: Vec::new(),
            due: None,
        }
    }
}

impl CommitStrategy for Transaction {
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
            LoopEnd::Drained => match self.run.mode() {
                // As a crash would: the open transaction stays open until the
                // partition's next owner fences this producer and aborts it.
                StopMode::Kill => Ok(()),
                _ if self.run.failed() => {
                    self.abort().await;
                    Ok(())
                }
                _ => self.commit().await,
            },
        }
    }
}

impl Transaction {
    fn aborted(&self, reason: impl std::fmt::Display) -> Error {
        Error::TransactionAborted {
            topic: self.tp.topic.clone(),
            partition: self.tp.partition,
            reason: reason.to_string(),
        }
    }

    /// Runs a blocking transactional call off the async threads.
    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Transactional) -> flumen_kafka::Result<T> + Send + 'static,
    ) -> Result<T> {
        let calls = Arc::clone(&self.calls);
        tokio::task::spawn_blocking(move || f(&*calls))
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
        f: impl Fn(&dyn Transactional) -> flumen_kafka::Result<()> + Send + Sync + 'static,
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
            self.call(|t| t.begin())
                .await
                .map_err(|e| self.aborted(e))?;
            self.due = Some(Instant::now() + self.timing.commit_interval);
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
            if let Err(error) = wait_for_deliveries(&self.tp, &batch.ack, batch.next_offset).await {
                self.abort_open().await;
                return Err(self.aborted(error));
            }
        }
        let offsets = vec![(self.tp.clone(), next_offset)];
        let timeout = self.timing.timeout;
        let sent = self
            .retrying("sending the offsets", move |t| {
                t.send_offsets(&offsets, timeout)
            })
            .await;
        let committed = match sent {
            Ok(()) => {
                self.retrying("committing", move |t| t.commit(timeout))
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
        self.stats.add_transaction(true);
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
        let timeout = self.timing.timeout;
        match self.call(move |t| t.abort(timeout)).await {
            Ok(()) => tracing::warn!(tp = %self.tp, "transaction aborted"),
            // The partition's next owner (or this application's next run)
            // fences this producer, which aborts the transaction then.
            Err(error) => tracing::warn!(tp = %self.tp, %error, "aborting the transaction failed"),
        }
        self.stats.add_transaction(false);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;

    use flumen_kafka::{DeliveryBatch, KafkaError};
    use flumen_state::MemoryStore;

    use super::*;
    use crate::runtime::processing::testing::Recorded;

    /// Transactional calls, recorded; `commit` fails while `refuse_commit` is set.
    #[derive(Default)]
    struct Calls {
        made: Mutex<Vec<String>>,
        refuse_commit: AtomicBool,
    }

    impl Calls {
        fn made(&self) -> Vec<String> {
            self.made.lock().unwrap_or_else(|p| p.into_inner()).clone()
        }
        fn record(&self, call: String) {
            self.made
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(call);
        }
    }

    impl Transactional for Calls {
        fn begin(&self) -> flumen_kafka::Result<()> {
            self.record("begin".into());
            Ok(())
        }
        fn send_offsets(
            &self,
            offsets: &[(TopicPartition, i64)],
            _: Duration,
        ) -> flumen_kafka::Result<()> {
            self.record(format!(
                "offsets {:?}",
                offsets.iter().map(|o| o.1).collect::<Vec<_>>()
            ));
            Ok(())
        }
        fn commit(&self, _: Duration) -> flumen_kafka::Result<()> {
            self.record("commit".into());
            match self.refuse_commit.load(Ordering::SeqCst) {
                true => Err(KafkaError::NoGroupMetadata),
                false => Ok(()),
            }
        }
        fn abort(&self, _: Duration) -> flumen_kafka::Result<()> {
            self.record("abort".into());
            Ok(())
        }
    }

    struct Fixture {
        calls: Arc<Calls>,
        run: Arc<Recorded>,
        store: Arc<MemoryStore>,
        stats: Arc<Stats>,
    }

    impl Fixture {
        fn new() -> Self {
            Fixture {
                calls: Arc::default(),
                run: Arc::default(),
                store: Arc::default(),
                stats: Arc::default(),
            }
        }

        fn transaction(&self) -> Transaction {
            let local = Arc::clone(&self.store) as Arc<dyn flumen_state::StateStore>;
            let state = Some(Arc::new(
                PartitionState::in_memory(local, 0).unwrap_or_else(|e| panic!("{e}")),
            ));
            let timing = TransactionTiming {
                commit_interval: Duration::from_secs(3600),
                timeout: Duration::from_secs(1),
            };
            let tp = TopicPartition {
                topic: "in".into(),
                partition: 0,
            };
            let calls = Arc::clone(&self.calls) as Arc<dyn Transactional>;
            let run = Arc::clone(&self.run) as Arc<dyn RunControl>;
            Transaction::new(run, &tp, calls, (state, Arc::clone(&self.stats)), timing)
        }

        fn checkpoint(&self) -> Option<i64> {
            let checkpoint = flumen_state::StateStore::checkpoint(&*self.store);
            checkpoint
                .unwrap_or_else(|e| panic!("{e}"))
                .map(|c| c.next_offset)
        }
    }

    /// A processed batch with one state change; `delivered` settles its one output.
    fn outcome(next_offset: i64, delivered: bool) -> BatchOutcome {
        let ack = DeliveryBatch::new();
        let ticket = ack.track(&Arc::from("out"));
        match delivered {
            true => ticket.done(Ok(())),
            false => ticket.done(Err("the broker refused the record".into())),
        }
        let mut state = WriteBatch::default();
        state.put("w", b"k", &next_offset.to_be_bytes());
        BatchOutcome {
            ack,
            next_offset,
            failure: None,
            state,
        }
    }

    async fn process(txn: &mut Transaction, outcome: BatchOutcome) -> Result<()> {
        txn.before_batch().await?;
        txn.after_batch(outcome).await.map(drop)
    }

    #[tokio::test]
    async fn offsets_commit_with_the_transaction_and_the_state_after_it() -> Result<()> {
        let fixture = Fixture::new();
        let mut txn = fixture.transaction();
        process(&mut txn, outcome(10, true)).await?;
        process(&mut txn, outcome(20, true)).await?;
        assert_eq!(fixture.checkpoint(), None, "nothing before the commit");
        txn.on_due().await?;
        assert_eq!(fixture.calls.made(), ["begin", "offsets [20]", "commit"]);
        assert_eq!(fixture.checkpoint(), Some(20));
        assert_eq!(fixture.stats.transactions_committed(), 1);
        Ok(())
    }

    #[tokio::test]
    async fn a_failed_commit_aborts_and_leaves_offsets_and_state_behind() -> Result<()> {
        let fixture = Fixture::new();
        let mut txn = fixture.transaction();
        process(&mut txn, outcome(10, true)).await?;
        txn.on_due().await?;
        fixture.calls.refuse_commit.store(true, Ordering::SeqCst);
        process(&mut txn, outcome(20, true)).await?;
        let Err(Error::TransactionAborted { .. }) = txn.on_due().await else {
            panic!("a failed commit aborts the transaction")
        };
        let made = fixture.calls.made();
        assert_eq!(made[made.len() - 3..], ["offsets [20]", "commit", "abort"]);
        // The rewind starts from here: the state stays at the last commit.
        assert_eq!(fixture.checkpoint(), Some(10));
        assert_eq!(fixture.stats.transactions_aborted(), 1);
        Ok(())
    }

    #[tokio::test]
    async fn a_failed_delivery_aborts_before_the_offsets_are_sent() -> Result<()> {
        let fixture = Fixture::new();
        let mut txn = fixture.transaction();
        process(&mut txn, outcome(10, false)).await?;
        let Err(Error::TransactionAborted { reason, .. }) = txn.on_due().await else {
            panic!("a failed delivery aborts the transaction")
        };
        assert!(reason.contains("the broker refused the record"), "{reason}");
        assert_eq!(fixture.calls.made(), ["begin", "abort"]);
        assert_eq!(fixture.checkpoint(), None);
        Ok(())
    }

    #[tokio::test]
    async fn how_the_loop_ended_decides_commit_or_abort() -> Result<()> {
        // A failed batch: the open transaction is aborted.
        let fixture = Fixture::new();
        let mut txn = fixture.transaction();
        process(&mut txn, outcome(10, true)).await?;
        let end = LoopEnd::Failed(Error::Internal("a failed batch"));
        assert!(txn.finish(end).await.is_err());
        assert_eq!(fixture.calls.made(), ["begin", "abort"]);
        // A bad record under `fail`: what came before it is committed.
        let fixture = Fixture::new();
        let mut txn = fixture.transaction();
        process(&mut txn, outcome(10, true)).await?;
        let end = LoopEnd::Stopped(Error::Internal("a bad record"));
        assert!(txn.finish(end).await.is_err());
        assert_eq!(fixture.calls.made(), ["begin", "offsets [10]", "commit"]);
        assert_eq!(fixture.checkpoint(), Some(10));
        // Killed: neither, as in a crash (the next owner aborts it).
        let fixture = Fixture::new();
        let mut txn = fixture.transaction();
        process(&mut txn, outcome(10, true)).await?;
        fixture.run.kill();
        txn.finish(LoopEnd::Drained).await?;
        assert_eq!(fixture.calls.made(), ["begin"]);
        assert_eq!(fixture.checkpoint(), None);
        Ok(())
    }
}
