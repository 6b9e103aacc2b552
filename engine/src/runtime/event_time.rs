//! Bounds on event time: a record whose event time is far ahead of its
//! partition's stream time (or of the wall clock, when that is later) is bad
//! input of kind `future_timestamp`, routed by the topic's policy. One such
//! record (microseconds read as milliseconds, `i64::MAX`) would otherwise move
//! stream time forward for good and make every later record late.

use std::sync::Arc;

use crate::records::{BadInputKind, BadRecord, Decoded};
use arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{DataType, TimestampMillisecondType};

use crate::{Error, Result};

/// The largest event time of one partition's accepted records so far.
#[derive(Debug, Default)]
pub(crate) struct EventTimeBound {
    /// How far event time may be ahead, ms (`None`: no bound).
    max_ahead_ms: Option<i64>,
    stream_time: Option<i64>,
}

impl EventTimeBound {
    pub(crate) fn new(max_ahead_ms: Option<i64>) -> Self {
        EventTimeBound {
            max_ahead_ms,
            stream_time: None,
        }
    }

    /// Moves the rows of `decoded` whose event time is beyond the bound to
    /// its bad records (kind `future_timestamp`), keeping index order.
    /// A heartbeat beyond the bound is ignored.
    pub(crate) fn check(&mut self, mut decoded: Decoded, now_ms: i64) -> Result<Decoded> {
        let Some(ahead) = self.max_ahead_ms else {
            return Ok(decoded);
        };
        let base = self.stream_time.unwrap_or(now_ms).max(now_ms);
        decoded.heartbeat = decoded
            .heartbeat
            .filter(|&h| h <= base.saturating_add(ahead));
        let Some(times) = event_times(&decoded.batch) else {
            return Ok(decoded);
        };
        // The usual case, one pass: nothing in the batch is beyond the bound.
        let limit = self
            .stream_time
            .unwrap_or(now_ms)
            .max(now_ms)
            .saturating_add(ahead);
        match arrow::compute::max(times.as_ref()) {
            None => return Ok(decoded),
            Some(max) if max <= limit => {
                self.stream_time = Some(self.stream_time.map_or(max, |t| t.max(max)));
                return Ok(decoded);
            }
            Some(_) => {}
        }
        let mut keep = Vec::with_capacity(times.len());
        let mut rejected = Vec::new();
        for (row, ts) in times.iter().enumerate() {
            let base = self.stream_time.unwrap_or(now_ms).max(now_ms);
            let limit = base.saturating_add(ahead);
            match ts {
                Some(ts) if ts > limit => {
                    keep.push(false);
                    rejected.push(BadRecord {
                        index: decoded.rows[row] as usize,
                        kind: BadInputKind::FutureTimestamp,
                        reason: format!(
                            "event time {ts} ms is more than {ahead} ms ahead of the \
                             partition's stream time or the wall clock ({base} ms)"
                        ),
                    });
                }
                Some(ts) => {
                    keep.push(true);
                    self.stream_time = Some(self.stream_time.map_or(ts, |t| t.max(ts)));
                }
                None => keep.push(true),
            }
        }
        if rejected.is_empty() {
            return Ok(decoded);
        }
        let mask = BooleanArray::from(keep.clone());
        let batch = filter_record_batch(&decoded.batch, &mask).map_err(|e| Error::Task {
            task: "filtering records ahead in time".into(),
            source: Box::new(e),
        })?;
        let rows = decoded
            .rows
            .iter()
            .zip(&keep)
            .filter(|(_, k)| **k)
            .map(|(r, _)| *r)
            .collect();
        let mut bad = decoded.bad;
        bad.extend(rejected);
        bad.sort_by_key(|b| b.index);
        Ok(Decoded {
            batch,
            rows,
            bad,
            heartbeat: decoded.heartbeat,
        })
    }
}

/// The `_timestamp` column as epoch ms.
fn event_times(batch: &RecordBatch) -> Option<Arc<arrow::array::TimestampMillisecondArray>> {
    let column = batch.column_by_name(crate::records::TIMESTAMP_COLUMN)?;
    match column.data_type() {
        DataType::Timestamp(arrow::datatypes::TimeUnit::Millisecond, _) => Some(Arc::new(
            column.as_primitive::<TimestampMillisecondType>().clone(),
        )),
        _ => None,
    }
}

/// Milliseconds since the epoch now.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::TimestampMillisecondArray;
    use arrow::datatypes::{Field, Schema, TimeUnit};

    fn decoded(times: &[i64]) -> Decoded {
        let schema = Arc::new(Schema::new(vec![Field::new(
            crate::records::TIMESTAMP_COLUMN,
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        )]));
        let column = Arc::new(TimestampMillisecondArray::from(times.to_vec()));
        Decoded {
            batch: RecordBatch::try_new(schema, vec![column]).unwrap_or_else(|e| panic!("{e}")),
            rows: (0..times.len() as u32).collect(),
            bad: Vec::new(),
            heartbeat: None,
        }
    }

    #[test]
    fn records_far_ahead_of_stream_time_and_wall_clock_are_bad_input() {
        let now = 1_000_000;
        let mut bound = EventTimeBound::new(Some(1_000));
        let out = bound
            .check(
                decoded(&[999_000, 1_000_500, 5_000_000, i64::MAX, 1_000_900]),
                now,
            )
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out.rows, vec![0, 1, 4]);
        assert_eq!(out.batch.num_rows(), 3);
        let bad: Vec<usize> = out.bad.iter().map(|b| b.index).collect();
        assert_eq!(bad, vec![2, 3]);
        assert!(out
            .bad
            .iter()
            .all(|b| b.kind == BadInputKind::FutureTimestamp));
        // Stream time moved to 1_000_900: 1_001_800 is within a second of it.
        let out = bound
            .check(decoded(&[1_001_800]), now)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(out.bad.is_empty());
    }

    #[test]
    fn without_a_bound_nothing_is_rejected() {
        let mut bound = EventTimeBound::new(None);
        let out = bound
            .check(decoded(&[i64::MAX]), 0)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(out.bad.is_empty());
    }
}
