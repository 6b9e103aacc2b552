//! Enrichment from Cassandra: sensor readings in Kafka, each looked up in the
//! Cassandra table `iot.devices` (site, max_temp) by its device, then
//! tumbling 10 s windows per site and device (count, mean, max and how many
//! readings were over their device's max_temp) to a Kafka topic, read back
//! and summed per site. Devices missing from the table are at the site
//! `unknown`.
//!
//! Starts a local Apache Kafka and Apache Cassandra unless
//! `FLUMEN_KAFKA_BROKERS` / `FLUMEN_CASSANDRA_NODES` point at running ones.
//!
//! `cargo run --release --example enrich`

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use arrow::datatypes::{DataType, Field, Schema};
use flumen::expr::{cast, coalesce, concat};
use flumen::lookup::LookupCache;
use flumen::prelude::*;
use flumen_cassandra::CassandraLookup;
use flumen_testkit::sensor::SensorWorkload;
use flumen_testkit::unique_name;
use scylla::client::session::Session;

const EVENTS: u64 = 100_000;
const DEVICES: u64 = 100;
/// Devices `dev-90` .. `dev-99` are not in the table.
const REGISTERED: u64 = 90;

/// Creates `iot.devices` and registers devices 0..REGISTERED at 3 sites.
async fn devices_table(session: &Session) -> Result<(), Box<dyn std::error::Error>> {
    session
        .query_unpaged(
            "CREATE KEYSPACE IF NOT EXISTS iot WITH replication = \
             {'class': 'SimpleStrategy', 'replication_factor': 1}",
            &[],
        )
        .await?;
    session
        .query_unpaged(
            "CREATE TABLE IF NOT EXISTS iot.devices \
             (device_id text PRIMARY KEY, site text, max_temp double)",
            &[],
        )
        .await?;
    let insert = session
        .prepare("INSERT INTO iot.devices (device_id, site, max_temp) VALUES (?, ?, ?)")
        .await?;
    for n in 0..REGISTERED {
        let site = ["north", "south", "east"][(n % 3) as usize];
        let max_temp = 20.0 + (n % 10) as f64;
        session
            .execute_unpaged(&insert, (format!("dev-{n}"), site, max_temp))
            .await?;
    }
    Ok(())
}

/// The pipeline: lookup -> window per site -> `output`.
fn pipeline(app: &Application, input: &str, output: &str, nodes: &str) -> flumen::Result<()> {
    let readings = app.dataframe(
        Topic::json(input)
            .schema(Schema::new(vec![
                Field::new("device", DataType::Utf8, false),
                Field::new("ts", DataType::Int64, false),
                Field::new("temp", DataType::Float64, false),
            ]))
            .timestamp_field("ts"),
    )?;
    let devices = CassandraLookup::table("iot.devices")
        .nodes(nodes)
        .on([(col("device"), "device_id")])
        .columns(["site", "max_temp"])
        .cache(LookupCache::default().ttl(Duration::from_secs(30)));
    // 1 over the device's max_temp, 0 under it, null for an unknown device.
    let over = cast(col("temp").gt(col("max_temp")), DataType::Int64);
    readings
        .lookup(devices)
        .with_column("site", coalesce(vec![col("site"), lit("unknown")]))
        .with_column("over", over)
        // The input is keyed by device, so each (site, device) is in one
        // partition: no repartition needed, and the results carry the site.
        .group_by(concat(vec![col("site"), lit("/"), col("device")]).alias("site_device"))
        .within_partitions()
        .tumbling_window(Duration::from_secs(10))
        .agg([
            count(),
            mean(col("temp")).alias("mean"),
            max(col("temp")).alias("max"),
            sum(col("over")).alias("over_max"),
        ])
        .final_()
        .to_topic(Topic::json(output));
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    flumen_examples::init_logging();
    let (stack, cassandra) = flumen_examples::start_kafka_and_cassandra()?;
    let session = cassandra.session().await?;
    devices_table(&session).await?;
    let (input, output) = (unique_name("readings"), unique_name("site-windows"));
    stack.create_topic(&input, 3).await?;
    stack.create_topic(&output, 3).await?;
    let workload = SensorWorkload {
        events: EVENTS,
        devices: DEVICES,
        step_ms: 10,
        ..Default::default()
    };
    stack.produce(&input, workload.records()).await?;
    println!("produced {EVENTS} readings of {DEVICES} devices to '{input}'");

    let state = tempfile::tempdir()?;
    let app = flumen_examples::dev_app(&stack, "enrich")
        .state_dir(state.path())
        .build()?;
    pipeline(&app, &input, &output, cassandra.nodes())?;
    let (stats, stop) = (app.stats(), app.stop_handle());
    let started = Instant::now();
    let run = tokio::spawn(async move { app.run().await });
    while stats.records_in() < EVENTS && !run.is_finished() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.stop();
    run.await??;
    if stats.records_in() < EVENTS {
        return Err("the run ended before it read every reading".into());
    }
    let elapsed = started.elapsed();
    print_windows(&stack, &output).await?;
    println!(
        "{EVENTS} readings enriched and windowed in {elapsed:.2?} ({:.0} readings/s)",
        EVENTS as f64 / elapsed.as_secs_f64()
    );
    Ok(())
}

/// Prints the windows per site and what they cover.
async fn print_windows(
    stack: &flumen_testkit::DevStack,
    output: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let records = stack.read_all(output, Duration::from_secs(60)).await?;
    let mut per_site: BTreeMap<String, (u64, u64, usize)> = BTreeMap::new();
    for record in &records {
        let json = record.json();
        let key = json["site_device"].as_str().unwrap_or("?");
        let site = key.split('/').next().unwrap_or(key).to_string();
        let entry = per_site.entry(site).or_default();
        entry.0 += json["count"].as_u64().unwrap_or(0);
        entry.1 += json["over_max"].as_f64().unwrap_or(0.0) as u64;
        entry.2 += 1;
    }
    println!(
        "\n{:<8} {:>8} {:>10} {:>12}",
        "site", "windows", "readings", "over max_temp"
    );
    for (site, (readings, over, windows)) in &per_site {
        println!("{site:<8} {windows:>8} {readings:>10} {over:>12}");
    }
    let covered: u64 = per_site.values().map(|v| v.0).sum();
    println!("\nthe windows cover {covered} readings (windows still open at the end are not emitted by final_())");
    Ok(())
}
