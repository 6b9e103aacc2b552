//! The error type of the test kit.

use std::path::PathBuf;

/// What can go wrong while setting up or using the dev stack.
#[derive(Debug, thiserror::Error)]
pub enum TestkitError {
    /// Fetching the server jars or finding a Java to run them failed.
    #[error("setting up the dev stack failed: {reason}")]
    Install {
        /// What went wrong.
        reason: String,
    },
    /// A server did not start or answer in time.
    #[error("{server} did not start: {reason} (server log: {})", log.display())]
    Start {
        /// `kafka` or `cassandra`.
        server: &'static str,
        /// What went wrong.
        reason: String,
        /// The server's log file.
        log: PathBuf,
    },
    /// A shared server of this process failed to start earlier.
    #[error("the shared {server} of this test process failed to start: {reason}")]
    Shared {
        /// `kafka` or `cassandra`.
        server: &'static str,
        /// The first start's error.
        reason: String,
    },
    /// A Kafka operation failed.
    #[error(transparent)]
    Kafka(#[from] flumen_kafka::KafkaError),
    /// A CQL request of the testkit's own failed.
    #[error("{context}: {source}")]
    Cql {
        /// What was being done.
        context: String,
        /// The driver's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Making TLS material failed.
    #[error("TLS: {0}")]
    Tls(String),
    /// An I/O operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A record failed the caller's check while a topic was read.
    #[error("{0}")]
    Check(String),
    /// A wait ran past its deadline.
    #[error("timed out: {0}")]
    Timeout(String),
}

impl TestkitError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> TestkitError {
        let context = context.into();
        move |source| TestkitError::Io { context, source }
    }

    pub(crate) fn cql<E: std::error::Error + Send + Sync + 'static>(
        context: impl Into<String>,
    ) -> impl FnOnce(E) -> TestkitError {
        let context = context.into();
        move |source| TestkitError::Cql {
            context,
            source: Box::new(source),
        }
    }
}
