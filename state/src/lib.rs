//! # flumen-state
//!
//! State stores for flumen's stateful operators: a [`StateStore`] trait, a
//! RocksDB implementation ([`RocksStore`], one instance per (stage, partition)
//! with a column family per store) and an in-memory one ([`MemoryStore`]) for
//! tests.
//!
//! Writes go through a [`WriteBatch`] and may carry a [`Checkpoint`]: the next
//! source offset the state reflects. The batch and the checkpoint are written
//! atomically, so after a crash the state and its checkpoint always agree.
//!
//! ```
//! use flumen_state::{Checkpoint, RocksStore, StateStore, StoreIdentity, WriteBatch};
//!
//! let dir = tempfile::tempdir()?;
//! let identity = StoreIdentity::new("sensors", "readings", 0);
//! let store = RocksStore::open(dir.path(), &identity, &["windows"])?;
//! let mut batch = WriteBatch::default();
//! batch.put("windows", b"dev-1/1000", b"3");
//! batch.put("windows", b"dev-2/1000", b"7");
//! store.write(batch, Some(Checkpoint { next_offset: 42 }))?;
//! assert_eq!(store.get("windows", b"dev-1/1000")?, Some(b"3".to_vec()));
//! assert_eq!(store.prefix("windows", b"dev-")?.len(), 2);
//! drop(store);
//!
//! // Reopened, the state continues from its checkpoint.
//! let store = RocksStore::open(dir.path(), &identity, &["windows"])?;
//! assert_eq!(store.checkpoint()?, Some(Checkpoint { next_offset: 42 }));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod batch;
mod error;
mod memory;
mod rocks;

pub use batch::{BatchOp, WriteBatch};
pub use error::{StateError, StorageKind};
pub use memory::MemoryStore;
pub use rocks::{BlockCache, RocksStore, StoreIdentity};

/// Key-value pairs returned by scans.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// Where a state's checkpoint stands: every source record before `next_offset`
/// is reflected in the state, none after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// The next source offset to process.
    pub next_offset: i64,
}

impl Checkpoint {
    pub(crate) fn encode(&self) -> [u8; 8] {
        self.next_offset.to_be_bytes()
    }

    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        let bytes: [u8; 8] = bytes.try_into().ok()?;
        Some(Checkpoint {
            next_offset: i64::from_be_bytes(bytes),
        })
    }
}

/// The state of one stage for one partition: named stores of key-value pairs,
/// plus the checkpoint they were last written with.
pub trait StateStore: Send + Sync {
    /// The value of `key` in `store`.
    fn get(&self, store: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StateError>;
    /// Every entry of `store` whose key starts with `prefix`, in key order.
    fn prefix(&self, store: &str, prefix: &[u8]) -> Result<Entries, StateError>;
    /// Visits every entry of `store` in key order without collecting them
    /// (a restore of millions of entries holds one at a time); stops early
    /// when `visit` returns `false`.
    fn for_each(
        &self,
        store: &str,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StateError> {
        for (key, value) in self.prefix(store, b"")? {
            if !visit(&key, &value) {
                break;
            }
        }
        Ok(())
    }
    /// Every entry of `store` with `from <= key < to`, in key order.
    fn range(&self, store: &str, from: &[u8], to: &[u8]) -> Result<Entries, StateError>;
    /// Applies `batch` and, when given, sets the checkpoint, atomically.
    fn write(&self, batch: WriteBatch, checkpoint: Option<Checkpoint>) -> Result<(), StateError>;
    /// The last checkpoint written (`None` for a new state).
    fn checkpoint(&self) -> Result<Option<Checkpoint>, StateError>;

    /// Sets `key` to `value` (a one-entry batch).
    fn put(&self, store: &str, key: &[u8], value: &[u8]) -> Result<(), StateError> {
        let mut batch = WriteBatch::default();
        batch.put(store, key, value);
        self.write(batch, None)
    }

    /// Removes `key` (a one-entry batch).
    fn delete(&self, store: &str, key: &[u8]) -> Result<(), StateError> {
        let mut batch = WriteBatch::default();
        batch.delete(store, key);
        self.write(batch, None)
    }
}

#[cfg(test)]
mod contract;
