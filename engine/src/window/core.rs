//! Per-partition windowed aggregation: pre-aggregate each batch per (key, window)
//! in memory, merge into the window state, emit closed (`final`) or touched
//! (`current`) windows.

use std::collections::{BTreeMap, HashMap};

use arrow::array::{Array, Float64Array, StringArray};

use super::aggregate::{AggKind, AggState, AggValue};
use super::assign::Windows;

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
    /// Per aggregation, its input values (`None` for `count()`).
    pub values: &'a [Option<&'a Float64Array>],
}

/// Counters of records a window aggregation did not use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Records that arrived after at least one of their windows had closed.
    pub late: u64,
    /// Records without a key.
    pub null_keys: u64,
}

/// Window state of one partition, in memory.
#[derive(Debug)]
pub struct WindowCore {
    windows: Windows,
    grace_ms: i64,
    kinds: Vec<AggKind>,
    emit: Emit,
    state: BTreeMap<(i64, String), Vec<AggState>>,
    stream_time: Option<i64>,
    dropped: Dropped,
}

impl WindowCore {
    /// An empty state for `kinds` over `windows`, closing windows `grace_ms` after their end.
    pub fn new(windows: Windows, grace_ms: i64, kinds: Vec<AggKind>, emit: Emit) -> Self {
        WindowCore {
            windows,
            grace_ms,
            kinds,
            emit,
            state: BTreeMap::new(),
            stream_time: None,
            dropped: Dropped::default(),
        }
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
    pub fn open_windows(&self) -> usize {
        self.state.len()
    }

    fn new_states(&self) -> Vec<AggState> {
        self.kinds.iter().map(|k| AggState::new(*k)).collect()
    }

    /// Adds a batch and returns the windows to emit.
    pub fn process(&mut self, input: &WindowInput<'_>) -> Vec<WindowRow> {
        let size = self.windows.size_ms();
        let mut partials: HashMap<(i64, &str), Vec<AggState>> = HashMap::new();
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
                if closed_before.is_some_and(|wm| start + size <= wm) {
                    late = true;
                    continue;
                }
                let states = partials
                    .entry((start, key))
                    .or_insert_with(|| self.new_states());
                for (i, state) in states.iter_mut().enumerate() {
                    let value = input.values[i].and_then(|v| v.is_valid(row).then(|| v.value(row)));
                    state.update(ts, input.offsets[row], value);
                }
            }
            if late {
                self.dropped.late += 1;
            }
            stream_time = Some(stream_time.map_or(ts, |t| t.max(ts)));
        }
        self.stream_time = stream_time;
        let mut touched = Vec::new();
        for ((start, key), partial) in partials {
            let states = self
                .state
                .entry((start, key.to_string()))
                .or_insert_with(|| self.kinds.iter().map(|k| AggState::new(*k)).collect());
            for (state, p) in states.iter_mut().zip(&partial) {
                state.merge(p);
            }
            if self.emit == Emit::Current {
                touched.push((start, key.to_string()));
            }
        }
        let mut out = Vec::new();
        if self.emit == Emit::Current {
            touched.sort();
            for (start, key) in touched {
                if let Some(states) = self.state.get(&(start, key.clone())) {
                    out.push(self.row(key, start, states));
                }
            }
        }
        let Some(wm) = self.watermark() else {
            return out;
        };
        while let Some(entry) = self.state.first_entry() {
            if entry.key().0 + size > wm {
                break;
            }
            let ((start, key), states) = entry.remove_entry();
            if self.emit == Emit::Final {
                out.push(self.row(key, start, &states));
            }
        }
        out
    }

    fn row(&self, key: String, start: i64, states: &[AggState]) -> WindowRow {
        WindowRow {
            key,
            start,
            end: start + self.windows.size_ms(),
            values: states
                .iter()
                .zip(&self.kinds)
                .map(|(s, k)| s.value(*k))
                .collect(),
        }
    }
}
