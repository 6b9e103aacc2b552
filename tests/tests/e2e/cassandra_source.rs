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
    let snapshot = rows_once(&stack.read_committed(&topic, DEADLINE).await.expect("read"));
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

    let records = stack.read_committed(&topic, DEADLINE).await.expect("read");
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
    let rows = rows_once(&stack.read_committed(&topic, DEADLINE).await.expect("read"));
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
