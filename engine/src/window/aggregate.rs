//! Built-in aggregations and their partial states.

use datafusion::logical_expr::Expr;

/// One built-in aggregation. Numeric inputs are evaluated as `Float64`; nulls
/// are ignored (as in SQL), `count()` counts records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggKind {
    /// Number of records.
    Count,
    /// Sum of non-null values (null when there are none).
    Sum,
    /// Smallest value.
    Min,
    /// Largest value.
    Max,
    /// Arithmetic mean of non-null values.
    Mean,
    /// Value of the earliest record by event time (ties: lowest offset).
    First,
    /// Value of the latest record by event time (ties: highest offset).
    Last,
    /// Every non-null value, ordered by event time then offset.
    Collect,
}

/// A named aggregation of an expression, as written in `agg([...])`.
#[derive(Debug, Clone)]
pub struct Aggregation {
    pub(crate) kind: AggKind,
    pub(crate) input: Option<Expr>,
    pub(crate) name: String,
}

impl Aggregation {
    fn of(kind: AggKind, input: Expr, prefix: &str) -> Self {
        let name = format!("{prefix}_{}", input.schema_name());
        Aggregation {
            kind,
            input: Some(input),
            name,
        }
    }

    /// Names the output column.
    pub fn alias(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The output column name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The aggregation.
    pub fn kind(&self) -> AggKind {
        self.kind
    }

    /// The expression aggregated (`None` for `count()`).
    pub fn input(&self) -> Option<&Expr> {
        self.input.as_ref()
    }
}

/// Number of records per window (column `count`).
pub fn count() -> Aggregation {
    Aggregation {
        kind: AggKind::Count,
        input: None,
        name: "count".into(),
    }
}
/// Sum of `e` (column `sum_<e>` unless aliased).
pub fn sum(e: Expr) -> Aggregation {
    Aggregation::of(AggKind::Sum, e, "sum")
}
/// Minimum of `e`.
pub fn min(e: Expr) -> Aggregation {
    Aggregation::of(AggKind::Min, e, "min")
}
/// Maximum of `e`.
pub fn max(e: Expr) -> Aggregation {
    Aggregation::of(AggKind::Max, e, "max")
}
/// Mean of `e`.
pub fn mean(e: Expr) -> Aggregation {
    Aggregation::of(AggKind::Mean, e, "mean")
}
/// Mean of `e` (same as [`mean`]).
pub fn avg(e: Expr) -> Aggregation {
    Aggregation::of(AggKind::Mean, e, "avg")
}
/// `e` of the earliest record by event time.
pub fn first(e: Expr) -> Aggregation {
    Aggregation::of(AggKind::First, e, "first")
}
/// `e` of the latest record by event time.
pub fn last(e: Expr) -> Aggregation {
    Aggregation::of(AggKind::Last, e, "last")
}
/// Every value of `e`, as a list ordered by event time.
pub fn collect(e: Expr) -> Aggregation {
    Aggregation::of(AggKind::Collect, e, "collect")
}

/// The partial state of one aggregation in one window. Partials of disjoint
/// record sets merge into the state of their union.
#[derive(Debug, Clone, PartialEq)]
pub enum AggState {
    /// Records counted.
    Count(i64),
    /// Sum and number of non-null values (for sum and mean).
    Sum {
        /// Sum of the values.
        sum: f64,
        /// Number of values.
        n: i64,
    },
    /// Smallest value so far.
    Min(Option<f64>),
    /// Largest value so far.
    Max(Option<f64>),
    /// Earliest (ts, offset, value).
    First(Option<(i64, i64, f64)>),
    /// Latest (ts, offset, value).
    Last(Option<(i64, i64, f64)>),
    /// Every (ts, offset, value).
    Collect(Vec<(i64, i64, f64)>),
}

/// The value an aggregation produces for a window.
#[derive(Debug, Clone, PartialEq)]
pub enum AggValue {
    /// An integer (count).
    Int(i64),
    /// A float, or null.
    Float(Option<f64>),
    /// A list of floats.
    List(Vec<f64>),
}

impl AggState {
    /// The empty state of `kind`.
    pub fn new(kind: AggKind) -> Self {
        match kind {
            AggKind::Count => AggState::Count(0),
            AggKind::Sum | AggKind::Mean => AggState::Sum { sum: 0.0, n: 0 },
            AggKind::Min => AggState::Min(None),
            AggKind::Max => AggState::Max(None),
            AggKind::First => AggState::First(None),
            AggKind::Last => AggState::Last(None),
            AggKind::Collect => AggState::Collect(Vec::new()),
        }
    }

    /// Adds one record: its event time, offset and value (`None`: null or no input).
    pub fn update(&mut self, ts: i64, offset: i64, value: Option<f64>) {
        match (self, value) {
            (AggState::Count(n), _) => *n += 1,
            (_, None) => {}
            (AggState::Sum { sum, n }, Some(v)) => {
                *sum += v;
                *n += 1;
            }
            (AggState::Min(m), Some(v)) => *m = Some(m.map_or(v, |m| m.min(v))),
            (AggState::Max(m), Some(v)) => *m = Some(m.map_or(v, |m| m.max(v))),
            (AggState::First(f), Some(v)) => {
                if f.is_none_or(|(t, o, _)| (ts, offset) < (t, o)) {
                    *f = Some((ts, offset, v));
                }
            }
            (AggState::Last(l), Some(v)) => {
                if l.is_none_or(|(t, o, _)| (ts, offset) > (t, o)) {
                    *l = Some((ts, offset, v));
                }
            }
            (AggState::Collect(values), Some(v)) => values.push((ts, offset, v)),
        }
    }

    /// Merges another partial of the same aggregation into this one.
    pub fn merge(&mut self, other: &AggState) {
        match (self, other) {
            (AggState::Count(a), AggState::Count(b)) => *a += b,
            (AggState::Sum { sum, n }, AggState::Sum { sum: s2, n: n2 }) => {
                *sum += s2;
                *n += n2;
            }
            (AggState::Min(a), AggState::Min(Some(b))) => *a = Some(a.map_or(*b, |a| a.min(*b))),
            (AggState::Max(a), AggState::Max(Some(b))) => *a = Some(a.map_or(*b, |a| a.max(*b))),
            (AggState::First(a), AggState::First(Some(b)))
                if a.is_none_or(|x| (b.0, b.1) < (x.0, x.1)) =>
            {
                *a = Some(*b);
            }
            (AggState::Last(a), AggState::Last(Some(b)))
                if a.is_none_or(|x| (b.0, b.1) > (x.0, x.1)) =>
            {
                *a = Some(*b);
            }
            (AggState::Collect(a), AggState::Collect(b)) => a.extend_from_slice(b),
            _ => {}
        }
    }

    /// The result for `kind`.
    pub fn value(&self, kind: AggKind) -> AggValue {
        match (self, kind) {
            (AggState::Count(n), _) => AggValue::Int(*n),
            (AggState::Sum { n: 0, .. }, _) => AggValue::Float(None),
            (AggState::Sum { sum, n }, AggKind::Mean) => AggValue::Float(Some(sum / *n as f64)),
            (AggState::Sum { sum, .. }, _) => AggValue::Float(Some(*sum)),
            (AggState::Min(m) | AggState::Max(m), _) => AggValue::Float(*m),
            (AggState::First(f) | AggState::Last(f), _) => AggValue::Float(f.map(|(_, _, v)| v)),
            (AggState::Collect(values), _) => {
                let mut sorted = values.clone();
                sorted.sort_by_key(|&(t, o, _)| (t, o));
                AggValue::List(sorted.into_iter().map(|(_, _, v)| v).collect())
            }
        }
    }
}
