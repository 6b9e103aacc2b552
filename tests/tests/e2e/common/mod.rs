//! Helpers shared by the end-to-end tests.
#![allow(dead_code)] // not every helper is used by every build of the tests

use std::sync::Arc;
use std::time::{Duration, Instant};

use flumen::{Application, ApplicationBuilder, Stats, StopHandle};
use flumen_testkit::sensor::SensorWorkload;
use flumen_testkit::{unique_name, DevStack};
use tokio::task::JoinHandle;

/// Deadline for any single wait in these tests.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Logs to the test's output when `RUST_LOG` is set.
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// An application builder for the dev stack with small batches and frequent commits.
pub fn builder(stack: &DevStack, group: &str) -> ApplicationBuilder {
    init_logging();
    let mut b = Application::builder()
        .brokers(stack.brokers())
        .consumer_group(group)
        .commit_interval(Duration::from_millis(100))
        .max_batch_delay(Duration::from_millis(20));
    for (k, v) in stack.consumer_settings() {
        b = b.consumer_config(k, v);
    }
    // librdkafka's own debug contexts (e.g. `cgrp,fetch`) in the test log.
    if let Ok(contexts) = std::env::var("FLUMEN_TEST_KAFKA_DEBUG") {
        b = b.consumer_config("debug", contexts);
    }
    b
}

/// A running application.
pub struct Running {
    pub stop: StopHandle,
    pub stats: Arc<Stats>,
    pub join: JoinHandle<flumen::Result<()>>,
}

/// Starts `app` in a task; it runs until stopped or failed.
pub fn start(app: Application) -> Running {
    let stop = app.stop_handle();
    let stats = app.stats();
    let join = tokio::spawn(async move { app.run_until(std::future::pending()).await });
    Running { stop, stats, join }
}

impl Running {
    /// Asks for a graceful stop and returns the run's result.
    pub async fn stop(self) -> flumen::Result<()> {
        self.stop.stop();
        self.finish().await
    }

    /// Waits for the run to end by itself (e.g. on a `fail` policy).
    pub async fn finish(self) -> flumen::Result<()> {
        match tokio::time::timeout(DEADLINE, self.join).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => panic!("application task panicked: {e}"),
            Err(_) => panic!("application did not stop within {DEADLINE:?}"),
        }
    }
}

/// Waits until `condition` holds, polling every 20 ms, failing after `DEADLINE`.
pub async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(
            start.elapsed() < DEADLINE,
            "timed out after {DEADLINE:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asserts two sequences are equal, reporting only the first difference.
pub fn assert_same<T: PartialEq + std::fmt::Debug>(what: &str, actual: &[T], expected: &[T]) {
    if let Some(i) = (0..actual.len().min(expected.len())).find(|&i| actual[i] != expected[i]) {
        panic!(
            "{what}: first difference at {i}: got {:?}, expected {:?}",
            actual[i], expected[i]
        );
    }
    assert_eq!(actual.len(), expected.len(), "{what}: lengths differ");
}

/// Creates an input and an output topic with `partitions` each and writes the
/// sensor workload of `events` readings over `devices` keys into the input.
pub async fn sensor_topics(
    stack: &DevStack,
    partitions: i32,
    events: u64,
    devices: u64,
) -> (String, String, SensorWorkload) {
    let (input, output) = (unique_name("in"), unique_name("out"));
    stack
        .create_topic(&input, partitions)
        .await
        .expect("input topic");
    stack
        .create_topic(&output, partitions)
        .await
        .expect("output topic");
    let workload = SensorWorkload {
        events,
        devices,
        ..Default::default()
    };
    stack
        .produce(&input, workload.records())
        .await
        .expect("produce");
    (input, output, workload)
}

/// Runs `app` until it has read `records` input records, then stops it gracefully.
pub async fn run_until_read(app: Application, records: u64) -> Arc<Stats> {
    let running = start(app);
    let stats = running.stats.clone();
    wait_until("the input to be read", || stats.records_in() >= records).await;
    running.stop().await.expect("clean stop");
    stats
}

/// The partition of a `dev-<n>` device when input is written keyed by device:
/// `n % partitions`, so that each device's readings stay in one partition.
pub fn device_partition(device: &str, partitions: i32) -> i32 {
    let n: i32 = device.trim_start_matches("dev-").parse().unwrap();
    n % partitions
}

/// Writes `events` sensor readings of `devices` devices, 100 ms of event time
/// apart, keyed by device, into `topic`.
pub async fn produce_readings(
    stack: &DevStack,
    topic: &str,
    partitions: i32,
    events: u64,
    devices: u64,
) -> SensorWorkload {
    let workload = SensorWorkload {
        events,
        devices,
        step_ms: 100,
        ..Default::default()
    };
    let records = workload.readings().map(|r| {
        flumen_testkit::topics::TestRecord::new(&r.device, r.to_json())
            .to_partition(device_partition(&r.device, partitions))
    });
    stack.produce(topic, records).await.expect("produce");
    workload
}

/// The sensor workload's aggregations of `temp`: count, sum, min, max, mean.
pub fn temperature_aggregations() -> Vec<flumen::window::Aggregation> {
    use flumen::prelude::*;
    vec![
        count(),
        sum(col("temp")).alias("sum"),
        min(col("temp")).alias("min"),
        max(col("temp")).alias("max"),
        mean(col("temp")).alias("mean"),
    ]
}
