//! A stateless pipeline on the local dev stack: sensor readings -> filter
//! `temp >= 0` -> select + `temp_f` -> output topic. Starts the dev broker unless
//! `FLUMEN_KAFKA_BROKERS` is set, produces the input, runs the pipeline until every
//! expected output is written, and prints what it did.
//!
//! `cargo run --release --example passthrough -- --events 1000000`

use std::time::{Duration, Instant};

use arrow::datatypes::{DataType, Field, Schema};
use clap::Parser;
use flumen::prelude::*;
use flumen_testkit::sensor::SensorWorkload;
use flumen_testkit::unique_name;

#[derive(Parser, Debug)]
#[command(about = "Run a stateless flumen pipeline on the local dev stack")]
struct Args {
    /// Number of sensor events to produce.
    #[arg(long, default_value_t = 200_000)]
    events: u64,
    /// Number of devices (keys).
    #[arg(long, default_value_t = 1_000)]
    devices: u64,
    /// Partitions of the input and output topics.
    #[arg(long, default_value_t = 3)]
    partitions: i32,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    flumen_examples::init_logging();
    let args = Args::parse();
    let stack = flumen_examples::start_dev_stack()?;

    let (input, output) = (unique_name("readings"), unique_name("readings-f"));
    stack.create_topic(&input, args.partitions).await?;
    stack.create_topic(&output, args.partitions).await?;
    let workload = SensorWorkload {
        events: args.events,
        devices: args.devices,
        ..Default::default()
    };
    let started = Instant::now();
    stack.produce(&input, workload.records()).await?;
    println!(
        "produced {} events to '{input}' in {:.1?}",
        args.events,
        started.elapsed()
    );
    let expected = workload.readings().filter(|r| r.temp >= 0.0).count() as u64;

    let app = flumen_examples::dev_app(&stack, "passthrough").build()?;
    let schema = Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("device", DataType::Utf8, false),
        Field::new("ts", DataType::Int64, false),
        Field::new("temp", DataType::Float64, false),
        Field::new("humidity", DataType::Float64, true),
    ]);
    app.dataframe(Topic::json(&input).schema(schema).timestamp_field("ts"))?
        .filter(col("temp").gt_eq(lit(0.0)))
        .select([col("id"), col("device"), col("temp")])
        .with_column("temp_f", col("temp") * lit(1.8) + lit(32.0))
        .to_topic(Topic::json(&output));

    let stats = app.stats();
    let stop = app.stop_handle();
    let watcher = tokio::spawn(async move {
        let mut first: Option<Instant> = None;
        let mut last_report = Instant::now();
        loop {
            let (read, written) = (stats.records_in(), stats.records_out());
            if first.is_none() && read > 0 {
                first = Some(Instant::now());
            }
            if last_report.elapsed() >= Duration::from_secs(1) {
                println!("  read {read:>9} / {}  written {written:>9}", args.events);
                last_report = Instant::now();
            }
            if written >= expected {
                stop.stop();
                return first.map(|f| f.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    app.run().await?;
    let elapsed = watcher.await?.unwrap_or_default();
    let stats = app.stats();
    let seconds = elapsed.as_secs_f64().max(1e-9);
    println!(
        "read {} records, wrote {} to '{output}' in {seconds:.2} s: {:.0} records/s",
        stats.records_in(),
        stats.records_out(),
        stats.records_in() as f64 / seconds
    );
    println!(
        "{{\"input_records\":{},\"output_rows\":{},\"seconds\":{seconds:.3},\"records_per_sec\":{:.0}}}",
        stats.records_in(),
        stats.records_out(),
        stats.records_in() as f64 / seconds
    );
    Ok(())
}
