//! End-to-end stateless pipelines on the dev stack: filter + select + with_column,
//! branching, and errors found before anything is consumed.

use std::collections::BTreeMap;

use crate::common::{assert_same, builder, run_until_read, sensor_topics, DEADLINE};
use arrow::datatypes::{DataType, Field, Schema};
use flumen::prelude::*;
use flumen_testkit::sensor::SensorWorkload;
use flumen_testkit::{unique_name, DevStack};

pub(crate) fn sensor_schema() -> Schema {
    Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("device", DataType::Utf8, false),
        Field::new("ts", DataType::Int64, false),
        Field::new("temp", DataType::Float64, false),
        Field::new("humidity", DataType::Float64, true),
    ])
}

/// Output values grouped by key, in output order (partition, offset).
fn by_key(records: &[flumen_testkit::ReadRecord]) -> BTreeMap<String, Vec<serde_json::Value>> {
    let mut map: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    for r in records {
        map.entry(r.key_str().unwrap_or_default())
            .or_default()
            .push(r.json());
    }
    map
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_select_with_column_to_topic() {
    let stack = DevStack::start().expect("dev stack");
    let (input, output, workload) = sensor_topics(&stack, 3, 3_000, 7).await;

    let app = builder(&stack, &unique_name("g")).build().expect("app");
    app.dataframe(
        Topic::json(&input)
            .schema(sensor_schema())
            .timestamp_field("ts"),
    )
    .expect("frame")
    .filter(col("temp").gt_eq(lit(0.0)))
    .select([col("id"), col("device"), col("temp")])
    .with_column("temp_f", col("temp") * lit(1.8) + lit(32.0))
    .to_topic(Topic::json(&output));

    let mut expected: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    for r in workload.readings().filter(|r| r.temp >= 0.0) {
        expected
            .entry(r.device.clone())
            .or_default()
            .push(serde_json::json!({
                "id": r.id, "device": r.device, "temp": r.temp, "temp_f": r.temp * 1.8 + 32.0
            }));
    }
    let count: usize = expected.values().map(Vec::len).sum();
    assert!(
        count > 2_000 && count < 3_000,
        "the filter must drop some records: {count}"
    );
    run_until_read(app, workload.events).await;

    let records = stack
        .read_all(&output, DEADLINE)
        .await
        .expect("read output");
    assert_eq!(records.len(), count, "exactly one output per kept input");
    let actual = by_key(&records);
    assert_eq!(
        actual.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    for (key, values) in &expected {
        assert_same(&format!("key {key}"), &actual[key], values);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_input_feeds_two_outputs() {
    let stack = DevStack::start().expect("dev stack");
    let (input, warm, cold) = (unique_name("in"), unique_name("warm"), unique_name("cold"));
    stack.create_topic(&input, 3).await.expect("input topic");
    stack.create_topic(&warm, 2).await.expect("warm topic");
    stack.create_topic(&cold, 1).await.expect("cold topic");
    let workload = SensorWorkload {
        events: 2_000,
        devices: 5,
        ..Default::default()
    };
    stack
        .produce(&input, workload.records())
        .await
        .expect("produce");

    let app = builder(&stack, &unique_name("g")).build().expect("app");
    let readings = app
        .dataframe(Topic::json(&input).schema(sensor_schema()))
        .expect("frame");
    readings
        .filter(col("temp").gt_eq(lit(30.0)))
        .select([col("id"), col("temp")])
        .to_topic(Topic::json(&warm));
    readings
        .filter(col("temp").lt(lit(0.0)))
        .select([col("id"), col("device")])
        .to_topic(Topic::json(&cold).key_column("device"));

    let warm_expected: Vec<_> = workload
        .readings()
        .filter(|r| r.temp >= 30.0)
        .map(|r| serde_json::json!({"id": r.id, "temp": r.temp}))
        .collect();
    let cold_expected: Vec<_> = workload
        .readings()
        .filter(|r| r.temp < 0.0)
        .map(|r| serde_json::json!({"id": r.id, "device": r.device}))
        .collect();
    run_until_read(app, workload.events).await;

    let sorted = |mut v: Vec<serde_json::Value>| {
        v.sort_by_key(|j| j["id"].as_u64());
        v
    };
    let warm_actual: Vec<_> = stack
        .read_all(&warm, DEADLINE)
        .await
        .expect("read")
        .iter()
        .map(|r| r.json())
        .collect();
    let cold_records = stack.read_all(&cold, DEADLINE).await.expect("read");
    assert!(cold_records
        .iter()
        .all(|r| r.key_str().as_deref() == r.json()["device"].as_str()));
    let cold_actual: Vec<_> = cold_records.iter().map(|r| r.json()).collect();
    assert_same("warm", &sorted(warm_actual), &sorted(warm_expected));
    assert_same("cold", &sorted(cold_actual), &sorted(cold_expected));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_before_consuming() {
    let stack = DevStack::start().expect("dev stack");
    let (input, output) = (unique_name("in"), unique_name("out"));
    stack.create_topic(&input, 1).await.expect("input topic");

    // The input topic does not exist.
    let app = builder(&stack, &unique_name("g")).build().expect("app");
    app.dataframe(Topic::json("no-such-topic").schema(sensor_schema()))
        .expect("frame")
        .print();
    let err = app
        .run_until(std::future::pending())
        .await
        .expect_err("missing input");
    assert!(
        err.to_string()
            .contains("topic 'no-such-topic' does not exist"),
        "{err}"
    );

    // The output topic does not exist.
    let app = builder(&stack, &unique_name("g")).build().expect("app");
    app.dataframe(Topic::json(&input).schema(sensor_schema()))
        .expect("frame")
        .to_topic(Topic::json(&output));
    let err = app
        .run_until(std::future::pending())
        .await
        .expect_err("missing output");
    assert!(
        err.to_string()
            .contains(&format!("output topic '{output}' does not exist")),
        "{err}"
    );

    // A column that does not exist.
    let app = builder(&stack, &unique_name("g")).build().expect("app");
    app.dataframe(Topic::json(&input).schema(sensor_schema()))
        .expect("frame")
        .filter(col("temperature").gt(lit(1)))
        .print();
    let err = app
        .run_until(std::future::pending())
        .await
        .expect_err("unknown column");
    assert!(matches!(err, flumen::Error::Plan(_)), "{err}");
    assert!(err.to_string().contains("temperature"), "{err}");

    // A JSON input without a schema, and a timestamp field that is not a time.
    let app = builder(&stack, &unique_name("g")).build().expect("app");
    let err = app.dataframe(Topic::json(&input)).err().expect("no schema");
    assert!(err.to_string().contains("without a schema"), "{err}");
    let err = app
        .dataframe(
            Topic::json(&input)
                .schema(sensor_schema())
                .timestamp_field("device"),
        )
        .err()
        .expect("bad timestamp field");
    assert!(err.to_string().contains("'device' has type Utf8"), "{err}");
}

#[derive(serde::Deserialize)]
struct Reading {
    id: i64,
    temp: f64,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Kelvin {
    id: i64,
    temp_c: f64,
    temp_k: f64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_map_map_batches_and_drop() {
    let stack = DevStack::start().expect("dev stack");
    let (input, output, workload) = sensor_topics(&stack, 2, 500, 3).await;

    let app = builder(&stack, &unique_name("g")).build().expect("app");
    app.dataframe(Topic::json(&input).schema(sensor_schema()))
        .expect("frame")
        .map(|r: Reading| Kelvin {
            id: r.id,
            temp_c: r.temp,
            temp_k: r.temp + 273.15,
        })
        .drop(["temp_c"])
        .map_batches(|batch| {
            // Keep even ids only, through plain Arrow.
            let ids = batch
                .column_by_name("id")
                .and_then(|c| {
                    c.as_any()
                        .downcast_ref::<arrow::array::Int64Array>()
                        .cloned()
                })
                .ok_or("no id column")?;
            let even =
                arrow::array::BooleanArray::from_iter(ids.iter().map(|v| v.map(|v| v % 2 == 0)));
            Ok(arrow::compute::filter_record_batch(&batch, &even)?)
        })
        .to_topic(Topic::json(&output));
    run_until_read(app, workload.events).await;

    let mut actual: Vec<_> = stack
        .read_all(&output, DEADLINE)
        .await
        .expect("read")
        .iter()
        .map(|r| (r.key_str().unwrap_or_default(), r.json()))
        .collect();
    actual.sort_by_key(|(_, v)| v["id"].as_i64());
    let expected: Vec<_> = workload
        .readings()
        .filter(|r| r.id % 2 == 0)
        .map(|r| {
            (
                r.device.clone(),
                serde_json::json!({"id": r.id, "temp_k": r.temp + 273.15}),
            )
        })
        .collect();
    assert_same("mapped records (key, value)", &actual, &expected);
}
