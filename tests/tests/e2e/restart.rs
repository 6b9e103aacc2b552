//! Stopping mid-stream and starting again in the same consumer group.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use crate::common::{builder, start, wait_until, DEADLINE};
use arrow::datatypes::{DataType, Field, Schema};
use flumen::prelude::*;
use flumen::ApplicationBuilder;
use flumen_kafka::{
    AutoOffsetReset, GroupConsumer, GroupMetadata, RebalanceListener, TopicPartition,
};
use flumen_testkit::sensor::SensorWorkload;
use flumen_testkit::{unique_name, DevStack};

const EVENTS: u64 = 20_000;

fn app(stack: &DevStack, group: &str, input: &str, output: &str) -> Application {
    with_pipeline(builder(stack, group), input, output)
}

/// The application `builder` makes, running the test's pipeline.
fn with_pipeline(builder: ApplicationBuilder, input: &str, output: &str) -> Application {
    let app = builder.max_batch_records(500).build().expect("app");
    app.dataframe(Topic::json(input).schema(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("temp", DataType::Float64, false),
    ])))
    .expect("frame")
    .select([
        col("id"),
        col("_partition").alias("src_partition"),
        col("_offset").alias("src_offset"),
    ])
    .to_topic(Topic::json(output));
    app
}

/// The input and output topics, with the first half of the input produced.
async fn setup(stack: &DevStack) -> (String, String) {
    let (input, output) = (unique_name("in"), unique_name("out"));
    stack.create_topic(&input, 3).await.expect("input topic");
    stack.create_topic(&output, 3).await.expect("output topic");
    produce_half(stack, &input, 0).await;
    (input, output)
}

/// Produces the first (`half` 0) or second (1) half of the input.
async fn produce_half(stack: &DevStack, input: &str, half: u64) {
    let workload = SensorWorkload {
        events: EVENTS,
        devices: 50,
        ..Default::default()
    };
    let records = workload
        .records()
        .skip((half * EVENTS / 2) as usize)
        .take((EVENTS / 2) as usize);
    stack.produce(input, records).await.expect("produce");
}

/// How often each input id appears in the output, with its source position.
async fn outputs(stack: &DevStack, output: &str) -> BTreeMap<i64, (usize, i32, i64)> {
    let mut seen: BTreeMap<i64, (usize, i32, i64)> = BTreeMap::new();
    for r in stack.read_all(output, DEADLINE).await.expect("read") {
        let v = r.json();
        let id = v["id"].as_i64().expect("id");
        let entry = seen.entry(id).or_insert((
            0,
            v["src_partition"].as_i64().expect("p") as i32,
            v["src_offset"].as_i64().expect("o"),
        ));
        entry.0 += 1;
    }
    seen
}

struct NoRebalance;
impl RebalanceListener for NoRebalance {
    fn on_assign(&self, _: &[(TopicPartition, Option<i64>)], _: Option<Arc<GroupMetadata>>) {}
    fn on_assign_failed(&self, _: &[TopicPartition], _: flumen_kafka::KafkaError) {}
    fn on_revoke(&self, _: &[TopicPartition]) -> Vec<(TopicPartition, i64)> {
        Vec::new()
    }
}

fn committed(stack: &DevStack, group: &str, topic: &str) -> HashMap<i32, i64> {
    let consumer = GroupConsumer::new(
        &stack.kafka_config(),
        group,
        AutoOffsetReset::Earliest,
        Arc::new(NoRebalance),
    )
    .expect("consumer");
    let partitions: Vec<_> = (0..3).map(|p| TopicPartition::new(topic, p)).collect();
    consumer
        .committed(&partitions, DEADLINE)
        .expect("committed offsets")
        .into_iter()
        .map(|(tp, o)| (tp.partition, o.unwrap_or(0)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_and_restart_loses_and_repeats_nothing() {
    let stack = DevStack::start().expect("dev stack");
    let (input, output) = setup(&stack).await;
    let group = unique_name("g");
    let running = start(app(&stack, &group, &input, &output));
    let stats = running.stats.clone();
    wait_until("the first half", || stats.records_in() >= EVENTS / 2).await;
    running.stop().await.expect("clean stop");
    let first_run = stats.records_in();
    assert_eq!(first_run, EVENTS / 2, "only the first half was there");
    assert!(stats.offset_commits() >= 1, "a graceful stop commits");
    produce_half(&stack, &input, 1).await;

    let running = start(app(&stack, &group, &input, &output));
    let stats = running.stats.clone();
    wait_until("the rest of the input", || {
        stats.records_in() >= EVENTS - first_run
    })
    .await;
    running.stop().await.expect("clean stop");
    assert_eq!(
        stats.records_in(),
        EVENTS - first_run,
        "the restart reads only what was not committed"
    );
    let seen = outputs(&stack, &output).await;
    assert_eq!(seen.len() as u64, EVENTS, "every input record");
    assert!(
        seen.values().all(|(n, _, _)| *n == 1),
        "a graceful stop commits what it wrote"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_and_restart_repeats_only_the_uncommitted_tail() {
    let stack = DevStack::start().expect("dev stack");
    let (input, output) = setup(&stack).await;
    let group = unique_name("g");
    // A first run commits the first half (a graceful stop commits what it read).
    let running = start(app(&stack, &group, &input, &output));
    let stats = running.stats.clone();
    wait_until("the first half", || stats.records_in() >= EVENTS / 2).await;
    running.stop().await.expect("clean stop");
    // The second run reads the rest and is killed before its first commit.
    produce_half(&stack, &input, 1).await;
    let never_commits = builder(&stack, &group).commit_interval(Duration::from_secs(3600));
    let running = start(with_pipeline(never_commits, &input, &output));
    let stats = running.stats.clone();
    wait_until("the second half", || stats.records_in() >= EVENTS / 2).await;
    running.stop.kill();
    running.finish().await.expect("killed run returns");
    assert_eq!(stats.offset_commits(), 0, "a killed run does not commit");
    let committed = committed(&stack, &group, &input);

    let remaining = EVENTS - committed.values().sum::<i64>() as u64;
    assert_eq!(
        remaining,
        EVENTS / 2,
        "the killed run committed nothing: {committed:?}"
    );

    let running = start(app(&stack, &group, &input, &output));
    let stats = running.stats.clone();
    wait_until("every uncommitted input record", || {
        stats.records_in() >= remaining
    })
    .await;
    running.stop().await.expect("clean stop");
    assert_eq!(
        stats.records_in(),
        remaining,
        "the restart starts at the committed offsets"
    );

    let seen = outputs(&stack, &output).await;
    assert_eq!(
        seen.len() as u64,
        EVENTS,
        "at-least-once: every input record"
    );
    let mut duplicates = 0;
    for (id, (n, partition, offset)) in &seen {
        assert!(*n <= 2, "id {id} written {n} times");
        if *n == 2 {
            duplicates += 1;
            let mark = committed.get(partition).copied().unwrap_or(0);
            assert!(
                *offset >= mark,
                "id {id} at {partition}/{offset} repeated although committed up to {mark}"
            );
        }
    }
    println!("duplicates after the crash: {duplicates}; committed at crash: {committed:?}");
}
