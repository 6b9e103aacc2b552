//! `CassandraSource` on real Cassandra and Kafka: a snapshot of a table into a
//! topic (every row once, in a `read_committed` read), change capture by write
//! time, resuming after a crash mid-snapshot, and a pipeline over the source.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use crate::common::{builder, start, wait_until, DEADLINE};
use flumen::prelude::*;
use flumen_cassandra::{Capture, CassandraSource};
use flumen_testkit::{unique_name, DevCassandra, DevStack, ReadRecord};
use scylla::client::session::Session;
use tokio::sync::oneshot;

/// A keyspace of its own with `readings (device text, ts timestamp, temp
/// double, PRIMARY KEY (device, ts))` holding `rows` rows over 50 devices.
async fn readings_table(cassandra: &DevCassandra, rows: i64) -> (Session, String) {
    let session = cassandra.session().await.expect("session");
    let keyspace = cassandra
        .create_keyspace(&session, "src")
        .await
        .expect("keyspace");
    let table = format!("{keyspace}.readings");
    session
        .query_unpaged(
            format!(
                "CREATE TABLE {table} (device text, ts timestamp, temp double, \
                 PRIMARY KEY (device, ts))"
            ),
            &[],
        )
        .await
        .expect("create table");
    insert_readings(&session, &table, 0..rows, 20.0).await;
    (session, table)
}

/// Upserts readings `n` of `range` (device `dev-{n % 50}`, ts `1000 + n`) with temp `temp`.
async fn insert_readings(session: &Session, table: &str, range: std::ops::Range<i64>, temp: f64) {
    let insert = session
        .prepare(format!(
            "INSERT INTO {table} (device, ts, temp) VALUES (?, ?, ?)"
        ))
        .await
        .expect("prepare");
    let writes = range.map(|n| {
        let (insert, session) = (&insert, session);
        async move {
            let ts = scylla::value::CqlTimestamp(1_000 + n);
            session
                .execute_unpaged(insert, (format!("dev-{}", n % 50), ts, temp))
                .await
                .map(drop)
        }
    });
    let results: Vec<_> = futures::stream::iter(writes)
        .buffer_unordered(64)
        .collect()
        .await;
    for result in results {
        result.expect("insert");
    }
}

use futures::StreamExt;

/// The rows in the source's topic as a `read_committed` consumer sees them,
/// without the heartbeats (which every consumer but flumen skips).
async fn published(stack: &DevStack, topic: &str) -> Vec<ReadRecord> {
    let records = stack.read_committed(topic, DEADLINE).await.expect("read");
    records
        .into_iter()
        .filter(|r| r.header(flumen_kafka::HEARTBEAT_HEADER).is_none())
        .collect()
}

fn now_ms() -> i64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    since.map_or(0, |d| d.as_millis() as i64)
}

/// `(device, ts) -> temp` of every record, failing on a duplicate.
fn rows_once(records: &[ReadRecord]) -> BTreeMap<(String, i64), f64> {
    let mut rows = BTreeMap::new();
    for record in records {
        let json = record.json();
        let key = (
            json["device"].as_str().expect("device").to_string(),
            json["ts"].as_i64().expect("ts"),
        );
        let temp = json["temp"].as_f64().expect("temp");
        assert!(
            rows.insert(key.clone(), temp).is_none(),
            "{key:?} published twice"
        );
    }
    rows
}

/// A publishing source in a task, stopped through the returned sender.
fn publish(
    source: CassandraSource,
    stack: &DevStack,
    group: &str,
) -> (
    oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), flumen_cassandra::CassandraError>>,
) {
    let (stop, stopped) = oneshot::channel::<()>();
    let (brokers, group) = (stack.brokers().to_string(), group.to_string());
    let task = tokio::spawn(async move {
        source
            .publish(&brokers, &group, async {
                let _ = stopped.await;
            })
            .await
    });
    (stop, task)
}

fn source(cassandra: &DevCassandra, table: &str) -> CassandraSource {
    CassandraSource::table(table)
        .nodes(cassandra.nodes())
        .splits(16)
        .concurrency(4)
        .page_size(200)
        .partitions(4)
        .replication_factor(1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_publishes_every_row_once_and_capture_follows_inserts_and_updates_not_deletes() {
    let stack = DevStack::start().expect("dev stack");
    let cassandra = DevCassandra::start().expect("cassandra");
    let (session, table) = readings_table(&cassandra, 3_000).await;
    let group = unique_name("src");
    let source = source(&cassandra, &table)
        .capture(Capture::Writetime)
        .poll_interval(Duration::from_millis(300))
        .safety_lag(Duration::from_millis(100));
    let (stats, topic) = (source.stats(), source.topic_for(&group));
    let (stop, task) = publish(source, &stack, &group);
    wait_until("the snapshot", || stats.passes_done() >= 1).await;
    let snapshot = rows_once(&published(&stack, &topic).await);
    assert_eq!(snapshot.len(), 3_000, "every row once");
    assert!(snapshot.values().all(|&t| t == 20.0));

    // Updates of 100 existing rows, 100 new rows, one delete.
    insert_readings(&session, &table, 2_900..3_100, 30.0).await;
    session
        .query_unpaged(
            format!("DELETE FROM {table} WHERE device = 'dev-0' AND ts = 1000"),
            &[],
        )
        .await
        .expect("delete");
    let passes = stats.passes_done();
    wait_until("two more capture passes", || {
        stats.passes_done() >= passes + 2
    })
    .await;
    stop.send(()).ok();
    task.await.expect("task").expect("publish");

    let records = published(&stack, &topic).await;
    assert_eq!(
        records.len(),
        3_000 + 200,
        "the snapshot, 100 updates, 100 inserts"
    );
    let mut latest: BTreeMap<(String, i64), f64> = BTreeMap::new();
    for record in &records {
        // Per partition in offset order: the update comes after the snapshot's row.
        let json = record.json();
        let key = (
            json["device"].as_str().expect("device").to_string(),
            json["ts"].as_i64().expect("ts"),
        );
        latest.insert(key, json["temp"].as_f64().expect("temp"));
        assert_eq!(record.header("flumen.source.table"), Some(table.as_str()));
    }
    for n in 2_900..3_100 {
        let key = (format!("dev-{}", n % 50), 1_000 + n);
        assert_eq!(
            latest.get(&key),
            Some(&30.0),
            "{key:?}: the update arrives, last"
        );
    }
    // What write-time capture misses: the deleted row is still the latest record of its key.
    assert_eq!(latest.get(&("dev-0".to_string(), 1_000)), Some(&20.0));
}

/// Rows whose write time is past the snapshot's upper bound (written within
/// the safety lag before it starts; here stamped 6 s ahead) are left to the
/// change capture, so each arrives once. Without the cut the snapshot and
/// the first capture pass both published them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_written_just_before_the_snapshot_arrive_once() {
    let stack = DevStack::start().expect("dev stack");
    let cassandra = DevCassandra::start().expect("cassandra");
    let (session, table) = readings_table(&cassandra, 500).await;
    let written_ms = now_ms() + 6_000;
    for n in 500..600 {
        session
            .query_unpaged(
                format!(
                    "INSERT INTO {table} (device, ts, temp) VALUES ('dev-{}', {}, 20.0) \
                     USING TIMESTAMP {}",
                    n % 50,
                    1_000 + n,
                    written_ms * 1000
                ),
                &[],
            )
            .await
            .expect("insert");
    }
    let group = unique_name("src");
    let source = source(&cassandra, &table)
        .capture(Capture::Writetime)
        .poll_interval(Duration::from_millis(300))
        .safety_lag(Duration::from_millis(300));
    let (stats, topic) = (source.stats(), source.topic_for(&group));
    let (stop, task) = publish(source, &stack, &group);
    wait_until("the snapshot", || stats.passes_done() >= 1).await;
    // Until a capture pass has covered the time of the writes.
    wait_until("capture past the writes", || {
        stats
            .capture_lag_ms()
            .is_some_and(|lag| now_ms() - lag > written_ms + 100)
    })
    .await;
    let passes = stats.passes_done();
    wait_until("that pass to end", || stats.passes_done() > passes).await;
    stop.send(()).ok();
    task.await.expect("task").expect("publish");
    let rows = rows_once(&published(&stack, &topic).await);
    assert_eq!(rows.len(), 600, "every row, each once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_stopped_abruptly_mid_snapshot_resumes_without_gaps_or_duplicates() {
    let stack = DevStack::start().expect("dev stack");
    let cassandra = DevCassandra::start().expect("cassandra");
    let (_session, table) = readings_table(&cassandra, 6_000).await;
    let group = unique_name("src");
    let slow = source(&cassandra, &table)
        .page_size(50)
        .max_rows_per_second(3_000);
    let (stats, topic) = (slow.stats(), slow.topic_for(&group));
    let (_stop, task) = publish(slow, &stack, &group);
    wait_until("a third of the snapshot", || stats.rows() >= 2_000).await;
    // A crash: the task is dropped mid-transaction; nothing is finished.
    task.abort();
    let _ = task.await;

    let again = source(&cassandra, &table);
    let again_stats = again.stats();
    let (_stop, task) = publish(again, &stack, &group);
    tokio::time::timeout(DEADLINE, task)
        .await
        .expect("the snapshot ends")
        .expect("task")
        .expect("publish");
    assert!(
        again_stats.rows() < 6_000,
        "the second run resumed ({} rows) rather than starting over",
        again_stats.rows()
    );
    let rows = rows_once(&published(&stack, &topic).await);
    assert_eq!(rows.len(), 6_000, "every row exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_reads_a_table_through_its_source() {
    let stack = DevStack::start().expect("dev stack");
    let cassandra = DevCassandra::start().expect("cassandra");
    let (_session, table) = readings_table(&cassandra, 1_000).await;
    let group = unique_name("src-app");
    let output = unique_name("per-device");
    stack.create_topic(&output, 1).await.expect("output topic");
    let app = builder(&stack, &group).build().expect("app");
    let readings = app
        .dataframe(source(&cassandra, &table))
        .expect("source frame");
    readings
        .filter(col("ts").lt(lit(1_100i64)))
        .select([col("device"), col("ts")])
        .to_topic(Topic::json(&output));
    let running = start(app);
    let stats = Arc::clone(&running.stats);
    wait_until("the filtered rows", || stats.records_out() >= 100).await;
    running.stop().await.expect("run");
    let records = stack.read_all(&output, DEADLINE).await.expect("read");
    let seen: BTreeSet<i64> = records
        .iter()
        .map(|r| r.json()["ts"].as_i64().expect("ts"))
        .collect();
    assert_eq!(seen, (1_000..1_100).collect());
}

/// Heartbeats: once the table is quiet, the capture passes' heartbeats move
/// the frame's event time on, so `final_()` windows over the last writes
/// close although no later row ever comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_table_still_closes_final_windows() {
    let stack = DevStack::start().expect("dev stack");
    let cassandra = DevCassandra::start().expect("cassandra");
    let (_session, table) = readings_table(&cassandra, 200).await;
    let group = unique_name("src-quiet");
    let output = unique_name("closed");
    stack.create_topic(&output, 1).await.expect("output topic");
    let app = builder(&stack, &group).build().expect("app");
    let quiet = source(&cassandra, &table)
        .capture(Capture::Writetime)
        .poll_interval(Duration::from_millis(500))
        .safety_lag(Duration::from_millis(200));
    // Event time is the write time (the message timestamp), 1 s windows. A
    // snapshot arrives in token order: the grace keeps the windows open to
    // rows written earlier than rows already read.
    app.dataframe(quiet)
        .expect("source frame")
        .tumbling_window(Duration::from_secs(1))
        .grace(Duration::from_secs(3))
        .agg([count()])
        .final_()
        .to_topic(Topic::json(&output));
    let running = start(app);
    let started = std::time::Instant::now();
    let (counted, keys) = loop {
        let records = stack.read_all(&output, DEADLINE).await.expect("read");
        let counted: i64 = records
            .iter()
            .map(|r| r.json()["count"].as_i64().expect("count"))
            .sum();
        let keys: BTreeSet<String> = records
            .iter()
            .map(|r| r.json()["key"].to_string())
            .collect();
        if counted >= 200 || started.elapsed() > DEADLINE {
            break (counted, keys);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    running.stop().await.expect("run");
    assert_eq!(counted, 200, "every row in a closed window");
    assert_eq!(keys.len(), 50, "the windows of every device");
    // What closed them: heartbeats without key or value in every partition.
    let topic = format!("{group}-source-{table}");
    let records = stack.read_committed(&topic, DEADLINE).await.expect("read");
    let heartbeats: BTreeSet<i32> = records
        .iter()
        .filter(|r| r.header(flumen_kafka::HEARTBEAT_HEADER).is_some())
        .inspect(|r| assert!(r.key.is_none() && r.value.is_none(), "{r:?}"))
        .map(|r| r.partition)
        .collect();
    assert_eq!(
        heartbeats,
        (0..4).collect(),
        "heartbeats in every partition"
    );
}

/// Two instances of one application run the source: one publishes (the
/// leader of the publishers' group); when it stops, the other takes over
/// from the recorded progress. Every row once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_instances_one_publishes_and_the_other_takes_over() {
    let stack = DevStack::start().expect("dev stack");
    let cassandra = DevCassandra::start().expect("cassandra");
    let (_session, table) = readings_table(&cassandra, 6_000).await;
    let group = unique_name("src");
    let slow = || {
        source(&cassandra, &table)
            .page_size(50)
            .max_rows_per_second(2_000)
    };
    let (first, second) = (slow(), slow());
    let (first_stats, second_stats, topic) =
        (first.stats(), second.stats(), first.topic_for(&group));
    let (stop_first, first) = publish(first, &stack, &group);
    let (_stop_second, second) = publish(second, &stack, &group);
    wait_until("a leader publishing", || {
        first_stats.rows() + second_stats.rows() >= 1_000
    })
    .await;
    let (leader_stop, leader, follower, follower_stats) = if first_stats.rows() > 0 {
        assert_eq!(second_stats.rows(), 0, "one leader at a time");
        (stop_first, first, second, second_stats)
    } else {
        (_stop_second, second, first, first_stats)
    };
    leader_stop.send(()).ok();
    leader
        .await
        .expect("task")
        .expect("the leader stops cleanly");
    tokio::time::timeout(DEADLINE, follower)
        .await
        .expect("the follower finishes the snapshot")
        .expect("task")
        .expect("publish");
    assert!(
        follower_stats.rows() > 0 && follower_stats.rows() < 6_000,
        "took over mid-snapshot"
    );
    let rows = rows_once(&published(&stack, &topic).await);
    assert_eq!(rows.len(), 6_000, "every row exactly once");
}

/// A row with a column of each CQL type arrives as the JSON the `json`
/// module's table promises.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_cql_type_arrives_as_documented_json() {
    let stack = DevStack::start().expect("dev stack");
    let cassandra = DevCassandra::start().expect("cassandra");
    let session = cassandra.session().await.expect("session");
    let ks = cassandra
        .create_keyspace(&session, "types")
        .await
        .expect("keyspace");
    let ddl = [
        format!("CREATE TYPE {ks}.address (city text, zip int)"),
        format!(
            "CREATE TABLE {ks}.t (k text PRIMARY KEY, a ascii, i int, bi bigint, si smallint, \
             ti tinyint, vi varint, de decimal, f float, d double, b boolean, ts timestamp, \
             dt date, tm time, u uuid, tu timeuuid, ip inet, bl blob, l list<int>, s set<text>, \
             m map<text, int>, tp tuple<int, text>, ad frozen<address>, du duration)"
        ),
        format!(
            "INSERT INTO {ks}.t (k, a, i, bi, si, ti, vi, de, f, d, b, ts, dt, tm, u, tu, ip, bl, \
             l, s, m, tp, ad, du) VALUES ('row', 'abc', -7, 9007199254740993, 300, -5, \
             123456789012345678901234567890, -12.50, 1.5, 2.25, true, 1700000000123, \
             '2024-01-01', '01:02:03.000000004', 123e4567-e89b-12d3-a456-426614174000, \
             50554d6e-29bb-11e5-b345-feff819cdc9f, '10.0.0.1', 0x00ff, [1, 2], {{'x', 'y'}}, \
             {{'one': 1}}, (1, 'two'), {{city: 'Oslo', zip: 150}}, 1mo2d3ns)"
        ),
    ];
    for statement in ddl {
        session.query_unpaged(statement, &[]).await.expect("cql");
    }
    let group = unique_name("src");
    let source = source(&cassandra, &format!("{ks}.t"));
    let topic = source.topic_for(&group);
    let (_stop, task) = publish(source, &stack, &group);
    task.await.expect("task").expect("publish");
    let records = published(&stack, &topic).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].key_str().as_deref(), Some("row"));
    let expected = serde_json::json!({
        "k": "row", "a": "abc", "i": -7, "bi": 9_007_199_254_740_993_i64, "si": 300, "ti": -5,
        "vi": "123456789012345678901234567890", "de": "-12.50", "f": 1.5, "d": 2.25, "b": true,
        "ts": 1_700_000_000_123_i64, "dt": "2024-01-01", "tm": 3_723_000_000_004_i64,
        "u": "123e4567-e89b-12d3-a456-426614174000",
        "tu": "50554d6e-29bb-11e5-b345-feff819cdc9f", "ip": "10.0.0.1", "bl": "AP8=",
        "l": [1, 2], "s": ["x", "y"], "m": {"one": 1}, "tp": [1, "two"],
        "ad": {"city": "Oslo", "zip": 150}, "du": "1mo2d3ns"
    });
    assert_eq!(records[0].json(), expected);
}

/// `Capture::Incremental` on a `timestamp` column set by every write: rows
/// whose column moves into a pass's slice arrive; the snapshot is skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_capture_follows_a_time_column() {
    let stack = DevStack::start().expect("dev stack");
    let cassandra = DevCassandra::start().expect("cassandra");
    let session = cassandra.session().await.expect("session");
    let ks = cassandra
        .create_keyspace(&session, "incr")
        .await
        .expect("keyspace");
    let table = format!("{ks}.orders");
    session
        .query_unpaged(
            format!("CREATE TABLE {table} (id int PRIMARY KEY, status text, updated timestamp)"),
            &[],
        )
        .await
        .expect("table");
    let upsert = session
        .prepare(format!(
            "INSERT INTO {table} (id, status, updated) VALUES (?, ?, toTimestamp(now()))"
        ))
        .await
        .expect("prepare");
    session
        .execute_unpaged(&upsert, (0, "before the source"))
        .await
        .expect("insert");
    let group = unique_name("src");
    let source = source(&cassandra, &table)
        .snapshot(false)
        .capture(Capture::Incremental {
            column: "updated".into(),
        })
        .poll_interval(Duration::from_millis(300))
        .safety_lag(Duration::from_millis(100));
    let (stats, topic) = (source.stats(), source.topic_for(&group));
    let (stop, task) = publish(source, &stack, &group);
    wait_until("the first capture pass", || stats.passes_done() >= 1).await;
    for id in 1..=20 {
        session
            .execute_unpaged(&upsert, (id, "new"))
            .await
            .expect("insert");
    }
    session
        .execute_unpaged(&upsert, (1, "shipped"))
        .await
        .expect("update");
    let passes = stats.passes_done();
    wait_until("two more passes", || stats.passes_done() >= passes + 2).await;
    stop.send(()).ok();
    task.await.expect("task").expect("publish");
    let records = published(&stack, &topic).await;
    let mut latest = BTreeMap::new();
    for r in &records {
        let json = r.json();
        assert_eq!(r.header("flumen.source.mode"), Some("incremental"));
        latest.insert(
            json["id"].as_i64().expect("id"),
            json["status"].as_str().expect("status").to_string(),
        );
    }
    assert_eq!(
        latest.len(),
        20,
        "ids 1..=20, not the row written before the source: {latest:?}"
    );
    assert_eq!(latest.get(&1).map(String::as_str), Some("shipped"));
}

/// Incremental capture over a table bucketed by day: each pass reads only
/// the day buckets its slice touches (one or two ranges, not the token ring),
/// the snapshot still reads every bucket; a bucket column that is not the
/// whole partition key is refused with the key named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_capture_reads_only_the_buckets_of_its_slice() {
    let stack = DevStack::start().expect("dev stack");
    let cassandra = DevCassandra::start().expect("cassandra");
    let (session, table) = events_by_day(&cassandra).await;
    let day = Duration::from_secs(86_400);
    let incremental = || {
        source(&cassandra, &table)
            .capture(Capture::Incremental {
                column: "ts".into(),
            })
            .poll_interval(Duration::from_millis(300))
            .safety_lag(Duration::from_millis(100))
    };
    let refused = incremental().incremental_buckets("ts", day);
    let error = refused
        .publish(
            stack.brokers(),
            &unique_name("refused"),
            std::future::pending(),
        )
        .await
        .expect_err("ts is no partition key");
    assert!(
        error.to_string().contains("the partition key is (day)"),
        "{error}"
    );

    let group = unique_name("src");
    let bucketed = incremental().incremental_buckets("day", day);
    let (stats, topic) = (bucketed.stats(), bucketed.topic_for(&group));
    let (stop, task) = publish(bucketed, &stack, &group);
    wait_until("a capture pass", || stats.pass() >= 1).await;
    let live = format!(
        "INSERT INTO {table} (day, ts, id, v) VALUES (toDate(now()), toTimestamp(now()), ?, 'live')"
    );
    let live = session.prepare(live).await.expect("prepare");
    for id in 0..20 {
        session
            .execute_unpaged(&live, (id,))
            .await
            .expect("live row");
    }
    let mut widest = 0;
    let passes = stats.passes_done();
    wait_until("two more passes", || {
        if stats.pass() >= 1 {
            widest = widest.max(stats.ranges().1);
        }
        stats.passes_done() >= passes + 2
    })
    .await;
    stop.send(()).ok();
    task.await.expect("task").expect("publish");
    assert!(
        widest <= 2,
        "a capture pass read {widest} ranges, not its day buckets"
    );
    let records = published(&stack, &topic).await;
    let modes: BTreeMap<(String, i64), String> = records
        .iter()
        .map(|r| {
            let json = r.json();
            let row = (
                json["v"].as_str().expect("v").to_string(),
                json["id"].as_i64().expect("id"),
            );
            (
                row,
                r.header("flumen.source.mode").unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(records.len(), 30, "10 old rows, 20 live ones, each once");
    assert!(
        modes.iter().all(|((v, _), mode)| match v.as_str() {
            "old" => mode == "snapshot",
            _ => mode == "incremental",
        }),
        "{modes:?}"
    );
}

/// A keyspace of its own with `events (day date, ts timestamp, id int, v
/// text, PRIMARY KEY ((day), ts, id))` holding ten rows of 2020-01-01.
async fn events_by_day(cassandra: &DevCassandra) -> (Session, String) {
    let session = cassandra.session().await.expect("session");
    let ks = cassandra
        .create_keyspace(&session, "bucket")
        .await
        .expect("keyspace");
    let table = format!("{ks}.events");
    session
        .query_unpaged(
            format!(
                "CREATE TABLE {table} (day date, ts timestamp, id int, v text, \
                 PRIMARY KEY ((day), ts, id))"
            ),
            &[],
        )
        .await
        .expect("table");
    for id in 0..10 {
        let old = format!(
            "INSERT INTO {table} (day, ts, id, v) VALUES ('2020-01-01', '2020-01-01 10:00:00+0000', {id}, 'old')"
        );
        session.query_unpaged(old, &[]).await.expect("old row");
    }
    (session, table)
}
