//! `CassandraError`: everything the Cassandra connector can fail with.

/// Errors of the Cassandra connector.
#[derive(Debug, thiserror::Error)]
pub enum CassandraError {
    /// The sink was configured wrongly.
    #[error("invalid Cassandra sink configuration: {0}")]
    Config(String),
    /// Connecting to the cluster failed.
    #[error("cannot connect to Cassandra at {nodes}: {reason}")]
    Connect {
        /// The contact points.
        nodes: String,
        /// What the driver said.
        reason: String,
    },
    /// A TLS setting cannot be used.
    #[error("Cassandra TLS: {what}: {reason}")]
    Tls {
        /// Which setting or file.
        what: String,
        /// Why.
        reason: String,
    },
    /// The table does not fit the frame.
    #[error("table {table}: {reason}")]
    Schema {
        /// `keyspace.table`.
        table: String,
        /// Which column, which types.
        reason: String,
    },
    /// A statement failed.
    #[error("table {table}: {operation} failed: {reason}")]
    Request {
        /// `keyspace.table`.
        table: String,
        /// What was attempted.
        operation: String,
        /// What the driver or server said.
        reason: String,
    },
    /// A value of the frame cannot be written into its column.
    #[error("table {table}: column '{column}': {reason}")]
    Value {
        /// `keyspace.table`.
        table: String,
        /// The table column.
        column: String,
        /// Why.
        reason: String,
    },
    /// The source's progress topic cannot be read or holds a record flumen
    /// did not write.
    #[error("source progress topic '{topic}': {reason}")]
    Progress {
        /// The topic.
        topic: String,
        /// What is wrong.
        reason: String,
    },
    /// Publishing the source's records to Kafka failed.
    #[error("table {table}: publishing to Kafka: {source}")]
    Publish {
        /// `keyspace.table`.
        table: String,
        /// What the Kafka client said.
        #[source]
        source: Box<flumen_kafka::KafkaError>,
    },
}

impl CassandraError {
    /// A failure publishing `table`'s records (or its progress) to Kafka.
    pub(crate) fn publish(table: impl Into<String>, source: flumen_kafka::KafkaError) -> Self {
        CassandraError::Publish {
            table: table.into(),
            source: Box::new(source),
        }
    }
}
