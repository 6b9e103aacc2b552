//! `lookup(CassandraLookup)` on real Kafka and Cassandra: every reading is
//! enriched with its device's row as a join computed here says, devices
//! missing from the table get nulls, and an update to the table shows once
//! the cache's time to live has passed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::common::{builder, start, wait_until, DEADLINE};
use arrow::datatypes::{DataType, Field, Schema};
use flumen::lookup::{LookupCache, OnMiss, RetryMisses};
use flumen::prelude::*;
use flumen_cassandra::CassandraLookup;
use flumen_testkit::topics::{ReadRecord, TestRecord};
use flumen_testkit::{unique_name, DevCassandra, DevStack, OutageProxy};
use scylla::client::session::Session;
use serde_json::Value;

/// Devices of the tests.
const DEVICES: usize = 300;
/// Devices `dev-{n}` with `n % MISSING_EVERY == 0` are not in the table.
const MISSING_EVERY: usize = 50;
const TTL: Duration = Duration::from_secs(2);

/// `devices (device_id text PRIMARY KEY, site text, max_temp double)` with
/// every device but the missing ones; returns the table and what it holds.
async fn devices_table(
    session: &Session,
    keyspace: &str,
    devices: usize,
) -> (String, BTreeMap<String, Value>) {
    let table = format!("{keyspace}.devices");
    let create =
        format!("CREATE TABLE {table} (device_id text PRIMARY KEY, site text, max_temp double)");
    session
        .query_unpaged(create, &[])
        .await
        .expect("create table");
    let mut expected = BTreeMap::new();
    for n in (0..devices).filter(|n| n % MISSING_EVERY != 0) {
        let device = format!("dev-{n}");
        let site = format!("site-{}", n % 7);
        upsert(session, &table, &device, &site, n as f64).await;
        expected.insert(
            device,
            serde_json::json!({"site": site, "max_temp": n as f64}),
        );
    }
    (table, expected)
}

/// A dev stack, a Cassandra with the devices table of [`DEVICES`]
/// devices, and what the table holds.
struct Setup {
    stack: DevStack,
    cassandra: DevCassandra,
    session: Session,
    table: String,
    devices: BTreeMap<String, Value>,
}

async fn setup() -> Setup {
    let stack = DevStack::start().expect("dev stack");
    let cassandra = DevCassandra::start().expect("cassandra");
    let session = cassandra.session().await.expect("session");
    let keyspace = cassandra
        .create_keyspace(&session, "lookup")
        .await
        .expect("keyspace");
    let (table, devices) = devices_table(&session, &keyspace, DEVICES).await;
    Setup {
        stack,
        cassandra,
        session,
        table,
        devices,
    }
}

async fn upsert(session: &Session, table: &str, device: &str, site: &str, max_temp: f64) {
    let insert = format!("INSERT INTO {table} (device_id, site, max_temp) VALUES (?, ?, ?)");
    session
        .query_unpaged(insert, (device, site, max_temp))
        .await
        .expect("insert");
}

/// One reading of every device, tagged with `wave`.
fn readings(devices: usize, wave: u32) -> Vec<TestRecord> {
    (0..devices)
        .map(|n| {
            let device = format!("dev-{n}");
            let value = format!(r#"{{"device":"{device}","wave":{wave},"temp":{n}}}"#);
            TestRecord::new(&device, value)
        })
        .collect()
}

/// (devices, waves of one reading per device): the acceptance scale,
/// 10,000 x 100 (1,000,000 readings; 110 s in a debug build here), or with
/// `FLUMEN_LOOKUP_SMALL=1` 300 x 2 for a quick run.
fn scale() -> (usize, u32) {
    match std::env::var_os("FLUMEN_LOOKUP_SMALL") {
        Some(_) => (DEVICES, 2),
        None => (10_000, 100),
    }
}

/// `input` -> `lookup` -> `output`.
fn pipeline(app: &Application, lookup: CassandraLookup, (input, output): (&str, &str)) {
    let schema = Schema::new(vec![
        Field::new("device", DataType::Utf8, false),
        Field::new("wave", DataType::Int64, false),
        Field::new("temp", DataType::Float64, false),
    ]);
    let lookup = lookup
        .on([(col("device"), "device_id")])
        .columns(["site", "max_temp"]);
    app.dataframe(Topic::json(input).schema(schema))
        .expect("frame")
        .lookup(lookup)
        .to_topic(Topic::json(output));
}

/// The enrichment of each (device, wave) in `output`.
async fn enriched(stack: &DevStack, output: &str) -> BTreeMap<(String, i64), Value> {
    let records = stack.read_all(output, DEADLINE).await.expect("read output");
    enrichment_of(records)
}

/// The enrichment of each (device, wave) in `records`; each once.
fn enrichment_of(records: Vec<ReadRecord>) -> BTreeMap<(String, i64), Value> {
    let mut seen = BTreeMap::new();
    for record in records {
        let json = record.json();
        let device = json["device"].as_str().unwrap_or_default().to_string();
        let wave = json["wave"].as_i64().unwrap_or_default();
        let looked_up = serde_json::json!({"site": json["site"], "max_temp": json["max_temp"]});
        let previous = seen.insert((device.clone(), wave), looked_up);
        assert!(previous.is_none(), "{device} wave {wave} twice");
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_carry_their_devices_row_and_updates_show_after_the_ttl() {
    let stack = DevStack::start().expect("dev stack");
    let cassandra = DevCassandra::start().expect("cassandra");
    let session = cassandra.session().await.expect("session");
    let keyspace = cassandra
        .create_keyspace(&session, "lookup")
        .await
        .expect("keyspace");
    let (devices, waves) = scale();
    let (table, mut expected) = devices_table(&session, &keyspace, devices).await;
    let (input, output) = (unique_name("readings"), unique_name("enriched"));
    stack.create_topic(&input, 2).await.expect("input");
    stack.create_topic(&output, 2).await.expect("output");

    let app = builder(&stack, &unique_name("g")).build().expect("app");
    let lookup = CassandraLookup::table(&table)
        .nodes(cassandra.nodes())
        .cache(LookupCache::default().ttl(TTL).miss_ttl(TTL));
    pipeline(&app, lookup, (&input, &output));
    let running = start(app);
    stack
        .produce(&input, readings(devices, 1))
        .await
        .expect("produce");
    let stats = running.stats.clone();
    stack
        .wait_for_count(&output, devices, DEADLINE)
        .await
        .expect("wave 1 enriched");
    // Devices 1..10 move to another site; device 0, missing so far, arrives.
    for n in 0..10 {
        upsert(&session, &table, &format!("dev-{n}"), "moved", -1.0).await;
        let moved = serde_json::json!({"site": "moved", "max_temp": -1.0});
        expected.insert(format!("dev-{n}"), moved);
    }
    let updated = Instant::now();
    wait_until("the cache's time to live to pass", || {
        updated.elapsed() > TTL
    })
    .await;
    for wave in 2..=waves {
        let records = readings(devices, wave);
        stack.produce(&input, records).await.expect("produce");
    }
    let total = devices as u64 * u64::from(waves);
    wait_until("every wave to be read", || stats.records_in() >= total).await;
    running.stop().await.expect("run");

    let seen = enriched(&stack, &output).await;
    let nulls = serde_json::json!({"site": null, "max_temp": null});
    for ((device, wave), looked_up) in &seen {
        let n: usize = device.trim_start_matches("dev-").parse().unwrap_or(0);
        let now = expected.get(device).unwrap_or(&nulls);
        // Before the update only the devices it did not touch are known.
        if *wave > 1 || n >= 10 {
            assert_eq!(looked_up, now, "{device} wave {wave}");
        }
    }
    let missing = seen.values().filter(|v| **v == nulls).count();
    let missing_devices = devices.div_ceil(MISSING_EVERY);
    let expected_missing = missing_devices * waves as usize - (waves as usize - 1);
    assert_eq!(
        missing, expected_missing,
        "misses; dev-0 is found after wave 1"
    );
    assert_eq!(seen.len() as u64, total, "every reading once");
}

/// Cassandra unreachable for five seconds mid-stream (every connection cut
/// by the fault proxy, new ones refused), with no cache: the batches wait
/// and retry, nothing is lost, no reading is enriched with nulls, and the
/// run resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_cassandra_stalls_the_stream_without_wrong_enrichment() {
    let Setup {
        stack,
        cassandra,
        session: _,
        table,
        devices: expected,
    } = setup().await;
    let node = cassandra.nodes().parse().expect("node address");
    let proxy = OutageProxy::start(node).expect("proxy");
    let (input, output) = (unique_name("readings"), unique_name("enriched"));
    stack.create_topic(&input, 2).await.expect("input");
    stack.create_topic(&output, 2).await.expect("output");
    for wave in 1..=6 {
        stack
            .produce(&input, readings(DEVICES, wave))
            .await
            .expect("produce");
    }
    let app = builder(&stack, &unique_name("g"))
        .max_batch_records(50)
        .build()
        .expect("app");
    let lookup = CassandraLookup::table(&table)
        .nodes(proxy.address().to_string())
        .cache(LookupCache::disabled())
        .retries(30)
        .request_timeout(Duration::from_secs(1));
    pipeline(&app, lookup, (&input, &output));
    let running = start(app);
    let stats = running.stats.clone();
    let total = 6 * DEVICES as u64;
    wait_until("a third of the input", || stats.records_in() >= total / 3).await;
    proxy.cut();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let during = stats.records_in();
    proxy.restore();
    wait_until("the whole input", || stats.records_in() >= total).await;
    running.stop().await.expect("run");
    assert!(
        during < total,
        "the outage stalled the stream ({during} of {total} read)"
    );

    let seen = enriched(&stack, &output).await;
    let nulls = serde_json::json!({"site": null, "max_temp": null});
    for ((device, wave), looked_up) in &seen {
        let right = expected.get(device).unwrap_or(&nulls);
        assert_eq!(looked_up, right, "{device} wave {wave}");
    }
    assert_eq!(seen.len(), total as usize, "every reading once");
}

/// Exactly-once: a run enriches and commits wave 1 and is killed; the next
/// run enriches wave 2 and is killed before it commits; then every device
/// moves. The third run, on an empty state directory (as another instance
/// taking over would be), replays wave 2 with the rows the killed run gave
/// it, read back from the lookup's replay log from the position the first
/// run committed, and looks wave 3 up afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_wave_keeps_the_enrichment_the_killed_run_gave_it() {
    let Setup {
        stack,
        cassandra,
        session,
        table,
        devices: before,
    } = setup().await;
    let (input, output) = (unique_name("readings"), unique_name("enriched"));
    stack.create_topic(&input, 2).await.expect("input");
    stack.create_topic(&output, 2).await.expect("output");
    let group = unique_name("g");
    let state = tempfile::tempdir().expect("state dir");
    let run = |state: &std::path::Path, commit_interval: Duration| {
        let app = builder(&stack, &group)
            .processing_guarantee(ProcessingGuarantee::ExactlyOnce)
            .commit_interval(commit_interval)
            .state_dir(state)
            .build()
            .expect("app");
        let lookup = CassandraLookup::table(&table).nodes(cassandra.nodes());
        pipeline(&app, lookup, (&input, &output));
        start(app)
    };
    let wave = |n: u32| stack.produce(&input, readings(DEVICES, n));

    let commits = run(state.path(), Duration::from_millis(100));
    wave(1).await.expect("produce");
    committed_records(&stack, &output, DEVICES).await;
    commits.stop.kill();
    let _ = commits.finish().await;
    let never_commits = run(state.path(), Duration::from_secs(3_600));
    wave(2).await.expect("produce");
    stack
        .wait_for_count(&output, 2 * DEVICES, DEADLINE)
        .await
        .expect("wave 2 enriched, not committed");
    never_commits.stop.kill();
    let _ = never_commits.finish().await;
    let mut after = BTreeMap::new();
    for device in before.keys() {
        upsert(&session, &table, device, "moved", -1.0).await;
        let moved = serde_json::json!({"site": "moved", "max_temp": -1.0});
        after.insert(device.clone(), moved);
    }

    let elsewhere = tempfile::tempdir().expect("state dir");
    let running = run(elsewhere.path(), Duration::from_millis(100));
    wave(3).await.expect("produce");
    let committed = committed_records(&stack, &output, 3 * DEVICES).await;
    running.stop().await.expect("run");

    let seen = enrichment_of(committed);
    let nulls = serde_json::json!({"site": null, "max_temp": null});
    for ((device, wave), looked_up) in &seen {
        let rows = if *wave < 3 { &before } else { &after };
        let expected = rows.get(device).unwrap_or(&nulls);
        assert_eq!(looked_up, expected, "{device} wave {wave}");
    }
    assert_eq!(seen.len(), 3 * DEVICES, "every reading once");
}

/// The records of `output` a `read_committed` consumer sees, once there are
/// `count`.
async fn committed_records(stack: &DevStack, output: &str, count: usize) -> Vec<ReadRecord> {
    let started = Instant::now();
    loop {
        let records = stack
            .read_committed(output, DEADLINE)
            .await
            .expect("read committed");
        if records.len() >= count {
            return records;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "only {} of {count} records committed after {DEADLINE:?}",
            records.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `OnMiss::DeadLetter`: readings of devices missing from the table go,
/// unchanged, to the dead-letter topic with the reason in their headers;
/// the others are enriched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_of_missing_devices_go_to_the_dead_letter_topic() {
    let Setup {
        stack,
        cassandra,
        session: _,
        table,
        devices: expected,
    } = setup().await;
    let (input, output, misses) = (
        unique_name("readings"),
        unique_name("enriched"),
        unique_name("misses"),
    );
    for topic in [&input, &output, &misses] {
        stack.create_topic(topic, 2).await.expect("topic");
    }
    let app = builder(&stack, &unique_name("g")).build().expect("app");
    let lookup = CassandraLookup::table(&table)
        .nodes(cassandra.nodes())
        .on_miss(OnMiss::DeadLetter(misses.clone()));
    pipeline(&app, lookup, (&input, &output));
    let running = start(app);
    stack
        .produce(&input, readings(DEVICES, 1))
        .await
        .expect("produce");
    let missing = DEVICES - expected.len();
    stack
        .wait_for_count(&misses, missing, DEADLINE)
        .await
        .expect("dead letters");
    stack
        .wait_for_count(&output, expected.len(), DEADLINE)
        .await
        .expect("enriched");
    running.stop().await.expect("run");

    let seen = enriched(&stack, &output).await;
    let found: Vec<&String> = seen.keys().map(|(device, _)| device).collect();
    assert_eq!(found, expected.keys().collect::<Vec<_>>(), "found devices");
    let letters = stack.read_all(&misses, DEADLINE).await.expect("read");
    let devices = dead_lettered_devices(&letters, &input, "");
    assert_eq!(
        devices,
        absent(&expected),
        "each missing device's reading once"
    );
}

/// The devices of lookup-miss dead letters from `input`, sorted; each
/// letter's reason contains `reason`.
fn dead_lettered_devices(letters: &[ReadRecord], input: &str, reason: &str) -> Vec<String> {
    let mut devices: Vec<String> = letters
        .iter()
        .map(|l| {
            assert_eq!(l.header("flumen.error.kind"), Some("lookup-miss"));
            let why = l.header("flumen.error.reason").unwrap_or_default();
            assert!(why.contains(reason), "{why}");
            assert_eq!(l.header("flumen.source.topic"), Some(input));
            l.json()["device"].as_str().unwrap_or_default().to_string()
        })
        .collect();
    devices.sort();
    devices
}

/// The devices of the tests that are not in `table`, sorted.
fn absent(table: &BTreeMap<String, Value>) -> Vec<String> {
    let mut absent: Vec<String> = (0..DEVICES)
        .map(|n| format!("dev-{n}"))
        .filter(|d| !table.contains_key(d))
        .collect();
    absent.sort();
    absent
}

/// `LookupCache::preload`: the table is scanned at start (readings are
/// enriched as the join says, missing devices get nulls) and every refresh:
/// an update shows once a probe reading carries it, and then in every
/// reading.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preloaded_table_enriches_readings_and_refreshes() {
    let Setup {
        stack,
        cassandra,
        session,
        table,
        devices: mut expected,
    } = setup().await;
    let (input, output) = (unique_name("readings"), unique_name("enriched"));
    stack.create_topic(&input, 2).await.expect("input");
    stack.create_topic(&output, 2).await.expect("output");
    let app = builder(&stack, &unique_name("g")).build().expect("app");
    let lookup = CassandraLookup::table(&table)
        .nodes(cassandra.nodes())
        .cache(LookupCache::default().preload(Duration::from_millis(500)));
    pipeline(&app, lookup, (&input, &output));
    let running = start(app);
    stack
        .produce(&input, readings(DEVICES, 1))
        .await
        .expect("produce");
    stack
        .wait_for_count(&output, DEVICES, DEADLINE)
        .await
        .expect("wave 1");
    upsert(&session, &table, "dev-1", "moved", -1.0).await;
    let moved = serde_json::json!({"site": "moved", "max_temp": -1.0});
    expected.insert("dev-1".into(), moved.clone());
    // Probe readings of dev-1 (waves 100, 101, ...) until one is moved.
    let started = Instant::now();
    for probe in 100.. {
        let reading =
            r#"{"device":"dev-1","wave":PROBE,"temp":1}"#.replace("PROBE", &probe.to_string());
        let record = TestRecord::new("dev-1", reading);
        stack.produce(&input, vec![record]).await.expect("probe");
        let count = DEVICES + (probe - 99) as usize;
        stack
            .wait_for_count(&output, count, DEADLINE)
            .await
            .expect("probe enriched");
        let seen = enriched(&stack, &output).await;
        if seen.get(&("dev-1".to_string(), probe)) == Some(&moved) {
            break;
        }
        assert!(started.elapsed() < DEADLINE, "the update never showed");
    }
    let before = enriched(&stack, &output).await.len();
    stack
        .produce(&input, readings(DEVICES, 2))
        .await
        .expect("produce");
    stack
        .wait_for_count(&output, before + DEVICES, DEADLINE)
        .await
        .expect("wave 2");
    running.stop().await.expect("run");

    let seen = enriched(&stack, &output).await;
    let nulls = serde_json::json!({"site": null, "max_temp": null});
    for ((device, wave), looked_up) in seen.iter().filter(|((_, w), _)| *w <= 2) {
        let n: usize = device.trim_start_matches("dev-").parse().unwrap_or(0);
        let now = expected.get(device).unwrap_or(&nulls);
        if *wave == 2 || n != 1 {
            assert_eq!(looked_up, now, "{device} wave {wave}");
        }
    }
}

/// `OnMiss::Retry`, exactly-once: readings of devices missing from the
/// table are held (the others go on). The run stops; two of the devices
/// arrive in the table; a new run on an empty state directory restores the
/// held readings from the lookup's changelog and, with no new input, finds
/// those two and gives them their rows. The other missing devices' readings
/// go to the dead-letter topic, unchanged, when their time is up. Every
/// reading comes out once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_readings_come_out_when_their_device_arrives_also_after_a_restart() {
    let Setup {
        stack,
        cassandra,
        session,
        table,
        devices: mut expected,
    } = setup().await;
    let (input, output, misses) = (
        unique_name("readings"),
        unique_name("enriched"),
        unique_name("misses"),
    );
    for topic in [&input, &output, &misses] {
        stack.create_topic(topic, 2).await.expect("topic");
    }
    let group = unique_name("g");
    let within = Duration::from_secs(30);
    let run = |state: &std::path::Path| {
        let app = builder(&stack, &group)
            .processing_guarantee(ProcessingGuarantee::ExactlyOnce)
            .state_dir(state)
            .build()
            .expect("app");
        let retry = RetryMisses::within(within)
            .every(Duration::from_millis(200))
            .then(OnMiss::DeadLetter(misses.clone()));
        let lookup = CassandraLookup::table(&table)
            .nodes(cassandra.nodes())
            .on_miss(OnMiss::Retry(retry));
        pipeline(&app, lookup, (&input, &output));
        start(app)
    };
    let first_state = tempfile::tempdir().expect("state dir");
    let first = run(first_state.path());
    let produced = Instant::now();
    stack
        .produce(&input, readings(DEVICES, 1))
        .await
        .expect("produce");
    committed_records(&stack, &output, expected.len()).await;
    first.stop().await.expect("first run");
    let arrived = ["dev-0", "dev-50"];
    for device in arrived {
        upsert(&session, &table, device, "late", 0.5).await;
        expected.insert(
            device.into(),
            serde_json::json!({"site": "late", "max_temp": 0.5}),
        );
    }

    let second_state = tempfile::tempdir().expect("state dir");
    let second = run(second_state.path());
    let committed = committed_records(&stack, &output, expected.len()).await;
    let held_for = produced.elapsed();
    let left = DEVICES - expected.len();
    let letters = committed_records(&stack, &misses, left).await;
    second.stop().await.expect("second run");
    assert!(
        held_for < within,
        "the arrived devices came out after {held_for:?}, not before their time was up"
    );

    let seen = enrichment_of(committed);
    let want: BTreeMap<(String, i64), Value> = expected
        .iter()
        .map(|(device, row)| ((device.clone(), 1), row.clone()))
        .collect();
    assert_eq!(
        seen, want,
        "every found reading once, the held ones with their new rows"
    );
    let unknown = dead_lettered_devices(&letters, &input, "looked up again");
    assert_eq!(unknown, absent(&expected), "each device never found, once");
}
