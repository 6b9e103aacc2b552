//! `deduplicate(key, within)`: drops a record when one with the same key was
//! kept less than `within` apart in event time. A stateful operator in one
//! file: it declares its store, keeps the kept keys in memory and hands its
//! changes and restores through [`OperatorState`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch};
use arrow::compute::{cast, filter_record_batch};
use arrow::datatypes::{DataType, Int64Type, SchemaRef};
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::prelude::SessionContext;
use flumen_state::WriteBatch;
use futures::future::BoxFuture;

use super::expr::{compile, evaluate};
use super::{LogicalOperator, OpContext, OpError, Operator, OperatorState, StoreRequest};
use crate::records::TIMESTAMP_COLUMN;
use crate::window::{CorruptState, Dropped};

/// Stored key of the stream time (keys of kept records start with `k`).
const STREAM_TIME_KEY: &[u8] = b"t";
const KEPT_PREFIX: u8 = b'k';

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
            kept: Kept::new(within_ms),
        }))
    }

    fn store(&self) -> Option<StoreRequest> {
        Some(StoreRequest {
            name: None,
            default_prefix: "deduplicate",
        })
    }
}

/// The keys kept within the interval, with when they were kept.
struct Kept {
    within_ms: i64,
    /// Key -> event time of the record kept for it.
    at: HashMap<Arc<str>, i64>,
    /// Expiry time -> keys, to forget keys once the stream time passed it.
    expiring: BTreeMap<i64, Vec<Arc<str>>>,
    stream_time: Option<i64>,
    /// Keys changed (kept or forgotten) since the last take.
    changed: HashSet<Arc<str>>,
    stream_time_changed: bool,
    dropped: u64,
}

impl Kept {
    fn new(within_ms: i64) -> Self {
        Kept {
            within_ms,
            at: HashMap::new(),
            expiring: BTreeMap::new(),
            stream_time: None,
            changed: HashSet::new(),
            stream_time_changed: false,
            dropped: 0,
        }
    }

    /// Whether a record of `key` at `ts` is kept (and remembered).
    fn keep(&mut self, key: &str, ts: i64) -> bool {
        if self.stream_time.is_none_or(|t| ts > t) {
            self.stream_time = Some(ts);
            self.stream_time_changed = true;
        }
        if let Some(&kept) = self.at.get(key) {
            if ts.abs_diff(kept) < self.within_ms.unsigned_abs() {
                self.dropped += 1;
                return false;
            }
        }
        let key: Arc<str> = Arc::from(key);
        self.remember(Arc::clone(&key), ts);
        self.changed.insert(key);
        true
    }

    fn remember(&mut self, key: Arc<str>, ts: i64) {
        let expiry = ts.saturating_add(self.within_ms);
        self.expiring
            .entry(expiry)
            .or_default()
            .push(Arc::clone(&key));
        self.at.insert(key, ts);
    }

    /// Forgets the keys whose interval the stream time has passed.
    fn expire(&mut self) {
        let Some(now) = self.stream_time else { return };
        while let Some(entry) = self.expiring.first_entry() {
            if *entry.key() > now {
                break;
            }
            let (expiry, keys) = entry.remove_entry();
            for key in keys {
                // Only if the key was not kept again since.
                if self.at.get(&key).map(|t| t.saturating_add(self.within_ms)) == Some(expiry) {
                    self.at.remove(&key);
                    self.changed.insert(key);
                }
            }
        }
    }
}

struct DeduplicateOperator {
    key: Arc<dyn PhysicalExpr>,
    timestamp: usize,
    schema: SchemaRef,
    kept: Kept,
}

impl DeduplicateOperator {
    fn deduplicate(&mut self, batch: &RecordBatch) -> Result<RecordBatch, OpError> {
        let keys: ArrayRef =
            cast(&evaluate(&self.key, batch)?, &DataType::Utf8).map_err(OpError::eval)?;
        let keys = keys.as_string::<i32>();
        let times = cast(batch.column(self.timestamp), &DataType::Int64).map_err(OpError::eval)?;
        let times = times.as_primitive::<Int64Type>();
        // Records without a key or an event time cannot be duplicates.
        let mask: BooleanArray = (0..batch.num_rows())
            .map(|row| match (keys.is_valid(row), times.is_valid(row)) {
                (true, true) => Some(self.kept.keep(keys.value(row), times.value(row))),
                _ => Some(true),
            })
            .collect();
        self.kept.expire();
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
    fn begin_restore(&mut self) {
        self.kept = Kept::new(self.kept.within_ms);
    }

    fn restore_entry(&mut self, key: &[u8], value: &[u8]) -> Result<(), CorruptState> {
        let time: [u8; 8] = value
            .try_into()
            .map_err(|_| CorruptState(format!("entry {key:?} is not an event time")))?;
        let time = i64::from_be_bytes(time);
        match key.split_first() {
            Some((&KEPT_PREFIX, kept)) => {
                let kept = std::str::from_utf8(kept)
                    .map_err(|_| CorruptState(format!("key {kept:?} is not UTF-8")))?;
                self.kept.remember(Arc::from(kept), time);
            }
            _ if key == STREAM_TIME_KEY => self.kept.stream_time = Some(time),
            _ => return Err(CorruptState(format!("unknown entry {key:?}"))),
        }
        Ok(())
    }

    fn finish_restore(&mut self) {
        self.kept.expire();
        self.kept.changed.clear();
    }

    fn take_changes(&mut self, store: &str) -> WriteBatch {
        let mut batch = WriteBatch::default();
        for key in self.kept.changed.drain() {
            let mut stored = vec![KEPT_PREFIX];
            stored.extend_from_slice(key.as_bytes());
            match self.kept.at.get(&key) {
                Some(time) => batch.put(store, &stored, &time.to_be_bytes()),
                None => batch.delete(store, &stored),
            }
        }
        if std::mem::take(&mut self.kept.stream_time_changed) {
            if let Some(time) = self.kept.stream_time {
                batch.put(store, STREAM_TIME_KEY, &time.to_be_bytes());
            }
        }
        batch
    }

    fn dropped(&self) -> Dropped {
        Dropped {
            duplicates: self.kept.dropped,
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

    fn operator() -> Box<dyn Operator> {
        let dedup = Deduplicate {
            key: col("id"),
            within: Duration::from_secs(10),
        };
        dedup
            .plan(&batch(&[]).schema(), &Arc::new(SessionContext::new()))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn ids(op: &mut Box<dyn Operator>, rows: &[(&str, i64)]) -> Vec<String> {
        let out = futures::executor::block_on(op.process(batch(rows), &mut OpContext::default()))
            .unwrap_or_else(|e| panic!("{e}"));
        let ids = out.column(0).as_string::<i32>();
        ids.iter().flatten().map(str::to_string).collect()
    }

    #[test]
    fn repeats_within_the_interval_are_dropped_and_later_ones_kept() {
        let mut op = operator();
        let kept = ids(
            &mut op,
            &[("a", 1_000), ("b", 2_000), ("a", 5_000), ("a", 10_999)],
        );
        assert_eq!(kept, ["a", "b"]);
        // 11 s after the kept "a": a new one; "b" 9 s after its first: a repeat.
        let kept = ids(&mut op, &[("a", 11_000), ("b", 10_999), ("c", 11_000)]);
        assert_eq!(kept, ["a", "c"]);
        let dropped = op.state().map(|s| s.dropped().duplicates);
        assert_eq!(dropped, Some(3));
    }

    #[test]
    fn the_kept_keys_survive_a_restore_and_expire() {
        let mut op = operator();
        assert_eq!(ids(&mut op, &[("a", 1_000), ("b", 30_000)]), ["a", "b"]);
        let Some(state) = op.state() else {
            panic!("stateful")
        };
        let changes = state.take_changes("d");
        // "a" expired when the stream time reached 30 s: its put became a delete.
        let store = flumen_state::MemoryStore::default();
        flumen_state::StateStore::write(&store, changes, None).unwrap_or_else(|e| panic!("{e}"));
        let entries =
            flumen_state::StateStore::prefix(&store, "d", b"").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(entries.len(), 2, "b and the stream time: {entries:?}");
        let mut restored = operator();
        let Some(state) = restored.state() else {
            panic!("stateful")
        };
        state.begin_restore();
        for (key, value) in &entries {
            state
                .restore_entry(key, value)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        state.finish_restore();
        assert_eq!(ids(&mut restored, &[("b", 35_000), ("a", 35_000)]), ["a"]);
    }
}
