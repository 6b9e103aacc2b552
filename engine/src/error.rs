//! `flumen::Error`: every error a pipeline can return.

use crate::records::BadInputKind;

/// Errors of the flumen engine and, converted, of its connectors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Kafka connector failed.
    #[error(transparent)]
    Kafka(Box<flumen_kafka::KafkaError>),
    /// A record format cannot work, or a record cannot be encoded.
    #[error(transparent)]
    Format(#[from] crate::records::FormatError),
    /// The state store failed.
    #[error(transparent)]
    State(#[from] flumen_state::StateError),
    /// The pipeline as written cannot run (unknown column, wrong type, missing setting).
    #[error("invalid pipeline: {0}")]
    Plan(String),
    /// The application was configured wrongly.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A record could not be decoded and its topic's policy is `fail`.
    #[error(
        "bad input on topic '{topic}' partition {partition} offset {offset}: {kind}: {reason} \
         (policy: fail; nothing at or after this offset was committed — use \
         Topic::on_bad_input(BadInputPolicy::Skip) or dead_letter(...) to route such records)"
    )]
    BadInput {
        /// Source topic.
        topic: String,
        /// Source partition.
        partition: i32,
        /// Offset of the bad record.
        offset: i64,
        /// What is wrong with it.
        kind: BadInputKind,
        /// Details naming the field where there is one.
        reason: String,
    },
    /// A sink (e.g. Cassandra) refused to start or failed to write.
    #[error("{sink}: {source}")]
    Sink {
        /// The sink, e.g. `cassandra table 'metrics.device_temp'`.
        sink: String,
        /// What went wrong.
        #[source]
        source: crate::BoxError,
    },
    /// A lookup table could not be opened.
    #[error("{lookup}: {source}")]
    Lookup {
        /// The lookup (`lookup(cassandra table 'ks.devices')`).
        lookup: String,
        /// Why.
        #[source]
        source: crate::BoxError,
    },
    /// A publisher (an input such as a Cassandra table) failed.
    #[error("{publisher}: {source}")]
    Publisher {
        /// The publisher, e.g. `cassandra source 'iot.readings'`.
        publisher: String,
        /// What went wrong.
        #[source]
        source: crate::BoxError,
    },
    /// An operator failed on a batch.
    #[error("operator '{operator}' failed on topic '{topic}' partition {partition} (offsets {first_offset}..={last_offset}): {source}")]
    Operator {
        /// The failing operator.
        operator: String,
        /// Source topic.
        topic: String,
        /// Source partition.
        partition: i32,
        /// First offset of the batch.
        first_offset: i64,
        /// Last offset of the batch.
        last_offset: i64,
        /// What went wrong.
        #[source]
        source: crate::BoxError,
    },
    /// A state store holds entries its operator cannot read (written by
    /// another version of the pipeline, or damaged).
    #[error("state store '{store}' of topic '{topic}' cannot be read: {reason}")]
    StateUnreadable {
        /// The store.
        store: String,
        /// The input topic whose state it is.
        topic: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A partition's local state is older than the consumer group's committed
    /// offset: the records in between are missing from it.
    #[error(
        "the state of topic '{topic}' partition {partition} at {path} covers records up to offset {checkpoint} \
         but consumer group '{group}' has committed offset {committed}: the window state of the records \
         in between is not in this state directory (another instance or state directory processed them). \
         Start this instance with the state directory that processed them, or delete {path} and reset the \
         group's offsets (or use a new consumer group) to recompute the windows from the input"
    )]
    StateBehind {
        /// Source topic.
        topic: String,
        /// Source partition.
        partition: i32,
        /// The state directory of the partition.
        path: String,
        /// The group.
        group: String,
        /// The state's checkpoint (`none` for an empty state).
        checkpoint: String,
        /// The group's committed offset.
        committed: i64,
    },
    /// A transaction (exactly-once mode) failed and was aborted: none of its
    /// outputs, changelog records or offsets took effect. The application
    /// rewinds to the last committed offsets and runs again.
    #[error(
        "transaction of topic '{topic}' partition {partition} aborted: {reason} \
         (its outputs and offsets were discarded; processing resumes from the last committed offset)"
    )]
    TransactionAborted {
        /// Source topic.
        topic: String,
        /// Source partition.
        partition: i32,
        /// Why it was aborted.
        reason: String,
    },
    /// An internal topic (changelog, repartition) exists but does not fit the
    /// pipeline, or could not be set up.
    #[error("internal topic '{topic}': {reason}")]
    InternalTopic {
        /// The topic.
        topic: String,
        /// What does not fit.
        reason: String,
    },
    /// A changelog lost history a restore needs (deleted and recreated, or
    /// truncated): restoring from it would give a partial state.
    #[error("changelog '{topic}' partition {partition} lost history a restore needs: {reason}")]
    ChangelogLost {
        /// The changelog topic.
        topic: String,
        /// Its partition.
        partition: i32,
        /// What was found.
        reason: String,
    },
    /// One entry of a state store (a window's aggregation state, e.g. a
    /// growing `collect()`) is larger than a changelog record may be.
    #[error(
        "a state entry of store '{store}' is {bytes} bytes, more than the {limit} a record of \
         changelog '{topic}' partition {partition} may have (producer message.max.bytes): \
         use smaller windows or aggregations whose state does not grow with the records \
         (collect() keeps every value), or raise message.max.bytes on the producer and the topic"
    )]
    StateTooLarge {
        /// The store.
        store: String,
        /// Its changelog topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The entry's key + value bytes.
        bytes: usize,
        /// The most a record may have.
        limit: usize,
    },
    /// Code run for a partition panicked (user code in `map`, `map_batches`
    /// or an `Aggregator`, or a bug): the application stops.
    #[error("a task of topic '{topic}' partition {partition} panicked: {message}")]
    Panic {
        /// Source topic.
        topic: String,
        /// Source partition.
        partition: i32,
        /// The panic's message.
        message: String,
    },
    /// A changelog holds a record flumen cannot restore from.
    #[error("changelog '{topic}' partition {partition} offset {offset}: {reason}")]
    ChangelogRecord {
        /// The changelog topic.
        topic: String,
        /// Its partition.
        partition: i32,
        /// The record's offset.
        offset: i64,
        /// What is wrong with it.
        reason: String,
    },
    /// A task or thread of the runtime stopped or could not start.
    #[error("{task}: {source}")]
    Task {
        /// The task, e.g. `the task of readings-0`.
        task: String,
        /// Why it stopped.
        #[source]
        source: crate::BoxError,
    },
    /// Local files (a state directory) could not be handled.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, naming the path.
        what: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// flumen found itself in a state it should never be in: a bug, please
    /// report it with the message.
    #[error("internal error (a bug in flumen): {0}")]
    Internal(&'static str),
}

impl Error {
    /// Whether retrying (restarting the application) could help.
    pub fn is_retriable(&self) -> bool {
        match self {
            Error::Kafka(e) => e.is_retriable(),
            Error::TransactionAborted { .. } => true,
            _ => false,
        }
    }
}

/// Result alias of the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;
impl From<flumen_kafka::KafkaError> for Error {
    fn from(error: flumen_kafka::KafkaError) -> Self {
        match error {
            // A write to a non-Kafka sink, tracked with the batch's deliveries.
            flumen_kafka::KafkaError::SinkWrite { sink, source } => Error::Sink { sink, source },
            error => Error::Kafka(Box::new(error)),
        }
    }
}

#[cfg(test)]
mod tests {
    /// Small enough that `Result<T, Error>` stays cheap to return (and
    /// clippy's `result_large_err` does not fire in users' code).
    #[test]
    fn the_error_stays_small() {
        assert!(std::mem::size_of::<super::Error>() < 128);
    }
}
