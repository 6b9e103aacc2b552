//! The quickstart: sensor readings in Kafka -> `temp >= 0` -> tumbling 10 s
//! windows per device (count, sum, min, max, mean) -> the Cassandra table
//! `metrics.device_temp`, then the table read back through the driver.
//!
//! No flags and nothing to set up: it starts a local Apache Kafka and Apache
//! Cassandra (from the jars `tests/bootstrap.sh` fetched) for the run, unless
//! `FLUMEN_KAFKA_BROKERS` / `FLUMEN_CASSANDRA_NODES` point at running clusters.
//!
//! `cargo run --release --example quickstart`

use std::time::{Duration, Instant};

use arrow::datatypes::{DataType, Field, Schema};
use flumen::prelude::*;
use flumen_cassandra::CassandraSink;
use flumen_examples::cassandra::{prepare_table, read_rows, Row};
use flumen_testkit::sensor::SensorWorkload;
use flumen_testkit::unique_name;
use indicatif::{ProgressBar, ProgressStyle};

const EVENTS: u64 = 200_000;
const DEVICES: u64 = 100;
const STEP_MS: i64 = 10;

/// An epoch-ms timestamp as UTC date and time.
fn utc(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| ms.to_string())
}

fn print_rows(rows: &[Row], show: usize) {
    println!(
        "{:<10} {:<19} {:<8} {:>6} {:>10} {:>8} {:>8} {:>8}",
        "device", "window_start (UTC)", "end", "count", "sum", "min", "max", "mean"
    );
    for (device, start, end, count, sum, min, max, mean) in rows.iter().take(show) {
        let end = utc(end.0);
        println!(
            "{device:<10} {:<19} {:<8} {count:>6} {sum:>10.2} {min:>8.2} {max:>8.2} {mean:>8.2}",
            utc(start.0),
            end.get(11..).unwrap_or(&end)
        );
    }
    if rows.len() > show {
        println!("... ({} more rows)", rows.len() - show);
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    flumen_examples::init_logging();
    let (stack, cassandra) = flumen_examples::start_kafka_and_cassandra()?;
    let nodes = cassandra.nodes().to_string();
    let session = prepare_table(&nodes, "metrics", "device_temp").await?;

    let input = unique_name("readings");
    stack.create_topic(&input, 3).await?;
    let workload = SensorWorkload {
        events: EVENTS,
        devices: DEVICES,
        step_ms: STEP_MS,
        ..Default::default()
    };
    let produced = Instant::now();
    stack.produce(&input, workload.records()).await?;
    println!(
        "produced {EVENTS} readings of {DEVICES} devices to '{input}' in {:.1?}",
        produced.elapsed()
    );

    let state = tempfile::tempdir()?;
    let app = flumen_examples::dev_app(&stack, "quickstart")
        .state_dir(state.path())
        .build()?;
    app.dataframe(
        Topic::json(&input)
            .schema(Schema::new(vec![
                Field::new("device", DataType::Utf8, false),
                Field::new("ts", DataType::Int64, false),
                Field::new("temp", DataType::Float64, false),
            ]))
            .timestamp_field("ts"),
    )?
    .filter(col("temp").gt_eq(lit(0.0)))
    .tumbling_window(Duration::from_secs(10))
    .agg(flumen_examples::temperature_aggregations())
    .final_()
    .sink(
        CassandraSink::new("metrics.device_temp")
            .nodes(&nodes)
            .column("key", "device"),
    );

    let stats = app.stats();
    let stop = app.stop_handle();
    let bar = ProgressBar::new(EVENTS).with_style(ProgressStyle::with_template(
        "{spinner} {pos}/{len} readings processed, {per_sec} [{elapsed_precise}]",
    )?);
    let progress = bar.clone();
    let watched = std::sync::Arc::clone(&stats);
    tokio::spawn(async move {
        while watched.records_in() < EVENTS {
            progress.set_position(watched.records_in());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        progress.set_position(EVENTS);
        // Every record is read: finish in-flight batches, wait for the
        // Cassandra writes, commit and stop.
        stop.stop();
    });
    let started = Instant::now();
    app.run().await?;
    let elapsed = started.elapsed();
    bar.finish();

    let rows = read_rows(&session, "metrics", "device_temp").await?;
    println!("\nmetrics.device_temp (first rows by window start):");
    print_rows(&rows, 12);
    let devices: std::collections::BTreeSet<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    let counted: i64 = rows.iter().map(|r| r.3).sum();
    println!(
        "\n{} readings in {:.2?} ({:.0} readings/s): {} windows of {} devices in Cassandra, \
         covering {counted} readings with temp >= 0 (windows still open at the end of the \
         input are not emitted by final_())",
        stats.records_in(),
        elapsed,
        stats.records_in() as f64 / elapsed.as_secs_f64(),
        rows.len(),
        devices.len()
    );
    Ok(())
}
