//! Errors of state stores.

use std::path::PathBuf;

/// What kind of storage failure happened (RocksDB's status code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageKind {
    /// The files are damaged: the state cannot be read as it is.
    Corruption,
    /// The operating system refused (disk full, permissions, too many open
    /// files, a path that is not a directory...): the files may be fine.
    Io,
    /// Anything else.
    Other,
}

impl From<rocksdb::ErrorKind> for StorageKind {
    fn from(kind: rocksdb::ErrorKind) -> Self {
        match kind {
            rocksdb::ErrorKind::Corruption => StorageKind::Corruption,
            rocksdb::ErrorKind::IOError => StorageKind::Io,
            _ => StorageKind::Other,
        }
    }
}

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
        /// What kind of failure.
        kind: StorageKind,
        /// RocksDB's message.
        reason: String,
    },
    /// Another open handle (in this or another process) holds the state
    /// directory.
    #[error("state at {path} is in use by another process or task (its lock file is held)")]
    Locked {
        /// The state directory.
        path: PathBuf,
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

impl StateError {
    /// Whether rebuilding the state from elsewhere (a changelog) is the cure:
    /// the files are corrupt, or they hold another identity's state. Other
    /// failures (I/O, a held lock) leave the files as they are.
    pub fn is_rebuildable(&self) -> bool {
        matches!(
            self,
            StateError::Mismatch { .. }
                | StateError::Storage {
                    kind: StorageKind::Corruption,
                    ..
                }
        )
    }
}
