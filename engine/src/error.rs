//! `flumen::Error`: every error a pipeline can return.

use flumen_kafka::format::BadInputKind;

/// Errors of the flumen engine and, converted, of its connectors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Kafka connector failed.
    #[error(transparent)]
    Kafka(#[from] flumen_kafka::KafkaError),
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
    /// An operator failed on a batch.
    #[error("operator '{operator}' failed on topic '{topic}' partition {partition} (offsets {first_offset}..={last_offset}): {reason}")]
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
        reason: String,
    },
    /// The runtime itself failed (a task died, a thread could not start).
    #[error("runtime: {0}")]
    Runtime(String),
}

impl Error {
    /// Whether retrying (restarting the application) could help.
    pub fn is_retriable(&self) -> bool {
        match self {
            Error::Kafka(e) => e.is_retriable(),
            _ => false,
        }
    }
}

/// Result alias of the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;
