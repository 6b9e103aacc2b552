//! Windows over event time: assignment, aggregations and emission.

mod aggregate;
mod assign;
mod codec;
mod core;
mod custom;

pub use crate::operators::{WINDOW_END, WINDOW_START};
pub(crate) use aggregate::AggValue;
pub use aggregate::{avg, collect, count, first, last, max, mean, min, sum, AggKind, Aggregation};
pub use assign::{Windows, MAX_WINDOWS_PER_RECORD};
pub(crate) use codec::CorruptState;
pub use core::{Dropped, Emit};
pub(crate) use core::{WindowCore, WindowInput, WindowRow};
pub use custom::{aggregate, Aggregator, CustomState};

#[cfg(test)]
mod properties;

/// What happens to records that arrive after their window has closed (event
/// time older than the partition's watermark minus the window size).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum LateRecords {
    /// Drop them and count them (`Stats::late_records`, metric `flumen_late_records_total`).
    #[default]
    Drop,
    /// Count them and write the source record, unchanged, to this topic, with
    /// headers `flumen.error.kind = late`, `flumen.source.topic`,
    /// `flumen.source.partition`, `flumen.source.offset` and `flumen.watermark`.
    DeadLetter(String),
}
