//! The write timestamp (`USING TIMESTAMP`) of each upserted row: Cassandra
//! keeps, per cell, the value with the largest one.

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, TimeUnit, TimestampMillisecondType};
use flumen::sink::SourcePosition;

use crate::error::CassandraError;

/// How the write timestamp of a row is chosen. Cassandra keeps, per cell, the
/// value written with the largest timestamp, so this decides which of two
/// writes of a row wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WriteTimestamp {
    /// The wall clock when the batch is written, in microseconds (default;
    /// what Cassandra itself uses without `USING TIMESTAMP`, and the DataStax
    /// Kafka sink's default). The latest write wins: reprocessing under a new
    /// consumer group or from a recreated input topic corrects existing rows.
    /// The cost: replaying *older* input (a second group reading an old
    /// prefix and stopping) rewrites rows with older values too.
    #[default]
    Now,
    /// The last source offset of the micro-batch (flumen before 2026-12):
    /// a replay of older input never overwrites a newer row, but offsets
    /// restart at 0 under a new consumer group or a recreated topic, so such
    /// a reprocessing loses every comparison against existing rows, silently.
    SourceOffset,
    /// The row's event time (`_timestamp`, e.g. a window's end) in
    /// microseconds, plus its position in the micro-batch (below 1,000 µs):
    /// stable across replays and group changes. Suits `final_()` windows,
    /// each written once per window; successive `current()` updates of a
    /// window share its event time, so ties are broken by Cassandra (larger
    /// value wins), not by recency.
    EventTime,
}

impl WriteTimestamp {
    /// The write timestamp of every row of `batch`, in microseconds.
    pub(crate) fn of(
        self,
        batch: &RecordBatch,
        position: &SourcePosition<'_>,
        table: &str,
    ) -> Result<Vec<i64>, CassandraError> {
        let rows = batch.num_rows();
        Ok(match self {
            WriteTimestamp::Now => vec![now_micros(); rows],
            WriteTimestamp::SourceOffset => vec![position.last_offset; rows],
            WriteTimestamp::EventTime => event_micros(batch, table)?,
        })
    }
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

fn event_micros(batch: &RecordBatch, table: &str) -> Result<Vec<i64>, CassandraError> {
    let column = flumen::format::TIMESTAMP_COLUMN;
    let missing = || CassandraError::Value {
        table: table.to_string(),
        column: column.to_string(),
        reason: "WriteTimestamp::EventTime needs the frame's event time column".into(),
    };
    let times = batch.column_by_name(column).ok_or_else(missing)?;
    if times.data_type() != &DataType::Timestamp(TimeUnit::Millisecond, None) {
        return Err(missing());
    }
    let times = times.as_primitive::<TimestampMillisecondType>();
    Ok((0..batch.num_rows())
        .map(|row| {
            let ms = if times.is_null(row) {
                0
            } else {
                times.value(row)
            };
            ms.saturating_mul(1_000)
                .saturating_add((row % 1_000) as i64)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::TimestampMillisecondArray;
    use arrow::datatypes::{Field, Schema};
    use std::sync::Arc;

    #[test]
    fn each_mode_gives_a_timestamp_per_row() {
        let schema = Arc::new(Schema::new(vec![Field::new(
            flumen::format::TIMESTAMP_COLUMN,
            DataType::Timestamp(TimeUnit::Millisecond, None),
            true,
        )]));
        let times = Arc::new(TimestampMillisecondArray::from(vec![5, 5]));
        let batch = RecordBatch::try_new(schema, vec![times]).unwrap_or_else(|e| panic!("{e}"));
        let position = SourcePosition {
            topic: "in",
            partition: 0,
            first_offset: 7,
            last_offset: 9,
        };
        let of = |mode: WriteTimestamp| mode.of(&batch, &position, "ks.t").unwrap_or_default();
        assert_eq!(of(WriteTimestamp::SourceOffset), vec![9, 9]);
        assert_eq!(of(WriteTimestamp::EventTime), vec![5_000, 5_001]);
        let now = of(WriteTimestamp::Now);
        assert!(now[0] > 1_700_000_000_000_000 && now[0] == now[1]);
    }
}
