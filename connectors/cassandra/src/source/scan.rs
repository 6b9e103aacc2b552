//! Scanning one pass: each token range page by page (continuing from its
//! recorded paging state), a bounded number of ranges at once, each page
//! turned into records and handed to the publisher through a bounded channel
//! (a slow Kafka slows the scan, nothing piles up).

use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::Retryable;
use scylla::client::session::Session;
use scylla::response::query_result::QueryResult;
use scylla::response::{PagingState, PagingStateResponse};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlTimestamp, CqlValue, Row};
use serde_json::Value;
use tokio::sync::{mpsc, Mutex, Semaphore};
use tokio::task::JoinSet;

use super::bucket::Buckets;
use super::json::{key_string, to_json, write_json, write_name};
use super::progress::{Pass, PassKind, Progress, RangeProgress};
use super::ranges::{split_ring, TokenRange};
use super::table::Table;
use crate::error::CassandraError;

/// One row, ready to publish.
#[derive(Debug, Clone)]
pub(crate) struct Record {
    pub(crate) key: Vec<u8>,
    pub(crate) value: Vec<u8>,
    /// The row's latest write time (ms), or the scan's time without one.
    pub(crate) timestamp_ms: i64,
}

/// One page of one range, and the range's position after it.
#[derive(Debug)]
pub(crate) struct Page {
    pub(crate) range: usize,
    pub(crate) records: Vec<Record>,
    pub(crate) progress: RangeProgress,
}

/// How a row's change time is read, for a snapshot change capture follows:
/// a row changed after the snapshot's upper bound is left to the capture, so
/// no write is published by both.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ChangeTime {
    /// The latest `WRITETIME` (for `Capture::Writetime`).
    Writetime,
    /// The value of the column at this index (for `Capture::Incremental`).
    Column(usize),
}

/// What one range of a pass reads: a token range, or one time bucket (one
/// partition) of a bucketed table.
#[derive(Debug, Clone)]
enum Unit {
    Tokens(TokenRange),
    Bucket(CqlValue),
}

impl std::fmt::Display for Unit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unit::Tokens(range) => write!(f, "token range ({}, {}]", range.start, range.end),
            Unit::Bucket(value) => write!(f, "bucket {value:?}"),
        }
    }
}

/// What every range of a pass shares.
pub(crate) struct Scan {
    pub(crate) session: Arc<Session>,
    pub(crate) statement: PreparedStatement,
    pub(crate) table: Arc<Table>,
    pub(crate) pass: Pass,
    pub(crate) retries: usize,
    pub(crate) limiter: Option<Arc<RateLimiter>>,
    /// In a snapshot: the change time of the capture that follows it.
    pub(crate) captured_by: Option<ChangeTime>,
    /// In an incremental pass over a bucketed table: its buckets (the
    /// pass's ranges are then the buckets its slice touches).
    pub(crate) buckets: Option<Buckets>,
}

impl Scan {
    /// Scans every range of the pass not yet done in `progress`, at most
    /// `concurrency` at once; pages go to `pages`. Returns when every range is
    /// done (or the receiver is gone).
    pub(crate) async fn run(
        self: Arc<Self>,
        progress: &Progress,
        concurrency: usize,
        pages: mpsc::Sender<Page>,
    ) -> Result<(), CassandraError> {
        let permits = Arc::new(Semaphore::new(concurrency.max(1)));
        let mut tasks = JoinSet::new();
        let units: Vec<Unit> = match &self.buckets {
            Some(buckets) => (0..self.pass.splits as usize)
                .map(|i| Unit::Bucket(buckets.value(self.pass.low_us, i)))
                .collect(),
            None => split_ring(self.pass.splits)
                .into_iter()
                .map(Unit::Tokens)
                .collect(),
        };
        for (index, range) in units.into_iter().enumerate() {
            let start = progress.range(index).cloned();
            if start.as_ref().is_some_and(|r| r.done) {
                continue;
            }
            let (scan, pages, permits) = (Arc::clone(&self), pages.clone(), Arc::clone(&permits));
            tasks.spawn(async move {
                let _permit = permits.acquire_owned().await;
                scan.range(index, range, start, pages).await
            });
        }
        while let Some(joined) = tasks.join_next().await {
            joined.map_err(|e| self.failed(format!("a range scan stopped: {e}")))??;
        }
        Ok(())
    }

    fn failed(&self, reason: String) -> CassandraError {
        CassandraError::Request {
            table: self.table.qualified(),
            operation: format!(
                "scanning ({} pass {})",
                self.pass.kind.as_str(),
                self.pass.number
            ),
            reason,
        }
    }

    /// Scans range `index` from `start` to its end.
    async fn range(
        &self,
        index: usize,
        range: Unit,
        start: Option<RangeProgress>,
        pages: mpsc::Sender<Page>,
    ) -> Result<(), CassandraError> {
        let mut rows = start.as_ref().map_or(0, |r| r.rows);
        let mut state = start
            .and_then(|r| r.paging_bytes())
            .map_or_else(PagingState::start, PagingState::new_from_raw_bytes);
        loop {
            let (result, next) = self.page(&range, state).await?;
            let records = self.records(result)?;
            if let Some(limiter) = &self.limiter {
                limiter.take(records.len()).await;
            }
            let next = match next {
                PagingStateResponse::HasMorePages { state } => {
                    state.as_bytes_slice().map(|b| b.to_vec())
                }
                PagingStateResponse::NoMorePages => None,
            };
            rows += records.len() as u64;
            let progress = RangeProgress::after_page(self.pass.number, rows, next.as_deref());
            let page = Page {
                range: index,
                records,
                progress,
            };
            if pages.send(page).await.is_err() {
                return Ok(());
            }
            match next {
                Some(bytes) => state = PagingState::new_from_raw_bytes(bytes),
                None => return Ok(()),
            }
        }
    }

    /// One page, retried with backoff on timeouts and unavailable nodes.
    async fn page(
        &self,
        range: &Unit,
        state: PagingState,
    ) -> Result<(QueryResult, PagingStateResponse), CassandraError> {
        let (low, high) = (
            CqlTimestamp(self.pass.low_us / 1000),
            CqlTimestamp(self.pass.high_us / 1000),
        );
        let attempt = || async {
            let (statement, state) = (&self.statement, state.clone());
            match (range, self.pass.kind) {
                (Unit::Bucket(bucket), _) => {
                    let values = (bucket, low, high);
                    self.session
                        .execute_single_page(statement, values, state)
                        .await
                }
                (Unit::Tokens(tokens), PassKind::Incremental) => {
                    let values = (tokens.start, tokens.end, low, high);
                    self.session
                        .execute_single_page(statement, values, state)
                        .await
                }
                (Unit::Tokens(tokens), _) => {
                    let values = (tokens.start, tokens.end);
                    self.session
                        .execute_single_page(statement, values, state)
                        .await
                }
            }
        };
        attempt
            .retry(crate::retry::backoff(self.retries))
            .when(crate::retry::retryable)
            .notify(|error, after| {
                metrics::counter!("flumen_source_retries_total", "table" => self.table.qualified())
                    .increment(1);
                tracing::warn!(table = %self.table.qualified(), %error, ?after, "retrying a page");
            })
            .await
            .map_err(|e| self.failed(format!("{range}: {e}")))
    }

    /// The rows of a page as records; in a write-time pass only rows whose
    /// latest write time is within the pass's bounds.
    fn records(&self, result: QueryResult) -> Result<Vec<Record>, CassandraError> {
        let rows = result
            .into_rows_result()
            .map_err(|e| self.failed(e.to_string()))?;
        let now_ms = now_us() / 1000;
        let mut records = Vec::with_capacity(rows.rows_num());
        for row in rows.rows::<Row>().map_err(|e| self.failed(e.to_string()))? {
            let row = row.map_err(|e| self.failed(e.to_string()))?;
            let written_us = self.latest_writetime(&row.columns);
            if !self.in_pass(&row.columns, written_us) {
                continue;
            }
            records.push(self.record(&row.columns, written_us.map_or(now_ms, |t| t / 1000)));
        }
        Ok(records)
    }

    /// Whether a row belongs to this pass: in a write-time pass, whether its
    /// latest write is in the pass's slice; in a snapshot a capture follows,
    /// whether it changed before the snapshot's upper bound.
    fn in_pass(&self, values: &[Option<CqlValue>], written_us: Option<i64>) -> bool {
        let (low, high) = (self.pass.low_us, self.pass.high_us);
        match (self.pass.kind, self.captured_by) {
            (PassKind::Writetime, _) => written_us.is_some_and(|t| t > low && t <= high),
            (PassKind::Snapshot, Some(ChangeTime::Writetime)) => {
                written_us.is_none_or(|t| t <= high)
            }
            (PassKind::Snapshot, Some(ChangeTime::Column(i))) => {
                change_time_us(values.get(i).and_then(Option::as_ref)).is_none_or(|t| t <= high)
            }
            _ => true,
        }
    }

    /// The latest `WRITETIME` among the selected ones (they follow the columns).
    fn latest_writetime(&self, values: &[Option<CqlValue>]) -> Option<i64> {
        values[self.table.columns.len()..]
            .iter()
            .filter_map(|v| match v {
                Some(CqlValue::BigInt(t)) => Some(*t),
                _ => None,
            })
            .max()
    }

    fn record(&self, values: &[Option<CqlValue>], timestamp_ms: i64) -> Record {
        let mut value = Vec::with_capacity(32 * values.len());
        let mut key = Vec::new();
        value.push(b'{');
        for (i, (column, cell)) in self.table.columns.iter().zip(values).enumerate() {
            if column.kind == "partition_key" {
                key.push(cell.as_ref());
            }
            if i > 0 {
                value.push(b',');
            }
            write_name(&mut value, &column.name);
            write_json(&mut value, cell.as_ref());
        }
        value.push(b'}');
        let key = match key.as_slice() {
            [Some(single)] => key_string(single),
            several => Value::Array(several.iter().map(|v| to_json(*v)).collect()).to_string(),
        };
        Record {
            key: key.into_bytes(),
            value,
            timestamp_ms,
        }
    }
}

/// Microseconds since the epoch, now.
pub(crate) fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// At most `rows_per_second` rows, shared by every range of a source.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    rows_per_second: f64,
    next: Mutex<Instant>,
}

impl RateLimiter {
    pub(crate) fn new(rows_per_second: u32) -> Self {
        RateLimiter {
            rows_per_second: f64::from(rows_per_second.max(1)),
            next: Mutex::new(Instant::now()),
        }
    }

    /// Waits until `rows` more rows fit under the rate.
    pub(crate) async fn take(&self, rows: usize) {
        let wait_until = {
            let mut next = self.next.lock().await;
            let start = (*next).max(Instant::now());
            *next = start + Duration::from_secs_f64(rows as f64 / self.rows_per_second);
            start
        };
        tokio::time::sleep_until(wait_until.into()).await;
    }
}

/// Microseconds since the epoch of a `timestamp` or `timeuuid` value.
fn change_time_us(value: Option<&CqlValue>) -> Option<i64> {
    /// 100 ns intervals from 1582-10-15 (the UUID epoch) to 1970-01-01.
    const UUID_EPOCH_OFFSET: u64 = 0x01B2_1DD2_1381_4000;
    match value? {
        CqlValue::Timestamp(CqlTimestamp(ms)) => Some(ms.saturating_mul(1000)),
        CqlValue::Timeuuid(uuid) => {
            let (low, mid, high_and_version, _) = uuid.as_fields();
            let ticks = (u64::from(high_and_version & 0x0fff) << 48)
                | (u64::from(mid) << 32)
                | u64::from(low);
            i64::try_from(ticks.checked_sub(UUID_EPOCH_OFFSET)? / 10).ok()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scylla::value::CqlTimeuuid;

    fn timeuuid(text: &str) -> CqlValue {
        let bytes: Vec<u8> = (0..32)
            .step_by(2)
            .map(|i| {
                let hex: String = text.replace('-', "");
                u8::from_str_radix(&hex[i..i + 2], 16).unwrap_or_else(|e| panic!("{e}"))
            })
            .collect();
        CqlValue::Timeuuid(CqlTimeuuid::from_slice(&bytes).unwrap_or_else(|e| panic!("{e}")))
    }

    #[test]
    fn change_times_of_timestamps_and_timeuuids() {
        let ms = CqlValue::Timestamp(CqlTimestamp(1_700_000_000_123));
        assert_eq!(change_time_us(Some(&ms)), Some(1_700_000_000_123_000));
        // The Unix epoch as a version-1 UUID, and 1 s after it.
        let epoch = timeuuid("13814000-1dd2-11b2-8000-000000000000");
        assert_eq!(change_time_us(Some(&epoch)), Some(0));
        let second = timeuuid("1419d680-1dd2-11b2-8000-000000000000");
        assert_eq!(change_time_us(Some(&second)), Some(1_000_000));
        assert_eq!(change_time_us(Some(&CqlValue::Int(1))), None);
        assert_eq!(change_time_us(None), None);
    }
}
