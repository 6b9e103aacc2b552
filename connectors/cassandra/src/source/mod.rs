//! `CassandraSource`: publishes a Cassandra / ScyllaDB table into a Kafka
//! topic, first as a snapshot, then by change capture.
//!
//! The source works in *passes* over the table. Each pass cuts the Murmur3
//! token ring into [`splits`](CassandraSource::splits) equal ranges and scans
//! them in parallel ([`concurrency`](CassandraSource::concurrency) at once),
//! page by page, at the connection's consistency (default `LOCAL_QUORUM`).
//! After each published page, the range's position (the driver's paging
//! state) is recorded in a compacted progress topic; a restarted source
//! continues every range where it stopped.
//!
//! - Pass 0 is the **snapshot** (unless [`snapshot(false)`](CassandraSource::snapshot)): every row.
//! - Then, every [`poll_interval`](CassandraSource::poll_interval), a **change
//!   capture** pass over the rows changed since the previous pass, up to
//!   [`safety_lag`](CassandraSource::safety_lag) before now (writes of
//!   clients whose clocks run behind are not missed), in the mode chosen:
//!   [`Capture::Writetime`] or [`Capture::Incremental`].
//!
//! Records: the key is the partition key (its value as text for one column,
//! a JSON array for several), so the updates of a key stay in order on one
//! partition; the value is the row as a JSON object (types in the `json`
//! table below); the timestamp is the row's latest write time; headers
//! `flumen.source.table` and `flumen.source.mode` (`snapshot`, `writetime`,
//! `incremental`).
//!
//! With [`exactly_once`](CassandraSource::exactly_once) (the default), each
//! group of pages and the positions after them are written in one Kafka
//! transaction: a crash at any point leaves `read_committed` readers neither
//! a gap nor a duplicate within a pass. Without it, positions are written
//! after the pages are acknowledged: nothing is lost, a crash may repeat
//! the pages after the last position.
//!
//! The JSON of each CQL type: see the table in the `json` module docs (strings
//! for text, uuids, inet, date, varint, decimal, duration and base64 blobs;
//! numbers for integers, floats, timestamps (epoch ms) and time (ns);
//! arrays for lists, sets, vectors and tuples; objects for maps and UDTs).

mod bucket;
pub(crate) mod json;
mod leader;
mod progress;
mod publish;
pub(crate) mod ranges;
mod scan;
mod stats;
pub(crate) mod table;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use flumen_kafka::{Admin, KafkaConfig, TopicSpec};
use futures::future::BoxFuture;
use futures::FutureExt;
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use tokio::sync::mpsc;

pub use stats::SourceStats;

use crate::connection::Connection;
use crate::error::CassandraError;
use crate::schema::quote_ident;
use crate::Consistency;
use bucket::Buckets;
use progress::{Pass, PassKind, Progress};
use publish::Publisher;
use scan::{now_us, ChangeTime, RateLimiter, Scan};
use table::{read_table, Table};

/// How a source follows the table after the snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capture {
    /// No change capture: the source ends after the snapshot.
    None,
    /// Rows whose latest `WRITETIME` (over the regular, non-collection
    /// columns) is newer than the previous pass, found by scanning every
    /// token range each pass. Works on any table. Catches inserts and updates
    /// of those columns; misses deletes (a deleted row is simply gone), and
    /// rows whose only change is to a collection column (no `WRITETIME`).
    /// Each pass reads the whole table: for large tables choose a long
    /// [`poll_interval`](CassandraSource::poll_interval) or `Incremental`.
    Writetime,
    /// Rows whose `column` (a `timestamp` or `timeuuid` that every write sets
    /// to its time) is in the pass's time slice, queried with `column > ? AND
    /// column <= ?` per token range. Unless the column is the first
    /// clustering column, Cassandra must filter (`ALLOW FILTERING`): every
    /// pass then reads the whole table server-side, and the source logs a
    /// warning. Misses deletes and updates that do not move the column.
    Incremental {
        /// The change column.
        column: String,
    },
}

/// Publishes a Cassandra table into Kafka. See the module documentation for
/// what it reads, in which order, and what it guarantees. `Debug` hides the
/// password.
///
/// ```no_run
/// use flumen_cassandra::{Capture, CassandraSource};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let source = CassandraSource::table("iot.readings")
///     .nodes("127.0.0.1:9042")
///     .capture(Capture::Writetime);
/// // Publishes into `readings-app-source-iot.readings` until Ctrl-C.
/// source
///     .publish("127.0.0.1:9092", "readings-app", async {
///         let _ = tokio::signal::ctrl_c().await;
///     })
///     .await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct CassandraSource {
    keyspace: String,
    table: String,
    connection: Connection,
    topic: Option<String>,
    partitions: i32,
    replication: i32,
    splits: u32,
    concurrency: usize,
    page_size: i32,
    max_rows_per_second: Option<u32>,
    snapshot: bool,
    capture: Capture,
    buckets: Option<(String, Duration)>,
    poll_interval: Duration,
    safety_lag: Duration,
    exactly_once: bool,
    /// `None`: on unless event time comes from a column.
    heartbeats: Option<bool>,
    retries: usize,
    kafka_extra: Vec<(String, String)>,
    timestamp_column: Option<String>,
    stats: Arc<SourceStats>,
}

impl CassandraSource {
    crate::connection::connection_builder_methods!();

    /// A source of `keyspace.table` on `127.0.0.1:9042` (see [`nodes`](Self::nodes)):
    /// a snapshot, then no change capture (see [`capture`](Self::capture)).
    pub fn table(table: &str) -> Self {
        let (keyspace, name) = table.split_once('.').unwrap_or(("", table));
        CassandraSource {
            keyspace: keyspace.to_string(),
            table: name.to_string(),
            connection: Connection::new(Duration::from_secs(12)),
            topic: None,
            partitions: 8,
            replication: -1,
            splits: 64,
            concurrency: 8,
            page_size: 5_000,
            max_rows_per_second: None,
            snapshot: true,
            capture: Capture::None,
            buckets: None,
            poll_interval: Duration::from_secs(5),
            safety_lag: Duration::from_secs(2),
            exactly_once: true,
            heartbeats: None,
            retries: 8,
            kafka_extra: Vec::new(),
            timestamp_column: None,
            stats: Arc::new(SourceStats::new(table.to_string())),
        }
    }

    /// Read consistency (default `LOCAL_QUORUM`: a row acknowledged at
    /// `LOCAL_QUORUM` by its writer is seen).
    pub fn consistency(mut self, consistency: Consistency) -> Self {
        self.connection.consistency = consistency;
        self
    }

    /// Retries of a page after a timeout, overload or unavailability
    /// (default 8, exponential backoff from 50 ms with jitter, up to 5 s apart).
    pub fn retries(mut self, retries: usize) -> Self {
        self.retries = retries;
        self
    }

    /// The Kafka topic to publish to (default `<group>-source-<keyspace>.<table>`);
    /// created with [`partitions`](Self::partitions) partitions when missing.
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = Some(topic.into());
        self
    }

    /// Partitions of the topic when the source creates it (default 8).
    pub fn partitions(mut self, partitions: i32) -> Self {
        self.partitions = partitions.max(1);
        self
    }

    /// Replication factor of the topics the source creates (default -1: the
    /// broker's `default.replication.factor`).
    pub fn replication_factor(mut self, replication: i32) -> Self {
        self.replication = replication;
        self
    }

    /// Token ranges per pass (default 64; at least [`concurrency`](Self::concurrency)
    /// makes sense). A range is the unit of progress and of parallelism.
    pub fn splits(mut self, splits: u32) -> Self {
        self.splits = splits.max(1);
        self
    }

    /// Ranges scanned at once (default 8).
    pub fn concurrency(mut self, ranges: usize) -> Self {
        self.concurrency = ranges.max(1);
        self
    }

    /// Rows per page (default 5,000).
    pub fn page_size(mut self, rows: i32) -> Self {
        self.page_size = rows.max(1);
        self
    }

    /// At most this many rows per second over all ranges (default: no limit).
    pub fn max_rows_per_second(mut self, rows: u32) -> Self {
        self.max_rows_per_second = Some(rows);
        self
    }

    /// Whether the source starts with a snapshot of the whole table (default
    /// true). Without one, change capture starts from the time the source
    /// first runs.
    pub fn snapshot(mut self, yes: bool) -> Self {
        self.snapshot = yes;
        self
    }

    /// How the table is followed after the snapshot (default [`Capture::None`]).
    pub fn capture(mut self, capture: Capture) -> Self {
        self.capture = capture;
        self
    }

    /// Time between the starts of two change-capture passes (default 5 s).
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// How far behind now each capture pass ends (default 2 s): writes
    /// stamped by clients whose clocks run up to this much behind are still
    /// caught.
    pub fn safety_lag(mut self, lag: Duration) -> Self {
        self.safety_lag = lag;
        self
    }

    /// For [`Capture::Incremental`] over a table bucketed by time: `column`
    /// is the whole partition key and holds each row's time bucket of
    /// `width` (the bucket's start as a `timestamp` or `date`, or its number,
    /// epoch ms / width, as a `bigint` or `int`). Each capture pass then
    /// reads only the buckets its time slice touches, one partition each,
    /// without `ALLOW FILTERING` over the table. A bucket column of another
    /// type, or a table keyed by more than it, is refused when the source
    /// starts.
    pub fn incremental_buckets(mut self, column: impl Into<String>, width: Duration) -> Self {
        self.buckets = Some((column.into(), width));
        self
    }

    /// Whether each change-capture pass starts with a heartbeat in every
    /// partition of the topic: a record with no key and no value, the
    /// [`HEARTBEAT_HEADER`](flumen_kafka::HEARTBEAT_HEADER) header and the
    /// message timestamp up to which every write was published (the last
    /// pass's upper bound, a write time). flumen frames read it as no row but
    /// as event time, so `final_()` windows over a quiet table still close;
    /// other consumers of the topic should skip records with that header.
    /// Default: on, unless [`timestamp_column`](Self::timestamp_column) makes
    /// a column the event time (the source cannot know how that column's
    /// clock relates to write times; a heartbeat ahead of it would make the
    /// rows late).
    pub fn heartbeats(mut self, on: bool) -> Self {
        self.heartbeats = Some(on);
        self
    }

    /// Pages and positions in one Kafka transaction (default true); false:
    /// at-least-once.
    pub fn exactly_once(mut self, yes: bool) -> Self {
        self.exactly_once = yes;
        self
    }

    /// An extra librdkafka property for the source's producer.
    pub fn kafka_config(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.kafka_extra.push((key.into(), value.into()));
        self
    }

    /// The event time of the frame read from the source: this `timestamp`
    /// column of the table (default: each record's timestamp, the row's
    /// latest write time).
    pub fn timestamp_column(mut self, column: impl Into<String>) -> Self {
        self.timestamp_column = Some(column.into());
        self
    }

    /// Live counters: rows, pass, ranges done.
    pub fn stats(&self) -> Arc<SourceStats> {
        Arc::clone(&self.stats)
    }

    /// `keyspace.table`.
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.keyspace, self.table)
    }

    /// The topic the source publishes to, for the consumer group `group`.
    pub fn topic_for(&self, group: &str) -> String {
        self.topic
            .clone()
            .unwrap_or_else(|| format!("{group}-source-{}", self.qualified()))
    }

    fn progress_topic(&self, group: &str) -> String {
        format!("{}-progress", self.topic_for(group))
    }

    /// Publishes into [`topic_for(group)`](Self::topic_for) on the Kafka
    /// cluster at `brokers` until `until` completes (then finishes the
    /// transaction in flight) or, with [`Capture::None`], the snapshot is
    /// complete. `group` names the topics and the transactional id: one
    /// process per group and table may run it at a time (a second one
    /// fences the first).
    pub async fn publish(
        &self,
        brokers: &str,
        group: &str,
        until: impl Future<Output = ()>,
    ) -> Result<(), CassandraError> {
        let mut config = KafkaConfig::new(brokers);
        for (key, value) in &self.kafka_extra {
            config.insert(key, value);
        }
        self.publish_with(&config, group, until).await
    }

    /// Publishes while this instance leads the publishers of `group` (see
    /// the `leader` module): waits to lead, publishes until stopped, done or
    /// no longer the leader, then waits to lead again.
    async fn publish_with(
        &self,
        config: &KafkaConfig,
        group: &str,
        stop: impl Future<Output = ()>,
    ) -> Result<(), CassandraError> {
        let mut stop = std::pin::pin!(stop);
        let topic = self.topic_for(group);
        create_topics(self, config, &topic, &self.progress_topic(group)).await?;
        let publishers = format!("{topic}-publisher");
        let mut leadership =
            leader::Leadership::join(config, &publishers, &self.progress_topic(group))?;
        loop {
            tokio::select! {
                () = leadership.acquired() => {}
                () = &mut stop => return Ok(()),
            }
            tracing::info!(table = %self.qualified(), %topic, "leading the publishers: publishing");
            let run = Run::open(self, config, group).await?;
            let mut lost = false;
            let until = async {
                tokio::select! {
                    () = &mut stop => {}
                    () = leadership.lost() => lost = true,
                }
            };
            let result = run.run(until).await;
            // A new leader fences this one's producer: its last commit fails.
            let lost = lost || !leadership.is_leader();
            match result {
                Err(error) if lost => {
                    tracing::info!(table = %self.qualified(), %error, "no longer leading the publishers");
                }
                Ok(()) if lost => {
                    tracing::info!(table = %self.qualified(), "no longer leading the publishers");
                }
                result => return result,
            }
        }
    }
}

/// One run of a source: its session, table, producer and progress.
struct Run<'a> {
    source: &'a CassandraSource,
    config: KafkaConfig,
    session: Arc<Session>,
    table: Arc<Table>,
    /// The buckets of an incremental capture over a bucketed table.
    buckets: Option<Buckets>,
    publisher: Publisher,
    progress_topic: String,
}

impl<'a> Run<'a> {
    async fn open(
        source: &'a CassandraSource,
        config: &KafkaConfig,
        group: &str,
    ) -> Result<Run<'a>, CassandraError> {
        if source.keyspace.is_empty() || source.table.is_empty() {
            return Err(CassandraError::Config(format!(
                "the source table must be written as keyspace.table, not '{}'",
                source.table
            )));
        }
        let session = Arc::new(source.connection.connect().await?);
        let table = Arc::new(read_table(&session, &source.keyspace, &source.table).await?);
        let buckets = check_capture(source, &table)?;
        let topic = source.topic_for(group);
        let progress_topic = source.progress_topic(group);
        let transactional_id = source.exactly_once.then(|| format!("{topic}-publisher"));
        let producer = Publisher::open(config, transactional_id, &table.qualified()).await?;
        let heartbeats = source
            .heartbeats
            .unwrap_or(source.timestamp_column.is_none());
        let heartbeat_partitions = match heartbeats {
            true => partition_count(config, &topic, &table.qualified()).await?,
            false => 0,
        };
        let publisher = Publisher {
            producer: Arc::new(producer),
            exactly_once: source.exactly_once,
            heartbeat_partitions,
            topic,
            progress_topic: progress_topic.clone(),
            table: table.qualified(),
            stats: source.stats(),
        };
        Ok(Run {
            source,
            config: config.clone(),
            session,
            table,
            buckets,
            publisher,
            progress_topic,
        })
    }

    /// Passes until `until` or, without change capture, the snapshot's end.
    async fn run(self, until: impl Future<Output = ()>) -> Result<(), CassandraError> {
        let mut until = std::pin::pin!(until);
        let mut progress = self.load_progress().await?;
        loop {
            let pass = match &progress.pass {
                Some(pass) if !all_done(pass, &progress) => pass.clone(),
                finished => {
                    // A capture pass is followed by another after the poll
                    // interval; its upper bound is taken after the wait.
                    if finished
                        .as_ref()
                        .is_some_and(|p| p.kind != PassKind::Snapshot)
                    {
                        tokio::select! {
                            () = tokio::time::sleep(self.source.poll_interval) => {}
                            () = &mut until => return Ok(()),
                        }
                    }
                    let Some(next) = self.next_pass(finished.as_ref()) else {
                        tracing::info!(table = %self.table.qualified(), "snapshot complete; no change capture");
                        return Ok(());
                    };
                    self.publisher.start_pass(&next).await?;
                    progress = Progress {
                        pass: Some(next.clone()),
                        ranges: Default::default(),
                    };
                    next
                }
            };
            if self.run_pass(&pass, &progress, &mut until).await? {
                return Ok(());
            }
            progress.ranges = (0..pass.splits as usize)
                .map(|i| (i, progress::RangeProgress::after_page(pass.number, 0, None)))
                .collect();
        }
    }

    async fn load_progress(&self) -> Result<Progress, CassandraError> {
        let (config, topic) = (self.config.clone(), self.progress_topic.clone());
        tokio::task::spawn_blocking(move || progress::load(&config, &topic))
            .await
            .map_err(|e| CassandraError::Config(format!("reading the progress topic: {e}")))?
    }

    /// In a snapshot change capture follows, how the capture tells a row's
    /// change time.
    fn captured_by(&self, pass: &Pass) -> Option<ChangeTime> {
        if pass.kind != PassKind::Snapshot {
            return None;
        }
        match &self.source.capture {
            Capture::None => None,
            Capture::Writetime => Some(ChangeTime::Writetime),
            Capture::Incremental { column } => self
                .table
                .columns
                .iter()
                .position(|c| &c.name == column)
                .map(ChangeTime::Column),
        }
    }

    /// The pass after `finished` (`None`: nothing more to do).
    fn next_pass(&self, finished: Option<&Pass>) -> Option<Pass> {
        let lag = i64::try_from(self.source.safety_lag.as_micros()).unwrap_or(i64::MAX);
        let high = now_us().saturating_sub(lag);
        let kind = match &self.source.capture {
            Capture::None => None,
            Capture::Writetime => Some(PassKind::Writetime),
            Capture::Incremental { .. } => Some(PassKind::Incremental),
        };
        match finished {
            None if self.source.snapshot => Some(Pass {
                number: 0,
                kind: PassKind::Snapshot,
                low_us: i64::MIN,
                high_us: high,
                splits: self.source.splits,
            }),
            None => Some(Pass {
                number: 0,
                kind: kind?,
                low_us: high,
                high_us: high,
                splits: self.source.splits,
            }),
            Some(previous) => {
                let (low_us, high_us) = (previous.high_us, high.max(previous.high_us));
                let splits = match (&self.buckets, kind?) {
                    (Some(buckets), PassKind::Incremental) => buckets.count(low_us, high_us),
                    _ => self.source.splits,
                };
                Some(Pass {
                    number: previous.number + 1,
                    kind: kind?,
                    low_us,
                    high_us,
                    splits,
                })
            }
        }
    }

    /// Scans and publishes one pass; true when stopped by `until`.
    async fn run_pass(
        &self,
        pass: &Pass,
        progress: &Progress,
        until: &mut (impl Future<Output = ()> + Unpin),
    ) -> Result<bool, CassandraError> {
        let done = (0..pass.splits as usize)
            .filter(|&i| progress.range(i).is_some_and(|r| r.done))
            .count() as u64;
        let capture_high = (pass.kind != PassKind::Snapshot).then_some(pass.high_us / 1000);
        self.source
            .stats
            .start_pass(pass.number, u64::from(pass.splits), done, capture_high);
        tracing::info!(
            table = %self.table.qualified(), pass = pass.number, mode = pass.kind.as_str(),
            ranges = pass.splits, already_done = done, "starting a pass"
        );
        if pass.kind != PassKind::Snapshot && pass.low_us >= pass.high_us {
            // An empty time slice: nothing can match.
            self.source.stats.finish_pass();
            return Ok(false);
        }
        let scan = Arc::new(Scan {
            session: Arc::clone(&self.session),
            statement: self.prepare(pass.kind).await?,
            table: Arc::clone(&self.table),
            pass: pass.clone(),
            retries: self.source.retries,
            limiter: self
                .source
                .max_rows_per_second
                .map(|r| Arc::new(RateLimiter::new(r))),
            captured_by: self.captured_by(pass),
            buckets: self
                .buckets
                .clone()
                .filter(|_| pass.kind == PassKind::Incremental),
        });
        let (tx, mut rx) = mpsc::channel(self.source.concurrency * 2);
        let concurrency = self.source.concurrency;
        let progress = progress.clone();
        let scanning = tokio::spawn(async move { scan.run(&progress, concurrency, tx).await });
        let abort = scanning.abort_handle();
        let publishing = self.publisher.pages(pass, &mut rx);
        let mut publishing = std::pin::pin!(publishing);
        let (published, stopped) = tokio::select! {
            result = &mut publishing => (result, false),
            () = until => {
                abort.abort();
                (publishing.await, true)
            }
        };
        if let Err(error) = published {
            abort.abort();
            return Err(error);
        }
        if stopped {
            return Ok(true);
        }
        match scanning.await {
            Ok(result) => result?,
            Err(e) => return Err(CassandraError::Config(format!("the scan stopped: {e}"))),
        }
        self.source.stats.finish_pass();
        tracing::info!(table = %self.table.qualified(), pass = pass.number, rows = self.source.stats.rows(), "pass complete");
        Ok(false)
    }

    async fn prepare(&self, kind: PassKind) -> Result<PreparedStatement, CassandraError> {
        let cql = match (&self.source.capture, kind, &self.buckets) {
            (Capture::Incremental { column }, PassKind::Incremental, Some(buckets)) => {
                buckets.select(&self.table, column)
            }
            (Capture::Incremental { column }, PassKind::Incremental, None) => self
                .table
                .range_select(&incremental_condition(&self.table, column)),
            _ => self.table.range_select(""),
        };
        let mut statement =
            self.session
                .prepare(cql.clone())
                .await
                .map_err(|e| CassandraError::Request {
                    table: self.table.qualified(),
                    operation: format!("preparing `{cql}`"),
                    reason: e.to_string(),
                })?;
        statement.set_page_size(self.source.page_size);
        statement.set_is_idempotent(true);
        Ok(statement)
    }
}

/// Whether every range of `pass` is done.
fn all_done(pass: &Pass, progress: &Progress) -> bool {
    (0..pass.splits as usize).all(|i| progress.range(i).is_some_and(|r| r.done))
}

/// `AND column > ? AND column <= ?` (through `maxTimeuuid` for a timeuuid),
/// with `ALLOW FILTERING` unless the column is the first clustering column.
fn incremental_condition(table: &Table, column: &str) -> String {
    let Some(c) = table.columns.iter().find(|c| c.name == column) else {
        return String::new();
    };
    let quoted = quote_ident(column);
    let bound = if c.cql.eq_ignore_ascii_case("timeuuid") {
        "maxTimeuuid(?)"
    } else {
        "?"
    };
    let first_clustering = c.kind == "clustering" && c.position == 0;
    let filtering = if first_clustering {
        ""
    } else {
        " ALLOW FILTERING"
    };
    if !first_clustering {
        tracing::warn!(
            table = %table.qualified(), column,
            "change column is not the first clustering column: every capture pass makes \
             Cassandra read the whole table (ALLOW FILTERING)"
        );
    }
    format!(" AND {quoted} > {bound} AND {quoted} <= {bound}{filtering}")
}

/// The change column of `Capture::Incremental` exists and holds a time, and
/// the bucket column (if any) can be read bucket by bucket.
fn check_capture(
    source: &CassandraSource,
    table: &Table,
) -> Result<Option<Buckets>, CassandraError> {
    let Capture::Incremental { column } = &source.capture else {
        return match &source.buckets {
            Some((bucket, _)) => Err(CassandraError::Config(format!(
                "incremental_buckets('{bucket}', ..) needs Capture::Incremental"
            ))),
            None => Ok(None),
        };
    };
    check_change_column(table, column)?;
    match &source.buckets {
        Some((bucket, width)) => Buckets::check(table, bucket, *width).map(Some),
        None => Ok(None),
    }
}

/// The change column exists, holds a time and is not part of the partition key.
fn check_change_column(table: &Table, column: &str) -> Result<(), CassandraError> {
    let found = table.columns.iter().find(|c| c.name == column);
    match found.map(|c| c.cql.to_ascii_lowercase()) {
        Some(t) if t == "timestamp" || t == "timeuuid" => {
            if found.is_some_and(|c| c.kind == "partition_key") {
                return Err(CassandraError::Schema {
                    table: table.qualified(),
                    reason: format!("change column '{column}' is part of the partition key"),
                });
            }
            Ok(())
        }
        Some(other) => Err(CassandraError::Schema {
            table: table.qualified(),
            reason: format!(
                "change column '{column}' has type {other}; expected timestamp or timeuuid"
            ),
        }),
        None => Err(CassandraError::Schema {
            table: table.qualified(),
            reason: format!("change column '{column}' is not a column of the table"),
        }),
    }
}

/// The partition count of the source's topic (it exists by now).
async fn partition_count(
    config: &KafkaConfig,
    topic: &str,
    table: &str,
) -> Result<i32, CassandraError> {
    let (config, name) = (config.clone(), topic.to_string());
    let counted = tokio::task::spawn_blocking(move || Admin::new(&config)?.require_topic(&name))
        .await
        .map_err(|e| CassandraError::Config(format!("reading the partitions of '{topic}': {e}")))?;
    counted.map_err(|e| CassandraError::publish(table.to_string(), e))
}

async fn create_topics(
    source: &CassandraSource,
    config: &KafkaConfig,
    topic: &str,
    progress_topic: &str,
) -> Result<(), CassandraError> {
    let failed = |error| CassandraError::publish(source.qualified(), error);
    let admin = Admin::new(config).map_err(failed)?;
    let data = TopicSpec::new(topic, source.partitions).replication(source.replication);
    admin.create_topic(&data).await.map_err(failed)?;
    let progress = TopicSpec::new(progress_topic, 1)
        .replication(source.replication)
        .compacted();
    admin.create_topic(&progress).await.map_err(failed)
}

impl CassandraSource {
    /// Connects, reads the table's columns and creates the topics: the topic
    /// the application reads, as JSON with the table's schema.
    async fn describe_topic(
        &self,
        config: &KafkaConfig,
        group: &str,
    ) -> Result<flumen::Topic, CassandraError> {
        let session = self.connection.connect().await?;
        let table = read_table(&session, &self.keyspace, &self.table).await?;
        check_capture(self, &table)?;
        let topic = self.topic_for(group);
        create_topics(self, config, &topic, &self.progress_topic(group)).await?;
        let topic = flumen::Topic::json(topic).schema(table.arrow_schema());
        Ok(match &self.timestamp_column {
            Some(column) => topic.timestamp_field(column),
            None => topic,
        })
    }
}

impl flumen::publisher::Publisher for CassandraSource {
    fn name(&self) -> String {
        format!("cassandra source '{}'", self.qualified())
    }

    fn topic_name(&self, group: &str) -> String {
        self.topic_for(group)
    }

    fn describe<'a>(
        &'a self,
        kafka: &'a KafkaConfig,
        group: &'a str,
    ) -> BoxFuture<'a, Result<flumen::Topic, flumen::BoxError>> {
        async move { Ok(self.describe_topic(kafka, group).await?) }.boxed()
    }

    fn publish<'a>(
        &'a self,
        kafka: &'a KafkaConfig,
        group: &'a str,
        stop: BoxFuture<'static, ()>,
    ) -> BoxFuture<'a, Result<(), flumen::BoxError>> {
        async move { Ok(self.publish_with(kafka, group, stop).await?) }.boxed()
    }
}

impl From<CassandraSource> for flumen::publisher::Input {
    fn from(source: CassandraSource) -> Self {
        flumen::publisher::Input::Published(Arc::new(source))
    }
}
