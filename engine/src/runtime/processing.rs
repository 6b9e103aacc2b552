//! The one processing loop of a partition task. What happens around each
//! batch (waiting for acknowledgements, checkpoints, transactions, offsets)
//! is the [`CommitStrategy`] of the run's guarantee: `AtLeastOnce`
//! (`at_least_once.rs`) or `Transaction` (`exactly_once.rs`).

use std::future::Future;
use std::ops::ControlFlow;
use std::time::Instant;

use flumen_kafka::{RawBatch, TopicPartition};
use tokio::sync::mpsc;

use crate::runtime::pipeline::{BatchOutcome, PartitionPipeline};
use crate::runtime::stop::StopMode;
use crate::{Error, Result};

/// What a commit strategy needs from the run it is part of.
pub(crate) trait RunControl: Send + Sync + 'static {
    /// How the run is stopping (a killed run checkpoints nothing more).
    fn mode(&self) -> StopMode;
    /// Whether the run failed elsewhere.
    fn failed(&self) -> bool;
    /// Stops the run with `error`.
    fn fail(&self, error: Error);
    /// Offsets before `next_offset` of `tp` may be committed (at-least-once).
    fn committable(&self, tp: &TopicPartition, next_offset: i64);
}

/// What a guarantee does around the processing of batches.
pub(crate) trait CommitStrategy: Send {
    /// When [`CommitStrategy::on_due`] should run even without input.
    fn due(&self) -> Option<Instant>;

    /// The time from [`CommitStrategy::due`] has come.
    fn on_due(&mut self) -> impl Future<Output = Result<()>> + Send;

    /// A batch is about to be processed.
    fn before_batch(&mut self) -> impl Future<Output = Result<()>> + Send;

    /// Takes a processed batch over; `Break` ends the loop.
    fn after_batch(
        &mut self,
        outcome: BatchOutcome,
    ) -> impl Future<Output = Result<ControlFlow<()>>> + Send;

    /// Ends the run once the loop ended for `end`.
    fn finish(self, end: LoopEnd) -> impl Future<Output = Result<()>> + Send;
}

/// Why the processing loop ended.
#[derive(Debug)]
pub(crate) enum LoopEnd {
    /// The input ended (revoked, stopping) or the run failed elsewhere.
    Drained,
    /// Processing a batch failed: nothing of that batch may take effect.
    Failed(Error),
    /// A bad record under the `fail` policy stopped the partition: the
    /// records before it count, it and those after it do not.
    Stopped(Error),
}

/// Processes the batches of `rx` with `pipeline` until the input ends or
/// something fails, with `strategy` around each batch.
pub(crate) async fn run(
    failed: impl Fn() -> bool + Send,
    pipeline: &mut PartitionPipeline,
    mut strategy: impl CommitStrategy,
    rx: &mut mpsc::Receiver<RawBatch>,
) -> Result<()> {
    let end = process(failed, pipeline, &mut strategy, rx).await?;
    strategy.finish(end).await
}

/// What the loop does next.
enum Next {
    /// Process this batch (`None`: the input ended).
    Batch(Option<RawBatch>),
    /// The strategy's time has come.
    StrategyDue,
    /// An operator wants to run without input.
    Tick,
}

/// Waits for a batch, the strategy's due time or an operator's.
async fn next(
    pipeline: &PartitionPipeline,
    strategy: &impl CommitStrategy,
    rx: &mut mpsc::Receiver<RawBatch>,
) -> Next {
    let sleep = |due: Option<Instant>| async move {
        match due {
            Some(due) => tokio::time::sleep_until(due.into()).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        raw = rx.recv() => Next::Batch(raw),
        () = sleep(strategy.due()) => Next::StrategyDue,
        () = sleep(pipeline.due()) => Next::Tick,
    }
}

async fn process(
    failed: impl Fn() -> bool + Send,
    pipeline: &mut PartitionPipeline,
    strategy: &mut impl CommitStrategy,
    rx: &mut mpsc::Receiver<RawBatch>,
) -> Result<LoopEnd> {
    loop {
        let raw = match next(pipeline, strategy, rx).await {
            Next::StrategyDue => {
                strategy.on_due().await?;
                continue;
            }
            Next::Batch(None) => return Ok(LoopEnd::Drained),
            Next::Batch(Some(raw)) => Some(raw),
            Next::Tick => None,
        };
        if failed() {
            return Ok(LoopEnd::Drained);
        }
        strategy.before_batch().await?;
        let started = Instant::now();
        let processed = match raw {
            Some(raw) => pipeline.process(raw).await.map(Some),
            None => pipeline.tick().await,
        };
        let mut outcome = match processed {
            Ok(Some(outcome)) => outcome,
            Ok(None) => continue,
            Err(error) => return Ok(LoopEnd::Failed(error)),
        };
        metrics::histogram!("flumen_batch_seconds").record(started.elapsed().as_secs_f64());
        let failure = outcome.failure.take();
        if strategy.after_batch(outcome).await?.is_break() {
            return Ok(LoopEnd::Drained);
        }
        if let Some(error) = failure {
            return Ok(LoopEnd::Stopped(error));
        }
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! A run for the commit strategies' unit tests.
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;

    use super::*;

    /// The run as a strategy sees it: offsets made committable and failures,
    /// recorded; killed on demand.
    #[derive(Default)]
    pub(crate) struct Recorded {
        killed: AtomicBool,
        pub(crate) committable: Mutex<Vec<i64>>,
        pub(crate) failures: Mutex<Vec<String>>,
    }

    impl Recorded {
        /// Kills the run (as `StopHandle::kill`).
        pub(crate) fn kill(&self) {
            self.killed.store(true, Ordering::SeqCst);
        }
    }

    impl RunControl for Recorded {
        fn mode(&self) -> StopMode {
            match self.killed.load(Ordering::SeqCst) {
                true => StopMode::Kill,
                false => StopMode::Running,
            }
        }
        fn failed(&self) -> bool {
            !self
                .failures
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_empty()
        }
        fn committable(&self, _: &TopicPartition, next_offset: i64) {
            self.committable
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(next_offset);
        }
        fn fail(&self, error: Error) {
            let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
            failures.push(error.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::prelude::SessionContext;

    use super::*;
    use crate::runtime::driver::{collect_kafka_outputs, Collected};
    use crate::{Application, BadInputPolicy, Topic};

    /// What the loop asked of the strategy, in order.
    #[derive(Default)]
    struct Recording {
        events: Vec<String>,
        due: Option<Instant>,
        /// Told when `on_due` ran.
        due_ran: Option<tokio::sync::oneshot::Sender<()>>,
    }

    impl CommitStrategy for &mut Recording {
        fn due(&self) -> Option<Instant> {
            self.due
        }
        async fn on_due(&mut self) -> Result<()> {
            self.due = None;
            self.events.push("due".into());
            if let Some(told) = self.due_ran.take() {
                let _ = told.send(());
            }
            Ok(())
        }
        async fn before_batch(&mut self) -> Result<()> {
            self.events.push("before".into());
            Ok(())
        }
        async fn after_batch(&mut self, outcome: BatchOutcome) -> Result<ControlFlow<()>> {
            let rows = outcome.ack.pending();
            self.events
                .push(format!("after next={} pending={rows}", outcome.next_offset));
            Ok(ControlFlow::Continue(()))
        }
        async fn finish(self, end: LoopEnd) -> Result<()> {
            let end = match end {
                LoopEnd::Drained => "drained",
                LoopEnd::Failed(_) => "failed",
                LoopEnd::Stopped(_) => "stopped",
            };
            self.events.push(format!("finish {end}"));
            Ok(())
        }
    }

    /// The pipeline of partition 0 of `readings` -> `f` -> `out` (kept in memory).
    async fn pipeline(
        f: impl Fn(crate::StreamingDataFrame) -> crate::StreamingDataFrame,
    ) -> Result<(PartitionPipeline, Vec<Collected>)> {
        let app = Application::builder()
            .brokers("unused:9092")
            .consumer_group("loop-test")
            .build()?;
        let schema = Schema::new(vec![
            Field::new("device", DataType::Utf8, false),
            Field::new("ts", DataType::Int64, false),
        ]);
        let readings = app.dataframe(
            Topic::json("readings")
                .schema(schema)
                .timestamp_field("ts")
                .on_bad_input(BadInputPolicy::Fail),
        )?;
        f(readings).to_topic(Topic::json("out"));
        let ctx = Arc::new(SessionContext::new());
        let sources = app.in_memory_sources(&ctx).await?;
        let source = sources
            .get("readings")
            .ok_or(Error::Internal("no source"))?;
        let mut pipeline = PartitionPipeline::new(Arc::clone(source), None, app.stats(), &ctx)?;
        let collected = collect_kafka_outputs(&mut pipeline);
        Ok((pipeline, collected))
    }

    fn batch(offsets: std::ops::Range<i64>, bad: Option<i64>) -> RawBatch {
        let mut batch = RawBatch::new(Arc::from("readings"), 0);
        for offset in offsets {
            let value = match Some(offset) == bad {
                true => "{not json".to_string(),
                false => format!(r#"{{"device":"d","ts":{offset}}}"#),
            };
            batch.push(None, Some(value.as_bytes()), None, offset, None);
        }
        batch
    }

    async fn run_with(
        pipeline: &mut PartitionPipeline,
        recording: &mut Recording,
        batches: Vec<RawBatch>,
    ) -> Result<()> {
        let (tx, mut rx) = mpsc::channel(batches.len().max(1));
        for batch in batches {
            tx.send(batch).await.map_err(|_| Error::Internal("send"))?;
        }
        drop(tx);
        run(|| false, pipeline, recording, &mut rx).await
    }

    #[tokio::test]
    async fn a_bad_record_stops_the_loop_after_the_records_before_it() -> Result<()> {
        let (mut pipeline, _) = pipeline(|f| f).await?;
        let mut recording = Recording::default();
        let batches = vec![batch(0..3, None), batch(3..8, Some(5)), batch(8..9, None)];
        run_with(&mut pipeline, &mut recording, batches).await?;
        assert_eq!(
            recording.events,
            [
                "before",
                "after next=3 pending=0",
                "before",
                "after next=5 pending=0",
                "finish stopped"
            ]
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_failing_operator_ends_the_loop_before_the_strategy_takes_the_batch() -> Result<()> {
        let failing = |f: crate::StreamingDataFrame| {
            f.map_batches(|batch| match batch.num_rows() {
                0 => Ok(batch),
                _ => Err("refused".into()),
            })
        };
        let (mut pipeline, _) = pipeline(failing).await?;
        let mut recording = Recording::default();
        run_with(&mut pipeline, &mut recording, vec![batch(0..3, None)]).await?;
        assert_eq!(recording.events, ["before", "finish failed"]);
        Ok(())
    }

    #[tokio::test]
    async fn a_due_commit_runs_while_no_input_arrives() -> Result<()> {
        let (mut pipeline, _) = pipeline(|f| f).await?;
        let (due_ran, when_due_ran) = tokio::sync::oneshot::channel();
        let mut recording = Recording {
            due: Some(Instant::now() + Duration::from_millis(20)),
            due_ran: Some(due_ran),
            ..Recording::default()
        };
        let (tx, mut rx) = mpsc::channel(1);
        // The input arrives only after the commit ran, so the loop must have
        // run it while waiting for input.
        let feed = async {
            let _ = tokio::time::timeout(Duration::from_secs(10), when_due_ran).await;
            let _ = tx.send(batch(0..2, None)).await;
            drop(tx);
        };
        let (result, ()) =
            tokio::join!(run(|| false, &mut pipeline, &mut recording, &mut rx), feed);
        result?;
        assert_eq!(
            recording.events,
            ["due", "before", "after next=2 pending=0", "finish drained"]
        );
        Ok(())
    }

    #[tokio::test]
    async fn records_the_restored_state_reflects_are_skipped() -> Result<()> {
        let (mut pipeline, collected) = pipeline(|f| f).await?;
        let local = Arc::new(flumen_state::MemoryStore::default());
        let checkpoint = Some(flumen_state::Checkpoint { next_offset: 5 });
        flumen_state::StateStore::write(&*local, Default::default(), checkpoint)?;
        pipeline.attach(Arc::new(crate::state::PartitionState::in_memory(local, 0)?))?;
        let mut recording = Recording::default();
        run_with(
            &mut pipeline,
            &mut recording,
            vec![batch(0..3, None), batch(3..8, None)],
        )
        .await?;
        let batches = collected[0]
            .batches
            .lock()
            .map_err(|_| Error::Internal("lock"))?;
        let out: usize = batches.iter().map(|b| b.num_rows()).sum();
        assert_eq!(out, 3, "offsets 5, 6 and 7 only");
        // A batch wholly below the checkpoint does not move it back.
        assert_eq!(
            recording.events,
            [
                "before",
                "after next=5 pending=0",
                "before",
                "after next=8 pending=0",
                "finish drained"
            ]
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_failed_run_processes_nothing_more() -> Result<()> {
        let (mut pipeline, _) = pipeline(|f| f).await?;
        let mut recording = Recording::default();
        let (tx, mut rx) = mpsc::channel(1);
        tx.send(batch(0..2, None))
            .await
            .map_err(|_| Error::Internal("send"))?;
        drop(tx);
        run(|| true, &mut pipeline, &mut recording, &mut rx).await?;
        assert_eq!(recording.events, ["finish drained"]);
        Ok(())
    }
}
