//! The Cassandra sink's options: TLS, the dead-letter policy, UNLOGGED
//! batches per partition key.

use std::collections::BTreeMap;

use crate::cassandra_sink::{pipeline, refused, table_rows, Cluster};
use crate::common::{builder, produce_readings, start, wait_until, DEADLINE};
use crate::metrics::metric;
use crate::windows::{all_windows, assert_windows, reference, Row, DEVICES, PARTITIONS};
use flumen_cassandra::{CassandraSink, Tls};
use flumen_testkit::cql::{Fault, FaultScope, TestCertificate};
use flumen_testkit::stack::CassandraOptions;
use flumen_testkit::{unique_name, DevCassandra, DevStack};

/// Runs the tumbling pipeline (final windows) over `events` readings into
/// `sink` until every record is read; returns the workload's reference.
async fn run_windows(
    stack: &DevStack,
    sink: CassandraSink,
    events: u64,
) -> BTreeMap<(String, i64), Row> {
    let input = unique_name("in");
    stack
        .create_topic(&input, PARTITIONS)
        .await
        .expect("input topic");
    let workload = produce_readings(stack, &input, PARTITIONS, events, DEVICES).await;
    let state = tempfile::tempdir().expect("state dir");
    let app = builder(stack, &unique_name("g"))
        .state_dir(state.path())
        .max_batch_records(100)
        .build()
        .expect("app");
    pipeline(&app, &input, sink, 10_000, false);
    let running = start(app);
    let stats = running.stats.clone();
    wait_until("the input to be read", || stats.records_in() >= events).await;
    running.stop().await.expect("clean stop");
    reference(&workload.readings().collect::<Vec<_>>(), 10_000, 10_000)
}

/// A real Cassandra node serving CQL over TLS only: plain connections and
/// untrusted certificates are refused before anything is consumed; with its
/// CA the windows arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_is_written_with_a_trusted_certificate_only() {
    let stack = DevStack::start().expect("dev stack");
    let certificate = TestCertificate::self_signed().expect("certificate");
    let ca = certificate.cert_pem.clone();
    let options = CassandraOptions {
        tls: Some(certificate),
        ..CassandraOptions::default()
    };
    let cassandra = DevCassandra::start_dedicated(&options).expect("tls cassandra");
    let session = cassandra.session().await.expect("driver session over TLS");
    let cluster = Cluster::on(cassandra.nodes().to_string(), None, session).await;

    let untrusted = refused(&stack, cluster.sink().tls(Tls::new()))
        .await
        .to_string();
    assert!(
        untrusted.contains("certificate verify failed"),
        "{untrusted}"
    );
    let plain = refused(&stack, cluster.sink()).await.to_string();
    assert!(plain.contains("cannot connect"), "{plain}");

    let sink = cluster.sink().tls(Tls::new().ca_pem(ca));
    let expected = run_windows(&stack, sink, 600).await;
    let (actual, _) = table_rows(&cluster).await;
    assert_windows("over TLS", &actual, &expected);
}

/// Rows the server refuses go to the dead-letter topic as JSON, with the
/// reason and source position; the rest of the windows reach the table, and
/// together they are the reference. Without a dead-letter topic the same
/// refusal stops the application with an error naming the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_that_cannot_be_written_go_to_the_dead_letter_topic() {
    crate::metrics::endpoint();
    let stack = DevStack::start().expect("dev stack");
    // Refusing exactly three rows on demand takes the CQL test server.
    let cluster = Cluster::fault_server().await;
    let server = cluster.server.as_ref().expect("the test server");
    cluster.create_table().await;
    let dlq = unique_name("dlq");
    stack
        .create_topic(&dlq, 1)
        .await
        .expect("dead-letter topic");

    server.inject(Fault::Invalid, FaultScope::Next(3));
    let sink = CassandraSink::new(&cluster.table)
        .nodes(&cluster.nodes)
        .column("key", "device")
        .dead_letter_topic(&dlq);
    let expected = run_windows(&stack, sink, 900).await;

    let dead = stack.read_all(&dlq, DEADLINE).await.expect("read dlq");
    assert_eq!(dead.len(), 3, "one record per refused row");
    let (mut rows, _) = table_rows(&cluster).await;
    assert_eq!(rows.len() + 3, expected.len());
    for record in &dead {
        assert_eq!(record.header("flumen.error.kind"), Some("sink"));
        let reason = record.header("flumen.error.reason").unwrap_or_default();
        assert!(
            reason.contains(&cluster.table) && reason.contains("injected"),
            "{reason}"
        );
        assert!(record.header("flumen.source.topic").is_some());
        assert!(record.header("flumen.source.offsets").is_some());
        let v = record.json();
        let key = (
            v["key"].as_str().expect("key").to_string(),
            v["window_start"].as_i64().expect("window_start"),
        );
        let row = (
            v["count"].as_i64().expect("count"),
            v["sum"].as_f64().expect("sum"),
            v["min"].as_f64().expect("min"),
            v["max"].as_f64().expect("max"),
            v["mean"].as_f64().expect("mean"),
        );
        assert!(
            rows.insert(key.clone(), row).is_none(),
            "{key:?} was written too"
        );
    }
    assert_windows("table + dead letters", &rows, &expected);
    assert!(metric("flumen_sink_dead_letters_total", &cluster.table) >= 3.0);

    // The default policy: fail, naming the table and the server's reason.
    server.inject(Fault::Invalid, FaultScope::Next(1));
    let input = unique_name("in");
    stack.create_topic(&input, 1).await.expect("input");
    produce_readings(&stack, &input, 1, 50, 2).await;
    let app = builder(&stack, &unique_name("g"))
        .state_dir(tempfile::tempdir().expect("state").path())
        .build()
        .expect("app");
    pipeline(&app, &input, cluster.sink(), 10_000, true);
    let error = tokio::time::timeout(DEADLINE, start(app).join)
        .await
        .expect("stops")
        .expect("task")
        .expect_err("the refused row stops the application")
        .to_string();
    for part in [cluster.table.as_str(), "could not be written", "injected"] {
        assert!(error.contains(part), "{part} missing from: {error}");
    }
}

/// `current()` hopping windows rewrite every open window of a device after
/// each batch: with `batch_by_partition` those rows share requests, and the
/// table still ends equal to the reference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_of_a_partition_share_unlogged_batches() {
    crate::metrics::endpoint();
    let stack = DevStack::start().expect("dev stack");
    let cluster = Cluster::start().await;
    let input = unique_name("in");
    stack.create_topic(&input, 1).await.expect("input topic");
    let workload = produce_readings(&stack, &input, 1, 600, 3).await;
    let state = tempfile::tempdir().expect("state dir");
    let app = builder(&stack, &unique_name("g"))
        .state_dir(state.path())
        .max_batch_records(60)
        .build()
        .expect("app");
    let sink = cluster.sink().batch_by_partition(4_096);
    pipeline(&app, &input, sink, 2_000, true);
    let running = start(app);
    let stats = running.stats.clone();
    wait_until("the input to be read", || {
        stats.records_in() >= workload.events
    })
    .await;
    running.stop().await.expect("clean stop");

    let (actual, _) = table_rows(&cluster).await;
    let readings: Vec<_> = workload.readings().collect();
    assert_windows("batched", &actual, &all_windows(&readings, 10_000, 2_000));
    let table = format!("table=\"{}\"", cluster.table);
    let rows_written = metric("flumen_cassandra_rows_written_total", &table);
    let requests = metric("flumen_cassandra_requests_total", &table);
    assert!(
        requests * 3.0 < rows_written,
        "{requests} requests for {rows_written} rows"
    );
}
