//! The error type of the test kit.

/// What can go wrong while setting up or using the dev stack.
#[derive(Debug, thiserror::Error)]
pub enum TestkitError {
    /// Installing the pinned broker failed.
    #[error("installing Tansu {version} failed: {reason}")]
    Install {
        /// The pinned version.
        version: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// The broker did not start or answer in time.
    #[error("the dev broker did not start: {0}")]
    Start(String),
    /// A Kafka operation failed.
    #[error(transparent)]
    Kafka(#[from] flumen_kafka::KafkaError),
    /// An I/O operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A Kafka protocol exchange of the testkit's own went wrong.
    #[error("kafka protocol: {0}")]
    Protocol(String),
    /// A wait ran past its deadline.
    #[error("timed out: {0}")]
    Timeout(String),
}

impl TestkitError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> TestkitError {
        let context = context.into();
        move |source| TestkitError::Io { context, source }
    }
}
