//! # flumen-cassandra
//!
//! Cassandra / ScyllaDB outputs for flumen, over the `scylla` driver.
//! [`CassandraSink`] upserts every row of a frame into a table: prepared,
//! idempotent `INSERT`s with `USING TIMESTAMP` taken from the source offset, so
//! a replayed older update never overwrites a newer row; nulls left unset (no
//! tombstones); a bounded number of writes in flight (backpressure, not
//! buffering); retries with exponential backoff and jitter on timeouts,
//! overload and unavailability; offsets committed only after the writes of
//! their batch succeeded. The table's schema is read through the driver when
//! the application starts, and a missing column or a type that cannot hold the
//! frame's values stops it before anything is consumed.
//!
//! ```no_run
//! use std::time::Duration;
//! use arrow::datatypes::{DataType, Field, Schema};
//! use flumen::prelude::*;
//! use flumen_cassandra::CassandraSink;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let app = Application::builder()
//!     .brokers("127.0.0.1:9092")
//!     .consumer_group("device-metrics")
//!     .build()?;
//! let readings = app.dataframe(
//!     Topic::json("readings")
//!         .schema(Schema::new(vec![
//!             Field::new("device", DataType::Utf8, false),
//!             Field::new("ts", DataType::Int64, false),
//!             Field::new("temp", DataType::Float64, false),
//!         ]))
//!         .timestamp_field("ts"),
//! )?;
//! readings
//!     .tumbling_window(Duration::from_secs(10))
//!     .agg([count(), mean(col("temp")).alias("mean")])
//!     .final_()
//!     .sink(
//!         CassandraSink::new("metrics.device_temp")
//!             .nodes("127.0.0.1:9042")
//!             .column("key", "device"),
//!     );
//! app.run().await?;
//! # Ok(())
//! # }
//! ```

mod connection;
mod convert;
mod error;
mod lookup;
mod retry;
mod schema;
mod sink;
mod source;
mod timestamp;
mod tls;
mod writer;

pub use error::CassandraError;
pub use lookup::CassandraLookup;
pub use sink::{CassandraSink, Consistency, Ttl};
pub use source::{Capture, CassandraSource, SourceStats};
pub use timestamp::WriteTimestamp;
pub use tls::Tls;
