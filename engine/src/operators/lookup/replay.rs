//! Replay-stable enrichment. In exactly-once runs a lookup appends, for
//! every batch and before the batch goes on, the rows it gave keys whose
//! row changed (or was not logged yet) in the current epoch, with the
//! source offset from which each applied, to its replay log. A run that
//! replays records an earlier run processed without committing (after a
//! crash or an aborted transaction) reads that log back and gives those
//! records the rows the earlier run gave them, not what the table holds
//! now.
//!
//! A log record is an Arrow IPC stream: columns `_from` (the offset from
//! which the row applied to its key), `_found`, the key columns, then the
//! looked-up columns; the schema's metadata holds the last offset of the
//! batch (`flumen.last`), so a record is written even when nothing changed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Int64Array, RecordBatch, UInt32Array};
use arrow::compute::take;
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use arrow::row::{RowConverter, Rows};

use super::cache::Row;
use super::Distinct;
use crate::operators::OpError;
use crate::state::replay_log::ReplayLog;
use crate::state::StoreHandle;

/// How long an epoch lasts: every key is logged again in a new epoch, and a
/// restart reads the log back from the start of the committed one.
const EPOCH: Duration = Duration::from_secs(10);
/// Rows per log record (a record must stay under the producer's limit).
const ROWS_PER_RECORD: usize = 1_000;
/// The metadata key of a record's last offset.
const LAST: &str = "flumen.last";
const FROM: &str = "_from";
const FOUND: &str = "_found";

/// The rows earlier runs gave each key, from which offset, up to the last
/// offset they processed.
pub(super) struct Replayed {
    /// Records up to this offset were enriched by an earlier run.
    pub(super) through: i64,
    /// Per key, `(from offset, row)` in offset order; for equal offsets the
    /// earliest run first.
    entries: HashMap<Box<[u8]>, RowsFrom>,
}

/// The rows a key had, each with the offset from which it applied.
type RowsFrom = Vec<(i64, Option<Row>)>;

/// What a replay log holds must match what the lookup gives now.
pub(super) struct Shape<'a> {
    pub(super) converter: &'a RowConverter,
    pub(super) keys: usize,
    pub(super) columns: &'a SchemaRef,
}

impl Replayed {
    /// Reads the `records` of a replay log back (`None`: none).
    pub(super) fn decode(
        records: &[Vec<u8>],
        shape: &Shape<'_>,
        fetches: &mut u64,
    ) -> Result<Option<Self>, OpError> {
        let mut replayed = Replayed {
            through: i64::MIN,
            entries: HashMap::new(),
        };
        for record in records {
            let reader =
                StreamReader::try_new(std::io::Cursor::new(record), None).map_err(OpError::eval)?;
            if let Some(last) = reader.schema().metadata().get(LAST) {
                let last: i64 = last.parse().map_err(OpError::eval)?;
                replayed.through = replayed.through.max(last);
            }
            for batch in reader {
                *fetches += 1;
                replayed.add(&batch.map_err(OpError::eval)?, shape, *fetches)?;
            }
        }
        for rows in replayed.entries.values_mut() {
            rows.sort_by_key(|(from, _)| *from);
        }
        Ok((replayed.through > i64::MIN).then_some(replayed))
    }

    fn add(&mut self, batch: &RecordBatch, shape: &Shape<'_>, fetch: u64) -> Result<(), OpError> {
        let wrong = || OpError::Plan("the replay log does not match the lookup".into());
        let from = batch
            .column(0)
            .as_primitive_opt::<Int64Type>()
            .ok_or_else(wrong)?;
        let found = batch.column(1).as_boolean_opt().ok_or_else(wrong)?;
        let key_columns = &batch.columns()[2..2 + shape.keys];
        let keys = shape
            .converter
            .convert_columns(key_columns)
            .map_err(OpError::eval)?;
        let looked_up: Vec<usize> = (2 + shape.keys..batch.num_columns()).collect();
        let rows = batch.project(&looked_up).map_err(OpError::eval)?;
        let types = |s: &Schema| {
            s.fields()
                .iter()
                .map(|f| f.data_type().clone())
                .collect::<Vec<_>>()
        };
        if types(&rows.schema()) != types(shape.columns) {
            return Err(wrong());
        }
        for i in 0..batch.num_rows() {
            let row = found.value(i).then(|| Row {
                batch: rows.clone(),
                index: i as u32,
                fetch,
            });
            let key: Box<[u8]> = keys.row(i).as_ref().into();
            self.entries
                .entry(key)
                .or_default()
                .push((from.value(i), row));
        }
        Ok(())
    }

    /// The row an earlier run gave `key` at `offset` (`None`: it gave none;
    /// `Some(None)`: it found no row).
    pub(super) fn in_force(&self, key: &[u8], offset: i64) -> Option<&Option<Row>> {
        let rows = self.entries.get(key)?;
        let after = rows.partition_point(|(from, _)| *from <= offset);
        let from = rows.get(after.checked_sub(1)?)?.0;
        // The earliest run's row wins among rows logged from the same offset.
        let first = rows.partition_point(|(f, _)| *f < from);
        rows.get(first).map(|(_, row)| row)
    }
}

/// Appends a partition's enrichment to its replay log.
pub(super) struct ReplayWriter {
    log: Arc<ReplayLog>,
    store: StoreHandle,
    /// When the current epoch started (`None`: none yet).
    epoch: Option<Instant>,
    /// The row each key was logged with in the current epoch.
    logged: HashMap<Box<[u8]>, Option<(u64, u32)>>,
}

/// One batch's enrichment, for the log.
pub(super) struct Enriched<'a> {
    pub(super) offsets: &'a Int64Array,
    pub(super) keys: &'a [ArrayRef],
    pub(super) rows: &'a Rows,
    pub(super) distinct: &'a Distinct,
    /// The looked-up row of each row of the batch.
    pub(super) used: &'a [Option<&'a Row>],
}

impl ReplayWriter {
    pub(super) fn new(log: Arc<ReplayLog>, store: StoreHandle) -> Self {
        ReplayWriter {
            log,
            store,
            epoch: None,
            logged: HashMap::new(),
        }
    }

    /// Logs the rows of `batch` whose key's row is new to the epoch; waits
    /// until the brokers hold them. `columns`: the looked-up columns of
    /// `batch.used` (from [`super::LookupOperator::columns`]).
    pub(super) async fn log(
        &mut self,
        batch: &Enriched<'_>,
        columns: impl Fn(&[Option<&Row>]) -> Result<Vec<ArrayRef>, OpError>,
    ) -> Result<(), OpError> {
        if self.epoch.is_none_or(|at| at.elapsed() >= EPOCH) {
            self.log
                .mark_position(&self.store)
                .await
                .map_err(OpError::eval)?;
            self.logged.clear();
            self.epoch = Some(Instant::now());
        }
        let fresh = self.fresh_rows(batch);
        let last = batch.offsets.iter().flatten().max().unwrap_or(i64::MIN);
        for chunk in fresh
            .chunks(ROWS_PER_RECORD)
            .chain(fresh.is_empty().then_some(&[][..]))
        {
            let used: Vec<Option<&Row>> = chunk.iter().map(|&r| batch.used[r as usize]).collect();
            let record = encode(batch, chunk, columns(&used)?, last)?;
            self.log.append(&record).await.map_err(OpError::eval)?;
        }
        Ok(())
    }

    /// The rows whose key's row was not logged in this epoch yet, marked as
    /// logged.
    fn fresh_rows(&mut self, batch: &Enriched<'_>) -> Vec<u32> {
        let mut seen: Vec<Option<Option<(u64, u32)>>> = vec![None; batch.distinct.firsts.len()];
        let mut fresh = Vec::new();
        for (r, slot) in batch.distinct.slots.iter().enumerate() {
            // Null keys are never looked up.
            let (Some(slot), false) = (slot, batch.offsets.is_null(r)) else {
                continue;
            };
            let identity = batch.used[r].map(Row::identity);
            if seen[slot as usize] == Some(identity) {
                continue;
            }
            seen[slot as usize] = Some(identity);
            let key = batch.rows.row(r);
            if self.logged.get(key.as_ref()) != Some(&identity) {
                self.logged.insert(key.as_ref().into(), identity);
                fresh.push(r as u32);
            }
        }
        fresh
    }
}

/// A log record: rows `chunk` of `batch` with their looked-up `columns`.
fn encode(
    batch: &Enriched<'_>,
    chunk: &[u32],
    columns: Vec<ArrayRef>,
    last: i64,
) -> Result<Vec<u8>, OpError> {
    let indices = UInt32Array::from(chunk.to_vec());
    let found: BooleanArray = chunk
        .iter()
        .map(|&r| Some(batch.used[r as usize].is_some()))
        .collect();
    let mut fields = vec![
        Field::new(FROM, DataType::Int64, true),
        Field::new(FOUND, DataType::Boolean, true),
    ];
    let mut arrays: Vec<ArrayRef> = vec![
        take(batch.offsets, &indices, None).map_err(OpError::eval)?,
        Arc::new(found),
    ];
    for (i, key) in batch.keys.iter().enumerate() {
        fields.push(Field::new(format!("k{i}"), key.data_type().clone(), true));
        arrays.push(take(key, &indices, None).map_err(OpError::eval)?);
    }
    for (i, column) in columns.into_iter().enumerate() {
        fields.push(Field::new(
            format!("c{i}"),
            column.data_type().clone(),
            true,
        ));
        arrays.push(column);
    }
    let metadata = HashMap::from([(LAST.to_string(), last.to_string())]);
    let schema = Arc::new(Schema::new_with_metadata(fields, metadata));
    let record = RecordBatch::try_new(Arc::clone(&schema), arrays).map_err(OpError::eval)?;
    let mut out = Vec::new();
    let mut writer = StreamWriter::try_new(&mut out, &schema).map_err(OpError::eval)?;
    writer.write(&record).map_err(OpError::eval)?;
    writer.finish().map_err(OpError::eval)?;
    drop(writer);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use arrow::array::StringArray;
    use arrow::row::SortField;

    use super::*;

    /// The site column a lookup of devices gives.
    fn sites(values: &[&str]) -> RecordBatch {
        let column = Arc::new(StringArray::from(values.to_vec())) as ArrayRef;
        RecordBatch::try_from_iter_with_nullable([("site", column, true)])
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn row(batch: &RecordBatch, index: u32, fetch: u64) -> Row {
        Row {
            batch: batch.clone(),
            index,
            fetch,
        }
    }

    /// A log record of a batch of `devices` at `offsets` that took `used`,
    /// every row logged.
    fn record(devices: &[&str], offsets: &[i64], used: &[Option<&Row>], last: i64) -> Vec<u8> {
        let converter = converter();
        let keys = vec![Arc::new(StringArray::from(devices.to_vec())) as ArrayRef];
        let rows = converter
            .convert_columns(&keys)
            .unwrap_or_else(|e| panic!("{e}"));
        let distinct = super::super::distinct(&keys, &rows);
        let offsets = Int64Array::from(offsets.to_vec());
        let batch = Enriched {
            offsets: &offsets,
            keys: &keys,
            rows: &rows,
            distinct: &distinct,
            used,
        };
        let all: Vec<u32> = (0..devices.len() as u32).collect();
        let columns =
            super::super::looked_up(&sites(&[]).schema(), used).unwrap_or_else(|e| panic!("{e}"));
        encode(&batch, &all, columns, last).unwrap_or_else(|e| panic!("{e}"))
    }

    fn converter() -> RowConverter {
        RowConverter::new(vec![SortField::new(DataType::Utf8)]).unwrap_or_else(|e| panic!("{e}"))
    }

    fn site_of(row: Option<&Option<Row>>) -> Option<Option<String>> {
        row.map(|row| {
            row.as_ref().map(|r| {
                r.batch
                    .column(0)
                    .as_string::<i32>()
                    .value(r.index as usize)
                    .to_string()
            })
        })
    }

    #[test]
    fn the_row_in_force_at_an_offset_is_the_earliest_runs() {
        let fetched = sites(&["site-1", "site-2", "site-3"]);
        let (one, two, three) = (
            row(&fetched, 0, 1),
            row(&fetched, 1, 1),
            row(&fetched, 2, 1),
        );
        // The first run: a at 10 took site-1, b at 11 was not found.
        let first = record(&["a", "b"], &[10, 11], &[Some(&one), None], 12);
        // A second run replayed a at 10 but logged another row (the first
        // run's wins), then took site-3 from 20 on.
        let second = record(&["a", "a"], &[10, 20], &[Some(&two), Some(&three)], 25);
        let converter = converter();
        let columns = sites(&[]).schema();
        let shape = Shape {
            converter: &converter,
            keys: 1,
            columns: &columns,
        };
        let mut fetches = 0;
        let replayed = Replayed::decode(&[first, second], &shape, &mut fetches)
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("nothing replayed"));
        assert_eq!(replayed.through, 25);
        let key = |k: &str| {
            let keys = [Arc::new(StringArray::from(vec![k])) as ArrayRef];
            let rows = converter
                .convert_columns(&keys)
                .unwrap_or_else(|e| panic!("{e}"));
            rows.row(0).as_ref().to_vec()
        };
        let at = |k: &str, offset| site_of(replayed.in_force(&key(k), offset));
        let site = |s: &str| Some(Some(s.to_string()));
        assert_eq!(at("a", 9), None, "before the first row");
        assert_eq!(at("a", 10), site("site-1"));
        assert_eq!(at("a", 19), site("site-1"));
        assert_eq!(at("a", 20), site("site-3"));
        assert_eq!(at("b", 30), Some(None), "a miss is replayed as a miss");
        assert_eq!(at("c", 11), None, "never looked up");
    }

    #[test]
    fn a_log_of_another_shape_is_refused() {
        let fetched = sites(&["site-1"]);
        let one = row(&fetched, 0, 1);
        let logged = record(&["a"], &[1], &[Some(&one)], 1);
        let converter = converter();
        let columns = Arc::new(Schema::new(vec![Field::new(
            "max_temp",
            DataType::Float64,
            true,
        )]));
        let shape = Shape {
            converter: &converter,
            keys: 1,
            columns: &columns,
        };
        assert!(Replayed::decode(&[logged], &shape, &mut 0).is_err());
    }
}
