//! Bad input on the dev stack: malformed JSON, wrong type, missing field, null
//! key and oversized records under the fail, skip and dead-letter policies.

use crate::common::{builder, start, wait_until, DEADLINE};
use arrow::datatypes::{DataType, Field, Schema};
use flumen::format::BadInputKind;
use flumen::prelude::*;
use flumen_testkit::topics::TestRecord;
use flumen_testkit::{unique_name, DevStack};

const LIMIT: usize = 200;

/// The bad records, at offsets 10, 20, 30, 40 and 50 of a one-partition topic
/// of 60 records; every other record is good.
const BAD: [(i64, BadInputKind); 5] = [
    (10, BadInputKind::MalformedJson),
    (20, BadInputKind::WrongType),
    (30, BadInputKind::MissingField),
    (40, BadInputKind::NullKey),
    (50, BadInputKind::Oversized),
];

fn record(offset: i64) -> TestRecord {
    let good = TestRecord::new(
        "dev-1",
        format!(r#"{{"id":{offset},"device":"dev-1","temp":{offset}.5}}"#),
    );
    let value = match BAD.iter().find(|(o, _)| *o == offset).map(|(_, k)| *k) {
        None => return good.to_partition(0),
        Some(BadInputKind::MalformedJson) => format!(r#"{{"id":{offset},"device":"dev-1","temp":"#),
        Some(BadInputKind::WrongType) => {
            format!(r#"{{"id":{offset},"device":"dev-1","temp":"hot"}}"#)
        }
        Some(BadInputKind::MissingField) => format!(r#"{{"id":{offset},"temp":1.0}}"#),
        Some(BadInputKind::NullKey) => {
            return TestRecord { key: None, ..good }.to_partition(0);
        }
        Some(_) => format!(
            r#"{{"id":{offset},"device":"dev-1","temp":1.0,"pad":"{}"}}"#,
            "x".repeat(LIMIT)
        ),
    };
    TestRecord::new("dev-1", value).to_partition(0)
}

fn good_ids() -> Vec<i64> {
    (0..60)
        .filter(|o| !BAD.iter().any(|(b, _)| b == o))
        .collect()
}

async fn setup(stack: &DevStack) -> (String, String) {
    let (input, output) = (unique_name("in"), unique_name("out"));
    stack.create_topic(&input, 1).await.expect("input topic");
    stack.create_topic(&output, 1).await.expect("output topic");
    stack
        .produce(&input, (0..60).map(record))
        .await
        .expect("produce");
    (input, output)
}

fn topic(input: &str) -> Topic {
    Topic::json(input)
        .schema(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("device", DataType::Utf8, false),
            Field::new("temp", DataType::Float64, true),
        ]))
        .require_key()
        .max_record_bytes(LIMIT)
}

fn app(stack: &DevStack, group: &str, input: Topic, output: &str) -> Application {
    let app = builder(stack, group).build().expect("app");
    app.dataframe(input)
        .expect("frame")
        .select([col("id")])
        .to_topic(Topic::json(output));
    app
}

async fn ids(stack: &DevStack, topic: &str) -> Vec<i64> {
    let records = stack.read_all(topic, DEADLINE).await.expect("read");
    records
        .iter()
        .map(|r| r.json()["id"].as_i64().expect("id"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_counts_and_drops_each_kind() {
    let stack = DevStack::start().expect("dev stack");
    let (input, output) = setup(&stack).await;
    let running = start(app(
        &stack,
        &unique_name("g"),
        topic(&input).on_bad_input(BadInputPolicy::Skip),
        &output,
    ));
    let stats = running.stats.clone();
    wait_until("every good record read", || stats.records_in() >= 55).await;
    running.stop().await.expect("clean stop");
    for (_, kind) in BAD {
        assert_eq!(stats.bad_records(kind, "skip"), 1, "{kind} skipped once");
    }
    assert_eq!(stats.bad_records_total("skip"), 5);
    assert_eq!(ids(&stack, &output).await, good_ids());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_forwards_raw_records_with_error_headers() {
    let stack = DevStack::start().expect("dev stack");
    let (input, output) = setup(&stack).await;
    let dlq = unique_name("dlq");
    stack.create_topic(&dlq, 1).await.expect("dlq topic");
    let policy = BadInputPolicy::dead_letter(&dlq);
    let running = start(app(
        &stack,
        &unique_name("g"),
        topic(&input).on_bad_input(policy),
        &output,
    ));
    let stats = running.stats.clone();
    wait_until("every record handled", || {
        stats.records_in() >= 55 && stats.bad_records_total("dead_letter") >= 5
    })
    .await;
    running.stop().await.expect("clean stop");
    assert_eq!(stats.bad_records_total("dead_letter"), 5);
    assert_eq!(ids(&stack, &output).await, good_ids());

    let dead = stack.read_all(&dlq, DEADLINE).await.expect("read dlq");
    assert_eq!(dead.len(), 5);
    for (record, (offset, kind)) in dead.iter().zip(BAD) {
        let original = self::record(offset);
        assert_eq!(record.value, original.value, "raw value of offset {offset}");
        assert_eq!(record.key, original.key, "raw key of offset {offset}");
        assert_eq!(record.header("flumen.error.kind"), Some(kind.as_str()));
        assert_eq!(record.header("flumen.source.topic"), Some(input.as_str()));
        assert_eq!(record.header("flumen.source.partition"), Some("0"));
        assert_eq!(
            record.header("flumen.source.offset"),
            Some(offset.to_string().as_str())
        );
        let reason = record.header("flumen.error.reason").unwrap_or_default();
        assert!(!reason.is_empty(), "a reason for offset {offset}");
    }
    let reason = |i: usize| {
        dead[i]
            .header("flumen.error.reason")
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        reason(1).contains("field 'temp': expected Float64, found string \"hot\""),
        "{}",
        reason(1)
    );
    assert!(
        reason(2).contains("missing required field 'device'"),
        "{}",
        reason(2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_stops_at_each_kind_and_a_restart_resumes_there() {
    let stack = DevStack::start().expect("dev stack");
    let (input, output) = setup(&stack).await;
    let group = unique_name("g");
    let expected_text = [
        "malformed JSON",
        "field 'temp': expected Float64, found string \"hot\"",
        "missing required field 'device'",
        "record has no key",
        &format!("the limit is {LIMIT} bytes"),
    ];
    let mut skipped = Vec::new();
    for (step, (offset, kind)) in BAD.iter().enumerate() {
        // Run twice: the second run must fail on the same record again.
        for attempt in 0..2 {
            let mut t = topic(&input);
            for k in &skipped {
                t = t.on_bad_input_of(*k, BadInputPolicy::Skip);
            }
            let running = start(app(&stack, &group, t, &output));
            let err = running
                .finish()
                .await
                .expect_err("a bad record under `fail` stops the run");
            let text = err.to_string();
            let place = format!("bad input on topic '{input}' partition 0 offset {offset}: {kind}");
            assert!(
                text.contains(&place),
                "step {step} attempt {attempt}: {text}"
            );
            assert!(text.contains(expected_text[step]), "step {step}: {text}");
            assert!(
                matches!(err, flumen::Error::BadInput { offset: o, kind: k, .. } if o == *offset && k == *kind)
            );
        }
        // Everything before the bad record was written, exactly once.
        let expected: Vec<i64> = good_ids().into_iter().filter(|i| i < offset).collect();
        assert_eq!(
            ids(&stack, &output).await,
            expected,
            "output before offset {offset}"
        );
        skipped.push(*kind);
    }
    let mut t = topic(&input);
    for k in &skipped {
        t = t.on_bad_input_of(*k, BadInputPolicy::Skip);
    }
    let running = start(app(&stack, &group, t, &output));
    let stats = running.stats.clone();
    wait_until("the last good records", || stats.records_in() >= 9).await;

    running.stop().await.expect("clean stop");
    assert_eq!(
        ids(&stack, &output).await,
        good_ids(),
        "nothing lost, nothing twice"
    );
}
