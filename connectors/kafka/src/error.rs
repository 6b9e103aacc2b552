//! The error type of the Kafka connector.

/// Everything that can go wrong in the Kafka connector.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    /// A librdkafka call failed.
    #[error("kafka: {context}: {source}")]
    Client {
        /// What was being done, with the topic / partition where known.
        context: String,
        /// The librdkafka error.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// A topic that must exist does not.
    #[error("kafka: topic '{topic}' does not exist (brokers: {brokers})")]
    UnknownTopic {
        /// The missing topic.
        topic: String,
        /// The brokers that were asked.
        brokers: String,
    },
    /// A write tracked in a delivery batch (a non-Kafka sink) failed.
    #[error("delivery to {sink} failed: {source}")]
    SinkWrite {
        /// The sink, e.g. `cassandra table 'metrics.device_temp'`.
        sink: String,
        /// What went wrong.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A record could not be delivered to its topic.
    #[error("kafka: delivery to topic '{topic}' failed: {reason} (retriable: {retriable})")]
    Delivery {
        /// The destination topic.
        topic: String,
        /// What the broker or client said.
        reason: String,
        /// Whether a retry could succeed.
        retriable: bool,
    },
    /// A transaction's offsets cannot be sent: the consumer has no group
    /// metadata (it is not a member of the group's current generation).
    #[error("kafka: the consumer has no group metadata for the transaction's offsets")]
    NoGroupMetadata,
    /// An operating-system call failed (e.g. starting a thread).
    #[error("kafka: {context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The group's committed offsets of newly assigned partitions could not be
    /// read, even after retries. Guessing "nothing committed" would skip the
    /// state's check against the commit, so the run stops instead.
    #[error(
        "kafka: reading the committed offsets of group '{group}' for {partitions} failed \
         {attempts} times; last error: {source}"
    )]
    CommittedOffsets {
        /// The consumer group.
        group: String,
        /// The partitions assigned, as `topic/partition, ...`.
        partitions: String,
        /// How many reads were tried.
        attempts: u32,
        /// The last read's error.
        #[source]
        source: Box<rdkafka::error::KafkaError>,
    },
    /// The broker did not answer within the deadline.
    #[error("kafka: timed out after {waited_ms} ms waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long we waited.
        waited_ms: u128,
    },
}

impl KafkaError {
    /// Wraps a librdkafka error with what was being done.
    pub fn client(context: impl Into<String>, source: rdkafka::error::KafkaError) -> Self {
        KafkaError::Client {
            context: context.into(),
            source,
        }
    }

    /// Whether retrying the operation could help.
    pub fn is_retriable(&self) -> bool {
        match self {
            KafkaError::Client { source, .. } => source
                .rdkafka_error_code()
                .map(is_retriable_code)
                .unwrap_or(false),
            KafkaError::Delivery { retriable, .. } => *retriable,
            KafkaError::Timeout { .. } => true,
            _ => false,
        }
    }

    /// The librdkafka error of a failed transactional call, if this is one.
    fn transaction_error(&self) -> Option<&rdkafka::error::RDKafkaError> {
        match self {
            KafkaError::Client {
                source: rdkafka::error::KafkaError::Transaction(e),
                ..
            } => Some(e),
            _ => None,
        }
    }

    /// For a failed transactional call: whether the same call may simply be
    /// made again (the transaction is still usable).
    pub fn transaction_retriable(&self) -> bool {
        self.transaction_error().is_some_and(|e| e.is_retriable())
    }

    /// Whether the broker lacks a feature the call needs (e.g. transactions).
    pub fn is_unsupported_feature(&self) -> bool {
        match self {
            KafkaError::Client { source, .. } => matches!(
                source.rdkafka_error_code(),
                Some(rdkafka::types::RDKafkaErrorCode::UnsupportedFeature)
                    | Some(rdkafka::types::RDKafkaErrorCode::UnsupportedVersion)
            ),
            _ => false,
        }
    }

    /// Whether the producer can no longer be used (fenced by a newer producer
    /// with the same `transactional.id`, or another fatal error).
    pub fn is_fatal(&self) -> bool {
        match self {
            KafkaError::Client { source, .. } => {
                self.transaction_error().is_some_and(|e| e.is_fatal())
                    || matches!(
                        source.rdkafka_error_code(),
                        Some(rdkafka::types::RDKafkaErrorCode::Fatal)
                    )
            }
            _ => false,
        }
    }
}

fn is_retriable_code(code: rdkafka::types::RDKafkaErrorCode) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        code,
        C::BrokerTransportFailure
            | C::AllBrokersDown
            | C::OperationTimedOut
            | C::RequestTimedOut
            | C::NetworkException
            | C::LeaderNotAvailable
            | C::NotLeaderForPartition
            | C::QueueFull
            | C::CoordinatorLoadInProgress
            | C::CoordinatorNotAvailable
            | C::NotCoordinator
    )
}

/// Result alias of the Kafka connector.
pub type Result<T, E = KafkaError> = std::result::Result<T, E>;
