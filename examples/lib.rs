//! Runnable flumen pipelines: `cargo run --release --example NAME`.
//!
//! - `passthrough`: a stateless pipeline (filter, select, with_column) from one
//!   topic to another on the local dev stack, with a throughput summary.
//! - `windows`: tumbling 10 s windows per device over sensor readings, printed as tables.
