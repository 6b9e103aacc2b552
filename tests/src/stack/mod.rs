//! The real servers: Apache Kafka and Apache Cassandra from their Maven
//! Central jars, run as child processes of the test (or example) process.
//!
//! Starting Cassandra takes tens of seconds, so a process shares one node (and
//! one broker) among all its tests: [`shared_kafka`] and [`shared_cassandra`]
//! start them on first use; tests keep apart by topic, group and keyspace
//! names. Tests that stop, kill or cut off a server start their own.

pub mod cassandra;
pub mod install;
pub mod kafka;
mod process;
pub mod rundir;

use std::sync::{Arc, OnceLock};

use crate::TestkitError;
pub use cassandra::{CassandraOptions, CassandraServer};
pub use kafka::{KafkaOptions, KafkaServer};

/// The broker this process shares among its tests, started on first use.
pub fn shared_kafka() -> Result<Arc<KafkaServer>, TestkitError> {
    static SHARED: OnceLock<Result<Arc<KafkaServer>, String>> = OnceLock::new();
    let shared = SHARED.get_or_init(|| {
        let started = std::time::Instant::now();
        let server = KafkaServer::start(&KafkaOptions::default()).map_err(|e| e.to_string())?;
        eprintln!(
            "flumen-testkit: Kafka {} at {} in {:.1?} (log: {})",
            install::KAFKA_VERSION,
            server.brokers(),
            started.elapsed(),
            server.log_path().display()
        );
        Ok(Arc::new(server))
    });
    shared.clone().map_err(|reason| TestkitError::Shared {
        server: "kafka",
        reason,
    })
}

/// The Cassandra node this process shares among its tests, started on first use.
pub fn shared_cassandra() -> Result<Arc<CassandraServer>, TestkitError> {
    static SHARED: OnceLock<Result<Arc<CassandraServer>, String>> = OnceLock::new();
    let shared = SHARED.get_or_init(|| {
        let started = std::time::Instant::now();
        let server =
            CassandraServer::start(&CassandraOptions::default()).map_err(|e| e.to_string())?;
        eprintln!(
            "flumen-testkit: Cassandra {} at {} in {:.1?} (log: {})",
            install::CASSANDRA_VERSION,
            server.node(),
            started.elapsed(),
            server.log_path().display()
        );
        Ok(Arc::new(server))
    });
    shared.clone().map_err(|reason| TestkitError::Shared {
        server: "cassandra",
        reason,
    })
}
