//! Windows over event time: assignment, aggregations and emission.

mod aggregate;
mod assign;
mod core;

pub use crate::operators::{WINDOW_END, WINDOW_START};
pub use aggregate::{
    avg, collect, count, first, last, max, mean, min, sum, AggKind, AggState, AggValue, Aggregation,
};
pub use assign::Windows;
pub use core::{Dropped, Emit, WindowCore, WindowInput, WindowRow};

#[cfg(test)]
mod properties;
