//! User-defined aggregations: the public [`Aggregator`] trait and its
//! type-erased form used by the window state.

use std::any::Any;
use std::fmt::Debug;
use std::sync::Arc;

use arrow::array::ArrayRef;
use arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::logical_expr::Expr;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::aggregate::{AggKind, Aggregation};
use crate::plan::BoxError;

/// A user-defined aggregation, computed per (key, window) like the built-ins:
/// each micro-batch is pre-aggregated per window with [`Aggregator::update`],
/// partials are combined with [`Aggregator::merge`], and the state is stored
/// (serialized with serde) between batches and across restarts.
///
/// ```
/// use arrow::array::{ArrayRef, AsArray};
/// use arrow::datatypes::{DataType, Float64Type};
/// use flumen::prelude::*;
/// use flumen::window::{aggregate, Aggregator};
/// use datafusion::common::ScalarValue;
///
/// /// The spread (max - min) of a Float64 column.
/// struct Spread;
///
/// impl Aggregator for Spread {
///     type State = Option<(f64, f64)>;
///     fn output_type(&self) -> DataType { DataType::Float64 }
///     fn initialize(&self) -> Self::State { None }
///     fn update(&self, state: &mut Self::State, values: &ArrayRef) -> Result<(), flumen::BoxError> {
///         let values = values.as_primitive_opt::<Float64Type>().ok_or("spread takes Float64")?;
///         for v in values.iter().flatten() {
///             let (lo, hi) = state.get_or_insert((v, v));
///             *lo = lo.min(v);
///             *hi = hi.max(v);
///         }
///         Ok(())
///     }
///     fn merge(&self, state: &mut Self::State, other: &Self::State) {
///         if let Some((lo2, hi2)) = *other {
///             let (lo, hi) = state.get_or_insert((lo2, hi2));
///             *lo = lo.min(lo2);
///             *hi = hi.max(hi2);
///         }
///     }
///     fn result(&self, state: &Self::State) -> ScalarValue {
///         ScalarValue::Float64(state.map(|(lo, hi)| hi - lo))
///     }
/// }
///
/// let spread = aggregate("spread", col("temp"), Spread);
/// assert_eq!(spread.name(), "spread");
/// ```
pub trait Aggregator: Send + Sync + 'static {
    /// The partial state of one window.
    type State: Clone + Debug + Send + Sync + Serialize + DeserializeOwned + 'static;

    /// The Arrow type of [`Aggregator::result`].
    fn output_type(&self) -> DataType;
    /// The state of a window without records.
    fn initialize(&self) -> Self::State;
    /// Adds the records of one window from one micro-batch: `values` holds the
    /// aggregated expression for exactly those records, in offset order.
    fn update(&self, state: &mut Self::State, values: &ArrayRef) -> Result<(), BoxError>;
    /// Adds a partial state of other records of the same window.
    fn merge(&self, state: &mut Self::State, other: &Self::State);
    /// The window's value (of [`Aggregator::output_type`]).
    fn result(&self, state: &Self::State) -> ScalarValue;
}

/// A user-defined aggregation of `input` with `aggregator`, in column `name`.
pub fn aggregate(name: impl Into<String>, input: Expr, aggregator: impl Aggregator) -> Aggregation {
    Aggregation {
        kind: AggKind::Custom,
        input: Some(input),
        name: name.into(),
        custom: Some(Arc::new(Erased(aggregator))),
    }
}

/// A user aggregation's state, type-erased.
pub trait CustomState: Debug + Send + Sync {
    /// A boxed copy.
    fn clone_box(&self) -> Box<dyn CustomState>;
    /// Serialized form (JSON).
    fn encode(&self) -> Vec<u8>;
    /// For downcasting.
    fn as_any(&self) -> &dyn Any;
    /// For downcasting.
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

impl<S: Clone + Debug + Send + Sync + Serialize + 'static> CustomState for S {
    fn clone_box(&self) -> Box<dyn CustomState> {
        Box::new(self.clone())
    }
    fn encode(&self) -> Vec<u8> {
        // Serializing plain data to JSON only fails for maps with non-string keys;
        // such a state is stored as null and reported when read back.
        serde_json::to_vec(self).unwrap_or_else(|_| b"null".to_vec())
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

impl Clone for Box<dyn CustomState> {
    fn clone(&self) -> Self {
        self.clone_box()
    }
}

/// An [`Aggregator`] with its state type erased.
pub(crate) trait DynAggregator: Send + Sync {
    fn output_type(&self) -> DataType;
    fn initialize(&self) -> Box<dyn CustomState>;
    fn update(&self, state: &mut dyn CustomState, values: &ArrayRef) -> Result<(), BoxError>;
    fn merge(&self, state: &mut dyn CustomState, other: &dyn CustomState);
    fn result(&self, state: &dyn CustomState) -> ScalarValue;
    fn decode(&self, bytes: &[u8]) -> Result<Box<dyn CustomState>, serde_json::Error>;
}

struct Erased<A>(A);

const WRONG_STATE: &str = "aggregation state of another type";

impl<A: Aggregator> DynAggregator for Erased<A> {
    fn output_type(&self) -> DataType {
        self.0.output_type()
    }
    fn initialize(&self) -> Box<dyn CustomState> {
        Box::new(self.0.initialize())
    }
    fn update(&self, state: &mut dyn CustomState, values: &ArrayRef) -> Result<(), BoxError> {
        let state = state
            .as_any_mut()
            .downcast_mut::<A::State>()
            .ok_or(WRONG_STATE)?;
        self.0.update(state, values)
    }
    fn merge(&self, state: &mut dyn CustomState, other: &dyn CustomState) {
        if let (Some(state), Some(other)) = (
            state.as_any_mut().downcast_mut::<A::State>(),
            other.as_any().downcast_ref::<A::State>(),
        ) {
            self.0.merge(state, other);
        }
    }
    fn result(&self, state: &dyn CustomState) -> ScalarValue {
        match state.as_any().downcast_ref::<A::State>() {
            Some(state) => self.0.result(state),
            None => ScalarValue::try_from(&self.0.output_type()).unwrap_or(ScalarValue::Null),
        }
    }
    fn decode(&self, bytes: &[u8]) -> Result<Box<dyn CustomState>, serde_json::Error> {
        serde_json::from_slice::<A::State>(bytes).map(|s| Box::new(s) as Box<dyn CustomState>)
    }
}
