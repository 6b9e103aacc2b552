//! The windowing part of the DSL: `group_by`, `tumbling_window`, `hopping_window`,
//! `grace`, `agg`, `final_` / `current`.

use std::sync::Arc;
use std::time::Duration;

use datafusion::logical_expr::Expr;

use super::StreamingDataFrame;
use crate::plan::{Op, WindowSpec};
use crate::window::{Aggregation, Emit, LateRecords, Windows};

/// A frame grouped by a key expression, ready to be windowed.
#[derive(Clone)]
pub struct GroupedFrame {
    frame: StreamingDataFrame,
    key: Expr,
}

/// A windowed frame waiting for its aggregations and emission mode.
#[derive(Clone)]
pub struct WindowedFrame {
    frame: StreamingDataFrame,
    key: Option<Expr>,
    windows: Result<Windows, String>,
    grace: Duration,
    aggs: Vec<Aggregation>,
    late: LateRecords,
    store: Option<String>,
}

impl StreamingDataFrame {
    /// Groups records by `key` (rendered as a string) instead of the message key.
    ///
    /// Records are re-keyed within their partition: the input must already be
    /// partitioned by this key (e.g. produced with it as the message key).
    pub fn group_by(&self, key: Expr) -> GroupedFrame {
        GroupedFrame {
            frame: self.clone(),
            key,
        }
    }

    /// Tumbling windows of `size` per message key.
    pub fn tumbling_window(&self, size: Duration) -> WindowedFrame {
        WindowedFrame::new(self.clone(), None, Windows::tumbling(size))
    }

    /// Hopping windows of `size` every `step` per message key.
    pub fn hopping_window(&self, size: Duration, step: Duration) -> WindowedFrame {
        WindowedFrame::new(self.clone(), None, Windows::hopping(size, step))
    }
}

impl GroupedFrame {
    /// Tumbling windows of `size` per group.
    pub fn tumbling_window(&self, size: Duration) -> WindowedFrame {
        WindowedFrame::new(
            self.frame.clone(),
            Some(self.key.clone()),
            Windows::tumbling(size),
        )
    }

    /// Hopping windows of `size` every `step` per group.
    pub fn hopping_window(&self, size: Duration, step: Duration) -> WindowedFrame {
        WindowedFrame::new(
            self.frame.clone(),
            Some(self.key.clone()),
            Windows::hopping(size, step),
        )
    }
}

impl WindowedFrame {
    fn new(frame: StreamingDataFrame, key: Option<Expr>, windows: crate::Result<Windows>) -> Self {
        WindowedFrame {
            frame,
            key,
            windows: windows.map_err(|e| e.to_string()),
            grace: Duration::ZERO,
            aggs: Vec::new(),
            late: LateRecords::Drop,
            store: None,
        }
    }

    /// What to do with records whose windows have already closed (default:
    /// drop and count). `LateRecords::DeadLetter(topic)` writes them there.
    pub fn on_late(mut self, late: LateRecords) -> Self {
        self.late = late;
        self
    }

    /// Names the window's state store (default `window-<n>`, counting the
    /// windows of the input topic in the order the frames were written). Name
    /// it to keep its state when other windows are added to the pipeline.
    pub fn store_name(mut self, name: impl Into<String>) -> Self {
        self.store = Some(name.into());
        self
    }

    /// How long after its end a window still accepts late records (default 0).
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// The aggregations to compute per window (`count()`, `sum(col("x"))`, ...).
    pub fn agg(mut self, aggs: impl IntoIterator<Item = Aggregation>) -> Self {
        self.aggs.extend(aggs);
        self
    }

    fn emit(self, emit: Emit) -> StreamingDataFrame {
        let spec = WindowSpec {
            key: self.key,
            windows: self.windows,
            grace_ms: i64::try_from(self.grace.as_millis()).unwrap_or(i64::MAX),
            aggs: self.aggs,
            emit,
            late: self.late,
            store: self.store,
        };
        self.frame.with(Op::Window(Arc::new(spec)))
    }

    /// Emits each window once, when the partition's watermark (max event time
    /// minus grace) passes its end. Rows: key, `window_start`, `window_end`
    /// (epoch ms) and one column per aggregation.
    pub fn final_(self) -> StreamingDataFrame {
        self.emit(Emit::Final)
    }

    /// Emits the updated aggregate of every window a batch touched.
    pub fn current(self) -> StreamingDataFrame {
        self.emit(Emit::Current)
    }
}
