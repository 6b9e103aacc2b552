//! The looked-up rows a lookup keeps in memory, by key, bounded by entries
//! and bytes, each for its own time to live.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;

use crate::lookup::LookupCache;

/// A looked-up row: row `index` of the batch one fetch returned (the rows
/// of a fetch share its batch), which `fetch` numbers.
#[derive(Clone)]
pub(super) struct Row {
    pub(super) batch: RecordBatch,
    pub(super) index: u32,
    pub(super) fetch: u64,
}

impl Row {
    /// Identifies the row: equal identities are the same values.
    pub(super) fn identity(&self) -> (u64, u32) {
        (self.fetch, self.index)
    }
}

/// A looked-up row (`None`: the key is not in the table), by key.
#[derive(Clone)]
pub(super) struct RowCache {
    rows: moka::sync::Cache<Arc<[u8]>, Option<Row>>,
}

/// Rows live `ttl` after they were fetched, misses `miss_ttl`.
struct Lifetimes {
    ttl: Duration,
    miss_ttl: Duration,
}

impl moka::Expiry<Arc<[u8]>, Option<Row>> for Lifetimes {
    fn expire_after_create(
        &self,
        _key: &Arc<[u8]>,
        row: &Option<Row>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(if row.is_some() {
            self.ttl
        } else {
            self.miss_ttl
        })
    }
}

impl RowCache {
    /// The cache `settings` ask for (`None`: no cache).
    pub(super) fn new(settings: LookupCache) -> Option<Self> {
        let entries = settings.max_entries_value();
        if entries == 0 {
            return None;
        }
        let bytes = settings.max_bytes_value().max(1);
        // Each entry weighs at least bytes / entries, so the byte bound also
        // bounds the entries.
        let floor = u32::try_from((bytes / entries).max(1)).unwrap_or(u32::MAX);
        let weigh = move |key: &Arc<[u8]>, row: &Option<Row>| {
            // A row's share of its fetch's batch.
            let share = |row: &Row| row.batch.get_array_memory_size() / row.batch.num_rows().max(1);
            let size = key.len() + row.as_ref().map_or(0, share);
            u32::try_from(size).unwrap_or(u32::MAX).max(floor)
        };
        let lifetimes = Lifetimes {
            ttl: settings.ttl_value(),
            miss_ttl: settings.miss_ttl_value(),
        };
        let rows = moka::sync::Cache::builder()
            .max_capacity(bytes)
            .weigher(weigh)
            .expire_after(lifetimes)
            .build();
        Some(RowCache { rows })
    }

    /// The cached row of `key` (`Some(None)`: a cached miss).
    pub(super) fn get(&self, key: &[u8]) -> Option<Option<Row>> {
        self.rows.get(key)
    }

    /// Caches the row of `key`.
    pub(super) fn insert(&self, key: &[u8], row: Option<Row>) {
        self.rows.insert(key.into(), row);
    }
}
