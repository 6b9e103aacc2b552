//! Enriching a stream with rows looked up in a table (a lookup join).
//!
//! [`StreamingDataFrame::lookup`](crate::StreamingDataFrame::lookup) adds the
//! columns of a [`Lookup`] to every row: flumen-cassandra's `CassandraLookup`
//! looks them up in a Cassandra table. Per micro-batch the distinct keys are
//! looked up once, in the engine's cache first ([`LookupCache`]: bounded by
//! entries and bytes, with a time to live for rows and one for misses), and
//! the rest in one [`LookupTable::fetch`]. Rows keep their order. A row whose
//! key is not found keeps nulls in the looked-up columns, is dropped, goes
//! to a dead-letter topic, or is held and looked up again for a bounded time
//! ([`OnMiss`]).

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{BooleanArray, RecordBatch};
use arrow::datatypes::SchemaRef;
use datafusion::logical_expr::Expr;
use futures::future::BoxFuture;

use crate::plan::BoxError;

/// A table to look rows up in by key; connectors implement it.
pub trait Lookup: Send + Sync + 'static {
    /// A name for errors and metrics, e.g. `cassandra table 'ks.devices'`.
    fn name(&self) -> String;

    /// The expressions over the stream that give the key, in the order
    /// [`LookupTable::fetch`] receives its columns.
    fn key(&self) -> Vec<Expr>;

    /// The cache in front of the table (default: [`LookupCache::default`]).
    fn cache(&self) -> LookupCache {
        LookupCache::default()
    }

    /// What becomes of a row whose key is not in the table.
    fn on_miss(&self) -> OnMiss {
        OnMiss::KeepNulls
    }

    /// Connects and reads the table's columns. Called once per run, before
    /// any record is consumed; an error stops the start.
    fn open(&self) -> BoxFuture<'_, Result<Arc<dyn LookupTable>, BoxError>>;
}

/// An opened lookup table, shared by the partitions of a run.
pub trait LookupTable: Send + Sync + 'static {
    /// The columns a lookup adds to each row (flumen makes them nullable).
    fn columns(&self) -> SchemaRef;

    /// Looks up `keys`: one column per key expression, one row per distinct
    /// key (never empty, no null key). Returns, in the same order, each
    /// key's row and whether it was found. May wait (backpressure) and
    /// retry; an error stops the application.
    fn fetch(&self, keys: RecordBatch) -> BoxFuture<'_, Result<Fetched, BoxError>>;

    /// Reads the whole table for [`LookupCache::preload`]: every key once
    /// (its first row), `None` when the table cannot be scanned (the
    /// default).
    fn scan(&self) -> BoxFuture<'_, Result<Option<Scanned>, BoxError>> {
        Box::pin(std::future::ready(Ok(None)))
    }
}

/// A whole table, as [`LookupTable::scan`] read it.
#[derive(Debug, Clone)]
pub struct Scanned {
    /// One column per key expression (in their order), one row per key.
    pub keys: RecordBatch,
    /// The key's row, with [`LookupTable::columns`].
    pub rows: RecordBatch,
}

/// What a [`LookupTable::fetch`] found.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// One row per key, with [`LookupTable::columns`] (a key not found has
    /// any values, usually nulls).
    pub rows: RecordBatch,
    /// Whether each key was found.
    pub found: BooleanArray,
}

/// What becomes of a row whose key is not in the table (or is null).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum OnMiss {
    /// Keep the row, with nulls in the looked-up columns.
    #[default]
    KeepNulls,
    /// Drop the row and count it (`flumen_lookup_dropped_total`).
    Drop,
    /// Drop the row, count it, and write its source record unchanged to
    /// this topic (which must exist), with the headers `flumen.error.kind`
    /// = `lookup-miss`, `flumen.error.reason` and
    /// `flumen.source.{topic,partition,offset}`. Needs the `_offset`
    /// column in the lookup's input.
    DeadLetter(String),
    /// Hold the row and look its key up again, for when the table's row may
    /// arrive after the event ([`RetryMisses`]).
    Retry(RetryMisses),
}

impl OnMiss {
    /// Holds a row whose key is not found and looks it up again every
    /// second for up to `within`; then keeps it with nulls (change that with
    /// [`RetryMisses::then`]).
    pub fn retry_for(within: Duration) -> Self {
        OnMiss::Retry(RetryMisses::within(within))
    }

    /// The policy that applies once retries are over (itself, unless it
    /// retries).
    pub(crate) fn last_resort(&self) -> &OnMiss {
        match self {
            OnMiss::Retry(retry) => &retry.then,
            other => other,
        }
    }

    /// The dead-letter topic rows may end in, if any.
    pub(crate) fn dead_letter_topic(&self) -> Option<&str> {
        match self.last_resort() {
            OnMiss::DeadLetter(topic) => Some(topic),
            _ => None,
        }
    }
}

/// [`OnMiss::Retry`]: a row whose key is not found is held (in the lookup's
/// state store, so a restart keeps it and its offset can be committed) and
/// its key looked up again every `every`, bypassing the cache, until found
/// or `within` has passed since it arrived; then `then` applies. Held rows
/// come out after the rows of later batches, in offset order among
/// themselves; they are retried when no record arrives too.
///
/// ```
/// use std::time::Duration;
/// use flumen::lookup::{OnMiss, RetryMisses};
///
/// let on_miss = OnMiss::Retry(
///     RetryMisses::within(Duration::from_secs(60))
///         .every(Duration::from_millis(500))
///         .then(OnMiss::DeadLetter("readings-unknown-device".into())),
/// );
/// assert_ne!(on_miss, OnMiss::retry_for(Duration::from_secs(60)));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryMisses {
    within: Duration,
    every: Duration,
    then: Box<OnMiss>,
}

impl RetryMisses {
    /// Retries for up to `within` after a row arrived, every second, then
    /// keeps it with nulls.
    pub fn within(within: Duration) -> Self {
        RetryMisses {
            within,
            every: Duration::from_secs(1),
            then: Box::new(OnMiss::KeepNulls),
        }
    }

    /// How often held keys are looked up again (at least 10 ms).
    pub fn every(mut self, every: Duration) -> Self {
        self.every = every.max(Duration::from_millis(10));
        self
    }

    /// What becomes of a row still not found after `within`: keep with
    /// nulls, drop or dead-letter (not retry again).
    pub fn then(mut self, then: OnMiss) -> Self {
        self.then = Box::new(then);
        self
    }

    /// How long a row is held at most.
    pub fn within_value(&self) -> Duration {
        self.within
    }

    /// How often held keys are looked up again.
    pub fn every_value(&self) -> Duration {
        self.every
    }

    /// What applies once the retries are over.
    pub fn then_value(&self) -> &OnMiss {
        &self.then
    }
}

/// The cache in front of a lookup table, shared by the partitions of a run.
///
/// A found row is used for `ttl` after it was fetched, a miss for
/// `miss_ttl`: an update to the table shows after at most that long. The
/// cache holds at most `max_entries` keys and about `max_bytes` of rows;
/// beyond that the least used go first.
///
/// ```
/// use std::time::Duration;
/// use flumen::lookup::LookupCache;
///
/// let cache = LookupCache::default()
///     .ttl(Duration::from_secs(30))
///     .miss_ttl(Duration::from_secs(5))
///     .max_entries(100_000);
/// assert_eq!(cache.max_entries_value(), 100_000);
/// let off = LookupCache::disabled(); // every batch asks the table
/// assert_eq!(off.max_entries_value(), 0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LookupCache {
    max_entries: u64,
    max_bytes: u64,
    ttl: Duration,
    miss_ttl: Duration,
    preload: Option<Duration>,
}

impl Default for LookupCache {
    /// 1,000,000 entries, 256 MiB, rows for 60 s, misses for 10 s.
    fn default() -> Self {
        LookupCache {
            max_entries: 1_000_000,
            max_bytes: 256 << 20,
            ttl: Duration::from_secs(60),
            miss_ttl: Duration::from_secs(10),
            preload: None,
        }
    }
}

impl LookupCache {
    /// No cache: every batch looks its keys up in the table.
    pub fn disabled() -> Self {
        LookupCache {
            max_entries: 0,
            ..LookupCache::default()
        }
    }

    /// At most `entries` keys (0: no cache).
    pub fn max_entries(mut self, entries: u64) -> Self {
        self.max_entries = entries;
        self
    }

    /// About `bytes` of cached rows at most.
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = bytes;
        self
    }

    /// How long a found row is used before it is looked up again.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How long a key that was not found stays not found.
    pub fn miss_ttl(mut self, ttl: Duration) -> Self {
        self.miss_ttl = ttl;
        self
    }

    /// Loads the whole table into memory when the application starts
    /// ([`LookupTable::scan`]) and again every `refresh`; batches then
    /// read no keys from the table, and a key not in the last scan is a
    /// miss. For small dimension tables: an update shows after at most
    /// `refresh` plus the time of a scan. The other settings do not apply.
    pub fn preload(mut self, refresh: Duration) -> Self {
        self.preload = Some(refresh);
        self
    }

    /// The refresh interval of a preloaded table (`None`: not preloaded).
    pub fn preload_value(&self) -> Option<Duration> {
        self.preload
    }

    /// The bound on keys.
    pub fn max_entries_value(&self) -> u64 {
        self.max_entries
    }

    pub(crate) fn max_bytes_value(&self) -> u64 {
        self.max_bytes
    }

    pub(crate) fn ttl_value(&self) -> Duration {
        self.ttl
    }

    pub(crate) fn miss_ttl_value(&self) -> Duration {
        self.miss_ttl
    }
}
