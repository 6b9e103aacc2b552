//! Windowed aggregates into a Cassandra table through `CassandraSink`: the real
//! `scylla` driver against the testkit's CQL server, on the dev stack.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common::{builder, produce_readings, run_until_read, start, DEADLINE};
use crate::windows::{assert_windows, readings_topic, reference, Row, DEVICES, PARTITIONS};
use flumen::prelude::*;
use flumen_cassandra::CassandraSink;
use flumen_testkit::cql::{CqlTestServer, Fault, FaultScope};
use flumen_testkit::{unique_name, DevStack};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::value::CqlTimestamp;

const TABLE: &str = "metrics.device_temp";

async fn session(server: &CqlTestServer) -> Session {
    let session = SessionBuilder::new()
        .known_node(server.node())
        .build()
        .await
        .expect("driver session");
    session
        .query_unpaged(
            "CREATE KEYSPACE IF NOT EXISTS metrics WITH replication = \
             {'class': 'SimpleStrategy', 'replication_factor': 1}",
            &[],
        )
        .await
        .expect("keyspace");
    session
}

fn sink(server: &CqlTestServer) -> CassandraSink {
    CassandraSink::new(TABLE)
        .nodes(server.node())
        .column("key", "device")
        .create_table_if_missing(["device"], ["window_start"])
}

/// The pipeline of the windows tests (tumbling 10 s per device) into `sink`.
fn pipeline(app: &Application, input: &str, sink: CassandraSink) {
    app.dataframe(readings_topic(input))
        .expect("frame")
        .filter(col("temp").gt_eq(lit(0.0)))
        .tumbling_window(Duration::from_secs(10))
        .agg([
            count(),
            sum(col("temp")).alias("sum"),
            min(col("temp")).alias("min"),
            max(col("temp")).alias("max"),
            mean(col("temp")).alias("mean"),
        ])
        .final_()
        .sink(sink);
}

/// Every row of the table: (device, window start) -> values, and the write
/// timestamps seen.
async fn table_rows(session: &Session) -> (BTreeMap<(String, i64), Row>, Vec<i64>) {
    let rows = session
        .query_unpaged(
            "SELECT device, window_start, count, sum, min, max, mean, writetime(count) \
             FROM metrics.device_temp",
            &[],
        )
        .await
        .expect("select")
        .into_rows_result()
        .expect("rows");
    let mut out = BTreeMap::new();
    let mut stamps = Vec::new();
    type Typed = (String, CqlTimestamp, i64, f64, f64, f64, f64, i64);
    for row in rows.rows::<Typed>().expect("typed rows") {
        let (device, start, count, sum, min, max, mean, written) = row.expect("row");
        out.insert((device, start.0), (count, sum, min, max, mean));
        stamps.push(written);
    }
    (out, stamps)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_are_upserted_into_the_table_and_survive_write_faults() {
    let stack = DevStack::start().expect("dev stack");
    let server = CqlTestServer::start().expect("cql server");
    let session = session(&server).await;
    let input = unique_name("in");
    stack
        .create_topic(&input, PARTITIONS)
        .await
        .expect("input topic");
    let workload = produce_readings(&stack, &input, PARTITIONS, 3_000, DEVICES).await;
    // Timeouts and overload on the first writes: retried with backoff.
    server.inject(Fault::WriteTimeout, FaultScope::Next(3));
    server.inject(Fault::Overloaded, FaultScope::Next(2));

    let state = tempfile::tempdir().expect("state dir");
    let app = builder(&stack, &unique_name("g"))
        .state_dir(state.path())
        .build()
        .expect("app");
    pipeline(&app, &input, sink(&server));
    let stats = run_until_read(app, workload.events).await;

    let expected = reference(&workload.readings().collect::<Vec<_>>(), 10_000, 10_000);
    let (actual, stamps) = table_rows(&session).await;
    assert_windows("cassandra", &actual, &expected);
    assert_eq!(server.faulted_requests(), 5, "every injected fault was met");
    assert!(
        stats.records_out() >= expected.len() as u64,
        "{} rows out",
        stats.records_out()
    );
    // Write timestamps are source offsets (each partition has 1,000 records).
    assert!(
        stamps.iter().all(|&t| (0..1_000).contains(&t)),
        "{stamps:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_that_cannot_hold_the_frame_stops_the_start() {
    let stack = DevStack::start().expect("dev stack");
    let server = CqlTestServer::start().expect("cql server");
    let session = session(&server).await;
    session
        .query_unpaged(
            "CREATE TABLE metrics.device_temp (device text, window_start timestamp, window_end timestamp, \
             count int, sum double, min double, max double, mean double, \
             PRIMARY KEY ((device), window_start))",
            &[],
        )
        .await
        .expect("table");
    let input = unique_name("in");
    stack.create_topic(&input, 1).await.expect("input topic");
    let app = builder(&stack, &unique_name("g"))
        .state_dir(tempfile::tempdir().expect("state dir").path())
        .build()
        .expect("app");
    pipeline(&app, &input, sink(&server));
    let running = start(app);
    let error = tokio::time::timeout(DEADLINE, running.join)
        .await
        .expect("stops")
        .expect("task")
        .expect_err("refused");
    let text = error.to_string();
    assert!(matches!(error, flumen::Error::Sink { .. }), "{text}");
    for part in ["metrics.device_temp", "'count'", "int", "Int64"] {
        assert!(text.contains(part), "{part} missing from: {text}");
    }
}
