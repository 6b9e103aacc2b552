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

    // Batches, then 10,000 rows read back exactly, in pages.
    let mut written = std::collections::BTreeSet::new();
    for chunk in 0..10i64 {
        let mut batch = Batch::new(BatchType::Unlogged);
        let mut values = Vec::new();
        for i in chunk * 1_000..(chunk + 1) * 1_000 {
            batch.append_statement(insert.clone());
            let device = format!("dev-{}", 100 + i % 50);
            let mean = i as f64 / 8.0;
            values.push((device.clone(), ts(i * 1000), i, mean, 300i64));
            written.insert((device, i * 1000, i, mean.to_bits()));
        }
        session.batch(&batch, &values).await.expect("batch");
    }
    let mut scan = Statement::new("SELECT device, window_start, count, mean FROM m.device_temp");
    scan.set_page_size(700);
    let scanned: Vec<(String, scylla::value::CqlTimestamp, i64, f64)> = session
        .query_iter(scan, &[])
        .await
        .expect("scan")
        .rows_stream()
        .expect("typed stream")
        .try_collect()
        .await
        .expect("all pages");
    let read: std::collections::BTreeSet<(String, i64, i64, u64)> = scanned
        .into_iter()
        .filter(|(d, ..)| d != "dev-1")
        .map(|(d, t, c, m)| (d, t.0, c, m.to_bits()))
        .collect();
    assert_eq!(read.len(), 10_000);
    assert!(
        read == written,
        "the rows read back differ from those written"
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

    // An expired row is gone (TTL 1 s; polled, not slept on).
    session
        .query_unpaged(
            "INSERT INTO m.device_temp (device, window_start, count) VALUES ('short', 0, 1) USING TTL 1",
            &[],
        )
        .await
        .expect("insert with ttl 1");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let rows = session
            .query_unpaged(
                "SELECT count FROM m.device_temp WHERE device = 'short'",
                &[],
            )
            .await
            .expect("select")
            .into_rows_result()
            .expect("rows")
            .rows_num();
        if rows == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the row did not expire"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
