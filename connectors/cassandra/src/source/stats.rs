//! Live counters of a source, also exported as metrics.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// How far a [`CassandraSource`](crate::CassandraSource) got. Shared: read
/// it while the source runs (the example prints it).
#[derive(Debug, Default)]
pub struct SourceStats {
    table: String,
    rows: AtomicU64,
    pass: AtomicU64,
    ranges_done: AtomicU64,
    ranges_total: AtomicU64,
    passes_done: AtomicU64,
    capture_high_ms: AtomicI64,
}

impl SourceStats {
    pub(crate) fn new(table: String) -> Self {
        SourceStats {
            table,
            ..SourceStats::default()
        }
    }

    /// Rows published (in committed transactions, with exactly-once) by this run.
    pub fn rows(&self) -> u64 {
        self.rows.load(Ordering::Acquire)
    }

    /// The current pass: 0 is the snapshot (when there is one), each change
    /// capture poll the next.
    pub fn pass(&self) -> u64 {
        self.pass.load(Ordering::Acquire)
    }

    /// Passes finished by this run.
    pub fn passes_done(&self) -> u64 {
        self.passes_done.load(Ordering::Acquire)
    }

    /// Token ranges of the current pass that are done, and how many there are.
    pub fn ranges(&self) -> (u64, u64) {
        (
            self.ranges_done.load(Ordering::Acquire),
            self.ranges_total.load(Ordering::Acquire),
        )
    }

    /// How far behind the wall clock change capture is (ms): writes newer
    /// than this are not published yet. `None` before the first capture pass.
    pub fn capture_lag_ms(&self) -> Option<i64> {
        let high = self.capture_high_ms.load(Ordering::Acquire);
        (high > 0).then(|| super::scan::now_us() / 1000 - high)
    }

    pub(crate) fn start_pass(
        &self,
        pass: u64,
        total: u64,
        done: u64,
        capture_high_ms: Option<i64>,
    ) {
        // The pass last: a reader that sees it sees its ranges.
        self.ranges_total.store(total, Ordering::Release);
        self.ranges_done.store(done, Ordering::Release);
        self.pass.store(pass, Ordering::Release);
        if let Some(high) = capture_high_ms {
            self.capture_high_ms.store(high, Ordering::Release);
        }
        metrics::gauge!("flumen_source_ranges_total", "table" => self.table.clone())
            .set(total as f64);
        metrics::gauge!("flumen_source_ranges_done", "table" => self.table.clone())
            .set(done as f64);
    }

    pub(crate) fn published(&self, rows: u64, ranges_done: usize) {
        self.rows.fetch_add(rows, Ordering::AcqRel);
        let done = self
            .ranges_done
            .fetch_add(ranges_done as u64, Ordering::AcqRel)
            + ranges_done as u64;
        metrics::counter!("flumen_source_rows_total", "table" => self.table.clone())
            .increment(rows);
        metrics::gauge!("flumen_source_ranges_done", "table" => self.table.clone())
            .set(done as f64);
    }

    pub(crate) fn finish_pass(&self) {
        self.passes_done.fetch_add(1, Ordering::AcqRel);
        if let Some(lag) = self.capture_lag_ms() {
            metrics::gauge!("flumen_source_capture_lag_ms", "table" => self.table.clone())
                .set(lag as f64);
        }
    }
}
