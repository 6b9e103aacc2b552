//! # flumen-testkit
//!
//! What flumen's tests, examples and benchmarks run on: real Apache Kafka and
//! Apache Cassandra, started from their Maven Central jars as child processes
//! on 127.0.0.1 with free ports ([`stack`]); [`DevStack`] is the broker a test
//! uses and [`DevCassandra`] the Cassandra cluster (or external clusters named
//! by `FLUMEN_KAFKA_BROKERS` / `FLUMEN_CASSANDRA_NODES`); [`OutageProxy`] cuts
//! or slows connections to either; [`topics`] creates topics, produces and
//! reads records; [`sensor`] generates the sensor workload.
//! [`cql::CqlTestServer`] is a CQL server of the testkit's own, used only for
//! server-side faults a real Cassandra cannot produce on demand (write
//! timeouts, overloaded, unavailable).
//!
//! ```no_run
//! use flumen_testkit::{DevCassandra, DevStack};
//!
//! # async fn demo() -> Result<(), flumen_testkit::TestkitError> {
//! let kafka = DevStack::start()?; // this process's broker, started on first use
//! kafka.create_topic("readings", 3).await?;
//! let cassandra = DevCassandra::start()?;
//! println!("Kafka at {}, Cassandra at {}", kafka.brokers(), cassandra.nodes());
//! # Ok(())
//! # }
//! ```

mod broker;
mod cassandra;
pub mod cql;
mod error;
mod proxy;
pub mod sensor;
pub mod stack;
pub mod topics;

pub use broker::DevStack;
pub use cassandra::DevCassandra;
pub use error::TestkitError;
pub use proxy::OutageProxy;
pub use topics::{unique_name, ReadRecord};
