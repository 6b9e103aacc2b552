//! Windowed state survives a restart: stop (or kill) mid-stream, start again on
//! the same state directory and consumer group, and the windows emitted over
//! both runs equal an uninterrupted run's.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::{builder, device_partition, produce_readings, start, wait_until, DEADLINE};
use arrow::datatypes::{DataType, Field, Schema};
use flumen::prelude::*;
use flumen::ApplicationBuilder;
use flumen_testkit::sensor::SensorWorkload;
use flumen_testkit::topics::TestRecord;
use flumen_testkit::{unique_name, DevStack};

pub(crate) const PARTITIONS: i32 = 3;
pub(crate) const DEVICES: u64 = 12;
pub(crate) const EVENTS: u64 = 6_000;

/// (device, window_start) -> the emitted row's values, as JSON text.
pub(crate) type Windows = BTreeMap<(String, i64), String>;

pub(crate) fn app(
    stack: &DevStack,
    group: &str,
    state: &Path,
    input: &str,
    output: &str,
) -> Application {
    frame(
        builder(stack, group).max_batch_records(200),
        state,
        input,
        output,
    )
}

/// The windowed pipeline of these tests on `builder`.
pub(crate) fn frame(
    builder: ApplicationBuilder,
    state: &Path,
    input: &str,
    output: &str,
) -> Application {
    let app = builder.state_dir(state).build().expect("app");
    windowed(&app, input).to_topic(Topic::json(output));
    app
}

/// The windows of these tests over `input`.
pub(crate) fn windowed(app: &Application, input: &str) -> StreamingDataFrame {
    app.dataframe(
        Topic::json(input)
            .schema(Schema::new(vec![
                Field::new("device", DataType::Utf8, false),
                Field::new("ts", DataType::Int64, false),
                Field::new("temp", DataType::Float64, false),
            ]))
            .timestamp_field("ts"),
    )
    .expect("frame")
    .filter(col("temp").gt_eq(lit(0.0)))
    .tumbling_window(Duration::from_secs(10))
    .agg([
        count(),
        sum(col("temp")).alias("sum"),
        min(col("temp")).alias("min"),
        max(col("temp")).alias("max"),
        mean(col("temp")).alias("mean"),
        collect(col("temp")).alias("temps"),
    ])
    .final_()
}

/// Every window in `output`; a window emitted more than once must have the same values.
pub(crate) async fn windows(stack: &DevStack, output: &str) -> (Windows, usize) {
    let records = stack.read_all(output, DEADLINE).await.expect("read");
    windows_of(&records)
}

/// The windows in `records`; a window met more than once must have the same values.
pub(crate) fn windows_of(records: &[flumen_testkit::ReadRecord]) -> (Windows, usize) {
    let mut out = Windows::new();
    for r in records {
        let v = r.json();
        let key = (
            v["key"].as_str().unwrap().to_string(),
            v["window_start"].as_i64().unwrap(),
        );
        let text = v.to_string();
        if let Some(previous) = out.insert(key.clone(), text.clone()) {
            assert_eq!(
                previous, text,
                "window {key:?} re-emitted with other values"
            );
        }
    }
    (out, records.len())
}

/// The same windows with the same values.
pub(crate) fn assert_same_windows(actual: &Windows, expected: &Windows) {
    assert_eq!(
        actual.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "the same windows"
    );
    for (key, want) in expected {
        assert_eq!(&actual[key], want, "window {key:?}");
    }
}

/// Waits until `output` holds `expected` distinct windows.
pub(crate) async fn wait_for_windows(
    stack: &DevStack,
    output: &str,
    expected: usize,
) -> (Windows, usize) {
    let start = Instant::now();
    loop {
        let (found, records) = windows(stack, output).await;
        if found.len() >= expected {
            return (found, records);
        }
        assert!(
            start.elapsed() < DEADLINE,
            "only {} of {expected} windows after {DEADLINE:?}",
            found.len()
        );
    }
}

pub(crate) async fn setup(stack: &DevStack) -> String {
    let input = unique_name("in");
    stack.create_topic(&input, PARTITIONS).await.expect("input");
    produce_readings(stack, &input, PARTITIONS, EVENTS, DEVICES).await;
    input
}

pub(crate) async fn output_topic(stack: &DevStack) -> String {
    let output = unique_name("out");
    stack
        .create_topic(&output, PARTITIONS)
        .await
        .expect("output");
    output
}

/// The uninterrupted run's windows.
pub(crate) async fn reference(stack: &DevStack, input: &str) -> Windows {
    let state = tempfile::tempdir().expect("state dir");
    let output = output_topic(stack).await;
    let running = start(app(stack, &unique_name("g"), state.path(), input, &output));
    let stats = running.stats.clone();
    wait_until("the reference run to read the input", || {
        stats.records_in() >= EVENTS
    })
    .await;
    running.stop().await.expect("reference run");
    let (windows, records) = windows(stack, &output).await;
    assert_eq!(
        records,
        windows.len(),
        "the reference emits each window once"
    );
    assert!(windows.len() > 100, "{} windows", windows.len());
    windows
}

/// Stops (or kills) three runs mid-stream and checks the final run's windows;
/// with `fresh_state` every run starts on an empty state directory, so its
/// state comes from the changelog.
async fn interrupted(kill: bool, fresh_state: bool) {
    let stack = DevStack::start().expect("dev stack");
    let input = setup(&stack).await;
    let expected = reference(&stack, &input).await;

    let state = tempfile::tempdir().expect("state dir");
    let output = output_topic(&stack).await;
    let group = unique_name("g");
    let mut read = 0;
    let mut fresh = Vec::new();
    let mut state_dir = || {
        if fresh_state {
            fresh.push(tempfile::tempdir().expect("state dir"));
            fresh.last().expect("pushed").path().to_path_buf()
        } else {
            state.path().to_path_buf()
        }
    };
    for stop_after in [EVENTS / 4, EVENTS / 2, EVENTS * 3 / 4] {
        let running = start(app(&stack, &group, &state_dir(), &input, &output));
        let stats = running.stats.clone();
        wait_until("the run to read its share", || {
            read + stats.records_in() >= stop_after
        })
        .await;
        if kill {
            running.stop.kill();
            let _ = running.finish().await;
        } else {
            running.stop().await.expect("graceful stop");
        }
        // Counted after the stop: a graceful stop still processes the batches in
        // flight, and the next run skips them (its state already has them).
        read += stats.records_in();
    }
    let running = start(app(&stack, &group, &state_dir(), &input, &output));
    let (actual, records) = wait_for_windows(&stack, &output, expected.len()).await;
    running.stop().await.expect("final run");
    assert_same_windows(&actual, &expected);
    if !kill {
        assert_eq!(
            records,
            expected.len(),
            "graceful restarts emit each window once"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_restarts_on_the_same_state_give_the_uninterrupted_windows() {
    interrupted(false, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_runs_restarted_on_the_same_state_give_the_uninterrupted_windows() {
    interrupted(true, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_restarts_on_empty_state_restore_from_the_changelog() {
    interrupted(false, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_runs_restarted_on_empty_state_restore_from_the_changelog() {
    interrupted(true, true).await;
}

/// Runs that never commit (killed before their first commit) leave a state
/// ahead of the group's offsets: the next run reads from the start again and
/// skips what the state has, without moving its checkpoint back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_ahead_of_the_group_is_kept_when_the_input_is_read_again() {
    let stack = DevStack::start().expect("dev stack");
    let input = setup(&stack).await;
    let expected = reference(&stack, &input).await;
    let state = tempfile::tempdir().expect("state dir");
    let output = output_topic(&stack).await;
    let group = unique_name("g");
    for first in [true, false] {
        // Small batches: the second run is killed while still skipping.
        let never_commits = builder(&stack, &group)
            .commit_interval(Duration::from_secs(3_600))
            .max_batch_records(20);
        let running = start(frame(never_commits, state.path(), &input, &output));
        let stats = running.stats.clone();
        // The first run reads half; the second is handed the same records again
        // and skips them (it counts none in), so wait for some of its batches.
        wait_until("the run to read the input", || {
            if first {
                stats.records_in() >= EVENTS / 2
            } else {
                stats.batches() >= 6
            }
        })
        .await;
        running.stop.kill();
        let _ = running.finish().await;
    }
    let running = start(app(&stack, &group, state.path(), &input, &output));
    let stats = running.stats.clone();
    let (actual, _) = wait_for_windows(&stack, &output, expected.len()).await;
    running.stop().await.expect("final run");
    assert_eq!(actual, expected);
    // A checkpoint moved back would make the final run process records of
    // windows that had already closed: they would show up as late.
    assert_eq!(stats.late_records(), 0, "records processed twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_changelogs_a_state_directory_behind_the_committed_offset_is_refused() {
    let stack = DevStack::start().expect("dev stack");
    let input = setup(&stack).await;
    let output = output_topic(&stack).await;
    let group = unique_name("g");
    let first = tempfile::tempdir().expect("state dir");
    let no_changelogs = || {
        builder(&stack, &group)
            .max_batch_records(200)
            .changelogs(false)
    };
    let running = start(frame(no_changelogs(), first.path(), &input, &output));
    let stats = running.stats.clone();
    wait_until("some input to be read", || stats.records_in() >= EVENTS / 2).await;
    running.stop().await.expect("first run");

    // Same group, empty state directory: the committed offsets are ahead of it.
    let empty = tempfile::tempdir().expect("state dir");
    let running = start(frame(no_changelogs(), empty.path(), &input, &output));
    let error = running.finish().await.expect_err("refused");
    let text = error.to_string();
    assert!(matches!(error, flumen::Error::StateBehind { .. }), "{text}");
    assert!(text.contains(&group) && text.contains("none"), "{text}");
}

/// One instance, then three (two join), then one again (two leave), over one
/// input produced in thirds: partitions move between state directories and
/// are restored from the changelog, and the windows equal one instance's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_joining_and_leaving_change_nothing_in_the_results() {
    let stack = DevStack::start().expect("dev stack");
    let input = unique_name("in");
    stack.create_topic(&input, PARTITIONS).await.expect("input");
    let workload = SensorWorkload {
        events: EVENTS,
        devices: DEVICES,
        step_ms: 100,
        ..Default::default()
    };
    let records: Vec<TestRecord> = workload
        .readings()
        .map(|r| {
            TestRecord::new(&r.device, r.to_json())
                .to_partition(device_partition(&r.device, PARTITIONS))
        })
        .collect();
    let third = records.len() / 3;
    let produce = |range: std::ops::Range<usize>| {
        let part = records[range].to_vec();
        let (stack, input) = (&stack, &input);
        async move { stack.produce(input, part).await.expect("produce") }
    };
    let output = output_topic(&stack).await;
    let group = unique_name("g");
    let dirs: Vec<_> = (0..3)
        .map(|_| tempfile::tempdir().expect("state dir"))
        .collect();
    let instance = |i: usize| start(app(&stack, &group, dirs[i].path(), &input, &output));

    produce(0..third).await;
    let a = instance(0);
    wait_until("the only instance to read the first third", || {
        a.stats.records_in() >= third as u64
    })
    .await;

    let (b, c) = (instance(1), instance(2));
    let all = [&a, &b, &c];
    wait_until("three instances to own a partition each", || {
        all.iter().all(|r| r.stats.assigned_partitions() == 1)
    })
    .await;
    produce(third..2 * third).await;
    wait_until("the second third to be read", || {
        all.iter().map(|r| r.stats.records_in()).sum::<u64>() >= 2 * third as u64
    })
    .await;
    assert!(
        b.stats.restored_changes() + c.stats.restored_changes() > 0,
        "partitions the first instance had state for were restored from the changelog"
    );

    b.stop().await.expect("second instance leaves");
    c.stop().await.expect("third instance leaves");
    wait_until("the first instance to own every partition again", || {
        a.stats.assigned_partitions() == PARTITIONS as u64
    })
    .await;
    produce(2 * third..records.len()).await;

    let expected = reference(&stack, &input).await;
    let (actual, _) = wait_for_windows(&stack, &output, expected.len()).await;
    a.stop().await.expect("last instance");
    assert_same_windows(&actual, &expected);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}

/// A state directory RocksDB cannot read, and one holding another partition's
/// state, are deleted with a warning and rebuilt from the changelog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_or_foreign_state_directory_is_rebuilt_from_the_changelog() {
    let stack = DevStack::start().expect("dev stack");
    let input = setup(&stack).await;
    let expected = reference(&stack, &input).await;
    let state = tempfile::tempdir().expect("state dir");
    let output = output_topic(&stack).await;
    let group = unique_name("g");
    let running = start(app(&stack, &group, state.path(), &input, &output));
    let stats = running.stats.clone();
    wait_until("half the input", || stats.records_in() >= EVENTS / 2).await;
    running.stop().await.expect("first run");

    let partition_dir = |p: i32| state.path().join(format!("{input}-{p}"));
    std::fs::write(partition_dir(0).join("CURRENT"), b"garbage").expect("corrupt");
    std::fs::remove_dir_all(partition_dir(1)).expect("remove");
    copy_dir(&partition_dir(2), &partition_dir(1));

    // The first run may have emitted every window before it stopped, so the
    // output alone does not show that the second run got going: wait for its
    // restore (of the two partitions whose state was unusable) as well.
    let running = start(app(&stack, &group, state.path(), &input, &output));
    let stats = running.stats.clone();
    wait_until("the unusable states to be restored", || {
        stats.restored_changes() > 0
    })
    .await;
    let (actual, _) = wait_for_windows(&stack, &output, expected.len()).await;
    running.stop().await.expect("second run");
    assert_same_windows(&actual, &expected);
}
