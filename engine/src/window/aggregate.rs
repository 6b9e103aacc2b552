//! Built-in aggregations and their partial states.

use std::sync::Arc;

use datafusion::common::ScalarValue;
use datafusion::logical_expr::Expr;

use super::custom::{CustomState, DynAggregator};

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
    /// A user-defined [`super::Aggregator`].
    Custom,
}

/// A named aggregation of an expression, as written in `agg([...])`.
#[derive(Clone)]
pub struct Aggregation {
    pub(crate) kind: AggKind,
    pub(crate) input: Option<Expr>,
    pub(crate) name: String,
    pub(crate) custom: Option<Arc<dyn DynAggregator>>,
}

impl std::fmt::Debug for Aggregation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Aggregation")
            .field("kind", &self.kind)
            .field("input", &self.input)
            .field("name", &self.name)
            .finish()
    }
}

impl Aggregation {
    fn of(kind: AggKind, input: Expr, prefix: &str) -> Self {
        let name = format!("{prefix}_{}", input.schema_name());
        Aggregation {
            kind,
            input: Some(input),
            name,
            custom: None,
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
        custom: None,
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
#[derive(Debug, Clone)]
pub enum AggState {
    /// Records counted.
    Count(i64),
    /// Sum and number of non-null values (for sum and mean), compensated
    /// (Neumaier): `sum + comp` is the sum with the rounding errors of its
    /// additions recovered, so the result does not depend on how records were
    /// split into micro-batches (a restart gives the same bits).
    Sum {
        /// Sum of the values, as rounded.
        sum: f64,
        /// The rounding errors of computing `sum`.
        comp: f64,
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
    /// The state of a user-defined aggregation.
    Custom(Box<dyn CustomState>),
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
    /// The result of a user-defined aggregation.
    Scalar(ScalarValue),
}

impl AggState {
    /// The empty state of `kind`.
    pub fn new(kind: AggKind) -> Self {
        match kind {
            AggKind::Count => AggState::Count(0),
            AggKind::Sum | AggKind::Mean => AggState::Sum {
                sum: 0.0,
                comp: 0.0,
                n: 0,
            },
            AggKind::Min => AggState::Min(None),
            AggKind::Max => AggState::Max(None),
            AggKind::First => AggState::First(None),
            AggKind::Last => AggState::Last(None),
            AggKind::Collect => AggState::Collect(Vec::new()),
            // Custom states come from their aggregator (`Aggregator::initialize`).
            AggKind::Custom => AggState::Count(0),
        }
    }

    /// Adds one record: its event time, offset and value (`None`: null or no input).
    pub fn update(&mut self, ts: i64, offset: i64, value: Option<f64>) {
        match (self, value) {
            (AggState::Count(n), _) => *n += 1,
            (_, None) => {}
            (AggState::Sum { sum, comp, n }, Some(v)) => {
                let (s, e) = two_sum(*sum, v);
                *sum = s;
                *comp += e;
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
            // Custom states are updated per window slice, not per record.
            (AggState::Custom(_), Some(_)) => {}
        }
    }

    /// Merges another partial of the same aggregation into this one
    /// (`custom`: the aggregator of a user-defined aggregation).
    pub(crate) fn merge_with(&mut self, other: &AggState, custom: Option<&dyn DynAggregator>) {
        match (self, other, custom) {
            (AggState::Custom(a), AggState::Custom(b), Some(agg)) => {
                agg.merge(a.as_mut(), b.as_ref())
            }
            (this, other, _) => this.merge(other),
        }
    }

    /// Merges another partial of the same built-in aggregation into this one.
    pub fn merge(&mut self, other: &AggState) {
        match (self, other) {
            (AggState::Count(a), AggState::Count(b)) => *a += b,
            (
                AggState::Sum { sum, comp, n },
                AggState::Sum {
                    sum: s2,
                    comp: c2,
                    n: n2,
                },
            ) => {
                let (s, e) = two_sum(*sum, *s2);
                *sum = s;
                *comp += e + c2;
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

    /// The result for `kind` (`custom`: the aggregator of a user-defined aggregation).
    pub(crate) fn value_with(&self, kind: AggKind, custom: Option<&dyn DynAggregator>) -> AggValue {
        match (self, custom) {
            (AggState::Custom(state), Some(agg)) => AggValue::Scalar(agg.result(state.as_ref())),
            _ => self.value(kind),
        }
    }

    /// The result for built-in `kind`.
    pub fn value(&self, kind: AggKind) -> AggValue {
        match (self, kind) {
            (AggState::Custom(_), _) => AggValue::Scalar(ScalarValue::Null),
            (AggState::Count(n), _) => AggValue::Int(*n),
            (AggState::Sum { n: 0, .. }, _) => AggValue::Float(None),
            (AggState::Sum { sum, comp, n }, AggKind::Mean) => {
                AggValue::Float(Some((sum + comp) / *n as f64))
            }
            (AggState::Sum { sum, comp, .. }, _) => AggValue::Float(Some(sum + comp)),
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

/// `a + b` rounded, and the rounding error (Knuth's TwoSum): `s + e == a + b` exactly.
fn two_sum(a: f64, b: f64) -> (f64, f64) {
    let s = a + b;
    let bb = s - a;
    (s, (a - (s - bb)) + (b - bb))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum_of(batches: &[&[f64]]) -> f64 {
        let mut total = AggState::new(AggKind::Sum);
        for batch in batches {
            let mut partial = AggState::new(AggKind::Sum);
            for v in *batch {
                partial.update(0, 0, Some(*v));
            }
            total.merge(&partial);
        }
        match total.value(AggKind::Sum) {
            AggValue::Float(Some(v)) => v,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn sums_do_not_depend_on_batch_boundaries() {
        let values = [
            6.47, 24.51, 19.42, 32.37, 27.28, 40.23, 8.27, 0.1, 1e16, -1e16,
        ];
        let whole = sum_of(&[&values]);
        for cut in 0..values.len() {
            let (a, b) = values.split_at(cut);
            assert_eq!(sum_of(&[a, b]).to_bits(), whole.to_bits(), "cut at {cut}");
        }
        let singles: Vec<&[f64]> = values.iter().map(std::slice::from_ref).collect();
        assert_eq!(sum_of(&singles).to_bits(), whole.to_bits());
    }
}
