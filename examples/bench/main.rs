//! The benchmark harness: one sensor workload in a topic, then on that same
//! topic, in one process: (a) the raw consume ceiling (rdkafka reading every
//! record), (b) stateless filter + project -> Kafka, (c) filter -> tumbling
//! 10 s -> Kafka, (c2) (c) in exactly-once mode, (d) the same with hopping
//! 10 s / 2 s, (e) (c) -> Cassandra, (q) (c) in Quix Streams 3.28 (Python,
//! on the same broker and input), and (e0) the raw Cassandra write
//! ceiling: the `scylla` driver alone writing (e)'s rows with the same
//! concurrency. Kafka and Cassandra are local Apache servers started for the
//! run unless `--brokers` / `FLUMEN_KAFKA_BROKERS` and `--cassandra` /
//! `FLUMEN_CASSANDRA_NODES` name running ones.
//!
//! Producing the workload is measured too, as (p): the broker's produce
//! ceiling for one producer, which bounds pipelines that write as many
//! records as they read. For each it prints records/s (first record
//! processed to the last commit of a graceful stop, which follows the
//! acknowledgement of every output; the close after it, leaving the consumer
//! group, is shown apart as "close ms"), MB/s of input, peak RSS, p50/p99 micro-batch
//! processing time, p50/p99 of a batch's wait for its acknowledgements, CPU
//! time per input record (of this process: the servers run in their own),
//! and the ratio to (a), for (e) also to (e0); as a table and as JSON lines. `--scenarios restore` measures rebuilding a
//! window store of `--restore-entries` entries from its changelog onto an
//! empty state directory (records/s there = restored changes/s).
//!
//! `cargo run --release --example bench -- --events 1000000 --devices 1000`
//!
//! With `--brokers` (or `FLUMEN_KAFKA_BROKERS`) the input topic is named after
//! the workload (`flumen-bench-<events>-<devices>-<step>ms-p<partitions>`) and
//! reused when it exists; a broker started for the run is removed with it, so
//! without one the workload is produced once per invocation.

mod lookup;
mod quix;
mod raw_cassandra;
mod source;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::datatypes::{DataType, Field, Schema};
use clap::Parser;
use flumen::lookup::LookupCache;
use flumen::prelude::*;
use flumen::Stats;
use flumen_cassandra::CassandraSink;
use flumen_kafka::Admin;
use flumen_testkit::sensor::SensorWorkload;
use flumen_testkit::{unique_name, DevStack};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Benchmarks flumen's pipelines against the raw consume ceiling.
#[derive(Parser, Debug)]
struct Args {
    /// Kafka bootstrap servers (default: FLUMEN_KAFKA_BROKERS, else a local Apache Kafka).
    #[arg(long)]
    brokers: Option<String>,
    /// Events in the workload.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Devices (keys) in the workload.
    #[arg(long, default_value_t = 1_000)]
    devices: u64,
    /// Event-time step between events, ms.
    #[arg(long, default_value_t = 1)]
    step_ms: i64,
    /// Partitions of the input topic.
    #[arg(long, default_value_t = 3)]
    partitions: i32,
    /// Scenarios to run, comma-separated: raw, stateless, tumbling,
    /// tumbling-eos (tumbling in exactly-once mode), hopping, cassandra-raw
    /// (the driver alone writing (e)'s rows), cassandra, quix ((c) in Quix
    /// Streams 3.28, installed once into a Python venv from PyPI),
    /// restore (not by default: its own workload of --restore-entries devices
    /// with one open window each, restored onto an empty state directory),
    /// source-raw and source (not by default: a table of --source-rows rows
    /// scanned by the driver alone (s0) and published into Kafka by
    /// CassandraSource's snapshot (s)), lookup, lookup-raw and
    /// lookup-nocache, lookup-eos (not by default: (c) with a Cassandra
    /// lookup of each device (l), the driver alone reading devices by key
    /// (l0), (l) without a cache (l1), (l) exactly-once, with the lookup's
    /// replay log (l2)).
    #[arg(
        long,
        default_value = "raw,stateless,tumbling,tumbling-eos,hopping,cassandra-raw,cassandra,quix"
    )]
    scenarios: String,
    /// Rows of the table that source-raw (s0) and source (s) read.
    #[arg(long, default_value_t = 1_000_000)]
    source_rows: u64,
    /// Entries of the window store the restore scenario rebuilds from its changelog.
    #[arg(long, default_value_t = 1_000_000)]
    restore_entries: u64,
    /// Cassandra contact points for (e) (default: FLUMEN_CASSANDRA_NODES, else a local Apache Cassandra).
    #[arg(long)]
    cassandra: Option<String>,
    /// The pipelines' commit interval, ms (exactly-once: one transaction each).
    #[arg(long, default_value_t = 1000)]
    commit_interval_ms: u64,
    /// Memory that batches awaiting acknowledgements may hold, MiB
    /// (ApplicationBuilder::max_unacknowledged_bytes; default: flumen's).
    #[arg(long)]
    max_unacknowledged_mb: Option<usize>,
    /// A librdkafka consumer property for (a) and the pipelines, `key=value`
    /// (repeatable), e.g. `--consumer-config queued.max.messages.kbytes=16384`.
    #[arg(long, value_parser = key_value)]
    consumer_config: Vec<(String, String)>,
    /// A librdkafka producer property for the pipelines, `key=value` (repeatable).
    #[arg(long, value_parser = key_value)]
    producer_config: Vec<(String, String)>,
}

/// Parses `key=value`.
fn key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected key=value, got '{s}'")),
    }
}

/// What one scenario measured.
#[derive(Debug, Clone, Default)]
struct Measured {
    name: &'static str,
    records: u64,
    output_rows: u64,
    seconds: f64,
    /// A pipeline's close after its last commit (not in `seconds`).
    close_seconds: Option<f64>,
    input_bytes: u64,
    peak_rss_bytes: u64,
    batch_p50_ms: Option<f64>,
    batch_p99_ms: Option<f64>,
    ack_p50_ms: Option<f64>,
    ack_p99_ms: Option<f64>,
    cpu_seconds: f64,
    /// Rows written, no input read ((e0)): no ratio to (a).
    writes_only: bool,
}

impl Measured {
    fn records_per_sec(&self) -> f64 {
        per_sec(self.records as f64, self.seconds)
    }

    fn output_rows_per_sec(&self) -> f64 {
        per_sec(self.output_rows as f64, self.seconds)
    }

    fn json(&self, ceiling: Option<f64>) -> serde_json::Value {
        let ceiling = ceiling.filter(|_| !self.writes_only);
        serde_json::json!({
            "scenario": self.name,
            "records": self.records,
            "output_rows": self.output_rows,
            "seconds": self.seconds,
            "close_ms": self.close_seconds.map(|s| 1e3 * s),
            "records_per_sec": self.records_per_sec(),
            "mb_per_sec": per_sec(self.input_bytes as f64 / 1e6, self.seconds),
            "peak_rss_mb": self.peak_rss_bytes as f64 / (1 << 20) as f64,
            "batch_p50_ms": self.batch_p50_ms,
            "batch_p99_ms": self.batch_p99_ms,
            "ack_p50_ms": self.ack_p50_ms,
            "ack_p99_ms": self.ack_p99_ms,
            "cpu_us_per_record": 1e6 * self.cpu_seconds / self.records.max(1) as f64,
            "cpu_us_per_output_row": (self.output_rows > 0)
                .then(|| 1e6 * self.cpu_seconds / self.output_rows as f64),
            "ratio_to_raw": ceiling.map(|c| self.records_per_sec() / c),
        })
    }
}

fn per_sec(amount: f64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        amount / seconds
    } else {
        0.0
    }
}

/// Process memory and CPU from /proc (Linux).
mod process {
    /// Resets the peak RSS (VmHWM) of this process, after returning the memory
    /// earlier scenarios freed to the OS (glibc keeps freed heap pages
    /// resident: 70-115 MB after producing the workload and (a)), so that a
    /// scenario's peak is its own footprint plus the process's baseline.
    pub fn reset_peak_rss() {
        release_freed_memory();
        let _ = std::fs::write("/proc/self/clear_refs", "5");
    }

    #[allow(unsafe_code)]
    fn release_freed_memory() {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim only hands free heap pages back to the kernel.
        unsafe {
            libc::malloc_trim(0);
        }
    }

    /// Peak RSS since the last reset, bytes.
    pub fn peak_rss() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmHWM:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            })
            .map_or(0, |kib| kib * 1024)
    }

    /// utime + stime of a /proc stat line, seconds.
    fn cpu_of(stat: &str) -> f64 {
        // Fields after the parenthesised name: state is field 3, utime 14, stime 15.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            return 0.0;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        // Clock ticks: USER_HZ, 100 on Linux.
        (ticks(11) + ticks(12)) / 100.0
    }

    /// CPU seconds of this process.
    pub fn cpu_seconds() -> f64 {
        std::fs::read_to_string("/proc/self/stat")
            .map(|s| cpu_of(&s))
            .unwrap_or(0.0)
    }

    /// CPU seconds of the Kafka and Cassandra servers this process started
    /// (its child processes), by server (0 for a server it did not start,
    /// e.g. one named with `--cassandra`).
    pub fn servers_cpu_seconds() -> Servers {
        let own = std::process::id().to_string();
        let mut servers = Servers::default();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let path = entry.path();
            let Ok(stat) = std::fs::read_to_string(path.join("stat")) else {
                continue;
            };
            // The parent's pid is the second field after the name.
            let parent = stat
                .rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().nth(1));
            if parent != Some(own.as_str()) {
                continue;
            }
            let command = std::fs::read(path.join("cmdline")).unwrap_or_default();
            let command = String::from_utf8_lossy(&command);
            if command.contains("CassandraDaemon") {
                servers.cassandra += cpu_of(&stat);
            } else if command.contains("kafka.Kafka") {
                servers.kafka += cpu_of(&stat);
            }
        }
        servers
    }

    /// CPU seconds of the servers.
    #[derive(Debug, Default, Clone, Copy)]
    pub struct Servers {
        pub cassandra: f64,
        pub kafka: f64,
    }

    impl std::ops::Sub for Servers {
        type Output = Servers;

        fn sub(self, earlier: Servers) -> Servers {
            Servers {
                cassandra: self.cassandra - earlier.cassandra,
                kafka: self.kafka - earlier.kafka,
            }
        }
    }
}

/// The metrics recorded so far (histograms: since the last snapshot).
type Snapshot = Vec<(
    metrics_util::CompositeKey,
    Option<metrics::Unit>,
    Option<metrics::SharedString>,
    DebugValue,
)>;

/// The sum of counter `name` over its labels.
fn counter(snapshot: &Snapshot, name: &str) -> u64 {
    let values = snapshot
        .iter()
        .filter_map(|(key, _, _, value)| match value {
            DebugValue::Counter(v) if key.key().name() == name => Some(v.to_owned()),
            _ => None,
        });
    values.sum()
}

/// p50 and p99 (ms) of the histograms `names` in `snapshot`.
fn percentiles<const N: usize>(
    snapshot: Snapshot,
    names: [&str; N],
) -> [(Option<f64>, Option<f64>); N] {
    let mut values: [Vec<f64>; N] = std::array::from_fn(|_| Vec::new());
    for (key, _, _, value) in snapshot {
        if let DebugValue::Histogram(samples) = value {
            if let Some(i) = names.iter().position(|n| *n == key.key().name()) {
                values[i].extend(samples.iter().map(|v| v.into_inner() * 1e3));
            }
        }
    }
    values.map(|mut v| {
        if v.is_empty() {
            return (None, None);
        }
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        (Some(at(0.5)), Some(at(0.99)))
    })
}

/// The input topic: produced unless a complete copy exists; with what
/// producing it measured (the broker's produce ceiling for one producer).
async fn input_topic(
    stack: &DevStack,
    args: &Args,
) -> Result<(String, Option<Measured>), BoxError> {
    let workload = SensorWorkload {
        events: args.events,
        devices: args.devices,
        step_ms: args.step_ms,
        ..Default::default()
    };
    let topic = if stack.is_local() {
        unique_name("flumen-bench")
    } else {
        format!(
            "flumen-bench-{}-{}-{}ms-p{}",
            args.events, args.devices, args.step_ms, args.partitions
        )
    };
    let admin = Admin::new(&stack.kafka_config())?;
    if admin.partition_count(&topic)?.is_some() {
        eprintln!("reusing input topic '{topic}'");
        return Ok((topic, None));
    }
    stack.create_topic(&topic, args.partitions).await?;
    process::reset_peak_rss();
    let cpu = process::cpu_seconds();
    let started = Instant::now();
    stack.produce(&topic, workload.records()).await?;
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "produced {} readings of {} devices to '{topic}' in {seconds:.1} s",
        args.events, args.devices,
    );
    let produced = Measured {
        name: "p produce workload",
        records: args.events,
        output_rows: args.events,
        seconds,
        peak_rss_bytes: process::peak_rss(),
        cpu_seconds: process::cpu_seconds() - cpu,
        ..Measured::default()
    };
    Ok((topic, Some(produced)))
}

/// Settings that made (a) faster on Apache Kafka 4.4 (one broker, 2 cores,
/// 1,000,000 records of ~80 bytes, 3 partitions), three runs each:
/// flumen's fetch defaults alone 1.12-1.21M records/s; with
/// `max.partition.fetch.bytes` 10 MB 1.25-1.33M; plus 256 MB of prefetch
/// (`queued.max.messages.kbytes`) 1.41-1.44M; plus `fetch.min.bytes` 1 MB
/// 1.52-1.80M; a 4 MB `fetch.min.bytes` or a 1 GB prefetch did not help
/// (1.18-1.53M). On flumen's own consumer they did not speed up (c) (two runs:
/// 0.51-0.59M default, 0.55-0.61M tuned) and cost 150 MB of peak RSS, so
/// flumen keeps its defaults (and `fetch.min.bytes` would add up to
/// `fetch.wait.max.ms` of latency on quiet topics).
const RAW_TUNING: &[(&str, &str)] = &[
    ("max.partition.fetch.bytes", "10485760"),
    ("queued.max.messages.kbytes", "262144"),
    ("fetch.min.bytes", "1048576"),
];

/// (a): every record read with a plain rdkafka consumer, no processing.
fn raw_consume(stack: &DevStack, topic: &str, args: &Args) -> Result<Measured, BoxError> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", stack.brokers())
        .set("group.id", unique_name("bench-raw"))
        .set("enable.auto.commit", "false");
    // flumen's fetch settings, then what made a bare consumer fastest here
    // (tuned until it stopped improving; see RAW_TUNING), so that (a) is the
    // best a bare rdkafka consumer does on this broker.
    for (k, v) in flumen_kafka::FETCH_DEFAULTS.iter().chain(RAW_TUNING) {
        config.set(*k, *v);
    }
    for (k, v) in stack.consumer_settings() {
        config.set(k, v);
    }
    for (k, v) in &args.consumer_config {
        config.set(k, v);
    }
    let consumer: BaseConsumer = config.create()?;
    let mut assignment = TopicPartitionList::new();
    for p in 0..args.partitions {
        assignment.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let cpu = process::cpu_seconds();
    let (mut records, mut bytes) = (0u64, 0u64);
    let (mut first, mut last) = (None, Instant::now());
    let mut idle_since = Instant::now();
    while records < args.events {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                let now = Instant::now();
                first.get_or_insert(now);
                last = now;
                idle_since = now;
                records += 1;
                bytes += (message.payload_len() + message.key().map_or(0, <[u8]>::len)) as u64;
            }
            Some(Err(e)) => return Err(format!("raw consume of '{topic}': {e}").into()),
            None if idle_since.elapsed() > Duration::from_secs(30) => {
                return Err(format!(
                "topic '{topic}' holds only {records} of {} records; delete it to produce it again",
                args.events
            )
                .into())
            }
            None => {}
        }
    }
    Ok(Measured {
        name: "a raw consume",
        records,
        seconds: first.map_or(0.0, |f| last.duration_since(f).as_secs_f64()),
        input_bytes: bytes,
        cpu_seconds: process::cpu_seconds() - cpu,
        ..Default::default()
    })
}

/// The input frame: readings with event time from `ts`, `temp >= 0`.
fn readings(app: &Application, topic: &str) -> flumen::Result<StreamingDataFrame> {
    Ok(app
        .dataframe(
            Topic::json(topic)
                .schema(Schema::new(vec![
                    Field::new("device", DataType::Utf8, false),
                    Field::new("ts", DataType::Int64, false),
                    Field::new("temp", DataType::Float64, false),
                ]))
                .timestamp_field("ts"),
        )?
        .filter(col("temp").gt_eq(lit(0.0))))
}

/// How long a timed run took.
struct Timed {
    /// From the first record processed to the last commit of the stop
    /// (offsets, or the transaction in exactly-once mode), which is made
    /// only once every output was acknowledged; if that commit was not seen,
    /// to the end of the stop.
    seconds: f64,
    /// From that commit until the run returned (leaving the consumer group).
    close_seconds: f64,
}

/// Runs `app` until it has read `events` records, then stops it gracefully,
/// so buffered outputs are not counted as done.
async fn run_timed(app: Application, events: u64) -> Result<(Timed, Arc<Stats>), BoxError> {
    let stats = app.stats();
    let stop = app.stop_handle();
    let commits = |s: &Stats| s.offset_commits() + s.transactions_committed();
    let done = Arc::new(AtomicBool::new(false));
    // Returns when the first record was read and the last commit seen after
    // the stop was asked.
    let watcher = {
        let (stats, done) = (Arc::clone(&stats), Arc::clone(&done));
        tokio::spawn(async move {
            let (mut first, mut committed) = (None, None);
            let (mut stopped, mut commits_seen) = (false, 0);
            while !done.load(Ordering::Relaxed) {
                let now = Instant::now();
                if stats.records_in() > 0 {
                    first.get_or_insert(now);
                }
                if stopped && commits(&stats) > commits_seen {
                    commits_seen = commits(&stats);
                    committed = Some(now);
                }
                if !stopped && stats.records_in() >= events {
                    commits_seen = commits(&stats);
                    stopped = true;
                    stop.stop();
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            (first, committed)
        })
    };
    let result = app.run().await;
    let returned = Instant::now();
    done.store(true, Ordering::Relaxed);
    let (first, committed) = watcher.await?;
    result?;
    let first = first.unwrap_or(returned);
    let end = committed.unwrap_or(returned);
    Ok((
        Timed {
            seconds: end.duration_since(first).as_secs_f64(),
            close_seconds: returned.duration_since(end).as_secs_f64(),
        },
        stats,
    ))
}

/// The restore scenario: `entries` devices with one reading each, all in one
/// 10 s window (so the store holds one open window per device), read by a
/// first run; a second run of the same group on an empty state directory
/// restores them from the changelog (timed from the first restored change to
/// the last), then one record per partition past the window closes them all:
/// every device's window must be emitted.
async fn restore(stack: &DevStack, args: &Args) -> Result<Measured, BoxError> {
    let input = unique_name("bench-restore");
    stack.create_topic(&input, args.partitions).await?;
    let workload = SensorWorkload {
        events: args.restore_entries,
        devices: args.restore_entries,
        step_ms: 0,
        ..Default::default()
    };
    stack.produce(&input, workload.records()).await?;
    // Readings below 0 are filtered out: one window per kept reading.
    let entries = workload.readings().filter(|r| r.temp >= 0.0).count() as u64;
    let output = unique_name("bench-restore-out");
    stack.create_topic(&output, args.partitions).await?;
    let group = unique_name("bench-restore");
    let app = |state: &Path| -> Result<Application, BoxError> {
        let mut builder = flumen::Application::builder()
            .brokers(stack.brokers())
            .consumer_group(&group)
            .state_dir(state);
        for (k, v) in stack.consumer_settings() {
            builder = builder.consumer_config(k, v);
        }
        let app = builder.build()?;
        readings(&app, &input)?
            .tumbling_window(Duration::from_secs(10))
            .agg([flumen::window::count()])
            .final_()
            .to_topic(Topic::json(&output));
        Ok(app)
    };
    let first = tempfile::tempdir()?;
    run_timed(app(first.path())?, args.restore_entries).await?;

    let empty = tempfile::tempdir()?;
    let second = app(empty.path())?;
    let stats = second.stats();
    let stop = second.stop_handle();
    let mut running = tokio::spawn(async move { second.run().await });
    let cpu = process::cpu_seconds();
    let (since, already) = wait_for_restore(&stats, &mut running, &stop, entries).await?;
    let seconds = since.elapsed().as_secs_f64();
    let cpu_seconds = process::cpu_seconds() - cpu;
    // One reading per partition 20 s later closes every window.
    let closing = (0..args.partitions).map(|p| {
        let ts = workload.start_ms + 20_000;
        let value = format!(r#"{{"device":"closer-{p}","ts":{ts},"temp":1.0}}"#);
        flumen_testkit::topics::TestRecord::new(format!("closer-{p}"), value).to_partition(p)
    });
    stack.produce(&input, closing).await?;
    let emitted = Instant::now();
    while stats.records_out() < entries && emitted.elapsed() < Duration::from_secs(300) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.stop();
    running.await??;
    if stats.records_out() != entries {
        return Err(format!(
            "after the restore {} of {entries} windows were emitted",
            stats.records_out()
        )
        .into());
    }
    Ok(Measured {
        name: "f restore from changelog",
        records: entries - already,
        output_rows: stats.records_out(),
        seconds,
        cpu_seconds,
        ..Default::default()
    })
}

/// Waits until `entries` changes are restored; returns when the first was
/// seen and how many were restored by then.
async fn wait_for_restore(
    stats: &Stats,
    running: &mut tokio::task::JoinHandle<flumen::Result<()>>,
    stop: &flumen::StopHandle,
    entries: u64,
) -> Result<(Instant, u64), BoxError> {
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut first_seen: Option<(Instant, u64)> = None;
    while stats.restored_changes() < entries {
        if Instant::now() > deadline || running.is_finished() {
            stop.stop();
            let ended = match running.await {
                Ok(Ok(())) => "a clean stop".to_string(),
                Ok(Err(e)) => e.to_string(),
                Err(e) => e.to_string(),
            };
            return Err(format!(
                "restored {} of {entries} changes; the run ended with: {ended}",
                stats.restored_changes()
            )
            .into());
        }
        let restored = stats.restored_changes();
        if restored > 0 && first_seen.is_none() {
            first_seen = Some((Instant::now(), restored));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(first_seen.unwrap_or((Instant::now(), 0)))
}

/// Which flumen pipeline a scenario runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pipeline {
    Stateless,
    Tumbling,
    TumblingExactlyOnce,
    Hopping,
    Cassandra,
    Lookup,
    LookupNoCache,
    LookupExactlyOnce,
}

impl Pipeline {
    fn label(self) -> &'static str {
        match self {
            Pipeline::Stateless => "b stateless -> kafka",
            Pipeline::Tumbling => "c tumbling -> kafka",
            Pipeline::TumblingExactlyOnce => "c2 (c) exactly-once",
            Pipeline::Hopping => "d hopping -> kafka",
            Pipeline::Cassandra => "e tumbling -> cassandra",
            Pipeline::Lookup => "l (c) with a lookup",
            Pipeline::LookupNoCache => "l1 (l) without a cache",
            Pipeline::LookupExactlyOnce => "l2 (l) exactly-once (replay log)",
        }
    }
}

/// The application of `pipeline`, with its state in `state` and the
/// settings `args` asks for.
fn pipeline_app(
    stack: &DevStack,
    args: &Args,
    pipeline: Pipeline,
    state: &std::path::Path,
) -> Result<Application, BoxError> {
    let exactly_once = [Pipeline::TumblingExactlyOnce, Pipeline::LookupExactlyOnce];
    let guarantee = if exactly_once.contains(&pipeline) {
        ProcessingGuarantee::ExactlyOnce
    } else {
        ProcessingGuarantee::AtLeastOnce
    };
    let mut builder = flumen_examples::dev_app(stack, "bench")
        .state_dir(state)
        .processing_guarantee(guarantee)
        .commit_interval(Duration::from_millis(args.commit_interval_ms));
    if let Some(mb) = args.max_unacknowledged_mb {
        builder = builder.max_unacknowledged_bytes(mb << 20);
    }
    for (k, v) in &args.consumer_config {
        builder = builder.consumer_config(k, v);
    }
    for (k, v) in &args.producer_config {
        builder = builder.producer_config(k, v);
    }
    Ok(builder.build()?)
}

async fn run_pipeline(
    stack: &DevStack,
    topic: &str,
    args: &Args,
    pipeline: Pipeline,
    cassandra: &str,
) -> Result<Measured, BoxError> {
    let state = tempfile::tempdir()?;
    let app = pipeline_app(stack, args, pipeline, state.path())?;
    let frame = readings(&app, topic)?;
    let output = unique_name("bench-out");
    if pipeline != Pipeline::Cassandra {
        stack.create_topic(&output, args.partitions).await?;
    }
    let tumbling = || frame.clone().tumbling_window(Duration::from_secs(10));
    match pipeline {
        Pipeline::Stateless => frame
            .select([
                col("device"),
                col("ts"),
                (col("temp") * lit(1.8) + lit(32.0)).alias("temp_f"),
            ])
            .to_topic(Topic::json(&output)),
        Pipeline::Tumbling | Pipeline::TumblingExactlyOnce => tumbling()
            .agg(flumen_examples::temperature_aggregations())
            .final_()
            .to_topic(Topic::json(&output)),
        Pipeline::Hopping => frame
            .clone()
            .hopping_window(Duration::from_secs(10), Duration::from_secs(2))
            .agg(flumen_examples::temperature_aggregations())
            .final_()
            .to_topic(Topic::json(&output)),
        Pipeline::Lookup | Pipeline::LookupNoCache | Pipeline::LookupExactlyOnce => {
            let cache = match pipeline {
                Pipeline::LookupNoCache => LookupCache::disabled(),
                _ => LookupCache::default(),
            };
            lookup::enriched(&frame, cassandra, cache)
                .tumbling_window(Duration::from_secs(10))
                .agg(flumen_examples::temperature_aggregations())
                .final_()
                .to_topic(Topic::json(&output))
        }
        Pipeline::Cassandra => tumbling()
            .agg(flumen_examples::temperature_aggregations())
            .final_()
            .select(flumen_examples::device_temp_columns())
            .sink(CassandraSink::new("bench.device_temp").nodes(cassandra)),
    }
    let cpu = process::cpu_seconds();
    let (timed, stats) = run_timed(app, args.events).await?;
    Ok(Measured {
        name: pipeline.label(),
        records: stats.records_in(),
        output_rows: stats.records_out(),
        seconds: timed.seconds,
        close_seconds: Some(timed.close_seconds),
        cpu_seconds: process::cpu_seconds() - cpu,
        ..Default::default()
    })
}

/// (e)'s rows written per second against (e0), the driver alone.
fn print_cassandra_ratio(results: &[Measured]) {
    let find = |prefix: &str| results.iter().find(|m| m.name.starts_with(prefix));
    if let (Some(e), Some(e0)) = (find("e "), find("e0 ")) {
        let ratio = e.output_rows_per_sec() / e0.output_rows_per_sec().max(f64::MIN_POSITIVE);
        println!(
            "{}",
            serde_json::json!({
                "scenario": "e vs e0",
                "e_rows_per_sec": e.output_rows_per_sec(),
                "e0_rows_per_sec": e0.output_rows_per_sec(),
                "ratio_to_cassandra_ceiling": ratio,
            })
        );
        println!(
            "(e) wrote {:.0} rows/s into Cassandra: {:.0}% of (e0), the driver alone ({:.0} rows/s)",
            e.output_rows_per_sec(),
            100.0 * ratio,
            e0.output_rows_per_sec()
        );
    }
}

/// `name`'s rows/s against `ceiling`'s, when both ran.
fn print_ratio(results: &[Measured], name: &str, ceiling: &str, what: &str) {
    let find = |prefix: &str| results.iter().find(|m| m.name.starts_with(prefix));
    if let (Some(m), Some(c)) = (find(name), find(ceiling)) {
        let ratio = m.output_rows_per_sec() / c.output_rows_per_sec().max(f64::MIN_POSITIVE);
        println!(
            "{}",
            serde_json::json!({ "scenario": what, "rows_per_sec": m.output_rows_per_sec(),
                "ceiling_rows_per_sec": c.output_rows_per_sec(), "ratio": ratio })
        );
        println!(
            "{what}: {:.0} rows/s, {:.0}% of {:.0} rows/s",
            m.output_rows_per_sec(),
            100.0 * ratio,
            c.output_rows_per_sec()
        );
    }
}

fn print_table(results: &[Measured], ceiling: Option<f64>) {
    println!(
        "\n{:<24} {:>10} {:>12} {:>8} {:>9} {:>9} {:>9} {:>9} {:>10} {:>8} {:>9}",
        "scenario",
        "records",
        "records/s",
        "MB/s",
        "RSS MB",
        "p50 ms",
        "p99 ms",
        "ack p99",
        "CPU us/rec",
        "vs raw",
        "close ms"
    );
    let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
    for m in results {
        println!(
            "{:<24} {:>10} {:>12.0} {:>8.1} {:>9.0} {:>9} {:>9} {:>9} {:>10.2} {:>8} {:>9}",
            m.name,
            m.records,
            m.records_per_sec(),
            per_sec(m.input_bytes as f64 / 1e6, m.seconds),
            m.peak_rss_bytes as f64 / (1 << 20) as f64,
            ms(m.batch_p50_ms),
            ms(m.batch_p99_ms),
            ms(m.ack_p99_ms),
            1e6 * m.cpu_seconds / m.records.max(1) as f64,
            ceiling
                .filter(|_| !m.writes_only)
                .map_or("-".to_string(), |c| format!(
                    "{:.0}%",
                    100.0 * m.records_per_sec() / c
                )),
            ms(m.close_seconds.map(|s| 1e3 * s)),
        );
    }
    println!();
    for m in results {
        println!("{}", m.json(ceiling));
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    flumen_examples::init_logging();
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .map_err(|e| format!("installing the metrics recorder: {e}"))?;
    let args = Args::parse();
    let allocator = if flumen_kafka::JEMALLOC {
        "jemalloc"
    } else {
        "the system's"
    };
    eprintln!("allocator: {allocator} (flumen's `jemalloc` feature)");
    let stack = match args
        .brokers
        .clone()
        .or_else(|| flumen_examples::env("FLUMEN_KAFKA_BROKERS"))
    {
        Some(brokers) => DevStack::connect(brokers),
        None => flumen_examples::start_dev_stack()?,
    };
    let wanted: Vec<&str> = args.scenarios.split(',').map(str::trim).collect();
    let mut results = Vec::new();
    let own_input = |s: &&str| *s != "restore" && !s.starts_with("source");
    let topic = if wanted.iter().any(own_input) {
        let (topic, produced) = input_topic(&stack, &args).await?;
        results.extend(produced);
        topic
    } else {
        String::new()
    };
    let (cassandra, _server) = cassandra_nodes(&args, &wanted)?;
    let scenarios = Scenarios {
        sessions: Sessions::prepare(&cassandra, &wanted, (args.source_rows, args.devices)).await?,
        stack: &stack,
        topic: &topic,
        args: &args,
        cassandra: &cassandra,
    };
    let mut input_bytes = 0;
    for name in SCENARIOS.into_iter().filter(|n| wanted.contains(n)) {
        eprintln!("running {name}...");
        process::reset_peak_rss();
        let before = snapshotter.snapshot().into_vec();
        let Some(mut measured) = scenarios.run(name).await? else {
            continue;
        };
        let after = snapshotter.snapshot().into_vec();
        if name == "lookup-nocache" {
            // (l1)'s output: the keys it read from Cassandra.
            let misses = "flumen_lookup_misses_total";
            measured.output_rows = counter(&after, misses) - counter(&before, misses);
        }
        if name == "raw" {
            input_bytes = measured.input_bytes;
        }
        // (q) reports its own process's peak; (s) its peak before it reads
        // its topic back to check it.
        if measured.peak_rss_bytes == 0 {
            measured.peak_rss_bytes = process::peak_rss();
        }
        let [batch, ack] = percentiles(after, ["flumen_batch_seconds", "flumen_ack_seconds"]);
        (measured.batch_p50_ms, measured.batch_p99_ms) = batch;
        (measured.ack_p50_ms, measured.ack_p99_ms) = ack;
        results.push(measured);
    }
    print_results(&mut results, input_bytes);
    Ok(())
}

/// The scenarios in the order they run.
const SCENARIOS: [&str; 15] = [
    "raw",
    "stateless",
    "tumbling",
    "tumbling-eos",
    "hopping",
    "lookup",
    "lookup-raw",
    "lookup-nocache",
    "lookup-eos",
    "cassandra-raw",
    "cassandra",
    "quix",
    "restore",
    "source-raw",
    "source",
];

/// The Cassandra contact points, starting a local Cassandra (kept alive by
/// the returned server) when a wanted scenario needs one and none is named.
fn cassandra_nodes(
    args: &Args,
    wanted: &[&str],
) -> Result<(String, Option<flumen_testkit::DevCassandra>), BoxError> {
    let named = args
        .cassandra
        .clone()
        .or_else(|| flumen_examples::env("FLUMEN_CASSANDRA_NODES"));
    let needed = wanted.iter().any(|s| {
        ["cassandra", "source", "lookup"]
            .iter()
            .any(|p| s.starts_with(p))
    });
    Ok(match named {
        Some(nodes) => (nodes, None),
        None if needed => {
            let cassandra = flumen_examples::start_cassandra()?;
            (cassandra.nodes().to_string(), Some(cassandra))
        }
        None => (String::new(), None),
    })
}

/// `name`'s input records/s against `base`'s, when both ran.
fn print_input_ratio(results: &[Measured], name: &str, base: &str, what: &str) {
    let find = |prefix: &str| results.iter().find(|m| m.name.starts_with(prefix));
    if let (Some(m), Some(b)) = (find(name), find(base)) {
        let ratio = m.records_per_sec() / b.records_per_sec().max(f64::MIN_POSITIVE);
        println!(
            "{}",
            serde_json::json!({ "scenario": what, "records_per_sec": m.records_per_sec(),
                "base_records_per_sec": b.records_per_sec(), "ratio": ratio })
        );
        println!(
            "{what}: {:.0} records/s, {:.0}% of {:.0} records/s",
            m.records_per_sec(),
            100.0 * ratio,
            b.records_per_sec()
        );
    }
}

/// The sessions of the scenarios that use the driver directly.
struct Sessions {
    /// (e0): the raw write ceiling.
    raw_write: Option<scylla::client::session::Session>,
    /// (s0): the raw scan ceiling.
    raw_scan: Option<scylla::client::session::Session>,
    /// (l0): the raw read ceiling.
    raw_read: Option<scylla::client::session::Session>,
}

impl Sessions {
    /// Creates the scenarios' tables (and the source's rows).
    async fn prepare(
        nodes: &str,
        wanted: &[&str],
        (source_rows, devices): (u64, u64),
    ) -> Result<Self, BoxError> {
        let table = |name: &'static str| async move {
            flumen_examples::cassandra::prepare_table(nodes, "bench", name)
                .await
                .map_err(|e| e.to_string())
        };
        let mut sessions = Sessions {
            raw_write: None,
            raw_scan: None,
            raw_read: None,
        };
        if wanted.iter().any(|s| s.starts_with("lookup")) {
            let session = table("device_temp").await?;
            lookup::prepare(&session, devices).await?;
            sessions.raw_read = Some(session);
        }
        if wanted.iter().any(|s| s.starts_with("cassandra")) {
            table("device_temp").await?;
            sessions.raw_write = Some(table("device_temp_raw").await?);
        }
        if wanted.iter().any(|s| s.starts_with("source")) {
            let session = table("device_temp").await?;
            source::prepare(&session, source_rows).await?;
            sessions.raw_scan = Some(session);
        }
        Ok(sessions)
    }
}

/// What every scenario runs against.
struct Scenarios<'a> {
    sessions: Sessions,
    stack: &'a DevStack,
    topic: &'a str,
    args: &'a Args,
    cassandra: &'a str,
}

impl Scenarios<'_> {
    /// Runs scenario `name` (`None`: it cannot run here).
    async fn run(&self, name: &str) -> Result<Option<Measured>, BoxError> {
        let (stack, args) = (self.stack, self.args);
        let pipeline = |p| run_pipeline(stack, self.topic, args, p, self.cassandra);
        Ok(Some(match name {
            "raw" => raw_consume(stack, self.topic, args)?,
            "stateless" => pipeline(Pipeline::Stateless).await?,
            "tumbling" => pipeline(Pipeline::Tumbling).await?,
            "tumbling-eos" => pipeline(Pipeline::TumblingExactlyOnce).await?,
            "hopping" => pipeline(Pipeline::Hopping).await?,
            "cassandra-raw" => match &self.sessions.raw_write {
                Some(session) => {
                    let workload = SensorWorkload {
                        events: args.events,
                        devices: args.devices,
                        step_ms: args.step_ms,
                        ..Default::default()
                    };
                    raw_cassandra::raw_cassandra_write(session, "bench", &workload).await?
                }
                None => return Ok(None),
            },
            "cassandra" => pipeline(Pipeline::Cassandra).await?,
            "lookup" => pipeline(Pipeline::Lookup).await?,
            "lookup-nocache" => pipeline(Pipeline::LookupNoCache).await?,
            "lookup-eos" => pipeline(Pipeline::LookupExactlyOnce).await?,
            "lookup-raw" => match &self.sessions.raw_read {
                Some(session) => lookup::raw_reads(session, args.devices).await?,
                None => return Ok(None),
            },
            "quix" => quix::quix_tumbling(stack, self.topic, args.events, args.partitions).await?,
            "source-raw" => match &self.sessions.raw_scan {
                Some(session) => source::raw_scan(session).await?,
                None => return Ok(None),
            },
            "source" => source::snapshot(stack, self.cassandra, args.source_rows).await?,
            _ => restore(stack, args).await?,
        }))
    }
}

/// Fills in the input bytes and prints the table and the ratios.
fn print_results(results: &mut [Measured], input_bytes: u64) {
    // Every scenario read the same input as (a).
    for m in results
        .iter_mut()
        .filter(|m| m.input_bytes == 0 && !m.writes_only)
    {
        m.input_bytes = input_bytes;
    }
    let ceiling = results
        .iter()
        .find(|m| m.name.starts_with("a "))
        .map(Measured::records_per_sec);
    print_table(results, ceiling);
    print_cassandra_ratio(results);
    print_ratio(results, "s ", "s0 ", "source snapshot vs the driver's scan");
    print_ratio(
        results,
        "l1 ",
        "l0 ",
        "lookups without a cache vs the driver's reads",
    );
    print_input_ratio(
        results,
        "l ",
        "c ",
        "(l) with a warm lookup cache vs (c) without the lookup",
    );
}
