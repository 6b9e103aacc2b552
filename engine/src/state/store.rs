//! An operator's handle on its store, and the layers behind it.
//!
//! Reads see, newest first: the writes of the batch being processed, the
//! writes of batches processed but not committed yet (their deliveries or
//! their transaction are pending), and the local store. Writes stay in the
//! first layer until the batch ends; [`Layers::seal`] then hands them out
//! for the changelog and the commit, and keeps them readable until
//! [`Layers::committed`] says the local store holds them.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use flumen_state::{Entries, StateError, StateStore, WriteBatch};

use super::replay_log::ReplayLog;

/// The latest write of each key of each store (`None`: deleted).
type Index = HashMap<Arc<str>, BTreeMap<Vec<u8>, Option<Vec<u8>>>>;

/// The writes not in the local store yet.
#[derive(Default)]
pub(crate) struct Layers {
    /// The batch being processed: its keyed writes (readable) ...
    current: Index,
    /// ... and the bulk writes of operators that keep their state in memory.
    bulk: WriteBatch,
    /// Batches processed but not committed, oldest first, by the offset
    /// after them.
    sealed: VecDeque<(i64, Index)>,
    /// Bulk writes are dropped: the state is never opened again, and they
    /// are read only when it is.
    drop_bulk: bool,
}

impl Layers {
    /// Layers of a state that is never opened again (see `drop_bulk`).
    pub(crate) fn never_reopened() -> Self {
        Layers {
            drop_bulk: true,
            ..Layers::default()
        }
    }

    /// Ends the batch before `next_offset`: returns its writes, which stay
    /// readable until committed.
    pub(crate) fn seal(&mut self, next_offset: i64) -> WriteBatch {
        let mut changes = std::mem::take(&mut self.bulk);
        let current = std::mem::take(&mut self.current);
        if current.is_empty() {
            return changes;
        }
        for (store, writes) in &current {
            for (key, value) in writes {
                match value {
                    Some(value) => changes.put(store, key, value),
                    None => changes.delete(store, key),
                }
            }
        }
        self.sealed.push_back((next_offset, current));
        changes
    }

    /// The local store now holds every batch before `next_offset`.
    pub(crate) fn committed(&mut self, next_offset: i64) {
        while self
            .sealed
            .front()
            .is_some_and(|(at, _)| *at <= next_offset)
        {
            self.sealed.pop_front();
        }
    }

    /// The newest write of `key`, if a layer has one.
    fn find(&self, store: &str, key: &[u8]) -> Option<&Option<Vec<u8>>> {
        let newest_first =
            std::iter::once(&self.current).chain(self.sealed.iter().rev().map(|s| &s.1));
        newest_first
            .filter_map(|index| index.get(store)?.get(key))
            .next()
    }

    /// Applies the layers' writes to `entries` of `store` in `from..to`.
    fn overlay(
        &self,
        store: &str,
        (from, to): (&[u8], &[u8]),
        entries: &mut BTreeMap<Vec<u8>, Vec<u8>>,
    ) {
        let oldest_first = self
            .sealed
            .iter()
            .map(|s| &s.1)
            .chain(std::iter::once(&self.current));
        for index in oldest_first {
            let Some(writes) = index.get(store) else {
                continue;
            };
            for (key, value) in writes.range::<[u8], _>((
                std::ops::Bound::Included(from),
                std::ops::Bound::Excluded(to),
            )) {
                match value {
                    Some(value) => entries.insert(key.clone(), value.clone()),
                    None => entries.remove(key),
                };
            }
        }
    }
}

/// An operator's handle on its store in one partition's state.
///
/// `get`, `range`, `put` and `delete` work key by key and read their own
/// writes at once. An operator that keeps its whole state in memory (a
/// window: the memory is the cache) loads it with [`StoreHandle::for_each`]
/// when opened and writes its changes with [`StoreHandle::write_batch`];
/// those bulk writes are logged and committed like the others but are not
/// readable before they are committed.
#[derive(Clone)]
pub(crate) struct StoreHandle {
    name: Arc<str>,
    local: Arc<dyn StateStore>,
    layers: Arc<Mutex<Layers>>,
    replay_log: Option<Arc<ReplayLog>>,
}

impl StoreHandle {
    pub(super) fn new(name: &str, local: Arc<dyn StateStore>, layers: Arc<Mutex<Layers>>) -> Self {
        StoreHandle {
            name: Arc::from(name),
            local,
            layers,
            replay_log: None,
        }
    }

    pub(super) fn with_replay_log(mut self, log: Option<Arc<ReplayLog>>) -> Self {
        self.replay_log = log;
        self
    }

    /// The store's replay log, when it keeps one (exactly-once runs).
    pub(crate) fn replay_log(&self) -> Option<&Arc<ReplayLog>> {
        self.replay_log.as_ref()
    }

    /// The store's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    fn layers(&self) -> MutexGuard<'_, Layers> {
        crate::runtime::lock(&self.layers)
    }

    /// The value of `key`.
    pub(crate) fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        if let Some(found) = self.layers().find(&self.name, key) {
            return Ok(found.clone());
        }
        self.local.get(&self.name, key)
    }

    /// Every entry with `from <= key < to`, in key order.
    pub(crate) fn range(&self, from: &[u8], to: &[u8]) -> Result<Entries, StateError> {
        let mut entries: BTreeMap<Vec<u8>, Vec<u8>> = self
            .local
            .range(&self.name, from, to)?
            .into_iter()
            .collect();
        self.layers().overlay(&self.name, (from, to), &mut entries);
        Ok(entries.into_iter().collect())
    }

    /// Sets `key` to `value`.
    pub(crate) fn put(&self, key: &[u8], value: &[u8]) {
        self.write(key, Some(value.to_vec()));
    }

    /// Removes `key`.
    pub(crate) fn delete(&self, key: &[u8]) {
        self.write(key, None);
    }

    fn write(&self, key: &[u8], value: Option<Vec<u8>>) {
        let mut layers = self.layers();
        let writes = layers.current.entry(Arc::clone(&self.name)).or_default();
        writes.insert(key.to_vec(), value);
    }

    /// Adds the bulk writes of an operator that keeps its state in memory
    /// (their store names must be this store's).
    pub(crate) fn write_batch(&self, changes: WriteBatch) {
        let mut layers = self.layers();
        if !changes.is_empty() && !layers.drop_bulk {
            layers.bulk.extend(changes);
        }
    }

    /// Visits every committed entry in key order (to load a state into
    /// memory when the operator opens); stops early when `visit` returns
    /// `false`.
    pub(crate) fn for_each(
        &self,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StateError> {
        self.local.for_each(&self.name, visit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flumen_state::{Checkpoint, MemoryStore};

    fn handle() -> (StoreHandle, Arc<MemoryStore>, Arc<Mutex<Layers>>) {
        let local = Arc::new(MemoryStore::default());
        let layers = Arc::new(Mutex::new(Layers::default()));
        let store = Arc::clone(&local) as Arc<dyn StateStore>;
        (
            StoreHandle::new("s", store, Arc::clone(&layers)),
            local,
            layers,
        )
    }

    fn seal(layers: &Mutex<Layers>, next_offset: i64) -> WriteBatch {
        layers
            .lock()
            .map(|mut l| l.seal(next_offset))
            .unwrap_or_default()
    }

    #[test]
    fn reads_see_writes_until_and_after_they_are_committed() -> Result<(), StateError> {
        let (store, local, layers) = handle();
        local.put("s", b"a", b"old")?;
        local.put("s", b"c", b"gone")?;
        store.put(b"a", b"1");
        store.put(b"b", b"2");
        assert_eq!(store.get(b"a")?, Some(b"1".to_vec()), "own write");
        let first = seal(&layers, 10);
        store.delete(b"c");
        store.put(b"b", b"3");
        let second = seal(&layers, 20);
        assert_eq!(store.get(b"a")?, Some(b"1".to_vec()), "sealed write");
        assert_eq!(store.get(b"c")?, None, "sealed delete");
        let all = |s: &StoreHandle| s.range(b"a", b"z");
        let expected = vec![
            (b"a".to_vec(), b"1".to_vec()),
            (b"b".to_vec(), b"3".to_vec()),
        ];
        assert_eq!(all(&store)?, expected);
        // Committed in order: the local store takes over.
        local.write(first, Some(Checkpoint { next_offset: 10 }))?;
        layers.lock().map(|mut l| l.committed(10)).ok();
        assert_eq!(
            all(&store)?,
            expected,
            "the second batch still overlays the first"
        );
        local.write(second, Some(Checkpoint { next_offset: 20 }))?;
        layers.lock().map(|mut l| l.committed(20)).ok();
        assert_eq!(all(&store)?, expected);
        Ok(())
    }

    #[test]
    fn a_state_never_reopened_keeps_keyed_writes_but_not_bulk_ones() {
        let local = Arc::new(MemoryStore::default()) as Arc<dyn StateStore>;
        let layers = Arc::new(Mutex::new(Layers::never_reopened()));
        let store = StoreHandle::new("s", local, Arc::clone(&layers));
        let mut bulk = WriteBatch::default();
        bulk.put("s", b"w", b"1");
        store.write_batch(bulk);
        store.put(b"k", b"2");
        assert_eq!(seal(&layers, 1).len(), 1, "only the keyed write");
    }

    #[test]
    fn bulk_writes_are_logged_but_read_only_once_committed() -> Result<(), StateError> {
        let (store, local, layers) = handle();
        let mut bulk = WriteBatch::default();
        bulk.put("s", b"w", b"1");
        store.write_batch(bulk);
        store.put(b"k", b"2");
        let changes = seal(&layers, 5);
        assert_eq!(changes.len(), 2);
        assert_eq!(store.get(b"w")?, None);
        local.write(changes, None)?;
        assert_eq!(store.get(b"w")?, Some(b"1".to_vec()));
        Ok(())
    }
}
