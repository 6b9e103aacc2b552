//! Per-partition windowed aggregation: pre-aggregate each batch per (key, window)
//! in memory, merge into the window state, emit closed (`final`) or touched
//! (`current`) windows.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Float64Array, StringArray, UInt32Array};
use flumen_state::WriteBatch;

use super::aggregate::{AggKind, AggState, AggValue};
use super::assign::Windows;
use super::codec::{self, CorruptState};
use super::custom::DynAggregator;

/// When windows are emitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Emit {
    /// Once, when the watermark passes the window's end; its state is then deleted.
    #[default]
    Final,
    /// After every batch, for every window the batch touched.
    Current,
}

/// One emitted window.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowRow {
    /// The group key.
    pub key: String,
    /// Window start (epoch ms, inclusive).
    pub start: i64,
    /// Window end (epoch ms, exclusive).
    pub end: i64,
    /// One value per aggregation.
    pub values: Vec<AggValue>,
}

/// The columns of one batch a window aggregation reads.
pub struct WindowInput<'a> {
    /// Group keys (null keys are dropped and counted).
    pub keys: &'a StringArray,
    /// Event times, epoch ms.
    pub timestamps: &'a [i64],
    /// Source offsets (tie-breaker for first / last / collect).
    pub offsets: &'a [i64],
    /// Per aggregation, its input values as numbers (`None` for `count()` and
    /// user-defined aggregations).
    pub values: &'a [Option<&'a Float64Array>],
    /// Per aggregation, its input values as evaluated (user-defined aggregations
    /// only; may be empty when there are none).
    pub raw: &'a [Option<ArrayRef>],
}

/// What one batch produced.
#[derive(Debug, Default)]
pub struct Processed {
    /// Windows to emit.
    pub rows: Vec<WindowRow>,
    /// Rows of the input that were late for at least one of their windows, with
    /// the watermark they met.
    pub late: Vec<(u32, i64)>,
}

/// Why a batch could not be added to the windows.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// Slicing a user-defined aggregation's input per window failed.
    #[error("slicing the input of aggregation {index}: {source}")]
    Slice {
        /// The aggregation's position.
        index: usize,
        /// The Arrow error.
        #[source]
        source: arrow::error::ArrowError,
    },
    /// A user-defined aggregation refused its input.
    #[error("aggregation {index}: {source}")]
    Aggregator {
        /// The aggregation's position.
        index: usize,
        /// The aggregator's error.
        #[source]
        source: crate::BoxError,
    },
}

/// Counters of records a window aggregation did not use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Records that arrived after at least one of their windows had closed.
    pub late: u64,
    /// Records without a key.
    pub null_keys: u64,
    /// Records `deduplicate` dropped as repeats.
    pub duplicates: u64,
}

type Customs = Vec<Option<Arc<dyn DynAggregator>>>;

/// The windows of one start, by key.
type KeyedWindows = Map<Arc<str>, Vec<AggState>>;

/// The hash maps of window state, keyed by input data: ahash (randomly seeded,
/// as arrow's hash kernels use) instead of std's slower SipHash.
type Map<K, V> = HashMap<K, V, ahash::RandomState>;

/// One batch's partial states per (window start, key), with the batch rows of
/// each (collected only for user-defined aggregations).
type Partials<'a> = Map<(i64, &'a str), (Vec<AggState>, Vec<u32>)>;

/// Window state of one partition. Open windows live in memory; the changes
/// since the last [`WindowCore::take_changes`] are tracked so that they can be
/// written to a state store in one batch.
pub struct WindowCore {
    windows: Windows,
    grace_ms: i64,
    kinds: Vec<AggKind>,
    customs: Customs,
    emit: Emit,
    /// Open windows by start, then key: windows close in start order, so
    /// closing takes whole maps off the front. A key is allocated once per
    /// window and shared with `changed`.
    state: BTreeMap<i64, KeyedWindows>,
    /// Number of open windows.
    open: usize,
    stream_time: Option<i64>,
    dropped: Dropped,
    /// The windows changed since the last `take_changes`, each with whether it
    /// was stored then (a window opened and closed in between needs no change).
    changed: Map<(i64, Arc<str>), bool>,
    stream_time_changed: bool,
    /// The aggregations, as stored under `SIGNATURE_KEY`, and whether the
    /// store has it yet.
    signature: Vec<u8>,
    signature_stored: bool,
}

impl std::fmt::Debug for WindowCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowCore")
            .field("windows", &self.windows)
            .field("kinds", &self.kinds)
            .field("open", &self.open)
            .field("stream_time", &self.stream_time)
            .finish()
    }
}

impl WindowCore {
    /// An empty state for `kinds` over `windows`, closing windows `grace_ms` after their end.
    pub fn new(windows: Windows, grace_ms: i64, kinds: Vec<AggKind>, emit: Emit) -> Self {
        let customs = vec![None; kinds.len()];
        WindowCore {
            windows,
            grace_ms,
            kinds,
            customs,
            emit,
            state: BTreeMap::new(),
            open: 0,
            stream_time: None,
            dropped: Dropped::default(),
            changed: Map::default(),
            stream_time_changed: false,
            signature: Vec::new(),
            signature_stored: false,
        }
    }

    /// Names the aggregations (kinds and inputs, in order) so that a state
    /// written by other aggregations is refused when restored.
    pub(crate) fn with_signature(mut self, signature: String) -> Self {
        self.signature = signature.into_bytes();
        self
    }

    /// Sets the user-defined aggregators, one slot per aggregation.
    pub(crate) fn with_customs(mut self, customs: Customs) -> Self {
        self.customs = customs;
        self
    }

    /// Replaces the state with `entries` read from a state store (see
    /// [`WindowCore::take_changes`]).
    #[cfg(test)]
    pub(crate) fn restore(&mut self, entries: Vec<(Vec<u8>, Vec<u8>)>) -> Result<(), CorruptState> {
        self.begin_restore();
        for (key, value) in entries {
            self.restore_entry(&key, &value)?;
        }
        self.finish_restore();
        Ok(())
    }

    /// Empties the state before entries are restored one by one.
    pub(crate) fn begin_restore(&mut self) {
        self.state.clear();
        self.open = 0;
        self.changed.clear();
        self.stream_time = None;
        self.stream_time_changed = false;
        self.signature_stored = false;
    }

    /// Adds one stored entry (stream time, signature or a window).
    pub(crate) fn restore_entry(&mut self, key: &[u8], value: &[u8]) -> Result<(), CorruptState> {
        if key == codec::SIGNATURE_KEY {
            return self.check_signature(value);
        }
        if key == codec::STREAM_TIME_KEY {
            let bytes: [u8; 8] = value
                .try_into()
                .map_err(|_| CorruptState("stream time is malformed".into()))?;
            self.stream_time = Some(i64::from_be_bytes(bytes));
            return Ok(());
        }
        let window = codec::decode_window_key(key)?;
        let states = self.decode_restored(value)?;
        if states.len() != self.kinds.len() {
            return Err(CorruptState(format!(
                "window {window:?} has {} aggregations stored, the pipeline has {}; \
                 a changed pipeline needs a new state directory or consumer group",
                states.len(),
                self.kinds.len()
            )));
        }
        let (start, key) = window;
        if self
            .state
            .entry(start)
            .or_default()
            .insert(Arc::from(key), states)
            .is_none()
        {
            self.open += 1;
        }
        Ok(())
    }

    /// Ends a restore: windows the restored watermark closed are dropped.
    pub(crate) fn finish_restore(&mut self) {
        self.drop_closed_windows();
    }

    fn decode_restored(&self, value: &[u8]) -> Result<Vec<AggState>, CorruptState> {
        let custom = |i: usize, bytes: &[u8]| -> Result<AggState, CorruptState> {
            let agg = self
                .customs
                .get(i)
                .and_then(Option::as_ref)
                .ok_or_else(|| {
                    CorruptState(format!(
                        "aggregation {i} is stored as user-defined but is not"
                    ))
                })?;
            agg.decode(bytes)
                .map(AggState::Custom)
                .map_err(|e| CorruptState(format!("aggregation {i}: {e}")))
        };
        codec::decode_states(value, &custom)
    }

    /// Refuses a state written by other aggregations (reordered, replaced),
    /// whose states would otherwise be read under the wrong names.
    fn check_signature(&mut self, stored: &[u8]) -> Result<(), CorruptState> {
        if stored != self.signature.as_slice() {
            return Err(CorruptState(format!(
                "it was written by the aggregations [{}], the pipeline has [{}]; \
                 a changed pipeline needs a new state directory and consumer group",
                String::from_utf8_lossy(stored),
                String::from_utf8_lossy(&self.signature)
            )));
        }
        self.signature_stored = true;
        Ok(())
    }

    /// Removes restored windows the watermark has already closed, and marks
    /// them for deletion at the next [`WindowCore::take_changes`].
    ///
    /// An uninterrupted run never keeps a closed window past a batch, so one
    /// found here was brought back by a restore: a run that crashed before
    /// committing wrote a put for it, and the run that committed past it
    /// opened and closed it within one batch, which writes no changelog record
    /// (neither put nor tombstone). Kafka Streams' window stores drop such
    /// records by their retention the same way.
    fn drop_closed_windows(&mut self) {
        while let Some((start, windows)) = self.pop_closed() {
            tracing::debug!(
                start,
                windows = windows.len(),
                "restored windows already closed are dropped"
            );
            for key in windows.into_keys() {
                self.changed.insert((start, key), true);
            }
        }
    }

    /// The changes since the last call, as puts and deletes of `store`.
    pub(crate) fn take_changes(&mut self, store: &str) -> WriteBatch {
        let mut batch = WriteBatch::default();
        if !self.signature_stored && !self.changed.is_empty() {
            batch.put(store, codec::SIGNATURE_KEY, &self.signature);
            self.signature_stored = true;
        }
        for (window, stored) in self.changed.drain() {
            let key = || codec::window_key(window.0, &window.1);
            match self.state.get(&window.0).and_then(|w| w.get(&window.1)) {
                Some(states) => batch.put(store, &key(), &codec::encode_states(states)),
                None if stored => batch.delete(store, &key()),
                None => {}
            }
        }
        if std::mem::take(&mut self.stream_time_changed) {
            if let Some(t) = self.stream_time {
                batch.put(store, codec::STREAM_TIME_KEY, &t.to_be_bytes());
            }
        }
        batch
    }

    /// The watermark: max event time seen minus grace (`None` before any record).
    pub fn watermark(&self) -> Option<i64> {
        self.stream_time.map(|t| t.saturating_sub(self.grace_ms))
    }

    /// Records dropped so far.
    pub fn dropped(&self) -> Dropped {
        self.dropped
    }

    /// Windows currently open.
    #[cfg(test)]
    pub(crate) fn open_windows(&self) -> usize {
        self.open
    }

    fn get(&self, start: i64, key: &str) -> Option<&Vec<AggState>> {
        self.state.get(&start).and_then(|windows| windows.get(key))
    }

    fn new_states(&self) -> Vec<AggState> {
        self.kinds
            .iter()
            .zip(&self.customs)
            .map(|(k, c)| match c {
                Some(agg) => AggState::Custom(agg.initialize()),
                None => AggState::new(*k),
            })
            .collect()
    }

    /// Adds a batch and returns the windows to emit and the late rows.
    pub fn process(&mut self, input: &WindowInput<'_>) -> Result<Processed, UpdateError> {
        let (mut partials, late) = self.pre_aggregate(input);
        if self.customs.iter().any(Option::is_some) {
            self.update_customs(&mut partials, input.raw)?;
        }
        let touched = self.merge(partials);
        let mut rows = Vec::new();
        for (start, key) in touched {
            if let Some(states) = self.get(start, &key) {
                rows.push(self.row(key.to_string(), start, states));
            }
        }
        self.close_windows(&mut rows);
        Ok(Processed { rows, late })
    }

    /// The batch's partial states per (window start, key), and its late rows
    /// with the watermark each met; moves the stream time on.
    fn pre_aggregate<'a>(&mut self, input: &WindowInput<'a>) -> (Partials<'a>, Vec<(u32, i64)>) {
        let size = self.windows.size_ms();
        let has_custom = self.customs.iter().any(Option::is_some);
        let mut partials: Partials<'a> = Map::default();
        let mut late_rows = Vec::new();
        let mut stream_time = self.stream_time;
        for row in 0..input.timestamps.len() {
            let ts = input.timestamps[row];
            if input.keys.is_null(row) {
                self.dropped.null_keys += 1;
                continue;
            }
            let key = input.keys.value(row);
            // A window is closed for this record when the stream time before it,
            // minus grace, has reached the window's end.
            let closed_before = stream_time.map(|t| t.saturating_sub(self.grace_ms));
            let mut late = false;
            for start in self.windows.starts(ts) {
                if closed_before.is_some_and(|wm| start.saturating_add(size) <= wm) {
                    late = true;
                    continue;
                }
                let (states, rows) = partials
                    .entry((start, key))
                    .or_insert_with(|| (self.new_states(), Vec::new()));
                if has_custom {
                    rows.push(row as u32);
                }
                for (i, state) in states.iter_mut().enumerate() {
                    let value = input.values[i].and_then(|v| v.is_valid(row).then(|| v.value(row)));
                    state.update(ts, input.offsets[row], value);
                }
            }
            if late {
                self.dropped.late += 1;
                late_rows.push((row as u32, closed_before.unwrap_or(i64::MIN)));
            }
            stream_time = Some(stream_time.map_or(ts, |t| t.max(ts)));
        }
        if stream_time != self.stream_time {
            self.stream_time = stream_time;
            self.stream_time_changed = true;
        }
        (partials, late_rows)
    }

    /// Merges a batch's partial states into the windows; returns the windows
    /// to emit now under `Emit::Current` (none under `Emit::Final`), sorted.
    fn merge(&mut self, partials: Partials<'_>) -> Vec<(i64, Arc<str>)> {
        let mut touched = Vec::new();
        for ((start, key), (partial, _)) in partials {
            let windows = self.state.entry(start).or_default();
            let (key, stored) = match windows.get_key_value(key).map(|(k, _)| Arc::clone(k)) {
                Some(shared) => {
                    if let Some(states) = windows.get_mut(&shared) {
                        for ((state, p), custom) in
                            states.iter_mut().zip(&partial).zip(&self.customs)
                        {
                            state.merge_with(p, custom.as_deref());
                        }
                    }
                    (shared, true)
                }
                // A new window's state is the batch's partial.
                None => {
                    let shared: Arc<str> = Arc::from(key);
                    windows.insert(Arc::clone(&shared), partial);
                    self.open += 1;
                    (shared, false)
                }
            };
            let window = (start, key);
            if self.emit == Emit::Current {
                touched.push(window.clone());
            }
            // A window already changed keeps what it was at the last take.
            self.changed.entry(window).or_insert(stored);
        }
        touched.sort();
        touched
    }

    /// Moves the stream time to `time` (when it is later) without a record, as
    /// a heartbeat does; returns the windows that closed.
    pub fn advance_to(&mut self, time: i64) -> Vec<WindowRow> {
        if self.stream_time.is_some_and(|t| t >= time) {
            return Vec::new();
        }
        self.stream_time = Some(time);
        self.stream_time_changed = true;
        let mut out = Vec::new();
        self.close_windows(&mut out);
        out
    }

    /// Removes the windows the watermark has passed; final windows go to `out`.
    fn close_windows(&mut self, out: &mut Vec<WindowRow>) {
        while let Some((start, windows)) = self.pop_closed() {
            // Emitted in key order, as they were kept before.
            let mut windows: Vec<_> = windows.into_iter().collect();
            windows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            for (key, states) in windows {
                if self.emit == Emit::Final {
                    out.push(self.row(key.to_string(), start, &states));
                }
                self.changed.entry((start, key)).or_insert(true);
            }
        }
    }

    /// Removes the earliest window start the watermark has passed, with its
    /// windows (`None`: nothing has closed).
    fn pop_closed(&mut self) -> Option<(i64, KeyedWindows)> {
        let wm = self.watermark()?;
        let size = self.windows.size_ms();
        let entry = self.state.first_entry()?;
        if entry.key().saturating_add(size) > wm {
            return None;
        }
        let (start, windows) = entry.remove_entry();
        self.open -= windows.len();
        Some((start, windows))
    }

    /// Feeds each window's slice of the batch to the user-defined aggregations.
    fn update_customs(
        &self,
        partials: &mut Partials<'_>,
        raw: &[Option<ArrayRef>],
    ) -> Result<(), UpdateError> {
        for (i, custom) in self.customs.iter().enumerate() {
            let (Some(agg), Some(Some(values))) = (custom, raw.get(i)) else {
                continue;
            };
            for (states, rows) in partials.values_mut() {
                let indices = UInt32Array::from(rows.clone());
                let slice = arrow::compute::take(values.as_ref(), &indices, None)
                    .map_err(|source| UpdateError::Slice { index: i, source })?;
                if let AggState::Custom(state) = &mut states[i] {
                    agg.update(state.as_mut(), &slice)
                        .map_err(|source| UpdateError::Aggregator { index: i, source })?;
                }
            }
        }
        Ok(())
    }

    fn row(&self, key: String, start: i64, states: &[AggState]) -> WindowRow {
        WindowRow {
            key,
            start,
            end: start.saturating_add(self.windows.size_ms()),
            values: states
                .iter()
                .zip(&self.kinds)
                .zip(&self.customs)
                .map(|((s, k), c)| s.value_with(*k, c.as_deref()))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flumen_state::BatchOp;
    use std::time::Duration;

    fn core() -> WindowCore {
        let windows = Windows::tumbling(Duration::from_secs(10)).unwrap_or_else(|e| panic!("{e}"));
        WindowCore::new(windows, 0, vec![AggKind::Count], Emit::Final)
    }

    /// A restore that brings back a window the stream time has already
    /// closed (defect 1 of #16) drops it and deletes it at the next take.
    #[test]
    fn restored_windows_the_watermark_closed_are_dropped_and_deleted() {
        let mut counted = AggState::new(AggKind::Count);
        counted.update(5_000, 0, None);
        let states = codec::encode_states(&[counted]);
        let entries = vec![
            (
                codec::STREAM_TIME_KEY.to_vec(),
                25_000i64.to_be_bytes().to_vec(),
            ),
            (codec::window_key(0, "closed"), states.clone()),
            (codec::window_key(20_000, "open"), states),
        ];
        let mut core = core();
        core.restore(entries).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(core.open_windows(), 1);
        let changes = core.take_changes("w");
        let deleted: Vec<_> = changes
            .ops()
            .iter()
            .filter_map(|op| match op {
                BatchOp::Delete { key, .. } => Some(key.clone()),
                BatchOp::Put { .. } => None,
            })
            .collect();
        assert_eq!(deleted, vec![codec::window_key(0, "closed")]);
    }

    /// A state written by other aggregations (here: in another order) is
    /// refused on restore instead of being read under the wrong names.
    #[test]
    fn a_state_of_other_aggregations_is_refused() {
        let mut first = core().with_signature("Count(), Sum(temp)".into());
        let mut counted = AggState::new(AggKind::Count);
        counted.update(5_000, 0, None);
        first.restore(Vec::new()).unwrap_or_else(|e| panic!("{e}"));
        let entries = vec![
            (
                codec::SIGNATURE_KEY.to_vec(),
                b"Sum(temp), Count()".to_vec(),
            ),
            (codec::window_key(0, "k"), codec::encode_states(&[counted])),
        ];
        let error = first.restore(entries).expect_err("refused").0;
        assert!(
            error.contains("Sum(temp), Count()") && error.contains("Count(), Sum(temp)"),
            "{error}"
        );
    }
}
