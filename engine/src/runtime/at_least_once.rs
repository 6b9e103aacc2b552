//! At-least-once commits: batches are processed while earlier ones are being
//! delivered; a batch's state is checkpointed and its offset made committable
//! once everything it produced was acknowledged. The offsets themselves are
//! committed by the polling thread every `commit_interval`.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Instant;

use flumen_kafka::{DeliveryBatch, TopicPartition};
use flumen_state::WriteBatch;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::runtime::pipeline::BatchOutcome;
use crate::runtime::processing::{CommitStrategy, LoopEnd, RunControl};
use crate::runtime::stop::StopMode;
use crate::runtime::worker::{wait_for_deliveries, AbortOnDrop};
use crate::state::PartitionState;
use crate::{Error, Result};

/// Memory a record waiting in the producer's queue holds, about (librdkafka's
/// message plus a typical output record).
const QUEUED_RECORD_BYTES: usize = 400;

/// A processed batch on its way to its checkpoint.
struct Delivered {
    ack: Arc<DeliveryBatch>,
    next_offset: i64,
    state: WriteBatch,
    /// When the batch's processing ended (for `flumen_ack_seconds`).
    processed: Instant,
    /// The batch's share of the unacknowledged-bytes budget, returned when it is done.
    _budget: OwnedSemaphorePermit,
}

/// The at-least-once strategy of one partition.
pub(crate) struct AtLeastOnce {
    tp: TopicPartition,
    done_tx: mpsc::Sender<Delivered>,
    checkpointer: AbortOnDrop<()>,
    /// The worker's budget of unacknowledged bytes, in KiB.
    budget: Arc<Semaphore>,
    budget_kib: usize,
}

impl AtLeastOnce {
    /// Starts the partition's checkpointer; at most `in_flight` batches wait
    /// for acknowledgements, and together at most `budget_kib` of the budget.
    pub(crate) fn start(
        run: Arc<dyn RunControl>,
        tp: &TopicPartition,
        state: Option<Arc<PartitionState>>,
        in_flight: usize,
        (budget, budget_kib): (Arc<Semaphore>, usize),
    ) -> Self {
        let (done_tx, done_rx) = mpsc::channel::<Delivered>(in_flight);
        AtLeastOnce {
            tp: tp.clone(),
            done_tx,
            checkpointer: spawn_checkpointer(run, tp.clone(), state, done_rx),
            budget,
            budget_kib,
        }
    }
}

impl CommitStrategy for AtLeastOnce {
    fn due(&self) -> Option<Instant> {
        None
    }

    async fn on_due(&mut self) -> Result<()> {
        Ok(())
    }

    async fn before_batch(&mut self) -> Result<()> {
        Ok(())
    }

    async fn after_batch(&mut self, outcome: BatchOutcome) -> Result<ControlFlow<()>> {
        // A batch larger than the whole budget waits until nothing else does.
        let bytes = outcome.state.approximate_bytes() + outcome.ack.pending() * QUEUED_RECORD_BYTES;
        let kib = (bytes >> 10).clamp(1, self.budget_kib);
        let Ok(permit) = Arc::clone(&self.budget)
            .acquire_many_owned(kib as u32)
            .await
        else {
            return Ok(ControlFlow::Break(()));
        };
        let delivered = Delivered {
            ack: outcome.ack,
            next_offset: outcome.next_offset,
            state: outcome.state,
            processed: Instant::now(),
            _budget: permit,
        };
        match self.done_tx.send(delivered).await {
            Ok(()) => Ok(ControlFlow::Continue(())),
            Err(_) => Ok(ControlFlow::Break(())),
        }
    }

    async fn finish(self, end: LoopEnd) -> Result<()> {
        drop(self.done_tx);
        let joined = self.checkpointer.join().await.map_err(|e| Error::Task {
            task: format!("the delivery waiter of {}", self.tp),
            source: Box::new(e),
        });
        match end {
            LoopEnd::Drained => joined,
            LoopEnd::Failed(error) | LoopEnd::Stopped(error) => joined.and(Err(error)),
        }
    }
}

/// Waits for each batch's deliveries in order, then checkpoints its state
/// and makes its offset committable; a failed delivery stops the run.
fn spawn_checkpointer(
    run: Arc<dyn RunControl>,
    tp: TopicPartition,
    state: Option<Arc<PartitionState>>,
    mut done_rx: mpsc::Receiver<Delivered>,
) -> AbortOnDrop<()> {
    AbortOnDrop(tokio::spawn(async move {
        let checkpointed = async {
            while let Some(delivered) = done_rx.recv().await {
                wait_for_deliveries(&tp, &delivered.ack, delivered.next_offset).await?;
                metrics::histogram!("flumen_ack_seconds")
                    .record(delivered.processed.elapsed().as_secs_f64());
                // A killed run behaves like a crashed one: nothing more is
                // checkpointed or made committable.
                if run.mode() == StopMode::Kill {
                    return Ok(());
                }
                // The state is checkpointed only once everything the batch
                // produced was delivered: a checkpoint never covers a lost output.
                if let Some(state) = &state {
                    state.commit(delivered.state, delivered.next_offset)?;
                }
                run.committable(&tp, delivered.next_offset);
            }
            Ok::<(), Error>(())
        };
        // A failed delivery stops the run at once (the partition may be
        // waiting for input that never comes).
        if let Err(error) = checkpointed.await {
            run.fail(error);
        }
    }))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use flumen_state::MemoryStore;

    use super::*;
    use crate::runtime::processing::testing::Recorded;

    fn tp() -> TopicPartition {
        TopicPartition {
            topic: "in".into(),
            partition: 0,
        }
    }

    /// A processed batch whose one output is still unacknowledged, with one
    /// state change; returns the ticket that acknowledges it.
    fn outcome(next_offset: i64) -> (BatchOutcome, flumen_kafka::DeliveryTicket) {
        let ack = DeliveryBatch::new();
        let ticket = ack.track(&Arc::from("sink"));
        let mut state = WriteBatch::default();
        state.put("w", format!("k{next_offset}").as_bytes(), b"v");
        let outcome = BatchOutcome {
            ack,
            next_offset,
            failure: None,
            state,
        };
        (outcome, ticket)
    }

    fn start(run: &Arc<Recorded>, store: &Arc<MemoryStore>) -> AtLeastOnce {
        let local = Arc::clone(store) as Arc<dyn flumen_state::StateStore>;
        let store = Arc::new(PartitionState::in_memory(local, 0).unwrap_or_else(|e| panic!("{e}")));
        let budget = (Arc::new(Semaphore::new(1024)), 1024);
        AtLeastOnce::start(
            Arc::clone(run) as Arc<dyn RunControl>,
            &tp(),
            Some(store),
            4,
            budget,
        )
    }

    async fn eventually(what: &str, condition: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn checkpoint(store: &MemoryStore) -> Option<i64> {
        let checkpoint =
            flumen_state::StateStore::checkpoint(store).unwrap_or_else(|e| panic!("{e}"));
        checkpoint.map(|c| c.next_offset)
    }

    #[tokio::test]
    async fn state_and_offsets_move_only_after_acknowledgements_in_order() -> Result<()> {
        let run = Arc::new(Recorded::default());
        let store = Arc::new(MemoryStore::default());
        let mut strategy = start(&run, &store);
        let (first, first_ticket) = outcome(10);
        let (second, second_ticket) = outcome(20);
        assert!(strategy.after_batch(first).await?.is_continue());
        assert!(strategy.after_batch(second).await?.is_continue());
        // The second batch is acknowledged first: nothing may move yet.
        second_ticket.done(Ok(()));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(checkpoint(&store), None);
        assert!(run
            .committable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty());
        first_ticket.done(Ok(()));
        eventually("both checkpoints", || checkpoint(&store) == Some(20)).await;
        let committable = run
            .committable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        assert_eq!(committable, vec![10, 20]);
        strategy.finish(LoopEnd::Drained).await
    }

    #[tokio::test]
    async fn a_batch_waits_while_the_memory_budget_is_held_by_unacknowledged_ones() -> Result<()> {
        let run = Arc::new(Recorded::default());
        let local = Arc::new(MemoryStore::default()) as Arc<dyn flumen_state::StateStore>;
        let state = Some(Arc::new(
            PartitionState::in_memory(local, 0).unwrap_or_else(|e| panic!("{e}")),
        ));
        // A budget of 4 KiB; each batch's state changes take 3 KiB of it.
        let budget = (Arc::new(Semaphore::new(4)), 4);
        let mut strategy = AtLeastOnce::start(Arc::clone(&run) as _, &tp(), state, 8, budget);
        let big = |next_offset: i64| {
            let (mut batch, ticket) = outcome(next_offset);
            batch.state.put("w", b"big", &[0u8; 3 << 10]);
            (batch, ticket)
        };
        let (first, first_ticket) = big(10);
        let (second, second_ticket) = big(20);
        assert!(strategy.after_batch(first).await?.is_continue());
        let waiting =
            tokio::time::timeout(Duration::from_millis(100), strategy.after_batch(second));
        let Err(_) = waiting.await else {
            panic!("the second batch must wait for the first's acknowledgement")
        };
        first_ticket.done(Ok(()));
        let (second, _) = big(20);
        let admitted = tokio::time::timeout(Duration::from_secs(5), strategy.after_batch(second));
        assert!(
            admitted.await.is_ok(),
            "admitted once the first batch was acknowledged"
        );
        drop(second_ticket);
        Ok(())
    }

    #[tokio::test]
    async fn a_killed_run_checkpoints_nothing_more() -> Result<()> {
        let run = Arc::new(Recorded::default());
        let store = Arc::new(MemoryStore::default());
        let mut strategy = start(&run, &store);
        let (batch, ticket) = outcome(10);
        assert!(strategy.after_batch(batch).await?.is_continue());
        run.kill();
        ticket.done(Ok(()));
        strategy.finish(LoopEnd::Drained).await?;
        assert_eq!(checkpoint(&store), None);
        assert!(run
            .committable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty());
        Ok(())
    }

    #[tokio::test]
    async fn a_failed_delivery_stops_the_run_without_a_checkpoint() -> Result<()> {
        let run = Arc::new(Recorded::default());
        let store = Arc::new(MemoryStore::default());
        let mut strategy = start(&run, &store);
        let (batch, ticket) = outcome(10);
        assert!(strategy.after_batch(batch).await?.is_continue());
        ticket.done(Err("the sink refused the row".into()));
        let failures = || {
            run.failures
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
        };
        eventually("the failure", || !failures().is_empty()).await;
        assert!(
            failures()[0].contains("the sink refused the row"),
            "{:?}",
            failures()
        );
        assert_eq!(checkpoint(&store), None);
        strategy.finish(LoopEnd::Drained).await
    }

    #[tokio::test]
    async fn finishing_after_a_failed_batch_returns_its_error_after_the_checkpoints() {
        let run = Arc::new(Recorded::default());
        let store = Arc::new(MemoryStore::default());
        let mut strategy = start(&run, &store);
        let (batch, ticket) = outcome(10);
        let _ = strategy.after_batch(batch).await;
        ticket.done(Ok(()));
        let end = LoopEnd::Stopped(Error::Internal("stopped by a bad record"));
        let result = strategy.finish(end).await;
        assert!(matches!(result, Err(Error::Internal(_))), "{result:?}");
        // The batch before the stop was still checkpointed.
        assert_eq!(checkpoint(&store), Some(10));
    }
}
