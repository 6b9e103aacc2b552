//! A broker outage mid-stream: every connection to the broker is cut for
//! several seconds (the testkit's proxy in front of a broker of the test's
//! own), then restored. The pipeline retries, resumes, and its windows equal
//! an uninterrupted run's.

use std::time::{Duration, Instant};

use flumen::prelude::*;
use flumen_testkit::topics::TestRecord;
use flumen_testkit::{unique_name, DevStack};

use crate::common::{builder, device_partition, start, wait_until, DEADLINE};
use crate::window_restart::{
    assert_same_windows, frame, output_topic, windows_of, Windows, DEVICES, EVENTS, PARTITIONS,
};

/// How long the broker is unreachable.
const OUTAGE: Duration = Duration::from_secs(8);

fn readings() -> Vec<TestRecord> {
    flumen_testkit::sensor::SensorWorkload {
        events: EVENTS,
        devices: DEVICES,
        step_ms: 100,
        ..Default::default()
    }
    .readings()
    .map(|r| {
        TestRecord::new(&r.device, r.to_json())
            .to_partition(device_partition(&r.device, PARTITIONS))
    })
    .collect()
}

async fn outage(guarantee: ProcessingGuarantee) {
    let stack = DevStack::start_behind_proxy().expect("dev stack");
    let proxy = stack.proxy().expect("proxy");
    let input = unique_name("in");
    stack.create_topic(&input, PARTITIONS).await.expect("input");
    let records = readings();
    let half = records.len() / 2;
    stack
        .produce(&input, records[..half].to_vec())
        .await
        .expect("first half");

    let output = output_topic(&stack).await;
    let state = tempfile::tempdir().expect("state dir");
    let app = builder(&stack, &unique_name("outage"))
        .max_batch_records(200)
        .processing_guarantee(guarantee);
    let running = start(frame(app, state.path(), &input, &output));
    let stats = running.stats.clone();
    wait_until("a quarter of the input to be read", || {
        stats.records_in() >= EVENTS / 4
    })
    .await;
    // The second half is written while the pipeline runs, and the outage
    // falls in the middle of it (the writer waits for the broker, too).
    let writer = {
        let (brokers, input, rest) = (
            stack.brokers().to_string(),
            input.clone(),
            records[half..].to_vec(),
        );
        tokio::spawn(async move {
            DevStack::connect(brokers)
                .produce(&input, rest)
                .await
                .expect("second half")
        })
    };
    wait_until("some of the second half to be read", || {
        stats.records_in() >= half as u64 + 100
    })
    .await;

    proxy.cut();
    let cut_at = Instant::now();
    while cut_at.elapsed() < OUTAGE {
        assert!(
            !running.join.is_finished(),
            "the application gave up during the outage"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    proxy.restore();
    writer.await.expect("writer task");
    wait_until("all the input to be read", || stats.records_in() >= EVENTS).await;

    // The reference: an uninterrupted run over the same input.
    let reference_output = output_topic(&stack).await;
    let reference_state = tempfile::tempdir().expect("state dir");
    let reference = start(frame(
        builder(&stack, &unique_name("ref")).max_batch_records(200),
        reference_state.path(),
        &input,
        &reference_output,
    ));
    let reference_stats = reference.stats.clone();
    wait_until("the reference run to read the input", || {
        reference_stats.records_in() >= EVENTS
    })
    .await;
    reference.stop().await.expect("reference run");
    let (expected, _) = read(&stack, &reference_output, guarantee, 0).await;
    assert!(expected.len() > 100, "{} windows", expected.len());

    let (actual, records) = read(&stack, &output, guarantee, expected.len()).await;
    running.stop().await.expect("the run survives the outage");
    assert_same_windows(&actual, &expected);
    if guarantee == ProcessingGuarantee::ExactlyOnce {
        assert_eq!(
            records,
            expected.len(),
            "each window committed exactly once"
        );
    }
}

/// The windows in `output` once at least `expected` are there.
async fn read(
    stack: &DevStack,
    output: &str,
    guarantee: ProcessingGuarantee,
    expected: usize,
) -> (Windows, usize) {
    let started = Instant::now();
    loop {
        let records = match guarantee {
            ProcessingGuarantee::ExactlyOnce => stack.read_committed(output, DEADLINE).await,
            _ => stack.read_all(output, DEADLINE).await,
        }
        .expect("read output");
        let (windows, count) = windows_of(&records);
        if windows.len() >= expected.max(1) {
            return (windows, count);
        }
        assert!(
            started.elapsed() < DEADLINE,
            "{} of {expected} windows",
            windows.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_mid_stream_loses_nothing() {
    outage(ProcessingGuarantee::AtLeastOnce).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_mid_stream_loses_nothing_in_exactly_once_mode() {
    outage(ProcessingGuarantee::ExactlyOnce).await;
}

/// A broker outage longer than the producer's `message.timeout.ms`: deliveries
/// fail and the run stops with the error, committing nothing past what was
/// delivered; a restart on the same state after the broker is back completes
/// the windows, equal to an uninterrupted run's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_longer_than_the_delivery_timeout_stops_the_run_and_a_restart_completes_it() {
    let stack = DevStack::start_behind_proxy().expect("dev stack");
    let proxy = stack.proxy().expect("proxy");
    let input = unique_name("in");
    stack.create_topic(&input, PARTITIONS).await.expect("input");
    stack.produce(&input, readings()).await.expect("input");
    let output = output_topic(&stack).await;
    let state = tempfile::tempdir().expect("state dir");
    let group = unique_name("outage-long");
    let app = || {
        builder(&stack, &group)
            .max_batch_records(50)
            .producer_config("message.timeout.ms", "3000")
    };
    let running = start(frame(app(), state.path(), &input, &output));
    let stats = running.stats.clone();
    wait_until("some input to be read", || {
        stats.records_in() >= EVENTS / 10
    })
    .await;
    proxy.cut();
    let error = running.finish().await.expect_err("deliveries time out");
    eprintln!("the run stopped with: {error}");
    proxy.restore();

    let rerun = start(frame(app(), state.path(), &input, &output));
    let reference_output = output_topic(&stack).await;
    let reference_state = tempfile::tempdir().expect("state dir");
    let reference = start(frame(
        builder(&stack, &unique_name("ref")).max_batch_records(200),
        reference_state.path(),
        &input,
        &reference_output,
    ));
    let reference_stats = reference.stats.clone();
    wait_until("the reference run to read the input", || {
        reference_stats.records_in() >= EVENTS
    })
    .await;
    reference.stop().await.expect("reference run");
    let (expected, _) = read(
        &stack,
        &reference_output,
        ProcessingGuarantee::AtLeastOnce,
        0,
    )
    .await;
    let (actual, _) = read(
        &stack,
        &output,
        ProcessingGuarantee::AtLeastOnce,
        expected.len(),
    )
    .await;
    rerun.stop().await.expect("the restarted run");
    assert_same_windows(&actual, &expected);
}
