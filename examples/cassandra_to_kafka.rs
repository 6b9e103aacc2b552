//! Cassandra -> Kafka -> windows -> Cassandra: the table `iot.readings` is
//! published into Kafka by `CassandraSource` (a snapshot of the rows already
//! there, then change capture by write time while new readings arrive), a
//! tumbling 10 s window per device (by the readings' `ts`) runs over the
//! source's frame, and the per-device aggregates land in `iot.device_temp`;
//! progress is printed while it runs, the result (checked against the
//! readings written) at the end.
//!
//! Starts a local Apache Kafka and Apache Cassandra (from the jars
//! `tests/bootstrap.sh` fetched) unless `FLUMEN_KAFKA_BROKERS` /
//! `FLUMEN_CASSANDRA_NODES` point at running clusters.
//!
//! `cargo run --release --example cassandra_to_kafka`

use std::time::{Duration, Instant};

use flumen_cassandra::{Capture, CassandraSink, CassandraSource};
use flumen_examples::cassandra::{prepare_table, read_rows};
use scylla::client::session::Session;

const SNAPSHOT_ROWS: i64 = 100_000;
const LIVE_ROWS: i64 = 20_000;
const DEVICES: i64 = 100;
const STEP_MS: i64 = 10;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    flumen_examples::init_logging();
    let (stack, cassandra) = flumen_examples::start_kafka_and_cassandra()?;
    let nodes = cassandra.nodes().to_string();
    let session = std::sync::Arc::new(prepare_table(&nodes, "iot", "device_temp").await?);
    session
        .query_unpaged(
            "CREATE TABLE IF NOT EXISTS iot.readings (device text, ts timestamp, temp double, \
             PRIMARY KEY (device, ts))",
            &[],
        )
        .await?;
    session.query_unpaged("TRUNCATE iot.readings", &[]).await?;
    let started = Instant::now();
    write_readings(&session, 0..SNAPSHOT_ROWS).await?;
    println!(
        "wrote {SNAPSHOT_ROWS} readings into iot.readings in {:.1?}",
        started.elapsed()
    );

    let source = CassandraSource::table("iot.readings")
        .nodes(&nodes)
        .replication_factor(1)
        .timestamp_column("ts")
        .capture(Capture::Writetime)
        .poll_interval(Duration::from_secs(1))
        .safety_lag(Duration::from_millis(500));
    let source_stats = source.stats();
    let app = flumen_examples::dev_app(&stack, &flumen_testkit::unique_name("c2k")).build()?;
    // A snapshot reads the table in token order, not in time order: a device's
    // readings arrive together, so event time jumps back and forth between
    // devices of one partition. A grace longer than the data's time span keeps
    // every window open to its readings, and current() upserts each window's
    // running aggregates, so the table ends exact.
    app.dataframe(source)?
        .tumbling_window(Duration::from_secs(10))
        .grace(Duration::from_secs(3_600))
        .agg(flumen_examples::temperature_aggregations())
        .current()
        .sink(
            CassandraSink::new("iot.device_temp")
                .nodes(&nodes)
                .column("key", "device"),
        );
    let stats = app.stats();
    let stop = app.stop_handle();

    follow(
        source_stats,
        std::sync::Arc::clone(&stats),
        std::sync::Arc::clone(&session),
        stop,
    );
    app.run().await?;

    check_result(&session, &stats, started).await
}

/// Prints progress each second; once the snapshot is done writes the live
/// readings, and stops the application when every reading was processed.
fn follow(
    source_stats: std::sync::Arc<flumen_cassandra::SourceStats>,
    watched: std::sync::Arc<flumen::Stats>,
    live: std::sync::Arc<Session>,
    stop: flumen::StopHandle,
) {
    tokio::spawn(async move {
        let report = |what: &str| {
            let (done, total) = source_stats.ranges();
            println!(
                "{what}: pass {} ({done}/{total} ranges), {} rows published, {} records processed",
                source_stats.pass(),
                source_stats.rows(),
                watched.records_in()
            );
        };
        while source_stats.passes_done() < 1 {
            report("snapshot");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        report("snapshot done");
        if let Err(e) = write_readings(&live, SNAPSHOT_ROWS..SNAPSHOT_ROWS + LIVE_ROWS).await {
            eprintln!("writing live readings failed: {e}");
        }
        let target = (SNAPSHOT_ROWS + LIVE_ROWS) as u64;
        while watched.records_in() < target {
            report("capture");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        report("caught up");
        stop.stop();
    });
}

/// Prints the windows and checks that they cover every reading written.
async fn check_result(
    session: &Session,
    stats: &flumen::Stats,
    started: Instant,
) -> Result<(), Box<dyn std::error::Error>> {
    let rows = read_rows(session, "iot", "device_temp").await?;
    let counted: i64 = rows.iter().map(|r| r.3).sum();
    println!(
        "\n{} records in {:.1?}: {} windows of {} devices in iot.device_temp covering {counted} \
         readings (expected: every one of the {} readings)",
        stats.records_in(),
        started.elapsed(),
        rows.len(),
        rows.iter()
            .map(|r| &r.0)
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        SNAPSHOT_ROWS + LIVE_ROWS
    );
    for (device, start, _, count, _, min, max, mean) in rows.iter().take(5) {
        println!(
            "{device:<8} {:>14} {count:>5} {min:>7.2} {max:>7.2} {mean:>7.2}",
            start.0
        );
    }
    if counted != SNAPSHOT_ROWS + LIVE_ROWS {
        return Err(format!(
            "the windows cover {counted} readings, not {}",
            SNAPSHOT_ROWS + LIVE_ROWS
        )
        .into());
    }
    Ok(())
}

/// Readings `n` of `range`: device `dev-{n % DEVICES}`, ts `n * STEP_MS`, a temperature.
async fn write_readings(
    session: &Session,
    range: std::ops::Range<i64>,
) -> Result<(), Box<dyn std::error::Error>> {
    use futures::StreamExt;
    let insert = session
        .prepare("INSERT INTO iot.readings (device, ts, temp) VALUES (?, ?, ?)")
        .await?;
    let writes = range.map(|n| {
        let (insert, session) = (&insert, session);
        async move {
            let temp = 15.0 + (n % 200) as f64 / 10.0;
            let values = (
                format!("dev-{}", n % DEVICES),
                scylla::value::CqlTimestamp(n * STEP_MS),
                temp,
            );
            session.execute_unpaged(insert, values).await.map(drop)
        }
    });
    let results: Vec<_> = futures::stream::iter(writes)
        .buffer_unordered(128)
        .collect()
        .await;
    results.into_iter().collect::<Result<Vec<()>, _>>()?;
    Ok(())
}
