//! Exactly-once mode: outputs, changelogs and offsets commit in one
//! transaction per partition; killed runs and failed transactions leave every
//! window exactly once in the output as a `read_committed` consumer sees it.
//!
//! The output is read by a plain `read_committed` consumer.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use flumen::prelude::*;
use flumen::sink::{Acks, Sink, SinkWriter, SourcePosition};
use flumen::BoxError;
use flumen_testkit::{unique_name, DevStack};
use futures::future::BoxFuture;

use crate::common::{builder, start, wait_until, DEADLINE};
use crate::window_restart::{
    assert_same_windows, frame, output_topic, reference, setup, windowed, windows_of, Windows,
    EVENTS,
};

fn exactly_once(stack: &DevStack, group: &str) -> flumen::ApplicationBuilder {
    builder(stack, group)
        .max_batch_records(200)
        .processing_guarantee(ProcessingGuarantee::ExactlyOnce)
}

/// The windows in `output` as a `read_committed` consumer sees them, once
/// `expected` distinct windows are there; with the number of records.
async fn committed_windows(stack: &DevStack, output: &str, expected: usize) -> (Windows, usize) {
    let started = std::time::Instant::now();
    loop {
        let records = stack
            .read_committed(output, DEADLINE)
            .await
            .expect("read committed");
        let (windows, count) = windows_of(&records);
        if windows.len() >= expected {
            return (windows, count);
        }
        assert!(
            started.elapsed() < DEADLINE,
            "only {} of {expected} windows committed after {DEADLINE:?}",
            windows.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Kills three exactly-once runs mid-stream (on fresh or the same state
/// directories); the committed output holds each window exactly once.
async fn killed(fresh_state: bool) {
    let stack = DevStack::start().expect("dev stack");
    let input = setup(&stack).await;
    let expected = reference(&stack, &input).await;
    let output = output_topic(&stack).await;
    let group = unique_name("eos");
    let same = tempfile::tempdir().expect("state dir");
    let mut dirs = Vec::new();
    let mut read = 0;
    for stop_after in [EVENTS / 4, EVENTS / 2, EVENTS * 3 / 4] {
        let dir = if fresh_state {
            dirs.push(tempfile::tempdir().expect("state dir"));
            dirs.last().expect("pushed").path().to_path_buf()
        } else {
            same.path().to_path_buf()
        };
        let running = start(frame(exactly_once(&stack, &group), &dir, &input, &output));
        let stats = running.stats.clone();
        wait_until("the run to read its share", || {
            read + stats.records_in() >= stop_after
        })
        .await;
        running.stop.kill();
        let _ = running.finish().await;
        read += stats.records_in();
    }
    let dir = tempfile::tempdir().expect("state dir");
    let last = if fresh_state { dir.path() } else { same.path() };
    let running = start(frame(exactly_once(&stack, &group), last, &input, &output));
    let (actual, records) = committed_windows(&stack, &output, expected.len()).await;
    running.stop().await.expect("final run");
    assert_same_windows(&actual, &expected);
    assert_eq!(
        records,
        expected.len(),
        "each window committed exactly once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_exactly_once_runs_commit_each_window_once() {
    killed(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_exactly_once_runs_on_empty_state_commit_each_window_once() {
    killed(true).await;
}

/// A sink whose `fail_at`-th write fails (once per application).
#[derive(Clone)]
struct FailingSink {
    writes: Arc<AtomicUsize>,
    fail_at: usize,
}

impl Sink for FailingSink {
    fn name(&self) -> String {
        "failing sink".into()
    }

    fn open(&self, _: SchemaRef) -> BoxFuture<'_, Result<Arc<dyn SinkWriter>, BoxError>> {
        let writer: Arc<dyn SinkWriter> = Arc::new(self.clone());
        Box::pin(async move { Ok(writer) })
    }
}

impl SinkWriter for FailingSink {
    fn write<'a>(
        &'a self,
        _: RecordBatch,
        _: SourcePosition<'a>,
        acks: Acks<'a>,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        let ticket = acks.ticket();
        if self.writes.fetch_add(1, Ordering::SeqCst) == self.fail_at {
            ticket.done(Err("injected write failure".into()));
        } else {
            ticket.done(Ok(()));
        }
        Box::pin(async { Ok(()) })
    }
}

/// A write that fails inside a transaction aborts it; the application rewinds
/// to the committed offsets and state, runs again, and the committed output
/// still holds each window once. (At-least-once mode stops at such a failure.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_transaction_is_aborted_and_the_run_rewinds() {
    let stack = DevStack::start().expect("dev stack");
    let input = setup(&stack).await;
    let expected = reference(&stack, &input).await;
    let output = output_topic(&stack).await;
    let state = tempfile::tempdir().expect("state dir");
    let app = exactly_once(&stack, &unique_name("eos"))
        .state_dir(state.path())
        .build()
        .expect("app");
    let windows = windowed(&app, &input);
    windows.to_topic(Topic::json(&output));
    let sink = FailingSink {
        writes: Arc::default(),
        fail_at: 20,
    };
    windows.sink(sink.clone());
    let running = start(app);
    let (actual, records) = committed_windows(&stack, &output, expected.len()).await;
    let stats = running.stats.clone();
    running
        .stop()
        .await
        .expect("the run recovers from the failed write");
    assert!(
        sink.writes.load(Ordering::SeqCst) > 20,
        "the failing write happened"
    );
    assert!(
        stats.transactions_aborted() >= 1,
        "a transaction was aborted"
    );
    assert!(stats.restarts() >= 1, "the run rewound");
    assert_same_windows(&actual, &expected);
    assert_eq!(
        records,
        expected.len(),
        "each window committed exactly once"
    );
}

/// While the partitions' transactions are open, their records are not visible
/// to `read_committed` consumers; stopping commits them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_are_invisible_until_their_transaction_commits() {
    let stack = DevStack::start().expect("dev stack");
    let input = setup(&stack).await;
    let output = output_topic(&stack).await;
    let state = tempfile::tempdir().expect("state dir");
    let never_commits = exactly_once(&stack, &unique_name("eos"))
        .commit_interval(std::time::Duration::from_secs(3_600));
    let running = start(frame(never_commits, state.path(), &input, &output));
    let stats = running.stats.clone();
    wait_until("the input to be read", || stats.records_in() >= EVENTS).await;
    let before = stack
        .read_committed(&output, DEADLINE)
        .await
        .expect("read committed");
    running.stop().await.expect("graceful stop commits");
    assert!(
        before.is_empty(),
        "{} records visible before the commit",
        before.len()
    );
    let after = stack
        .read_committed(&output, DEADLINE)
        .await
        .expect("read committed");
    assert!(
        after.len() > 100,
        "{} windows after the commit",
        after.len()
    );
    assert_eq!(
        stats.transactions_committed(),
        3,
        "one transaction per partition"
    );
}
