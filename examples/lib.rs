//! Runnable flumen pipelines: `cargo run --release --example NAME`.
//!
//! - `passthrough`: a stateless pipeline (filter, select, with_column) from one
//!   topic to another on the local dev stack, with a throughput summary.
//! - `windows`: tumbling 10 s windows per device over sensor readings, printed as tables.
//! - `quickstart`: the same windows into the Cassandra table `metrics.device_temp`
//!   (the CQL test server unless `FLUMEN_CASSANDRA_NODES` is set), read back and printed.
//!
//! This library holds what the examples share: logging and the dev stack.

use flumen::{Application, ApplicationBuilder};
use flumen_testkit::{unique_name, DevStack, TestkitError};

/// Logs to stderr at `RUST_LOG` (default `warn`).
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
}

/// Starts the dev stack (or uses `FLUMEN_KAFKA_BROKERS`), saying what it does.
pub fn start_dev_stack() -> Result<DevStack, TestkitError> {
    println!("starting the dev stack (the first run installs the Tansu broker, ~15 min)...");
    let stack = DevStack::start()?;
    println!(
        "broker: {}{}",
        stack.brokers(),
        if stack.is_local() {
            " (local Tansu)"
        } else {
            ""
        }
    );
    Ok(stack)
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
