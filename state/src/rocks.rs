//! The RocksDB [`StateStore`]: one database per (stage, partition), a column
//! family per store, and a meta column family holding the identity and the
//! checkpoint.

use std::path::{Path, PathBuf};

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DBCompressionType, Direction, IteratorMode,
    Options, DB,
};

use crate::{BatchOp, Checkpoint, Entries, StateError, StateStore, WriteBatch};

const META: &str = "flumen-meta";
const IDENTITY_KEY: &[u8] = b"identity";
const CHECKPOINT_KEY: &[u8] = b"checkpoint";

/// Whose state a directory holds: the application (consumer group), the stage's
/// source topic and the partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreIdentity {
    /// The application (its consumer group).
    pub application: String,
    /// The stage's source topic.
    pub topic: String,
    /// The source partition.
    pub partition: i32,
}

impl StoreIdentity {
    /// The identity of `application`'s state of `topic` / `partition`.
    pub fn new(application: &str, topic: &str, partition: i32) -> Self {
        StoreIdentity {
            application: application.to_string(),
            topic: topic.to_string(),
            partition,
        }
    }

    fn encode(&self) -> String {
        format!(
            "application '{}', topic '{}', partition {}",
            self.application, self.topic, self.partition
        )
    }
}

/// A block cache shared by the RocksDB states of one process.
#[derive(Clone)]
pub struct BlockCache(Cache);

impl BlockCache {
    /// An LRU cache of `bytes`.
    pub fn new(bytes: usize) -> Self {
        BlockCache(Cache::new_lru_cache(bytes))
    }
}

impl std::fmt::Debug for BlockCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BlockCache")
    }
}

/// A [`StateStore`] in a RocksDB database: block cache, bloom filters, LZ4.
/// Dropping it closes the database; [`RocksStore::destroy`] removes it.
pub struct RocksStore {
    db: DB,
    path: PathBuf,
    stores: Vec<String>,
    /// flumen's own lock on the directory, held while the store is open
    /// (released after `db` closes: fields drop in order).
    _lock: std::fs::File,
}

impl std::fmt::Debug for RocksStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksStore")
            .field("path", &self.path)
            .field("stores", &self.stores)
            .finish()
    }
}

fn options(cache: &Cache) -> Options {
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    table.set_bloom_filter(10.0, false);
    table.set_cache_index_and_filter_blocks(true);
    let mut opts = Options::default();
    opts.set_block_based_table_factory(&table);
    opts.set_compression_type(DBCompressionType::Lz4);
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_max_background_jobs(2);
    opts.set_keep_log_file_num(3);
    // The open windows live in memory; RocksDB is written, and read only on a
    // restore, so large memtables only cost memory (64 MiB each by default,
    // per partition).
    opts.set_write_buffer_size(WRITE_BUFFER_BYTES);
    opts.set_max_open_files(MAX_OPEN_FILES);
    opts
}

/// Memtable size of each partition's state.
const WRITE_BUFFER_BYTES: usize = 8 << 20;

/// Files each partition's database keeps open at most (RocksDB's default is
/// unlimited; with one database per partition that runs into the process's
/// file limit).
const MAX_OPEN_FILES: i32 = 256;

/// The lock file flumen holds in a state directory while a store is open.
const LOCK_FILE: &str = "flumen.lock";

/// Creates `path` when missing and takes flumen's exclusive lock on it: a
/// held lock is [`StateError::Locked`], typed, before RocksDB's own lock is
/// tried.
fn lock_dir(path: &Path) -> Result<std::fs::File, StateError> {
    let io = |operation: &str, e: std::io::Error| StateError::Storage {
        path: path.to_path_buf(),
        operation: operation.to_string(),
        kind: crate::StorageKind::Io,
        reason: e.to_string(),
    };
    std::fs::create_dir_all(path).map_err(|e| io("creating the directory", e))?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path.join(LOCK_FILE))
        .map_err(|e| io("opening the lock file", e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StateError::Locked {
            path: path.to_path_buf(),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(io("locking", e)),
    }
}

impl RocksStore {
    /// Opens (or creates) the state at `path` for `identity` with `stores`.
    /// Fails with [`StateError::Mismatch`] when the directory holds another
    /// identity's state.
    pub fn open(
        path: &Path,
        identity: &StoreIdentity,
        stores: &[&str],
    ) -> Result<RocksStore, StateError> {
        Self::open_with_cache(path, identity, stores, &BlockCache::new(16 << 20))
    }

    /// Like [`RocksStore::open`], sharing `cache` as block cache with other states.
    pub fn open_with_cache(
        path: &Path,
        identity: &StoreIdentity,
        stores: &[&str],
        cache: &BlockCache,
    ) -> Result<RocksStore, StateError> {
        let cache = &cache.0;
        let fail = |operation: &str, e: rocksdb::Error| StateError::Storage {
            path: path.to_path_buf(),
            operation: operation.to_string(),
            kind: e.kind().into(),
            reason: e.to_string(),
        };
        let lock = lock_dir(path)?;
        let opts = options(cache);
        // Every existing column family must be opened, including stores this
        // version of the application no longer has.
        let mut names: Vec<String> = DB::list_cf(&opts, path).unwrap_or_default();
        for name in stores.iter().copied().chain([META]) {
            if !names.iter().any(|n| n == name) {
                names.push(name.to_string());
            }
        }
        let descriptors = names
            .iter()
            .map(|n| ColumnFamilyDescriptor::new(n, options(cache)));
        let db =
            DB::open_cf_descriptors(&opts, path, descriptors).map_err(|e| fail("opening", e))?;
        let store = RocksStore {
            db,
            path: path.to_path_buf(),
            stores: stores.iter().map(|s| s.to_string()).collect(),
            _lock: lock,
        };
        let expected = identity.encode();
        match store.get(META, IDENTITY_KEY)? {
            Some(found) if found != expected.as_bytes() => {
                return Err(StateError::Mismatch {
                    path: path.to_path_buf(),
                    expected,
                    found: String::from_utf8_lossy(&found).into_owned(),
                })
            }
            Some(_) => {}
            None => store.put(META, IDENTITY_KEY, expected.as_bytes())?,
        }
        Ok(store)
    }

    /// Removes the state at `path` (it must not be open).
    pub fn destroy(path: &Path) -> Result<(), StateError> {
        if !path.exists() {
            return Ok(());
        }
        DB::destroy(&Options::default(), path).map_err(|e| StateError::Storage {
            path: path.to_path_buf(),
            operation: "destroying".into(),
            kind: e.kind().into(),
            reason: e.to_string(),
        })?;
        // RocksDB leaves the directory (and its LOG files) behind.
        std::fs::remove_dir_all(path).or_else(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Ok(()),
            _ => Err(StateError::Storage {
                path: path.to_path_buf(),
                operation: "removing the directory".into(),
                kind: crate::StorageKind::Io,
                reason: e.to_string(),
            }),
        })
    }

    /// The database directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn cf(&self, store: &str) -> Result<&rocksdb::ColumnFamily, StateError> {
        self.db
            .cf_handle(store)
            .ok_or_else(|| StateError::UnknownStore {
                store: store.to_string(),
                known: self.stores.join(", "),
            })
    }

    fn fail(&self, operation: &str, e: rocksdb::Error) -> StateError {
        StateError::Storage {
            path: self.path.clone(),
            operation: operation.to_string(),
            kind: e.kind().into(),
            reason: e.to_string(),
        }
    }

    fn scan(
        &self,
        store: &str,
        from: &[u8],
        keep: impl Fn(&[u8]) -> bool,
    ) -> Result<Entries, StateError> {
        let cf = self.cf(store)?;
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(cf, IteratorMode::From(from, Direction::Forward))
        {
            let (k, v) = item.map_err(|e| self.fail("scanning", e))?;
            if !keep(&k) {
                break;
            }
            out.push((k.into_vec(), v.into_vec()));
        }
        Ok(out)
    }
}

impl StateStore for RocksStore {
    fn get(&self, store: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        let cf = self.cf(store)?;
        self.db.get_cf(cf, key).map_err(|e| self.fail("reading", e))
    }

    fn prefix(&self, store: &str, prefix: &[u8]) -> Result<Entries, StateError> {
        self.scan(store, prefix, |k| k.starts_with(prefix))
    }

    fn range(&self, store: &str, from: &[u8], to: &[u8]) -> Result<Entries, StateError> {
        self.scan(store, from, |k| k < to)
    }

    fn for_each(
        &self,
        store: &str,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StateError> {
        let cf = self.cf(store)?;
        for item in self.db.iterator_cf(cf, IteratorMode::Start) {
            let (key, value) = item.map_err(|e| self.fail("scanning", e))?;
            if !visit(&key, &value) {
                break;
            }
        }
        Ok(())
    }

    fn write(&self, batch: WriteBatch, checkpoint: Option<Checkpoint>) -> Result<(), StateError> {
        let mut rocks = rocksdb::WriteBatch::default();
        for op in batch.ops() {
            match op {
                BatchOp::Put { store, key, value } => rocks.put_cf(self.cf(store)?, key, value),
                BatchOp::Delete { store, key } => rocks.delete_cf(self.cf(store)?, key),
            }
        }
        if let Some(checkpoint) = checkpoint {
            rocks.put_cf(self.cf(META)?, CHECKPOINT_KEY, checkpoint.encode());
        }
        self.db.write(rocks).map_err(|e| self.fail("writing", e))
    }

    fn checkpoint(&self) -> Result<Option<Checkpoint>, StateError> {
        Ok(self
            .get(META, CHECKPOINT_KEY)?
            .and_then(|b| Checkpoint::decode(&b)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> StoreIdentity {
        StoreIdentity::new("app", "input", 3)
    }

    #[test]
    fn state_and_checkpoint_survive_reopening() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        {
            let store = RocksStore::open(dir.path(), &identity(), &["a", "b"])?;
            crate::contract::check(&store)?;
            let mut batch = WriteBatch::default();
            batch.put("b", b"k", b"v");
            store.write(batch, Some(Checkpoint { next_offset: 17 }))?;
        }
        let store = RocksStore::open(dir.path(), &identity(), &["a", "b"])?;
        assert_eq!(store.checkpoint()?, Some(Checkpoint { next_offset: 17 }));
        assert_eq!(store.get("b", b"k")?, Some(b"v".to_vec()));
        Ok(())
    }

    #[test]
    fn a_second_open_in_the_same_process_is_refused() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let first = RocksStore::open(dir.path(), &identity(), &["a"])?;
        let second = RocksStore::open(dir.path(), &identity(), &["a"]);
        assert!(
            matches!(second, Err(StateError::Locked { .. })),
            "two open handles on one state directory: {second:?}"
        );
        drop(first);
        RocksStore::open(dir.path(), &identity(), &["a"])?;
        Ok(())
    }

    #[test]
    fn another_identity_is_refused() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        drop(RocksStore::open(dir.path(), &identity(), &["a"])?);
        let other = StoreIdentity::new("app", "input", 4);
        let err = RocksStore::open(dir.path(), &other, &["a"]).unwrap_err();
        assert!(err.to_string().contains("partition 3"), "{err}");
        assert!(err.to_string().contains("partition 4"), "{err}");
        Ok(())
    }

    #[test]
    fn unknown_store_and_destroy() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("state");
        let store = RocksStore::open(&path, &identity(), &["a"])?;
        let err = store.get("zzz", b"k").unwrap_err();
        assert!(err.to_string().contains("'zzz'"), "{err}");
        drop(store);
        RocksStore::destroy(&path)?;
        assert!(!path.exists());
        let store = RocksStore::open(&path, &identity(), &["a"])?;
        assert_eq!(store.checkpoint()?, None);
        Ok(())
    }

    /// Defect 4 of #16: damaged files are a corruption (rebuildable); an I/O
    /// failure is not, and must never cost the state.
    #[test]
    fn open_errors_are_typed_corruption_or_io() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        drop(RocksStore::open(dir.path(), &identity(), &["a"])?);
        std::fs::write(dir.path().join("CURRENT"), b"garbage")?;
        let corrupt = RocksStore::open(dir.path(), &identity(), &["a"]);
        assert!(
            corrupt.as_ref().is_err_and(StateError::is_rebuildable),
            "{corrupt:?}"
        );

        // A state path that is a file: the OS refuses, the file stays.
        let file = dir.path().join("not-a-directory");
        std::fs::write(&file, b"keep me")?;
        let io = RocksStore::open(&file, &identity(), &["a"]);
        assert!(
            matches!(
                &io,
                Err(StateError::Storage {
                    kind: crate::StorageKind::Io,
                    ..
                })
            ),
            "{io:?}"
        );
        assert!(!io.as_ref().is_err_and(StateError::is_rebuildable));
        assert_eq!(std::fs::read(&file)?, b"keep me");
        Ok(())
    }
}
