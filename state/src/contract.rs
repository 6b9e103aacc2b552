//! Behaviour every [`StateStore`] shares, checked against each implementation.

use crate::{Checkpoint, MemoryStore, StateError, StateStore, WriteBatch};

/// Runs the shared checks on an empty store with stores "a" and "b".
pub(crate) fn check(store: &dyn StateStore) -> Result<(), StateError> {
    assert_eq!(store.checkpoint()?, None);
    for key in [&b"x/1"[..], b"x/2", b"y/1", b"x"] {
        store.put("a", key, b"1")?;
    }
    store.put("b", b"x/9", b"other store")?;
    store.delete("a", b"x/2")?;
    let keys = |entries: Vec<(Vec<u8>, Vec<u8>)>| -> Vec<Vec<u8>> {
        entries.into_iter().map(|(k, _)| k).collect()
    };
    assert_eq!(keys(store.prefix("a", b"x/")?), vec![b"x/1".to_vec()]);
    assert_eq!(
        keys(store.range("a", b"x", b"y/1")?),
        vec![b"x".to_vec(), b"x/1".to_vec()]
    );
    let mut batch = WriteBatch::default();
    batch.put("a", b"z", b"2");
    batch.delete("a", b"x");
    batch.put("b", b"x/9", b"changed");
    store.write(batch, Some(Checkpoint { next_offset: 5 }))?;
    assert_eq!(store.checkpoint()?, Some(Checkpoint { next_offset: 5 }));
    assert_eq!(store.get("a", b"x")?, None);
    assert_eq!(store.get("a", b"z")?, Some(b"2".to_vec()));
    assert_eq!(store.get("b", b"x/9")?, Some(b"changed".to_vec()));
    store.write(WriteBatch::default(), None)?;
    assert_eq!(store.checkpoint()?, Some(Checkpoint { next_offset: 5 }));
    Ok(())
}

#[test]
fn memory_store_keeps_the_contract() -> Result<(), StateError> {
    check(&MemoryStore::default())
}
