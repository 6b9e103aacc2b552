//! The testkit's CQL test server, driven by the real `scylla` driver over TCP.

use std::time::Duration;

use flumen_testkit::cql::{CqlTestServer, Fault, FaultScope};
use futures::TryStreamExt;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::Statement;

async fn connect(server: &CqlTestServer) -> Session {
    SessionBuilder::new()
        .known_node(server.node())
        .build()
        .await
        .expect("the driver connects and reads topology and schema")
}

async fn schema(session: &Session) {
    session
        .query_unpaged(
            "CREATE KEYSPACE IF NOT EXISTS m WITH replication = \
             {'class': 'SimpleStrategy', 'replication_factor': 1}",
            &[],
        )
        .await
        .expect("create keyspace");
    session
        .query_unpaged(
            "CREATE TABLE IF NOT EXISTS m.device_temp (device text, window_start timestamp, \
             count bigint, mean double, PRIMARY KEY ((device), window_start))",
            &[],
        )
        .await
        .expect("create table");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_driver_reads_topology_and_schema_and_writes_and_reads_rows() {
    let server = CqlTestServer::start().expect("server");
    let session = connect(&server).await;
    schema(&session).await;
    session
        .refresh_metadata()
        .await
        .expect("metadata refresh after DDL");
    let state = session.get_cluster_state();
    let table = &state.get_keyspace("m").expect("keyspace metadata").tables["device_temp"];
    assert_eq!(table.partition_key, ["device"]);
    assert_eq!(table.clustering_key, ["window_start"]);
    assert_eq!(table.columns.len(), 4);

    let insert = session
        .prepare(
            "INSERT INTO m.device_temp (device, window_start, count, mean) VALUES (?, ?, ?, ?) \
             USING TIMESTAMP ?",
        )
        .await
        .expect("prepare");
    let ts = |ms: i64| scylla::value::CqlTimestamp(ms);
    session
        .execute_unpaged(&insert, ("dev-1", ts(10_000), 5i64, 2.5f64, 200i64))
        .await
        .expect("insert");
    // An older write (a replay) does not overwrite the newer row.
    session
        .execute_unpaged(&insert, ("dev-1", ts(10_000), 3i64, 9.0f64, 100i64))
        .await
        .expect("older insert");
    session
        .execute_unpaged(&insert, ("dev-1", ts(0), 1i64, 1.0f64, 100i64))
        .await
        .expect("insert");
    let rows = session
        .query_unpaged(
            "SELECT window_start, count, mean, writetime(count) FROM m.device_temp WHERE device = ?",
            ("dev-1",),
        )
        .await
        .expect("select")
        .into_rows_result()
        .expect("rows");
    let got: Vec<(scylla::value::CqlTimestamp, i64, f64, i64)> = rows
        .rows()
        .expect("typed rows")
        .collect::<Result<_, _>>()
        .expect("rows decode");
    assert_eq!(
        got,
        vec![(ts(0), 1, 1.0, 100), (ts(10_000), 5, 2.5, 200)],
        "clustering order, last write wins by timestamp"
    );

    // The server's token() is the driver's Murmur3 token.
    let token = insert
        .calculate_token(&("dev-1", ts(0), 0i64, 0f64, 0i64))
        .expect("token")
        .expect("a partition key");
    let (server_token,): (i64,) = session
        .query_unpaged(
            "SELECT token(device) FROM m.device_temp WHERE device = 'dev-1' LIMIT 1",
            &[],
        )
        .await
        .expect("select token")
        .into_rows_result()
        .expect("rows")
        .first_row()
        .expect("one row");
    assert_eq!(server_token, token.value());

    // Batches and paged scans.
    let mut batch = Batch::new(BatchType::Unlogged);
    let mut values = Vec::new();
    for i in 0..250i64 {
        batch.append_statement(insert.clone());
        values.push((format!("dev-{}", i % 25), ts(i * 1000), i, 0.5f64, 300i64));
    }
    session.batch(&batch, &values).await.expect("batch");
    let mut scan = Statement::new("SELECT device, window_start FROM m.device_temp");
    scan.set_page_size(40);
    let scanned: Vec<(String, scylla::value::CqlTimestamp)> = session
        .query_iter(scan, &[])
        .await
        .expect("scan")
        .rows_stream()
        .expect("typed stream")
        .try_collect()
        .await
        .expect("all pages");
    assert_eq!(
        scanned.len(),
        252,
        "250 batched rows + the two rows of dev-1"
    );

    // TTL: the row is there, with its TTL.
    session
        .query_unpaged(
            "INSERT INTO m.device_temp (device, window_start, count) VALUES ('ttl', 0, 1) USING TTL 100",
            &[],
        )
        .await
        .expect("insert with ttl");
    let (ttl,): (Option<i32>,) = session
        .query_unpaged(
            "SELECT ttl(count) FROM m.device_temp WHERE device = 'ttl'",
            &[],
        )
        .await
        .expect("select ttl")
        .into_rows_result()
        .expect("rows")
        .first_row()
        .expect("row");
    assert!(ttl.is_some_and(|t| (98..=100).contains(&t)), "{ttl:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_faults_reach_the_driver_and_then_clear() {
    let server = CqlTestServer::start().expect("server");
    let session = connect(&server).await;
    schema(&session).await;
    let mut insert = session
        .prepare("INSERT INTO m.device_temp (device, window_start, count) VALUES (?, ?, ?)")
        .await
        .expect("prepare");
    // Not idempotent: the driver must not retry, so the error shows.
    insert.set_is_idempotent(false);
    let ts = scylla::value::CqlTimestamp(0);
    for fault in [Fault::WriteTimeout, Fault::Overloaded, Fault::Unavailable] {
        server.inject(fault, FaultScope::Next(1));
        let err = session
            .execute_unpaged(&insert, ("a", ts, 1i64))
            .await
            .expect_err("the injected fault");
        let text = err.to_string();
        assert!(
            text.contains("injected") || text.to_lowercase().contains("overloaded"),
            "{fault:?}: {text}"
        );
        session
            .execute_unpaged(&insert, ("a", ts, 1i64))
            .await
            .expect("the next request is served");
    }
    server.inject(Fault::DropConnection, FaultScope::Next(1));
    assert!(session
        .execute_unpaged(&insert, ("a", ts, 2i64))
        .await
        .is_err());
    // The driver reconnects; later requests succeed.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while session
        .execute_unpaged(&insert, ("a", ts, 3i64))
        .await
        .is_err()
    {
        assert!(std::time::Instant::now() < deadline, "no reconnect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.inject(
        Fault::Latency(Duration::from_millis(300)),
        FaultScope::Next(1),
    );
    let started = std::time::Instant::now();
    session
        .execute_unpaged(&insert, ("a", ts, 4i64))
        .await
        .expect("slow but served");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(server.faulted_requests(), 5);
}
