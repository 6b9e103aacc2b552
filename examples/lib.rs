//! Runnable flumen pipelines: `cargo run --release --example NAME`.
//!
//! - `passthrough`: a stateless pipeline (filter, select, with_column) from one
//!   topic to another on the local dev stack, with a throughput summary.
//! - `windows`: tumbling 10 s windows per device over sensor readings, printed as tables.
//! - `quickstart`: the same windows into the Cassandra table `metrics.device_temp`,
//!   read back and printed.
//! - `sensor_metrics`: the quickstart's pipeline with flags, for comparisons.
//! - `bench`: the benchmark harness (raw consume ceiling vs. stateless,
//!   tumbling, hopping -> Kafka and tumbling -> Cassandra on one topic).
//!
//! Each starts a local Apache Kafka (and Apache Cassandra where it writes to
//! Cassandra) from the jars `tests/bootstrap.sh` fetched, unless
//! `FLUMEN_KAFKA_BROKERS` / `FLUMEN_CASSANDRA_NODES` name running clusters
//! (`eval "$(cargo run -p flumen-testkit --bin flumen-devstack -- up)"` keeps
//! a local pair running between runs).
//!
//! This library holds what the examples share: logging and the dev stack.

use flumen::{Application, ApplicationBuilder};
use std::time::Instant;

use flumen_testkit::{stack, unique_name, DevCassandra, DevStack, TestkitError};

/// Logs to stderr at `RUST_LOG` (default `warn`).
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
}

/// `name`'s value, when set and not empty.
pub fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// A Kafka broker: `FLUMEN_KAFKA_BROKERS` when set, else a local Apache Kafka
/// started for this run (stopped and removed when the returned stack drops).
pub fn start_dev_stack() -> Result<DevStack, TestkitError> {
    if let Some(brokers) = env("FLUMEN_KAFKA_BROKERS") {
        println!("kafka: {brokers} (FLUMEN_KAFKA_BROKERS)");
        return Ok(DevStack::connect(brokers));
    }
    let started = Instant::now();
    let stack = DevStack::start_dedicated()?;
    println!(
        "kafka: {} (local Apache Kafka {}, started in {:.1?})",
        stack.brokers(),
        stack::install::KAFKA_VERSION,
        started.elapsed()
    );
    Ok(stack)
}

/// A Cassandra cluster: `FLUMEN_CASSANDRA_NODES` when set, else a local Apache
/// Cassandra started for this run (stopped and removed when dropped).
pub fn start_cassandra() -> Result<DevCassandra, TestkitError> {
    if let Some(nodes) = env("FLUMEN_CASSANDRA_NODES") {
        println!("cassandra: {nodes} (FLUMEN_CASSANDRA_NODES)");
        return Ok(DevCassandra::connect(nodes));
    }
    let started = Instant::now();
    let cassandra = DevCassandra::start_dedicated(&Default::default())?;
    println!(
        "cassandra: {} (local Apache Cassandra {}, started in {:.1?})",
        cassandra.nodes(),
        stack::install::CASSANDRA_VERSION,
        started.elapsed()
    );
    Ok(cassandra)
}

/// Kafka and Cassandra as [`start_dev_stack`] and [`start_cassandra`] start
/// them, both at once (Cassandra takes longer; the broker starts meanwhile).
pub fn start_kafka_and_cassandra() -> Result<(DevStack, DevCassandra), TestkitError> {
    println!("starting the dev stack (the first run fetches the server jars)...");
    let cassandra = std::thread::spawn(start_cassandra);
    let stack = start_dev_stack()?;
    let cassandra = cassandra.join().map_err(|_| TestkitError::Install {
        reason: "the thread starting Cassandra panicked".into(),
    })??;
    Ok((stack, cassandra))
}

/// An application builder for the dev stack with a fresh consumer group named after `name`.
pub fn dev_app(stack: &DevStack, name: &str) -> ApplicationBuilder {
    let mut builder = Application::builder()
        .brokers(stack.brokers())
        .consumer_group(unique_name(name));
    for (k, v) in stack.consumer_settings() {
        builder = builder.consumer_config(k, v);
    }
    builder
}

/// The `device_temp` table of the quickstart and `sensor_metrics`, through the driver.
pub mod cassandra {
    use futures::TryStreamExt;
    use scylla::client::session::Session;
    use scylla::client::session_builder::SessionBuilder;
    use scylla::statement::Statement;
    use scylla::value::CqlTimestamp;

    /// A boxed error.
    pub type BoxError = Box<dyn std::error::Error>;

    /// One row: device, window_start, window_end, count, sum, min, max, mean.
    pub type Row = (String, CqlTimestamp, CqlTimestamp, i64, f64, f64, f64, f64);

    /// Connects and creates `keyspace` (SimpleStrategy, RF 1) and the table
    /// when missing.
    pub async fn prepare_table(
        nodes: &str,
        keyspace: &str,
        table: &str,
    ) -> Result<Session, BoxError> {
        let session = SessionBuilder::new()
            .known_nodes(nodes.split(',').map(str::trim))
            .build()
            .await?;
        session
            .query_unpaged(
                format!(
                    "CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = \
                     {{'class': 'SimpleStrategy', 'replication_factor': 1}}"
                ),
                &[],
            )
            .await?;
        session
            .query_unpaged(
                format!(
                    "CREATE TABLE IF NOT EXISTS {keyspace}.{table} (device text, \
                     window_start timestamp, window_end timestamp, count bigint, sum double, \
                     min double, max double, mean double, PRIMARY KEY ((device), window_start))"
                ),
                &[],
            )
            .await?;
        Ok(session)
    }

    /// Every row of the table (paged), by window start, then device.
    pub async fn read_rows(
        session: &Session,
        keyspace: &str,
        table: &str,
    ) -> Result<Vec<Row>, BoxError> {
        let mut select = Statement::new(format!(
            "SELECT device, window_start, window_end, count, sum, min, max, mean \
             FROM {keyspace}.{table}"
        ));
        select.set_page_size(5_000);
        let mut rows: Vec<Row> = session
            .query_iter(select, &[])
            .await?
            .rows_stream::<Row>()?
            .try_collect()
            .await?;
        rows.sort_by(|a, b| (a.1 .0, &a.0).cmp(&(b.1 .0, &b.0)));
        Ok(rows)
    }

    /// A row as the JSON object Kafka outputs carry (times in epoch ms).
    pub fn row_json(row: &Row) -> serde_json::Value {
        let (device, start, end, count, sum, min, max, mean) = row;
        serde_json::json!({
            "device": device, "window_start": start.0, "window_end": end.0,
            "count": count, "sum": sum, "min": min, "max": max, "mean": mean,
        })
    }
}

/// The columns of the `device_temp` table, from a window frame of
/// [`temperature_aggregations`] (its `key` is the device).
pub fn device_temp_columns() -> Vec<flumen::expr::Expr> {
    use flumen::prelude::*;
    let mut columns = vec![col("key").alias("device")];
    columns.extend(
        [
            "window_start",
            "window_end",
            "count",
            "sum",
            "min",
            "max",
            "mean",
        ]
        .map(col),
    );
    columns
}

/// The sensor workload's aggregations of `temp`: count, sum, min, max, mean.
pub fn temperature_aggregations() -> Vec<flumen::window::Aggregation> {
    use flumen::prelude::*;
    vec![
        count(),
        sum(col("temp")).alias("sum"),
        min(col("temp")).alias("min"),
        max(col("temp")).alias("max"),
        mean(col("temp")).alias("mean"),
    ]
}

/// The README's code blocks, compiled (and run where they need no servers)
/// as doc tests of this crate, which depends on every crate they use.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
