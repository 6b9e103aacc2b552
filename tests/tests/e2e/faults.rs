//! Correctness under faults (issue #16): one regression test per defect the
//! review found, each shown failing before its fix.

use std::time::Duration;

use crate::common::{builder, produce_readings, start, wait_until};
use crate::window_restart::{
    assert_same_windows, frame, output_topic, windows, DEVICES, EVENTS, PARTITIONS,
};
use flumen_testkit::{unique_name, DevStack};

/// Defect 1: a window opened and closed within one micro-batch writes nothing
/// to the changelog. A put an earlier, uncommitted run wrote for it must not
/// come back in a restore: run 1 (small batches, never commits) is killed
/// mid-stream, run 2 (empty state, large batches) reads everything and stops
/// gracefully, run 3 (empty state) restores from the changelog and reads
/// input written after run 2. No window may be emitted twice with different
/// values, and the windows equal an uninterrupted run's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_never_brings_back_a_window_a_later_run_closed() {
    let stack = DevStack::start().expect("dev stack");
    let input = unique_name("in");
    stack.create_topic(&input, PARTITIONS).await.expect("input");
    produce_readings(&stack, &input, PARTITIONS, EVENTS, DEVICES).await;
    let output = output_topic(&stack).await;
    let group = unique_name("g");

    let small = builder(&stack, &group)
        .commit_interval(Duration::from_secs(3_600))
        .max_batch_records(20);
    let state = tempfile::tempdir().expect("state dir");
    let run = start(frame(small, state.path(), &input, &output));
    let stats = run.stats.clone();
    wait_until("run 1 to read half", || stats.records_in() >= EVENTS / 2).await;
    run.stop.kill();
    let _ = run.finish().await;

    let large = builder(&stack, &group)
        .max_batch_records(10_000)
        .max_batch_delay(Duration::from_secs(1));
    let state = tempfile::tempdir().expect("state dir");
    let run = start(frame(large, state.path(), &input, &output));
    let stats = run.stats.clone();
    wait_until("run 2 to read everything", || stats.records_in() >= EVENTS).await;
    run.stop().await.expect("run 2 stops gracefully");

    // More input, later in event time: run 3's first batches close every
    // window a restore brought back.
    let more = flumen_testkit::sensor::SensorWorkload {
        events: EVENTS / 3,
        devices: DEVICES,
        step_ms: 100,
        start_ms: 1_700_000_000_000 + EVENTS as i64 * 100,
    };
    produce_more(&stack, &input, &more).await;
    let state = tempfile::tempdir().expect("state dir");
    let run = start(frame(
        builder(&stack, &group).max_batch_records(200),
        state.path(),
        &input,
        &output,
    ));
    let stats = run.stats.clone();
    wait_until("run 3 to read the new input", || {
        stats.records_in() >= EVENTS / 3
    })
    .await;
    run.stop().await.expect("run 3");
    assert!(stats.restored_changes() > 0, "run 3 restored nothing");
    // `windows` fails on a window emitted twice with different values.
    let (actual, _) = windows(&stack, &output).await;

    let reference_output = output_topic(&stack).await;
    let state = tempfile::tempdir().expect("state dir");
    let run = start(frame(
        builder(&stack, &unique_name("ref")).max_batch_records(200),
        state.path(),
        &input,
        &reference_output,
    ));
    let stats = run.stats.clone();
    wait_until("the reference to read everything", || {
        stats.records_in() >= EVENTS + EVENTS / 3
    })
    .await;
    run.stop().await.expect("reference run");
    let (expected, _) = windows(&stack, &reference_output).await;
    assert_same_windows(&actual, &expected);
}

/// Writes `workload`'s readings keyed by device to their device's partition.
async fn produce_more(
    stack: &DevStack,
    input: &str,
    workload: &flumen_testkit::sensor::SensorWorkload,
) {
    let records = workload.readings().map(|r| {
        flumen_testkit::topics::TestRecord::new(&r.device, r.to_json())
            .to_partition(crate::common::device_partition(&r.device, PARTITIONS))
    });
    stack.produce(input, records).await.expect("produce");
}

/// The changelog topic of the windows of these tests.
fn changelog_of(group: &str, input: &str) -> String {
    format!("{group}-changelog-{input}-window-0")
}

/// Starts the windows of these tests and returns the error the start stops with.
async fn start_error(
    stack: &DevStack,
    builder: flumen::ApplicationBuilder,
    input: &str,
) -> flumen::Error {
    let state = tempfile::tempdir().expect("state dir");
    let output = output_topic(stack).await;
    let run = start(frame(builder, state.path(), input, &output));
    run.finish().await.expect_err("the start is refused")
}

/// Defect 3: existing internal topics are checked at start (partition count,
/// `cleanup.policy=compact`), and the replication factor of new ones is a
/// setting (default: the broker's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_topics_are_checked_and_their_replication_is_a_setting() {
    let stack = DevStack::start().expect("dev stack");
    let input = unique_name("in");
    stack.create_topic(&input, PARTITIONS).await.expect("input");
    for (partitions, compacted, expected) in [
        (PARTITIONS + 1, true, "partitions"),
        (PARTITIONS, false, "cleanup.policy"),
    ] {
        let group = unique_name("g");
        let mut spec = flumen_kafka::TopicSpec::new(changelog_of(&group, &input), partitions);
        if compacted {
            spec = spec.compacted();
        }
        stack.create_topic_spec(&spec).await.expect("changelog");
        let error = start_error(&stack, builder(&stack, &group), &input).await;
        let text = error.to_string();
        assert!(
            matches!(error, flumen::Error::InternalTopic { .. }),
            "{text}"
        );
        assert!(
            text.contains(&spec.name) && text.contains(expected),
            "{text}"
        );
    }
    // Three replicas on a one-broker cluster: the broker refuses to create it.
    let group = unique_name("g");
    let error = start_error(
        &stack,
        builder(&stack, &group).replication_factor(3),
        &input,
    )
    .await;
    let text = error.to_string();
    assert!(text.contains(&changelog_of(&group, &input)), "{text}");
    assert!(text.to_lowercase().contains("replication"), "{text}");
    // The default: the broker's default.replication.factor (1 here).
    let group = unique_name("g");
    let output = output_topic(&stack).await;
    let state = tempfile::tempdir().expect("state dir");
    let run = start(frame(
        builder(&stack, &group),
        state.path(),
        &input,
        &output,
    ));
    wait_until("the changelog to be created", || {
        flumen_kafka::Admin::new(&stack.kafka_config())
            .and_then(|a| a.partition_count(&changelog_of(&group, &input)))
            .is_ok_and(|p| p == Some(PARTITIONS))
    })
    .await;
    run.stop().await.expect("clean stop");
}

/// Defect 3: a changelog deleted (and so created again empty) while the
/// group has committed offsets: a run on an empty state directory stops with
/// `ChangelogLost` instead of restoring an empty state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_changelog_is_detected_instead_of_restoring_an_empty_state() {
    let stack = DevStack::start().expect("dev stack");
    let input = unique_name("in");
    stack.create_topic(&input, PARTITIONS).await.expect("input");
    produce_readings(&stack, &input, PARTITIONS, EVENTS, DEVICES).await;
    let group = unique_name("g");
    let output = output_topic(&stack).await;
    let state = tempfile::tempdir().expect("state dir");
    let run = start(frame(
        builder(&stack, &group).max_batch_records(200),
        state.path(),
        &input,
        &output,
    ));
    let stats = run.stats.clone();
    wait_until("half the input", || stats.records_in() >= EVENTS / 2).await;
    run.stop().await.expect("first run");

    flumen_kafka::Admin::new(&stack.kafka_config())
        .expect("admin")
        .delete_topic(&changelog_of(&group, &input))
        .await
        .expect("delete the changelog");
    let error = start_error(&stack, builder(&stack, &group), &input).await;
    let text = error.to_string();
    assert!(
        matches!(error, flumen::Error::ChangelogLost { .. }),
        "{text}"
    );
    assert!(text.contains(&changelog_of(&group, &input)), "{text}");
}

/// Defect 4: an I/O error opening a partition's state (here: its MANIFEST is
/// a directory, so reading it fails with EISDIR, as a disk error would) stops
/// the run with an error naming the state directory; the state is not deleted.
/// Only corruption or another partition's state is rebuilt (see
/// `window_restart::a_corrupted_or_foreign_state_directory_is_rebuilt_from_the_changelog`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_io_error_opening_the_state_stops_the_run_and_keeps_the_state() {
    let stack = DevStack::start().expect("dev stack");
    let input = unique_name("in");
    stack.create_topic(&input, PARTITIONS).await.expect("input");
    produce_readings(&stack, &input, PARTITIONS, EVENTS, DEVICES).await;
    let group = unique_name("g");
    let output = output_topic(&stack).await;
    let state = tempfile::tempdir().expect("state dir");
    let app = || {
        frame(
            builder(&stack, &group).max_batch_records(200),
            state.path(),
            &input,
            &output,
        )
    };
    let run = start(app());
    let stats = run.stats.clone();
    wait_until("half the input", || stats.records_in() >= EVENTS / 2).await;
    run.stop().await.expect("first run");

    let partition = state.path().join(format!("{input}-0"));
    let current = std::fs::read_to_string(partition.join("CURRENT")).expect("CURRENT");
    let manifest = partition.join(current.trim());
    std::fs::remove_file(&manifest).expect("remove MANIFEST");
    std::fs::create_dir(&manifest).expect("a directory in its place");

    let run = start(app());
    let stats = run.stats.clone();
    let error = run.finish().await.expect_err("the run stops");
    let text = error.to_string();
    assert!(
        matches!(
            &error,
            flumen::Error::State(flumen_state::StateError::Storage {
                kind: flumen_state::StorageKind::Io,
                ..
            })
        ),
        "{text}"
    );
    assert!(text.contains(&partition.display().to_string()), "{text}");
    assert!(
        manifest.is_dir() && partition.join("CURRENT").is_file(),
        "the state was kept"
    );
    assert_eq!(stats.restored_changes(), 0, "nothing rebuilt");
}

/// Defect 6: a panic in user code (here `map_batches` on the batch holding
/// reading 300) stops the application with an error naming the topic,
/// partition and the panic's message, instead of ending that partition's task
/// silently while the rest runs on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_user_code_stops_the_application_with_a_clear_error() {
    use flumen::prelude::*;
    let stack = DevStack::start().expect("dev stack");
    let (input, output, _) = crate::common::sensor_topics(&stack, 2, 1_000, 3).await;
    let app = builder(&stack, &unique_name("g")).build().expect("app");
    app.dataframe(Topic::json(&input).schema(crate::stateless::sensor_schema()))
        .expect("frame")
        .map_batches(|batch| {
            let ids = batch
                .column_by_name("id")
                .and_then(|c| {
                    c.as_any()
                        .downcast_ref::<arrow::array::Int64Array>()
                        .cloned()
                })
                .ok_or("no id column")?;
            if ids.iter().any(|id| id == Some(300)) {
                panic!("reading 300 is poison");
            }
            Ok(batch)
        })
        .to_topic(Topic::json(&output));
    let run = start(app);
    let error = run.finish().await.expect_err("the application stops");
    let text = error.to_string();
    assert!(matches!(error, flumen::Error::Panic { .. }), "{text}");
    assert!(
        text.contains(&input) && text.contains("reading 300 is poison"),
        "{text}"
    );
}

/// Defect 5: one partition whose processing is stuck (its `map_batches`
/// blocks until released) must not stop the others: its fetch is paused, the
/// polling goes on, and the other partition's records, written while the
/// first is stuck, are processed meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn a_stuck_partition_does_not_stop_the_others() {
    use flumen::prelude::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let stack = DevStack::start().expect("dev stack");
    let input = unique_name("in");
    stack.create_topic(&input, 2).await.expect("input");
    let output = output_topic(&stack).await;
    let readings = |p: i32| {
        (0..2_000u64).map(move |i| {
            let value =
                format!(r#"{{"id":{i},"device":"dev-{p}","ts":{i},"temp":1.0,"humidity":1.0}}"#);
            flumen_testkit::topics::TestRecord::new(format!("dev-{p}"), value).to_partition(p)
        })
    };
    stack
        .produce(&input, readings(0))
        .await
        .expect("partition 0");

    let released = Arc::new(AtomicBool::new(false));
    let stuck = Arc::new(AtomicUsize::new(0));
    let (gate, stuck_seen) = (Arc::clone(&released), Arc::clone(&stuck));
    let app = builder(&stack, &unique_name("g"))
        .max_batch_records(20)
        .build()
        .expect("app");
    app.dataframe(Topic::json(&input).schema(crate::stateless::sensor_schema()))
        .expect("frame")
        .map_batches(move |batch| {
            let device = batch.column_by_name("device").ok_or("no device column")?;
            let device = arrow::compute::cast(device, &arrow::datatypes::DataType::Utf8)?;
            let is_stuck = device
                .as_any()
                .downcast_ref::<arrow::array::StringArray>()
                .is_some_and(|d| d.iter().any(|d| d == Some("dev-0")));
            if is_stuck {
                stuck_seen.fetch_add(1, Ordering::AcqRel);
            }
            while is_stuck && !gate.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(batch)
        })
        .to_topic(Topic::json(&output));
    let run = start(app);
    let stats = run.stats.clone();
    wait_until("partition 0 to get stuck", || {
        stuck.load(Ordering::Acquire) > 0
    })
    .await;
    // Partition 0 has 2,000 records waiting: its queue is full at once.
    stack
        .produce(&input, readings(1))
        .await
        .expect("partition 1");
    let counted = stack
        .wait_for_count(&output, 2_000, crate::common::DEADLINE)
        .await;
    released.store(true, Ordering::Release);
    let counted = counted.expect("partition 1 is processed while partition 0 is stuck");
    assert!(counted >= 2_000);
    wait_until("partition 0 after the release", || {
        stats.records_in() >= 4_000
    })
    .await;
    run.stop().await.expect("clean stop");
    let read = stack
        .read_all(&output, crate::common::DEADLINE)
        .await
        .expect("read");
    assert_eq!(read.len(), 4_000, "every record once");
}

/// Defect 7: one reading 20 years ahead in the middle of the input (as
/// measured in review: it silently cost 232 of 1,000 windows) is bad input of
/// kind `future_timestamp`; with `Skip` the windows equal those of the input
/// without it, and with the default `Fail` the run stops naming its offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reading_far_in_the_future_is_bad_input_not_a_new_stream_time() {
    use flumen::prelude::*;
    let stack = DevStack::start().expect("dev stack");
    let (with, without) = (unique_name("in"), unique_name("in"));
    for topic in [&with, &without] {
        stack.create_topic(topic, PARTITIONS).await.expect("input");
    }
    let workload = flumen_testkit::sensor::SensorWorkload {
        events: EVENTS,
        devices: DEVICES,
        step_ms: 100,
        ..Default::default()
    };
    let record = |r: &flumen_testkit::sensor::Reading| {
        flumen_testkit::topics::TestRecord::new(&r.device, r.to_json())
            .to_partition(crate::common::device_partition(&r.device, PARTITIONS))
    };
    let readings: Vec<_> = workload.readings().collect();
    let mut future = readings[EVENTS as usize / 2].clone();
    future.ts += 20 * 365 * 86_400_000;
    let half = EVENTS as usize / 2;
    let poisoned = readings[..half]
        .iter()
        .chain([&future])
        .chain(&readings[half..])
        .map(record);
    stack.produce(&with, poisoned).await.expect("produce");
    stack
        .produce(&without, readings.iter().map(record))
        .await
        .expect("produce");

    let windows_of = |input: &str, policy: BadInputPolicy| {
        let app = builder(&stack, &unique_name("g"))
            .max_batch_records(200)
            .build()
            .expect("app");
        let input = Topic::json(input)
            .schema(arrow::datatypes::Schema::new(vec![
                arrow::datatypes::Field::new("device", arrow::datatypes::DataType::Utf8, false),
                arrow::datatypes::Field::new("ts", arrow::datatypes::DataType::Int64, false),
                arrow::datatypes::Field::new("temp", arrow::datatypes::DataType::Float64, false),
            ]))
            .timestamp_field("ts")
            .on_bad_input(policy);
        (app, input)
    };
    let mut results = Vec::new();
    for input in [&with, &without] {
        let (app, topic) = windows_of(input, BadInputPolicy::Skip);
        let output = output_topic(&stack).await;
        app.dataframe(topic)
            .expect("frame")
            .tumbling_window(Duration::from_secs(10))
            .agg(crate::common::temperature_aggregations())
            .final_()
            .to_topic(Topic::json(&output));
        let stats = crate::common::run_until_read(app, EVENTS).await;
        results.push((windows(&stack, &output).await.0, stats));
    }
    let (actual, stats) = &results[0];
    assert_eq!(stats.bad_records(BadInputKind::FutureTimestamp, "skip"), 1);
    assert_eq!(stats.late_records(), 0, "nothing became late");
    assert_same_windows(actual, &results[1].0);

    let (app, topic) = windows_of(&with, BadInputPolicy::Fail);
    app.dataframe(topic)
        .expect("frame")
        .tumbling_window(Duration::from_secs(10))
        .agg(crate::common::temperature_aggregations())
        .final_()
        .to_topic(Topic::json(&output_topic(&stack).await));
    let error = start(app)
        .finish()
        .await
        .expect_err("the default policy stops");
    let text = error.to_string();
    assert!(
        text.contains("future_timestamp") && text.contains(&with),
        "{text}"
    );
}

/// Defect 8: a bad record as large as the broker accepts is dead-lettered by
/// reference (no key, value or original headers; its size and source position
/// in headers) instead of failing the producer with "message size too large";
/// the run goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_dead_letter_is_written_by_reference() {
    use flumen::prelude::*;
    let stack = DevStack::start().expect("dev stack");
    let (input, output, dlq) = (unique_name("in"), unique_name("out"), unique_name("dlq"));
    for topic in [&input, &output, &dlq] {
        stack.create_topic(topic, 1).await.expect("topic");
    }
    let huge = vec![b'x'; 999_000];
    let records = [
        flumen_testkit::topics::TestRecord::new("a", br#"{"id":1}"#),
        flumen_testkit::topics::TestRecord::new("b", &huge),
        flumen_testkit::topics::TestRecord::new("c", br#"{"id":3}"#),
    ];
    stack.produce(&input, records).await.expect("produce");
    let app = builder(&stack, &unique_name("g")).build().expect("app");
    let schema = arrow::datatypes::Schema::new(vec![arrow::datatypes::Field::new(
        "id",
        arrow::datatypes::DataType::Int64,
        false,
    )]);
    app.dataframe(
        Topic::json(&input)
            .schema(schema)
            .on_bad_input(BadInputPolicy::dead_letter(&dlq)),
    )
    .expect("frame")
    .to_topic(Topic::json(&output));
    let stats = crate::common::run_until_read(app, 2).await;
    assert_eq!(stats.bad_records_total("dead_letter"), 1);
    let dead = stack
        .read_all(&dlq, crate::common::DEADLINE)
        .await
        .expect("dlq");
    assert_eq!(dead.len(), 1);
    let letter = &dead[0];
    assert_eq!(letter.value, None, "the value is referenced, not copied");
    assert_eq!(letter.header("flumen.error.kind"), Some("malformed_json"));
    assert_eq!(letter.header("flumen.source.offset"), Some("1"));
    assert_eq!(
        letter.header("flumen.dead_letter.original_bytes"),
        Some("999001")
    );
    assert_eq!(
        stack
            .read_all(&output, crate::common::DEADLINE)
            .await
            .expect("out")
            .len(),
        2
    );
}

/// Defect 8: a window state that outgrows a changelog record (a `collect()`
/// of large values) stops the run with an error naming the store, the sizes
/// and what to do, instead of a producer error on every restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_entry_larger_than_a_changelog_record_stops_with_a_clear_error() {
    use flumen::prelude::*;
    let stack = DevStack::start().expect("dev stack");
    let input = unique_name("in");
    stack.create_topic(&input, 1).await.expect("input");
    // 130,000 readings of one device in one 10 s window: its collect()
    // state passes 1 MB.
    let records = (0..130_000u32).map(|i| {
        let value = format!(
            r#"{{"device":"d","ts":{},"temp":{i}.5}}"#,
            1_000 + i % 9_000
        );
        flumen_testkit::topics::TestRecord::new("d", value)
    });
    stack.produce(&input, records).await.expect("produce");
    let app = builder(&stack, &unique_name("g"))
        .max_batch_records(10_000)
        .build()
        .expect("app");
    let schema = arrow::datatypes::Schema::new(vec![
        arrow::datatypes::Field::new("device", arrow::datatypes::DataType::Utf8, false),
        arrow::datatypes::Field::new("ts", arrow::datatypes::DataType::Int64, false),
        arrow::datatypes::Field::new("temp", arrow::datatypes::DataType::Float64, false),
    ]);
    app.dataframe(Topic::json(&input).schema(schema).timestamp_field("ts"))
        .expect("frame")
        .tumbling_window(Duration::from_secs(10))
        .agg([collect(col("temp")).alias("temps")])
        .final_()
        .to_topic(Topic::json(&output_topic(&stack).await));
    let error = start(app).finish().await.expect_err("stops");
    let text = error.to_string();
    assert!(
        matches!(error, flumen::Error::StateTooLarge { .. }),
        "{text}"
    );
    assert!(
        text.contains("window-0") && text.contains("collect()"),
        "{text}"
    );
}
