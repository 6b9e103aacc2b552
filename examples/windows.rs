//! Windowed aggregation on the local dev stack: sensor readings -> `temp >= 0`
//! -> tumbling 10 s windows per device (count, sum, min, max, mean) -> a Kafka
//! topic, with the first windows printed as a table. Window state lives in
//! RocksDB (`--state-dir`, a temporary directory by default). Starts the dev
//! broker unless `FLUMEN_KAFKA_BROKERS` is set.
//!
//! `cargo run --release --example windows -- --events 1000000 --devices 1000 --step-ms 1`

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema};
use clap::Parser;
use flumen::prelude::*;
use flumen_testkit::sensor::SensorWorkload;
use flumen_testkit::unique_name;

#[derive(Parser, Debug)]
#[command(about = "Run a windowed flumen pipeline on the local dev stack")]
struct Args {
    /// Number of sensor events to produce.
    #[arg(long, default_value_t = 2_000)]
    events: u64,
    /// Number of devices (keys), visited round-robin.
    #[arg(long, default_value_t = 4)]
    devices: u64,
    /// Event time between two consecutive events, in ms.
    #[arg(long, default_value_t = 100)]
    step_ms: i64,
    /// Window size in seconds.
    #[arg(long, default_value_t = 10)]
    window_secs: u64,
    /// Where the RocksDB state goes (default: a temporary directory, removed at the end).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// How many result rows to print.
    #[arg(long, default_value_t = 20)]
    show: usize,
}

/// Size of the files below `dir`, in bytes.
fn size_on_disk(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => size_on_disk(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    flumen_examples::init_logging();
    let args = Args::parse();
    let stack = flumen_examples::start_dev_stack()?;
    let (input, output) = (unique_name("readings"), unique_name("device-temp"));
    stack.create_topic(&input, 3).await?;
    stack.create_topic(&output, 3).await?;
    let workload = SensorWorkload {
        events: args.events,
        devices: args.devices,
        step_ms: args.step_ms,
        ..Default::default()
    };
    let produced = Instant::now();
    stack.produce(&input, workload.records()).await?;
    println!(
        "produced {} readings of {} devices to '{input}' in {:.2?}",
        args.events,
        args.devices,
        produced.elapsed()
    );

    let temp_state = tempfile::tempdir()?;
    let state_dir = args
        .state_dir
        .clone()
        .unwrap_or_else(|| temp_state.path().to_path_buf());
    let app = flumen_examples::dev_app(&stack, "windows")
        .state_dir(&state_dir)
        .build()?;
    let schema = Schema::new(vec![
        Field::new("device", DataType::Utf8, false),
        Field::new("ts", DataType::Int64, false),
        Field::new("temp", DataType::Float64, false),
    ]);
    let windows = app
        .dataframe(Topic::json(&input).schema(schema).timestamp_field("ts"))?
        .filter(col("temp").gt_eq(lit(0.0)))
        .tumbling_window(Duration::from_secs(args.window_secs))
        .agg(flumen_examples::temperature_aggregations())
        .final_();
    windows.to_topic(Topic::json(&output));
    // A branch keeps the first rows for the table printed at the end.
    let shown: Arc<Mutex<Vec<RecordBatch>>> = Arc::default();
    let keep = Arc::clone(&shown);
    let limit = args.show;
    windows
        .drop(["_key", "_timestamp"])
        .map_batches(move |batch| {
            let mut kept = keep.lock().unwrap_or_else(|p| p.into_inner());
            let have: usize = kept.iter().map(RecordBatch::num_rows).sum();
            if have < limit {
                kept.push(batch.slice(0, batch.num_rows().min(limit - have)));
            }
            Ok(batch.slice(0, 0))
        })
        .print();

    let stats = app.stats();
    let stop = app.stop_handle();
    let events = args.events;
    let started = Instant::now();
    let progress = Arc::clone(&stats);
    tokio::spawn(async move {
        while progress.records_in() < events {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.stop();
    });
    app.run().await?;
    let elapsed = started.elapsed();

    let shown = shown.lock().unwrap_or_else(|p| p.into_inner()).clone();
    println!("{}", arrow::util::pretty::pretty_format_batches(&shown)?);
    let windows_out = stats.records_out();
    println!(
        "read {} readings, wrote {} closed windows to '{output}' in {:.2?}: {:.0} records/s \
         (windows still open at the end of the input are not emitted)",
        stats.records_in(),
        windows_out,
        elapsed,
        stats.records_in() as f64 / elapsed.as_secs_f64()
    );
    println!(
        "RocksDB state at {}: {:.1} MiB on disk",
        state_dir.display(),
        size_on_disk(&state_dir) as f64 / (1 << 20) as f64
    );
    Ok(())
}
