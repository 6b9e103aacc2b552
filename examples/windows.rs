//! Windowed aggregation on the local dev stack: sensor readings -> `temp >= 0`
//! -> tumbling 10 s windows per device (count, sum, min, max, mean) -> printed as
//! tables. Starts the dev broker unless `FLUMEN_KAFKA_BROKERS` is set.
//!
//! `cargo run --release --example windows -- --events 20000 --devices 5`

use std::time::{Duration, Instant};

use arrow::datatypes::{DataType, Field, Schema};
use clap::Parser;
use flumen::prelude::*;
use flumen_testkit::sensor::SensorWorkload;
use flumen_testkit::unique_name;

#[derive(Parser, Debug)]
#[command(about = "Run a windowed flumen pipeline on the local dev stack")]
struct Args {
    /// Number of sensor events to produce (one every 100 ms of event time).
    #[arg(long, default_value_t = 2_000)]
    events: u64,
    /// Number of devices (keys).
    #[arg(long, default_value_t = 4)]
    devices: u64,
    /// Window size in seconds.
    #[arg(long, default_value_t = 10)]
    window_secs: u64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    flumen_examples::init_logging();
    let args = Args::parse();
    let stack = flumen_examples::start_dev_stack()?;
    let input = unique_name("readings");
    stack.create_topic(&input, 3).await?;
    let workload = SensorWorkload {
        events: args.events,
        devices: args.devices,
        ..Default::default()
    };
    stack.produce_batched(&input, workload.records()).await?;
    println!(
        "produced {} readings of {} devices to '{input}'",
        args.events, args.devices
    );

    let app = flumen_examples::dev_app(&stack, "windows").build()?;
    let schema = Schema::new(vec![
        Field::new("device", DataType::Utf8, false),
        Field::new("ts", DataType::Int64, false),
        Field::new("temp", DataType::Float64, false),
    ]);
    app.dataframe(Topic::json(&input).schema(schema).timestamp_field("ts"))?
        .filter(col("temp").gt_eq(lit(0.0)))
        .tumbling_window(Duration::from_secs(args.window_secs))
        .agg([
            count(),
            sum(col("temp")).alias("sum"),
            min(col("temp")).alias("min"),
            max(col("temp")).alias("max"),
            mean(col("temp")).alias("mean"),
        ])
        .final_()
        .drop(["_key", "_timestamp"])
        .print();

    let stats = app.stats();
    let stop = app.stop_handle();
    let events = args.events;
    let started = Instant::now();
    tokio::spawn(async move {
        while stats.records_in() < events {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.stop();
    });
    app.run().await?;
    let stats = app.stats();
    println!(
        "read {} readings, emitted {} closed windows in {:.2?} (windows still open at the end of the input are not emitted)",
        stats.records_in(),
        stats.records_out(),
        started.elapsed()
    );
    Ok(())
}
