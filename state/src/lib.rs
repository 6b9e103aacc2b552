//! # flumen-state
//!
//! State stores for flumen's stateful operators. This crate holds the
//! [`StateStore`] trait and an in-memory implementation; the RocksDB store and the
//! changelog codec arrive with windowed aggregations.
//!
//! ```
//! use flumen_state::{MemoryStore, StateStore};
//!
//! let mut store = MemoryStore::default();
//! store.put(b"dev-1/1000", b"3")?;
//! store.put(b"dev-1/2000", b"5")?;
//! store.put(b"dev-2/1000", b"7")?;
//! assert_eq!(store.get(b"dev-1/2000")?, Some(b"5".to_vec()));
//! assert_eq!(store.prefix(b"dev-1/")?.len(), 2);
//! # Ok::<(), flumen_state::StateError>(())
//! ```

use std::collections::BTreeMap;

/// Errors of state stores.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The underlying storage failed.
    #[error("state store '{store}': {reason}")]
    Storage {
        /// The store.
        store: String,
        /// What failed.
        reason: String,
    },
}

/// Key-value pairs returned by scans.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// A key-value store of one operator for one partition.
pub trait StateStore: Send {
    /// The value of `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StateError>;
    /// Sets `key` to `value`.
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), StateError>;
    /// Removes `key`.
    fn delete(&mut self, key: &[u8]) -> Result<(), StateError>;
    /// Every entry whose key starts with `prefix`, in key order.
    fn prefix(&self, prefix: &[u8]) -> Result<Entries, StateError>;
}

/// An in-memory [`StateStore`] for tests.
#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    entries: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl StateStore for MemoryStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        Ok(self.entries.get(key).cloned())
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), StateError> {
        self.entries.insert(key.to_vec(), value.to_vec());
        Ok(())
    }

    fn delete(&mut self, key: &[u8]) -> Result<(), StateError> {
        self.entries.remove(key);
        Ok(())
    }

    fn prefix(&self, prefix: &[u8]) -> Result<Entries, StateError> {
        Ok(self
            .entries
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_scan_stops_at_the_prefix_end() -> Result<(), StateError> {
        let mut store = MemoryStore::default();
        for key in [&b"a/1"[..], b"a/2", b"b/1", b"a"] {
            store.put(key, b"x")?;
        }
        store.delete(b"a/2")?;
        let keys: Vec<_> = store.prefix(b"a/")?.into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, vec![b"a/1".to_vec()]);
        Ok(())
    }
}
