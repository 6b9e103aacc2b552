//! Publishes a Cassandra table into a Kafka topic with `CassandraSource`: a
//! snapshot by token ranges, then (with `--capture`) change capture, until
//! Ctrl-C or SIGTERM. Progress goes to stdout, one line per `--progress`
//! interval: `pass P ranges D/T rows N lag L`. A restart with the same
//! `--group` continues from the recorded progress.
//!
//! ```text
//! cargo run --release --example publish_table -- \
//!     --brokers 127.0.0.1:9092 --nodes 127.0.0.1:9042 \
//!     --table iot.readings --group readings-app --capture writetime
//! ```
//!
//! The topic is `<group>-source-<keyspace>.<table>` unless `--topic` names
//! one. The crash tests of the source run this binary and kill it.

use std::time::Duration;

use clap::Parser;
use flumen_cassandra::{Capture, CassandraSource};

#[derive(Parser, Debug)]
#[command(about = "Publish a Cassandra table into Kafka")]
struct Args {
    /// Kafka bootstrap servers (default: FLUMEN_KAFKA_BROKERS, else 127.0.0.1:9092).
    #[arg(long)]
    brokers: Option<String>,
    /// Cassandra contact points (default: FLUMEN_CASSANDRA_NODES, else 127.0.0.1:9042).
    #[arg(long)]
    nodes: Option<String>,
    /// The table, as keyspace.table.
    #[arg(long)]
    table: String,
    /// The application (consumer group) the source belongs to.
    #[arg(long, default_value = "publish-table")]
    group: String,
    /// The topic (default: <group>-source-<keyspace>.<table>).
    #[arg(long)]
    topic: Option<String>,
    /// `none`, `writetime` or `incremental:COLUMN`.
    #[arg(long, default_value = "none")]
    capture: String,
    /// Skip the snapshot (change capture only).
    #[arg(long)]
    no_snapshot: bool,
    /// Publish at least once instead of exactly once.
    #[arg(long)]
    at_least_once: bool,
    /// Token-range splits of each pass.
    #[arg(long, default_value_t = 64)]
    splits: u32,
    /// Rows per page.
    #[arg(long, default_value_t = 5_000)]
    page_size: i32,
    /// Rate limit of the scans, rows per second.
    #[arg(long)]
    max_rows_per_second: Option<u32>,
    /// Milliseconds between change capture passes.
    #[arg(long, default_value_t = 5_000)]
    poll_ms: u64,
    /// Extra Kafka client properties, `KEY=VALUE` (repeatable), e.g.
    /// `session.timeout.ms=6000` for a faster takeover after a crash.
    #[arg(long = "kafka-config")]
    kafka_config: Vec<String>,
    /// Milliseconds between progress lines.
    #[arg(long, default_value_t = 1_000)]
    progress_ms: u64,
}

fn capture(text: &str) -> Result<Capture, String> {
    match text.split_once(':') {
        None if text == "none" => Ok(Capture::None),
        None if text == "writetime" => Ok(Capture::Writetime),
        Some(("incremental", column)) if !column.is_empty() => Ok(Capture::Incremental {
            column: column.to_string(),
        }),
        _ => Err(format!(
            "--capture '{text}': expected none, writetime or incremental:COLUMN"
        )),
    }
}

fn source(args: &Args) -> Result<CassandraSource, String> {
    let from_env = |name: &str, default: &str| std::env::var(name).unwrap_or(default.into());
    let nodes = args
        .nodes
        .clone()
        .unwrap_or_else(|| from_env("FLUMEN_CASSANDRA_NODES", "127.0.0.1:9042"));
    let mut source = CassandraSource::table(&args.table)
        .nodes(nodes)
        .capture(capture(&args.capture)?)
        .snapshot(!args.no_snapshot)
        .exactly_once(!args.at_least_once)
        .splits(args.splits)
        .page_size(args.page_size)
        .poll_interval(Duration::from_millis(args.poll_ms));
    if let Some(topic) = &args.topic {
        source = source.topic(topic);
    }
    for property in &args.kafka_config {
        let (key, value) = property
            .split_once('=')
            .ok_or_else(|| format!("--kafka-config '{property}': expected KEY=VALUE"))?;
        source = source.kafka_config(key, value);
    }
    if let Some(rate) = args.max_rows_per_second {
        source = source.max_rows_per_second(rate);
    }
    Ok(source)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    flumen_examples::init_logging();
    let args = Args::parse();
    let source = source(&args)?;
    let brokers = args.brokers.clone().unwrap_or_else(|| {
        std::env::var("FLUMEN_KAFKA_BROKERS").unwrap_or("127.0.0.1:9092".into())
    });
    println!(
        "publishing {} into '{}'",
        source.qualified(),
        source.topic_for(&args.group)
    );
    let stats = source.stats();
    let every = Duration::from_millis(args.progress_ms.max(10));
    let progress = tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let (done, total) = stats.ranges();
            let lag = stats
                .capture_lag_ms()
                .map_or("-".to_string(), |ms| format!("{ms}ms"));
            println!(
                "pass {} ranges {done}/{total} rows {} lag {lag}",
                stats.pass(),
                stats.rows()
            );
        }
    });
    let stop = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| eprintln!("no SIGTERM handler: {e}"))
            .ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            Some(_) = async { match term.as_mut() { Some(t) => t.recv().await, None => None } } => {}
        }
    };
    let published = source.publish(&brokers, &args.group, stop).await;
    progress.abort();
    published?;
    println!("stopped");
    Ok(())
}
