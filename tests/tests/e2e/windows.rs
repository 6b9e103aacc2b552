//! Windowed aggregations end to end on the dev stack: the sensor workload through
//! `temp >= 0` -> tumbling 10 s / hopping 10 s every 2 s per device -> Kafka,
//! compared with a record-at-a-time reference.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common::{builder, produce_readings, run_until_read, DEADLINE};
use arrow::datatypes::{DataType, Field, Schema};
use flumen::prelude::*;
use flumen_testkit::sensor::Reading;
use flumen_testkit::topics::TestRecord;
use flumen_testkit::{unique_name, DevStack};

pub(crate) const PARTITIONS: i32 = 3;
pub(crate) const DEVICES: u64 = 12;

fn partition_of(device: &str) -> i32 {
    crate::common::device_partition(device, PARTITIONS)
}

/// (count, sum, min, max, mean) of one window.
pub(crate) type Row = (i64, f64, f64, f64, f64);

/// Per (device, window start): count, sum, min, max, mean of the kept readings
/// (`temp >= 0`), for every window any of them falls in.
pub(crate) fn all_windows(
    readings: &[Reading],
    size: i64,
    step: i64,
) -> BTreeMap<(String, i64), Row> {
    let mut windows: BTreeMap<(String, i64), Vec<f64>> = BTreeMap::new();
    for r in readings.iter().filter(|r| r.temp >= 0.0) {
        let mut start = r.ts - r.ts.rem_euclid(step);
        while start + size > r.ts {
            windows
                .entry((r.device.clone(), start))
                .or_default()
                .push(r.temp);
            start -= step;
        }
    }
    windows
        .into_iter()
        .map(|(k, temps)| {
            let sum: f64 = temps.iter().sum();
            let min = temps.iter().copied().fold(f64::INFINITY, f64::min);
            let max = temps.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            (
                k,
                (temps.len() as i64, sum, min, max, sum / temps.len() as f64),
            )
        })
        .collect()
}

/// The windows of [`all_windows`] closed by the end of their partition's input (grace 0).
pub(crate) fn reference(
    readings: &[Reading],
    size: i64,
    step: i64,
) -> BTreeMap<(String, i64), Row> {
    let mut end_of_partition: BTreeMap<i32, i64> = BTreeMap::new();
    for r in readings.iter().filter(|r| r.temp >= 0.0) {
        let end = end_of_partition
            .entry(partition_of(&r.device))
            .or_insert(i64::MIN);
        *end = (*end).max(r.ts);
    }
    all_windows(readings, size, step)
        .into_iter()
        .filter(|((device, start), _)| start + size <= end_of_partition[&partition_of(device)])
        .collect()
}

/// The input topic: sensor readings with event time from `ts`.
pub(crate) fn readings_topic(name: &str) -> Topic {
    Topic::json(name)
        .schema(Schema::new(vec![
            Field::new("device", DataType::Utf8, false),
            Field::new("ts", DataType::Int64, false),
            Field::new("temp", DataType::Float64, false),
        ]))
        .timestamp_field("ts")
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

async fn run(window: &str) {
    let stack = DevStack::start().expect("dev stack");
    let (input, output) = (unique_name("in"), unique_name("out"));
    stack
        .create_topic(&input, PARTITIONS)
        .await
        .expect("input topic");
    stack
        .create_topic(&output, PARTITIONS)
        .await
        .expect("output topic");
    let workload = produce_readings(&stack, &input, PARTITIONS, 4_000, DEVICES).await;

    let state = tempfile::tempdir().expect("state dir");
    let app = builder(&stack, &unique_name("g"))
        .state_dir(state.path())
        .build()
        .expect("app");
    let readings = app
        .dataframe(readings_topic(&input))
        .expect("frame")
        .filter(col("temp").gt_eq(lit(0.0)));
    let (size, step) = match window {
        "tumbling" => (10_000, 10_000),
        _ => (10_000, 2_000),
    };
    let windowed = if size == step {
        readings.tumbling_window(Duration::from_millis(size as u64))
    } else {
        readings.hopping_window(
            Duration::from_millis(size as u64),
            Duration::from_millis(step as u64),
        )
    };
    windowed
        .agg(crate::common::temperature_aggregations())
        .final_()
        .to_topic(Topic::json(&output));
    run_until_read(app, workload.events).await;

    let expected = reference(&workload.readings().collect::<Vec<_>>(), size, step);
    let records = stack
        .read_all(&output, DEADLINE)
        .await
        .expect("read output");
    let mut actual = BTreeMap::new();
    for r in &records {
        let (window_key, row) = window_row(r, "key", size);
        assert!(
            actual.insert(window_key, row).is_none(),
            "a window emitted twice"
        );
    }
    assert_windows(window, &actual, &expected);
}

/// ((device, window start), row) of one output record keyed by device, whose
/// device is in column `key`.
fn window_row(r: &flumen_testkit::ReadRecord, key: &str, size: i64) -> ((String, i64), Row) {
    let v = r.json();
    let device = v[key].as_str().unwrap().to_string();
    assert_eq!(
        r.key_str().as_deref(),
        Some(device.as_str()),
        "output keyed by device"
    );
    let start = v["window_start"].as_i64().unwrap();
    assert_eq!(v["window_end"].as_i64(), Some(start + size));
    let row = (
        v["count"].as_i64().unwrap(),
        v["sum"].as_f64().unwrap(),
        v["min"].as_f64().unwrap(),
        v["max"].as_f64().unwrap(),
        v["mean"].as_f64().unwrap(),
    );
    ((device, start), row)
}

/// Every expected window is there with its values (floats within 1e-9 relative), and no other.
pub(crate) fn assert_windows(
    what: &str,
    actual: &BTreeMap<(String, i64), Row>,
    expected: &BTreeMap<(String, i64), Row>,
) {
    assert_eq!(actual.len(), expected.len(), "{what}: number of windows");
    for (window_key, want) in expected {
        let got = actual
            .get(window_key)
            .unwrap_or_else(|| panic!("{what}: window {window_key:?} missing"));
        assert_eq!(got.0, want.0, "count of {window_key:?}");
        for (g, w) in [
            (got.1, want.1),
            (got.2, want.2),
            (got.3, want.3),
            (got.4, want.4),
        ] {
            assert!(
                close(g, w),
                "{what}: {window_key:?}: got {got:?}, want {want:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tumbling_windows_match_the_reference() {
    run("tumbling").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hopping_windows_match_the_reference() {
    run("hopping").await;
}

/// Runs the late-data scenario; with `dead_letter`, late records go to that topic.
async fn late_data(dead_letter: bool) {
    let stack = DevStack::start().expect("dev stack");
    let (input, output, dlq) = (unique_name("in"), unique_name("out"), unique_name("late"));
    stack.create_topic(&input, 1).await.expect("input topic");
    stack.create_topic(&output, 1).await.expect("output topic");
    stack
        .create_topic(&dlq, 1)
        .await
        .expect("dead-letter topic");
    // Grace 1 s: [0, 10 s) closes once stream time reaches 11 s.
    let events = [
        (1_000, 1.0),
        (5_000, 2.0),
        (10_500, 4.0),
        (9_000, 8.0),
        (11_000, 16.0),
        (3_000, 32.0),
        (25_000, 64.0),
    ];
    let records = events.iter().map(|(ts, temp)| {
        TestRecord::new("a", format!(r#"{{"device":"a","ts":{ts},"temp":{temp}}}"#)).to_partition(0)
    });
    stack.produce(&input, records).await.expect("produce");

    let state = tempfile::tempdir().expect("state dir");
    let app = builder(&stack, &unique_name("g"))
        .state_dir(state.path())
        .build()
        .expect("app");
    let late = if dead_letter {
        LateRecords::DeadLetter(dlq.clone())
    } else {
        LateRecords::Drop
    };
    app.dataframe(readings_topic(&input))
        .expect("frame")
        .tumbling_window(Duration::from_secs(10))
        .grace(Duration::from_secs(1))
        .on_late(late)
        .agg([count(), sum(col("temp")).alias("sum")])
        .final_()
        .to_topic(Topic::json(&output));
    let stats = run_until_read(app, events.len() as u64).await;
    assert_eq!(
        stats.late_records(),
        1,
        "only the record at 3 s arrives after [0, 10 s) closed"
    );

    let rows: Vec<(i64, i64, f64)> = stack
        .read_all(&output, DEADLINE)
        .await
        .expect("read")
        .iter()
        .map(|r| {
            let v = r.json();
            (
                v["window_start"].as_i64().unwrap(),
                v["count"].as_i64().unwrap(),
                v["sum"].as_f64().unwrap(),
            )
        })
        .collect();
    // 9 s arrived within grace (stream time 10.5 s < 11 s); 3 s arrived after the close.
    assert_eq!(rows, vec![(0, 3, 11.0), (10_000, 2, 20.0)]);

    let dead = stack
        .read_all(&dlq, DEADLINE)
        .await
        .expect("read dead letters");
    if !dead_letter {
        assert!(dead.is_empty(), "dropped late records go nowhere");
        return;
    }
    assert_eq!(dead.len(), 1, "the one late record");
    let record = &dead[0];
    assert_eq!(
        record.json()["ts"].as_i64(),
        Some(3_000),
        "the source record, unchanged"
    );
    assert_eq!(record.key_str().as_deref(), Some("a"));
    assert_eq!(record.header("flumen.error.kind"), Some("late"));
    assert_eq!(record.header("flumen.source.offset"), Some("5"));
    assert_eq!(record.header("flumen.source.topic"), Some(input.as_str()));
    assert_eq!(
        record.header("flumen.watermark"),
        Some("10000"),
        "11 s - 1 s grace"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_records_are_counted_and_never_change_an_emitted_window() {
    late_data(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_records_can_go_to_a_dead_letter_topic() {
    late_data(true).await;
}

/// Input keyed by something else than the device, so every partition holds
/// readings of every device: `group_by(col("device"))` routes them through
/// `<group>-repartition-device`, and each window sees all of its device's
/// readings. With `current()` emission and a grace longer than the input, the
/// last emission of every window is its aggregate over all its readings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_by_a_field_the_input_is_not_keyed_by_repartitions() {
    let stack = DevStack::start().expect("dev stack");
    let (input, output) = (unique_name("in"), unique_name("out"));
    stack
        .create_topic(&input, PARTITIONS)
        .await
        .expect("input topic");
    stack
        .create_topic(&output, PARTITIONS)
        .await
        .expect("output topic");
    let workload = flumen_testkit::sensor::SensorWorkload {
        events: 3_000,
        devices: DEVICES,
        step_ms: 100,
        ..Default::default()
    };
    let readings: Vec<Reading> = workload.readings().collect();
    let records = readings.iter().enumerate().map(|(i, r)| {
        TestRecord::new(format!("gateway-{}", i % 5), r.to_json())
            .to_partition(i as i32 % PARTITIONS)
    });
    stack.produce(&input, records).await.expect("produce");
    let kept = readings.iter().filter(|r| r.temp >= 0.0).count() as u64;

    let group = unique_name("g");
    let state = tempfile::tempdir().expect("state dir");
    let app = builder(&stack, &group)
        .state_dir(state.path())
        .build()
        .expect("app");
    app.dataframe(readings_topic(&input))
        .expect("frame")
        .filter(col("temp").gt_eq(lit(0.0)))
        .group_by(col("device"))
        .tumbling_window(Duration::from_secs(10))
        .grace(Duration::from_secs(3_600))
        .agg(crate::common::temperature_aggregations())
        .current()
        .to_topic(Topic::json(&output));
    // Every input record, then every kept record again from the repartition topic.
    run_until_read(app, workload.events + kept).await;

    let repartition = format!("{group}-repartition-device");
    let partitions = flumen_kafka::Admin::new(&stack.kafka_config())
        .expect("admin")
        .partition_count(&repartition)
        .expect("metadata");
    assert_eq!(partitions, Some(PARTITIONS), "created like the input");
    let records = stack
        .read_all(&output, DEADLINE)
        .await
        .expect("read output");
    // A device's emissions are in one output partition, in order: keep the last.
    let mut actual = BTreeMap::new();
    for r in &records {
        let (window_key, row) = window_row(r, "device", 10_000);
        actual.insert(window_key, row);
    }
    assert_windows(
        "repartitioned",
        &actual,
        &all_windows(&readings, 10_000, 10_000),
    );
}
