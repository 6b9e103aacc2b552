//! `deduplicate(key, within)`: drops a record when one with the same key was
//! kept less than `within` apart in event time. A stateful operator in one
//! file: it declares its store and reads and writes it key by key through
//! its [`StoreHandle`], so the kept keys live in RocksDB, not in memory.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch};
use arrow::compute::{cast, filter_record_batch};
use arrow::datatypes::{DataType, Int64Type, SchemaRef};
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::prelude::SessionContext;
use futures::future::BoxFuture;

use super::expr::{compile, evaluate};
use super::{
    LogicalOperator, OpContext, OpError, Operator, OperatorState, StoreError, StoreRequest,
};
use crate::records::TIMESTAMP_COLUMN;
use crate::state::StoreHandle;
use crate::window::{CorruptState, Dropped};

/// Stored key of the stream time.
const STREAM_TIME_KEY: &[u8] = b"t";
/// `k` + key -> the event time of the record kept for it.
const KEPT_PREFIX: u8 = b'k';
/// `x` + expiry time (sortable) + key -> nothing: when to forget the key.
const EXPIRY_PREFIX: u8 = b'x';

/// Drops records whose key was kept less than `within` apart in event time.
pub(crate) struct Deduplicate {
    pub(crate) key: Expr,
    pub(crate) within: Duration,
}

impl LogicalOperator for Deduplicate {
    fn name(&self) -> String {
        format!("deduplicate({}, {:?})", self.key, self.within)
    }

    fn plan(
        &self,
        input: &SchemaRef,
        ctx: &Arc<SessionContext>,
    ) -> Result<Box<dyn Operator>, OpError> {
        let (key, _) = compile(ctx, &self.key, input)?;
        let timestamp = input.index_of(TIMESTAMP_COLUMN).map_err(|_| {
            OpError::Plan(format!(
                "deduplicate needs the '{TIMESTAMP_COLUMN}' metadata column; \
                 do not drop or select it away"
            ))
        })?;
        let within_ms = i64::try_from(self.within.as_millis()).unwrap_or(i64::MAX);
        if within_ms <= 0 {
            return Err(OpError::Plan(format!(
                "the interval must be at least 1 ms, got {:?}",
                self.within
            )));
        }
        Ok(Box::new(DeduplicateOperator {
            key,
            timestamp,
            schema: Arc::clone(input),
            within_ms,
            kept: None,
            dropped: 0,
        }))
    }

    fn store(&self) -> Option<StoreRequest> {
        Some(StoreRequest {
            name: None,
            default_prefix: "deduplicate",
            replay_log: false,
            keeps_state: true,
        })
    }
}

/// A time as bytes that sort like the times.
fn sortable(time: i64) -> [u8; 8] {
    ((time as u64) ^ (1 << 63)).to_be_bytes()
}

fn time_of(bytes: &[u8]) -> Result<i64, CorruptState> {
    let bytes: [u8; 8] = bytes
        .try_into()
        .map_err(|_| CorruptState(format!("{bytes:?} is not an event time")))?;
    Ok(i64::from_be_bytes(bytes))
}

/// The keys kept within the interval, in the operator's store.
struct Kept {
    store: StoreHandle,
    within_ms: i64,
    stream_time: Option<i64>,
    /// `k` + the key being checked (reused).
    key: Vec<u8>,
}

impl Kept {
    fn open(store: StoreHandle, within_ms: i64) -> Result<Self, StoreError> {
        let stream_time = store
            .get(STREAM_TIME_KEY)?
            .map(|t| time_of(&t))
            .transpose()?;
        Ok(Kept {
            store,
            within_ms,
            stream_time,
            key: vec![KEPT_PREFIX],
        })
    }

    /// Whether a record of `key` at `ts` is kept (and remembered).
    fn keep(&mut self, key: &str, ts: i64) -> Result<bool, StoreError> {
        if self.stream_time.is_none_or(|t| ts > t) {
            self.stream_time = Some(ts);
        }
        self.key.truncate(1);
        self.key.extend_from_slice(key.as_bytes());
        if let Some(kept) = self.store.get(&self.key)? {
            if ts.abs_diff(time_of(&kept)?) < self.within_ms.unsigned_abs() {
                return Ok(false);
            }
        }
        self.store.put(&self.key, &ts.to_be_bytes());
        let mut expiry = vec![EXPIRY_PREFIX];
        expiry.extend_from_slice(&sortable(ts.saturating_add(self.within_ms)));
        expiry.extend_from_slice(key.as_bytes());
        self.store.put(&expiry, &[]);
        Ok(true)
    }

    /// Forgets the keys whose interval the stream time has passed, and
    /// stores the stream time.
    fn expire(&mut self) -> Result<(), StoreError> {
        let Some(now) = self.stream_time else {
            return Ok(());
        };
        self.store.put(STREAM_TIME_KEY, &now.to_be_bytes());
        let mut to = vec![EXPIRY_PREFIX];
        to.extend_from_slice(&sortable(now.saturating_add(1)));
        for (entry, _) in self.store.range(&[EXPIRY_PREFIX], &to)? {
            self.store.delete(&entry);
            let Some(expiry) = entry.get(1..9) else {
                return Err(CorruptState(format!("expiry entry {entry:?}")).into());
            };
            let expiry = u64::from_be_bytes(sortable_bytes(expiry)?) ^ (1 << 63);
            self.key.truncate(1);
            self.key.extend_from_slice(&entry[9..]);
            // Only if the key was not kept again since.
            if let Some(kept) = self.store.get(&self.key)? {
                if time_of(&kept)?.saturating_add(self.within_ms) == expiry as i64 {
                    self.store.delete(&self.key);
                }
            }
        }
        Ok(())
    }
}

fn sortable_bytes(bytes: &[u8]) -> Result<[u8; 8], CorruptState> {
    bytes
        .try_into()
        .map_err(|_| CorruptState(format!("{bytes:?} is not an expiry time")))
}

struct DeduplicateOperator {
    key: Arc<dyn PhysicalExpr>,
    timestamp: usize,
    schema: SchemaRef,
    within_ms: i64,
    /// Opened with the operator's store.
    kept: Option<Kept>,
    dropped: u64,
}

impl DeduplicateOperator {
    fn deduplicate(&mut self, batch: &RecordBatch) -> Result<RecordBatch, OpError> {
        let Some(kept) = &mut self.kept else {
            return Err(OpError::eval(crate::Error::Internal(
                "deduplicate ran before its store was opened",
            )));
        };
        let keys: ArrayRef =
            cast(&evaluate(&self.key, batch)?, &DataType::Utf8).map_err(OpError::eval)?;
        let keys = keys.as_string::<i32>();
        let times = cast(batch.column(self.timestamp), &DataType::Int64).map_err(OpError::eval)?;
        let times = times.as_primitive::<Int64Type>();
        // Records without a key or an event time cannot be duplicates.
        let mask = (0..batch.num_rows())
            .map(|row| match (keys.is_valid(row), times.is_valid(row)) {
                (true, true) => kept.keep(keys.value(row), times.value(row)).map(Some),
                _ => Ok(Some(true)),
            })
            .collect::<Result<BooleanArray, StoreError>>()
            .map_err(OpError::eval)?;
        kept.expire().map_err(OpError::eval)?;
        self.dropped += mask.false_count() as u64;
        filter_record_batch(batch, &mask).map_err(OpError::eval)
    }
}

impl Operator for DeduplicateOperator {
    fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn process<'a>(
        &'a mut self,
        batch: RecordBatch,
        _ctx: &'a mut OpContext,
    ) -> BoxFuture<'a, Result<RecordBatch, OpError>> {
        Box::pin(std::future::ready(self.deduplicate(&batch)))
    }

    fn state(&mut self) -> Option<&mut dyn OperatorState> {
        Some(self)
    }
}

impl OperatorState for DeduplicateOperator {
    fn open(&mut self, store: StoreHandle) -> Result<(), StoreError> {
        self.kept = Some(Kept::open(store, self.within_ms)?);
        Ok(())
    }

    fn dropped(&self) -> Dropped {
        Dropped {
            duplicates: self.dropped,
            ..Dropped::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Int64Array, StringArray, TimestampMillisecondArray};
    use arrow::datatypes::{Field, Schema, TimeUnit};

    use super::*;
    use crate::expr::col;
    use crate::state::PartitionState;
    use flumen_state::MemoryStore;

    fn batch(rows: &[(&str, i64)]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new(
                TIMESTAMP_COLUMN,
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
            Field::new("_offset", DataType::Int64, false),
        ]));
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(TimestampMillisecondArray::from_iter_values(
                rows.iter().map(|r| r.1),
            )),
            Arc::new(Int64Array::from_iter_values(0..rows.len() as i64)),
        ];
        RecordBatch::try_new(schema, columns).unwrap_or_else(|e| panic!("{e}"))
    }

    fn operator(state: &PartitionState) -> Box<dyn Operator> {
        let dedup = Deduplicate {
            key: col("id"),
            within: Duration::from_secs(10),
        };
        let mut op = dedup
            .plan(&batch(&[]).schema(), &Arc::new(SessionContext::new()))
            .unwrap_or_else(|e| panic!("{e}"));
        op.state()
            .map(|s| s.open(state.handle("d")))
            .unwrap_or_else(|| panic!("stateful"))
            .unwrap_or_else(|e| panic!("{e}"));
        op
    }

    fn state() -> PartitionState {
        PartitionState::in_memory(Arc::new(MemoryStore::default()), 0)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Processes `rows` as the batch before `next_offset`, and commits it.
    fn ids(
        (op, state): (&mut Box<dyn Operator>, &PartitionState),
        rows: &[(&str, i64)],
        next_offset: i64,
    ) -> Vec<String> {
        let out = futures::executor::block_on(op.process(batch(rows), &mut OpContext::default()))
            .unwrap_or_else(|e| panic!("{e}"));
        let changes = state.seal(next_offset);
        state
            .commit(changes, next_offset)
            .unwrap_or_else(|e| panic!("{e}"));
        let ids = out.column(0).as_string::<i32>();
        ids.iter().flatten().map(str::to_string).collect()
    }

    #[test]
    fn repeats_within_the_interval_are_dropped_and_later_ones_kept() {
        let state = state();
        let mut op = operator(&state);
        let kept = ids(
            (&mut op, &state),
            &[("a", 1_000), ("b", 2_000), ("a", 5_000), ("a", 10_999)],
            4,
        );
        assert_eq!(kept, ["a", "b"]);
        // 11 s after the kept "a": a new one; "b" 9 s after its first: a repeat.
        let kept = ids(
            (&mut op, &state),
            &[("a", 11_000), ("b", 10_999), ("c", 11_000)],
            7,
        );
        assert_eq!(kept, ["a", "c"]);
        let dropped = op.state().map(|s| s.dropped().duplicates);
        assert_eq!(dropped, Some(3));
    }

    #[test]
    fn the_kept_keys_survive_a_restore_and_expire() {
        let state = state();
        let mut op = operator(&state);
        let kept = ids((&mut op, &state), &[("a", 1_000), ("b", 30_000)], 2);
        assert_eq!(kept, ["a", "b"]);
        // "a" expired when the stream time reached 30 s.
        let entries = state
            .local()
            .prefix("d", b"")
            .unwrap_or_else(|e| panic!("{e}"));
        let keys: Vec<&[u8]> = entries.iter().map(|(k, _)| k.as_slice()).collect();
        assert_eq!(keys.len(), 3, "b, its expiry and the stream time: {keys:?}");
        assert!(keys.contains(&&b"kb"[..]) && keys.contains(&STREAM_TIME_KEY));
        let mut restored = operator(&state);
        let kept = ids((&mut restored, &state), &[("b", 35_000), ("a", 35_000)], 4);
        assert_eq!(kept, ["a"]);
    }
}
