//! Errors of state stores.

use std::path::PathBuf;

/// Errors of state stores.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// RocksDB failed.
    #[error("state at {path}: {operation}: {reason}")]
    Storage {
        /// The state directory.
        path: PathBuf,
        /// What was being done.
        operation: String,
        /// RocksDB's message.
        reason: String,
    },
    /// A write or read named a store the state was not opened with.
    #[error("no state store '{store}' (stores: {known})")]
    UnknownStore {
        /// The store asked for.
        store: String,
        /// The stores there are.
        known: String,
    },
    /// The directory holds the state of another application, topic or partition.
    #[error(
        "state at {path} belongs to {found}, not to {expected}; \
         use a state directory per application (and do not copy partitions' state around)"
    )]
    Mismatch {
        /// The state directory.
        path: PathBuf,
        /// The identity it was opened for.
        expected: String,
        /// The identity stored in it.
        found: String,
    },
}
