//! The windowing part of the DSL: `group_by`, `tumbling_window`, `hopping_window`,
//! `grace`, `agg`, `final_` / `current`.

use std::sync::Arc;
use std::time::Duration;

use datafusion::logical_expr::Expr;

use super::StreamingDataFrame;
use crate::operators::WindowAggregate;
use crate::plan::{Op, RepartitionSpec, WindowSpec};
use crate::window::{Aggregation, Emit, LateRecords, Windows};

/// A frame grouped by a key expression, ready to be windowed.
#[derive(Clone)]
pub struct GroupedFrame {
    frame: StreamingDataFrame,
    key: Expr,
    /// `None`: group within each input partition (no repartition topic).
    repartition: Option<RepartitionSpec>,
}

/// A windowed frame waiting for its aggregations and emission mode.
#[derive(Clone)]
pub struct WindowedFrame {
    frame: StreamingDataFrame,
    key: Option<Expr>,
    windows: Result<Windows, Arc<crate::Error>>,
    grace: Duration,
    aggs: Vec<Aggregation>,
    late: LateRecords,
    store: Option<String>,
}

impl StreamingDataFrame {
    /// Groups records by `key` (rendered as a string) instead of the message key.
    ///
    /// Every record of a key must reach the same window state, so records are
    /// routed through a repartition topic, `<consumer group>-repartition-<name>`,
    /// keyed by `key`: a second stage of the same application reads it back, and
    /// the windows run there. flumen creates the topic (with the input's
    /// partition count) when it does not exist. `name` defaults to the key's
    /// column name; set it with [`GroupedFrame::name`]. When the input is already
    /// partitioned by `key`, [`GroupedFrame::within_partitions`] skips the topic.
    /// Grouping by `col("_key")` (the message key) never repartitions.
    pub fn group_by(&self, key: Expr) -> GroupedFrame {
        let by_message_key =
            matches!(&key, Expr::Column(c) if c.name == crate::records::KEY_COLUMN);
        let repartition = (!by_message_key).then(|| RepartitionSpec {
            name: topic_safe(&match &key {
                Expr::Column(c) => c.name.clone(),
                other => other.schema_name().to_string(),
            }),
            key: key.clone(),
            partitions: None,
        });
        GroupedFrame {
            frame: self.clone(),
            key,
            repartition,
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
    /// Names the repartition topic `<consumer group>-repartition-<name>`
    /// (characters other than letters, digits, `.`, `_` and `-` become `_`).
    pub fn name(mut self, name: impl AsRef<str>) -> Self {
        if let Some(r) = &mut self.repartition {
            r.name = topic_safe(name.as_ref());
        }
        self
    }

    /// The partition count of the repartition topic when flumen creates it
    /// (default: the input topic's).
    pub fn partitions(mut self, partitions: i32) -> Self {
        if let Some(r) = &mut self.repartition {
            r.partitions = Some(partitions);
        }
        self
    }

    /// Groups within each input partition, without a repartition topic. Correct
    /// only when every record of a key is in one partition already (e.g. the
    /// input was produced with this key as its message key).
    pub fn within_partitions(mut self) -> Self {
        self.repartition = None;
        self
    }

    /// The frame the windows read: repartitioned by the key unless grouped
    /// within partitions.
    fn source(&self) -> StreamingDataFrame {
        match &self.repartition {
            Some(r) => self.frame.with(Op::Repartition(Arc::new(r.clone()))),
            None => self.frame.clone(),
        }
    }

    /// Tumbling windows of `size` per group.
    pub fn tumbling_window(&self, size: Duration) -> WindowedFrame {
        WindowedFrame::new(
            self.source(),
            Some(self.key.clone()),
            Windows::tumbling(size),
        )
    }

    /// Hopping windows of `size` every `step` per group.
    pub fn hopping_window(&self, size: Duration, step: Duration) -> WindowedFrame {
        WindowedFrame::new(
            self.source(),
            Some(self.key.clone()),
            Windows::hopping(size, step),
        )
    }
}

/// `name` with every character Kafka does not allow in topic names replaced by `_`.
fn topic_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl WindowedFrame {
    fn new(frame: StreamingDataFrame, key: Option<Expr>, windows: crate::Result<Windows>) -> Self {
        WindowedFrame {
            frame,
            key,
            windows: windows.map_err(Arc::new),
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
        self.frame
            .with(Op::Operator(Arc::new(WindowAggregate(Arc::new(spec)))))
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
