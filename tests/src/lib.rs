//! # flumen-testkit
//!
//! What flumen's tests and examples run on: [`DevStack`] provisions and starts a
//! local Kafka-protocol broker (Tansu, pinned) on a free port, or points at an
//! existing cluster when `FLUMEN_KAFKA_BROKERS` is set; [`topics`] creates topics,
//! produces and reads records; [`sensor`] generates the sensor workload;
//! [`cql::CqlTestServer`] is a CQL test server the real `scylla` driver talks to.
//!
//! ```no_run
//! use flumen_testkit::DevStack;
//!
//! # async fn demo() -> Result<(), flumen_testkit::TestkitError> {
//! let stack = DevStack::start()?; // installs Tansu once, then starts it
//! stack.create_topic("readings", 3).await?;
//! println!("broker at {}", stack.brokers());
//! # Ok(())
//! # }
//! ```

mod broker;
mod committed;
pub mod cql;
mod error;
mod proxy;
pub mod sensor;
mod tansu;
pub mod topics;

pub use broker::DevStack;
pub use error::TestkitError;
pub use proxy::OutageProxy;
pub use tansu::{ensure_tansu, TANSU_FEATURES, TANSU_PATCH, TANSU_VERSION};
pub use topics::{unique_name, ReadRecord};
