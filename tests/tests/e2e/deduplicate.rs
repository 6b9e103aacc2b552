//! `deduplicate` on the dev stack: repeats within the interval are dropped,
//! also across a restart whose state directory is gone (the kept keys come
//! back from the changelog), and later repeats are kept.

use std::time::Duration;

use crate::common::{builder, start, wait_until, DEADLINE};
use arrow::datatypes::{DataType, Field, Schema};
use flumen::prelude::*;
use flumen_testkit::topics::TestRecord;
use flumen_testkit::{unique_name, DevStack};

const PARTITIONS: i32 = 2;

fn app(
    stack: &DevStack,
    group: &str,
    state: &std::path::Path,
    input: &str,
    output: &str,
) -> Application {
    let app = builder(stack, group).state_dir(state).build().expect("app");
    let schema = Schema::new(vec![
        Field::new("order", DataType::Utf8, false),
        Field::new("ts", DataType::Int64, false),
    ]);
    app.dataframe(Topic::json(input).schema(schema).timestamp_field("ts"))
        .expect("frame")
        .deduplicate(col("order"), Duration::from_secs(60))
        .to_topic(Topic::json(output));
    app
}

/// Orders `ids`, each at event time `ts`, keyed by the order (so repeats
/// meet on one partition).
fn orders(ids: &[u32], ts: i64) -> Vec<TestRecord> {
    ids.iter()
        .map(|id| {
            let order = format!("order-{id}");
            TestRecord::new(&order, format!(r#"{{"order":"{order}","ts":{ts}}}"#))
        })
        .collect()
}

/// Runs the application until it read `records` in all, then stops it.
async fn run_until(app: Application, records: u64) {
    let running = start(app);
    let stats = running.stats.clone();
    wait_until("the input to be read", || stats.records_in() >= records).await;
    running.stop().await.expect("run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeats_are_dropped_across_a_restart_that_lost_its_state_directory() {
    let stack = DevStack::start().expect("dev stack");
    let (input, output) = (unique_name("orders"), unique_name("unique"));
    stack.create_topic(&input, PARTITIONS).await.expect("input");
    stack
        .create_topic(&output, PARTITIONS)
        .await
        .expect("output");
    let group = unique_name("g");
    // First run: 100 orders, each twice, at t = 1,000 s.
    let mut first = orders(&(0..100).collect::<Vec<_>>(), 1_000_000);
    first.extend(orders(&(0..100).collect::<Vec<_>>(), 1_000_500));
    stack.produce(&input, first).await.expect("produce");
    let state = tempfile::tempdir().expect("state dir");
    run_until(app(&stack, &group, state.path(), &input, &output), 200).await;
    drop(state);
    // Second run on a new state directory: 30 s later the first 50 repeat
    // (dropped: within 60 s), 100 new orders arrive (kept), and 90 s after
    // the first run orders 50..100 repeat (kept: the interval has passed).
    let mut second = orders(&(0..50).collect::<Vec<_>>(), 1_030_000);
    second.extend(orders(&(100..200).collect::<Vec<_>>(), 1_030_000));
    second.extend(orders(&(50..100).collect::<Vec<_>>(), 1_090_000));
    stack.produce(&input, second).await.expect("produce");
    let state = tempfile::tempdir().expect("state dir");
    run_until(app(&stack, &group, state.path(), &input, &output), 200).await;

    let records = stack
        .read_all(&output, DEADLINE)
        .await
        .expect("read output");
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for record in &records {
        *counts
            .entry(record.key_str().unwrap_or_default())
            .or_default() += 1;
    }
    let expected = |id: u32| match id {
        50..100 => 2,
        _ => 1,
    };
    for id in 0..200 {
        let order = format!("order-{id}");
        assert_eq!(counts.get(&order).copied(), Some(expected(id)), "{order}");
    }
    assert_eq!(records.len(), 250, "200 orders, 50 of them twice");
}
