//! The quickstart's pipeline, parameterized for benchmarks and comparisons:
//! sensor readings -> `temp >= 0` -> tumbling or hopping windows per device
//! (count, sum, min, max, mean) -> Cassandra, a Kafka topic, or stdout.
//!
//! ```sh
//! cargo run --release --example sensor_metrics -- --events 1000000 --devices 1000 --step-ms 1 \
//!     --window tumbling:10s --sink cassandra --dump-table /tmp/rows.jsonl
//! ```
//!
//! Without `--brokers` (or `FLUMEN_KAFKA_BROKERS`) it starts a local Apache
//! Kafka; without `--cassandra` (or `FLUMEN_CASSANDRA_NODES`) a local Apache
//! Cassandra, for the run.
//! Without `--input` it generates `--events` readings into a new topic and
//! stops once it has read them all. The last line on stdout is JSON:
//! `{"input_records", "output_rows", "seconds", "records_per_sec"}`, seconds
//! from the first record processed to the last.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::datatypes::{DataType, Field, Schema};
use clap::Parser;
use flumen::prelude::*;
use flumen::{Stats, StopHandle};
use flumen_cassandra::CassandraSink;
use flumen_testkit::sensor::SensorWorkload;
use flumen_testkit::{unique_name, DevStack};

#[derive(Parser, Debug)]
#[command(about = "The sensor metrics pipeline, parameterized")]
struct Args {
    /// Kafka bootstrap servers (default: FLUMEN_KAFKA_BROKERS, else a local Apache Kafka).
    #[arg(long)]
    brokers: Option<String>,
    /// Input topic (default: a new topic with generated readings).
    #[arg(long)]
    input: Option<String>,
    /// Consumer group (default: a new one).
    #[arg(long)]
    group: Option<String>,
    /// `tumbling:SIZE` or `hopping:SIZE:STEP`, e.g. `tumbling:10s`, `hopping:10s:2s`.
    #[arg(long, default_value = "tumbling:10s")]
    window: String,
    /// How long a window accepts late readings after its end.
    #[arg(long, default_value = "0s")]
    grace: String,
    /// `cassandra`, `kafka:TOPIC` or `stdout`.
    #[arg(long, default_value = "cassandra")]
    sink: String,
    /// Cassandra contact points (default: FLUMEN_CASSANDRA_NODES, else a local Apache Cassandra).
    #[arg(long)]
    cassandra: Option<String>,
    /// Keyspace of the table.
    #[arg(long, default_value = "metrics")]
    keyspace: String,
    /// Table name.
    #[arg(long, default_value = "device_temp")]
    table: String,
    /// After the run, read the table back and write its rows as JSON lines here.
    #[arg(long)]
    dump_table: Option<PathBuf>,
    /// Readings to generate (without --input).
    #[arg(long, default_value_t = 100_000)]
    events: u64,
    /// Devices (keys) of the generated readings.
    #[arg(long, default_value_t = 100)]
    devices: u64,
    /// Event time between generated readings, in ms.
    #[arg(long, default_value_t = 10)]
    step_ms: i64,
    /// Commit and exit once no input has arrived for this many seconds (counted
    /// from the assignment of the partitions when nothing arrives at all).
    #[arg(long)]
    exit_when_idle: Option<u64>,
    /// Where the RocksDB state lives (default: under the system temp dir, per group).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Exactly-once processing: outputs, changelogs and offsets commit in one
    /// Kafka transaction per partition and commit interval.
    #[arg(long)]
    exactly_once: bool,
}

/// `10s`, `500ms`, `2m`, `1h`.
fn duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (number, unit) = t
        .find(|c: char| !c.is_ascii_digit())
        .map_or((t, ""), |i| t.split_at(i));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a duration like 10s, 500ms, 2m"))?;
    Ok(match unit {
        "ms" => Duration::from_millis(n),
        "s" | "" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(format!("'{text}': unknown unit '{unit}' (ms, s, m, h)")),
    })
}

/// The window spec: (size, step).
fn window(text: &str) -> Result<(Duration, Duration), String> {
    let parts: Vec<&str> = text.split(':').collect();
    match parts.as_slice() {
        ["tumbling", size] => {
            let size = duration(size)?;
            Ok((size, size))
        }
        ["hopping", size, step] => Ok((duration(size)?, duration(step)?)),
        _ => Err(format!(
            "--window '{text}': expected tumbling:SIZE or hopping:SIZE:STEP"
        )),
    }
}

enum Output {
    Cassandra(String, Box<scylla::client::session::Session>),
    Kafka(String),
    Stdout,
}

type BoxError = Box<dyn std::error::Error>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    flumen_examples::init_logging();
    let args = Args::parse();
    // A local broker, when started, runs as long as `stack` lives.
    let stack = match args
        .brokers
        .clone()
        .or_else(|| flumen_examples::env("FLUMEN_KAFKA_BROKERS"))
    {
        Some(brokers) => DevStack::connect(brokers),
        None => flumen_examples::start_dev_stack()?,
    };
    // So does a local Cassandra, with `_server`.
    let (output, _server) = open_output(&args, &stack).await?;
    let (input, generated) = prepare_input(&args, &stack).await?;
    let app = build_app(&args, &stack, &input, &output)?;

    let stats = app.stats();
    let span: Arc<Mutex<Option<(Instant, Instant)>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let watch = Watch {
        stats: Arc::clone(&stats),
        stop: app.stop_handle(),
        span: Arc::clone(&span),
        done: Arc::clone(&done),
        generated,
        idle: args.exit_when_idle.map(Duration::from_secs),
    };
    tokio::spawn(watch.run());
    app.run().await?;
    done.store(true, Ordering::Relaxed);

    if let (Output::Cassandra(_, session), Some(path)) = (&output, &args.dump_table) {
        dump_table(session, &args, path).await?;
    }
    let seconds = lock(&span).map_or(0.0, |(first, last)| {
        last.duration_since(first).as_secs_f64()
    });
    let input_records = stats.records_in();
    println!(
        "{}",
        serde_json::json!({
            "input_records": input_records,
            "output_rows": stats.records_out(),
            "seconds": seconds,
            "records_per_sec": if seconds > 0.0 { input_records as f64 / seconds } else { 0.0 },
        })
    );
    Ok(())
}

/// The sink `--sink` names (preparing its table or topic), and the local
/// Cassandra started for it, if one was.
async fn open_output(
    args: &Args,
    stack: &DevStack,
) -> Result<(Output, Option<flumen_testkit::DevCassandra>), BoxError> {
    match args.sink.as_str() {
        "cassandra" => {
            let mut server = None;
            let nodes = match args
                .cassandra
                .clone()
                .or_else(|| flumen_examples::env("FLUMEN_CASSANDRA_NODES"))
            {
                Some(nodes) => nodes,
                None => {
                    let cassandra = flumen_examples::start_cassandra()?;
                    let node = cassandra.nodes().to_string();
                    server = Some(cassandra);
                    node
                }
            };
            let session =
                flumen_examples::cassandra::prepare_table(&nodes, &args.keyspace, &args.table)
                    .await?;
            Ok((Output::Cassandra(nodes, Box::new(session)), server))
        }
        "stdout" => Ok((Output::Stdout, None)),
        other => match other.strip_prefix("kafka:") {
            Some(topic) if !topic.is_empty() => {
                stack.create_topic(topic, 3).await?;
                Ok((Output::Kafka(topic.to_string()), None))
            }
            _ => Err(format!("--sink '{other}': expected cassandra, kafka:TOPIC or stdout").into()),
        },
    }
}

/// The input topic, and how many readings were generated into it (none when
/// `--input` names one).
async fn prepare_input(args: &Args, stack: &DevStack) -> Result<(String, Option<u64>), BoxError> {
    if let Some(topic) = &args.input {
        return Ok((topic.clone(), None));
    }
    let topic = unique_name("readings");
    stack.create_topic(&topic, 3).await?;
    let workload = SensorWorkload {
        events: args.events,
        devices: args.devices,
        step_ms: args.step_ms,
        ..Default::default()
    };
    stack.produce(&topic, workload.records()).await?;
    eprintln!("produced {} readings to '{topic}'", args.events);
    Ok((topic, Some(args.events)))
}

/// The application: readings of `input` -> `temp >= 0` -> windows -> `output`.
fn build_app(
    args: &Args,
    stack: &DevStack,
    input: &str,
    output: &Output,
) -> Result<Application, BoxError> {
    let (size, step) = window(&args.window)?;
    let grace = duration(&args.grace)?;
    let group = args
        .group
        .clone()
        .unwrap_or_else(|| unique_name("sensor-metrics"));
    let mut builder = Application::builder()
        .brokers(stack.brokers())
        .consumer_group(&group);
    for (k, v) in stack.consumer_settings() {
        builder = builder.consumer_config(k, v);
    }
    if let Some(dir) = &args.state_dir {
        builder = builder.state_dir(dir);
    }
    if args.exactly_once {
        builder = builder.processing_guarantee(ProcessingGuarantee::ExactlyOnce);
    }
    let app = builder.build()?;
    let readings = app
        .dataframe(
            Topic::json(input)
                .schema(Schema::new(vec![
                    Field::new("device", DataType::Utf8, false),
                    Field::new("ts", DataType::Int64, false),
                    Field::new("temp", DataType::Float64, false),
                ]))
                .timestamp_field("ts"),
        )?
        .filter(col("temp").gt_eq(lit(0.0)));
    let windowed = if size == step {
        readings.tumbling_window(size)
    } else {
        readings.hopping_window(size, step)
    };
    let windows = windowed
        .grace(grace)
        .agg(flumen_examples::temperature_aggregations())
        .final_()
        .select(flumen_examples::device_temp_columns());
    match output {
        Output::Cassandra(nodes, _) => windows
            .sink(CassandraSink::new(&format!("{}.{}", args.keyspace, args.table)).nodes(nodes)),
        Output::Kafka(topic) => windows.to_topic(Topic::json(topic)),
        Output::Stdout => windows.print(),
    }
    Ok(app)
}

/// Watches the input while the application runs: the first and last record
/// processed (`span`), and the stop once every generated reading was read
/// or nothing arrived for `idle`.
struct Watch {
    stats: Arc<Stats>,
    stop: StopHandle,
    span: Arc<Mutex<Option<(Instant, Instant)>>>,
    done: Arc<AtomicBool>,
    generated: Option<u64>,
    idle: Option<Duration>,
}

impl Watch {
    async fn run(self) {
        let mut seen = 0;
        let mut restored = 0;
        // A run with nothing left to read is idle from its assignment on
        // (or from the last state change it restored: a restore is work).
        let mut assigned_at = None;
        while !self.done.load(Ordering::Relaxed) {
            let now = Instant::now();
            let read = self.stats.records_in();
            if self.stats.restored_changes() > restored {
                restored = self.stats.restored_changes();
                assigned_at = Some(now);
            }
            if read > seen {
                seen = read;
                let mut span = lock(&self.span);
                let first = span.map_or(now, |(f, _)| f);
                *span = Some((first, now));
            }
            let last = lock(&self.span).map(|(_, l)| l);
            let all_read = self.generated.is_some_and(|n| read >= n);
            if assigned_at.is_none() && self.stats.assigned_partitions() > 0 {
                assigned_at = Some(now);
            }
            let idle_for = last.or(assigned_at).map(|l| now.duration_since(l));
            if all_read || self.idle.zip(idle_for).is_some_and(|(limit, d)| d >= limit) {
                self.stop.stop();
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Writes the table's rows as JSON lines to `path`.
async fn dump_table(
    session: &scylla::client::session::Session,
    args: &Args,
    path: &std::path::Path,
) -> Result<(), BoxError> {
    let rows = flumen_examples::cassandra::read_rows(session, &args.keyspace, &args.table).await?;
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    for row in &rows {
        writeln!(file, "{}", flumen_examples::cassandra::row_json(row))?;
    }
    file.flush()?;
    eprintln!("wrote {} rows to {}", rows.len(), path.display());
    Ok(())
}
