//! An in-memory [`StateStore`] for tests.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

use crate::{BatchOp, Checkpoint, Entries, StateError, StateStore, WriteBatch};

#[derive(Debug, Default)]
struct Inner {
    stores: HashMap<String, BTreeMap<Vec<u8>, Vec<u8>>>,
    checkpoint: Option<Checkpoint>,
}

/// An in-memory [`StateStore`]: same semantics as [`crate::RocksStore`], gone when dropped.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

impl MemoryStore {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn scan(&self, store: &str, from: &[u8], keep: impl Fn(&[u8]) -> bool) -> Entries {
        let inner = self.lock();
        let Some(entries) = inner.stores.get(store) else {
            return Vec::new();
        };
        entries
            .range(from.to_vec()..)
            .take_while(|(k, _)| keep(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

impl StateStore for MemoryStore {
    fn get(&self, store: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        Ok(self
            .lock()
            .stores
            .get(store)
            .and_then(|s| s.get(key).cloned()))
    }

    fn prefix(&self, store: &str, prefix: &[u8]) -> Result<Entries, StateError> {
        Ok(self.scan(store, prefix, |k| k.starts_with(prefix)))
    }

    fn range(&self, store: &str, from: &[u8], to: &[u8]) -> Result<Entries, StateError> {
        Ok(self.scan(store, from, |k| k < to))
    }

    fn write(&self, batch: WriteBatch, checkpoint: Option<Checkpoint>) -> Result<(), StateError> {
        let mut inner = self.lock();
        for op in batch.into_ops() {
            match op {
                BatchOp::Put { store, key, value } => {
                    let entries = match inner.stores.get_mut(&store) {
                        Some(entries) => entries,
                        None => inner.stores.entry(store).or_default(),
                    };
                    entries.insert(key, value);
                }
                BatchOp::Delete { store, key } => {
                    if let Some(s) = inner.stores.get_mut(&store) {
                        s.remove(&key);
                    }
                }
            }
        }
        if checkpoint.is_some() {
            inner.checkpoint = checkpoint;
        }
        Ok(())
    }

    fn checkpoint(&self) -> Result<Option<Checkpoint>, StateError> {
        Ok(self.lock().checkpoint)
    }
}
