//! `lookup(table)`: adds the columns of a [`Lookup`] table to each row. The
//! first operator that awaits I/O: per batch it looks up each distinct key
//! once, in the cache first, the rest in one [`LookupTable::fetch`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{
    new_null_array, Array, ArrayRef, AsArray, BooleanArray, Int64Array, RecordBatch, UInt32Array,
};
use arrow::compute::{concat_batches, filter_record_batch, interleave, take};
use arrow::datatypes::{Field, Int64Type, Schema, SchemaRef};
use arrow::row::{RowConverter, Rows, SortField};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::prelude::SessionContext;
use futures::future::BoxFuture;
use tokio::sync::OnceCell;

mod cache;
mod held;
mod preload;
mod replay;

use super::expr::{compile, evaluate};
use super::{
    column_list, DeadLetter, DeadLetterReason, LogicalOperator, OpContext, OpError, Operator,
    OperatorState, StoreError, StoreRequest,
};
use crate::lookup::{Lookup, LookupTable, OnMiss};
use crate::records::OFFSET_COLUMN;
use crate::state::StoreHandle;
use crate::window::Dropped;
use crate::BoxError;
use cache::{Row, RowCache};
use held::{Held, Holding, Outcome};
use preload::{Preload, PreloadIndex};
use replay::{Enriched, ReplayWriter, Replayed};

/// Enriches rows with the columns of a lookup table.
pub(crate) struct LookupJoin {
    lookup: Arc<dyn Lookup>,
    table: OnceCell<Arc<dyn LookupTable>>,
    cache: Option<RowCache>,
    /// The whole table, when it is preloaded.
    preload: Option<Arc<Preload>>,
}

impl LookupJoin {
    pub(crate) fn new(lookup: Arc<dyn Lookup>) -> Self {
        let settings = lookup.cache();
        let preload = settings.preload_value().map(|_| Arc::default());
        let cache = RowCache::new(settings).filter(|_| preload.is_none());
        LookupJoin {
            lookup,
            table: OnceCell::new(),
            cache,
            preload,
        }
    }

    /// Opens the table and, when it is preloaded, scans it (once per
    /// application).
    async fn open(&self) -> Result<Arc<dyn LookupTable>, BoxError> {
        let table = self.lookup.open().await?;
        let refresh = self.lookup.cache().preload_value();
        if let (Some(preload), Some(refresh)) = (&self.preload, refresh) {
            preload
                .start(&table, (&self.lookup.name(), refresh))
                .await?;
        }
        Ok(table)
    }
}

impl LogicalOperator for LookupJoin {
    fn name(&self) -> String {
        format!("lookup({})", self.lookup.name())
    }

    fn connect(&self) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(async {
            self.table.get_or_try_init(|| self.open()).await?;
            Ok(())
        })
    }

    fn plan(
        &self,
        input: &SchemaRef,
        ctx: &Arc<SessionContext>,
    ) -> Result<Box<dyn Operator>, OpError> {
        let Some(table) = self.table.get() else {
            return Err(OpError::Plan(format!(
                "{} was not opened before planning (a bug in flumen)",
                self.lookup.name()
            )));
        };
        let keys = self
            .lookup
            .key()
            .iter()
            .map(|key| Ok(compile(ctx, key, input)?.0))
            .collect::<Result<Vec<_>, OpError>>()?;
        let key_types = keys
            .iter()
            .map(|k| k.data_type(input).map_err(OpError::Compile))
            .collect::<Result<Vec<_>, OpError>>()?;
        let key_fields = key_types.iter().cloned().map(SortField::new).collect();
        let converter = RowConverter::new(key_fields).map_err(OpError::eval)?;
        let on_miss = self.lookup.on_miss();
        check_on_miss(&on_miss, input)?;
        let holding = match &on_miss {
            OnMiss::Retry(retry) => Some(Holding::new(retry.clone(), Arc::clone(input))),
            _ => None,
        };
        Ok(Box::new(LookupOperator {
            name: Arc::from(self.lookup.name()),
            keys,
            converter,
            key_types,
            table: Arc::clone(table),
            cache: self.cache.clone(),
            preload: self.preload.clone(),
            preloaded: None,
            on_miss,
            holding,
            schema: enriched_schema(input, &table.columns())?,
            offset_column: offset_column(input),
            fetches: 0,
            replayed: None,
            writer: None,
        }))
    }

    fn dead_letter_topic(&self) -> Option<(String, String)> {
        let on_miss = self.lookup.on_miss();
        let topic = on_miss.dead_letter_topic()?;
        Some((topic.to_string(), "lookup-miss dead-letter".into()))
    }

    /// A store for the replay log's position (exactly-once runs log what
    /// each batch was given) and the rows `OnMiss::Retry` holds.
    fn store(&self) -> Option<StoreRequest> {
        Some(StoreRequest {
            name: None,
            default_prefix: "lookup",
            replay_log: true,
            keeps_state: matches!(self.lookup.on_miss(), OnMiss::Retry(_)),
        })
    }
}

/// Refuses a miss policy the input cannot serve: dead letters and held rows
/// need the source offsets, and retries end in another policy.
fn check_on_miss(on_miss: &OnMiss, input: &SchemaRef) -> Result<(), OpError> {
    let name = match on_miss {
        OnMiss::KeepNulls | OnMiss::Drop => return Ok(()),
        OnMiss::DeadLetter(_) => "OnMiss::DeadLetter",
        OnMiss::Retry(retry) => {
            if matches!(retry.then_value(), OnMiss::Retry(_)) {
                return Err(OpError::Plan(
                    "OnMiss::Retry(..).then(..) must keep, drop or dead-letter a row, \
                     not retry again"
                        .into(),
                ));
            }
            "OnMiss::Retry"
        }
    };
    if offset_column(input).is_none() {
        return Err(OpError::Plan(format!(
            "{name} needs the {OFFSET_COLUMN} column to find the source records, and the \
             lookup's input has none ({})",
            column_list(input)
        )));
    }
    Ok(())
}

/// The index of `input`'s `_offset` column, if it has one of type Int64.
fn offset_column(input: &SchemaRef) -> Option<usize> {
    let index = input.index_of(OFFSET_COLUMN).ok()?;
    (input.field(index).data_type() == &arrow::datatypes::DataType::Int64).then_some(index)
}

/// The input's columns, then the table's (nullable).
fn enriched_schema(input: &SchemaRef, columns: &SchemaRef) -> Result<SchemaRef, OpError> {
    let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
    for column in columns.fields() {
        if input.field_with_name(column.name()).is_ok() {
            return Err(OpError::Plan(format!(
                "the looked-up column '{}' is already a column of the stream ({}); \
                 drop or rename one of them before the lookup",
                column.name(),
                column_list(input)
            )));
        }
        fields.push(column.as_ref().clone().with_nullable(true));
    }
    Ok(Arc::new(Schema::new_with_metadata(
        fields,
        input.metadata().clone(),
    )))
}

/// The lookup of one partition.
struct LookupOperator {
    name: Arc<str>,
    keys: Vec<Arc<dyn PhysicalExpr>>,
    converter: RowConverter,
    /// The types of the key expressions.
    key_types: Vec<arrow::datatypes::DataType>,
    table: Arc<dyn LookupTable>,
    cache: Option<RowCache>,
    /// The whole table, when it is preloaded ...
    preload: Option<Arc<Preload>>,
    /// ... and this partition's index of its latest scan.
    preloaded: Option<PreloadIndex>,
    on_miss: OnMiss,
    /// The rows held for a retry (`OnMiss::Retry`).
    holding: Option<Holding>,
    schema: SchemaRef,
    /// The input's `_offset` column, which replay logs need.
    offset_column: Option<usize>,
    /// Numbers the fetches (and the batches read back from a replay log).
    fetches: u64,
    /// What an earlier run gave the records this run replays.
    replayed: Option<Replayed>,
    /// Logs the enrichment (exactly-once runs).
    writer: Option<ReplayWriter>,
}

/// The rows of a batch and what they found, for the miss policy.
struct Misses<'a> {
    /// The lookup's input.
    input: &'a RecordBatch,
    /// The row each found (`None`: a miss).
    used: &'a [Option<&'a Row>],
    /// The distinct key of each row (null: a null key).
    slots: &'a UInt32Array,
    offsets: Option<&'a Int64Array>,
}

/// The distinct keys of a batch.
struct Distinct {
    /// The key of each row, as an index into `firsts` (null: a null key).
    slots: UInt32Array,
    /// The first row of each distinct key.
    firsts: Vec<u32>,
}

impl LookupOperator {
    async fn enrich(
        &mut self,
        batch: RecordBatch,
        ctx: &mut OpContext<'_>,
    ) -> Result<RecordBatch, OpError> {
        let (keys, rows) = self.keys_of(&batch)?;
        let distinct = distinct(&keys, &rows);
        let offsets = self
            .offset_column
            .and_then(|i| batch.column(i).as_primitive_opt::<Int64Type>().cloned());
        let replayed = self.replayed_rows(&rows, &distinct, offsets.as_ref());
        let found = self.rows_of(&keys, &rows, (&distinct, &replayed)).await?;
        let used: Vec<Option<&Row>> = distinct
            .slots
            .iter()
            .enumerate()
            .map(|(r, slot)| match replayed.get(r) {
                Some(Some(row)) => row.as_ref(),
                _ => slot.and_then(|s| found[s as usize].as_ref()),
            })
            .collect();
        let columns = self.table.columns();
        if let (Some(writer), Some(offsets)) = (&mut self.writer, &offsets) {
            let enriched = Enriched {
                offsets,
                keys: &keys,
                rows: &rows,
                distinct: &distinct,
                used: &used,
            };
            writer
                .log(&enriched, |used| looked_up(&columns, used))
                .await?;
        }
        self.forget_replayed(offsets.as_ref());
        let mut all = batch.columns().to_vec();
        all.extend(looked_up(&columns, &used)?);
        let enriched =
            RecordBatch::try_new(Arc::clone(&self.schema), all).map_err(OpError::eval)?;
        let misses = Misses {
            input: &batch,
            used: &used,
            slots: &distinct.slots,
            offsets: offsets.as_ref(),
        };
        self.apply_misses(enriched, &misses, ctx)
    }

    /// The key columns of `batch` and its keys as rows.
    fn keys_of(&self, batch: &RecordBatch) -> Result<(Vec<ArrayRef>, Rows), OpError> {
        let keys = self
            .keys
            .iter()
            .map(|k| evaluate(k, batch))
            .collect::<Result<Vec<ArrayRef>, OpError>>()?;
        let rows = self
            .converter
            .convert_columns(&keys)
            .map_err(OpError::eval)?;
        Ok((keys, rows))
    }

    /// Applies the miss policy to the rows that found no row: keeps them
    /// with nulls, holds them for a retry, or drops them (and sends their
    /// source records to the dead-letter topic).
    fn apply_misses(
        &mut self,
        enriched: RecordBatch,
        misses: &Misses<'_>,
        ctx: &mut OpContext<'_>,
    ) -> Result<RecordBatch, OpError> {
        if self.on_miss == OnMiss::KeepNulls || misses.used.iter().all(Option::is_some) {
            return Ok(enriched);
        }
        let mut keep: Vec<bool> = misses.used.iter().map(Option::is_some).collect();
        let offset = |r: usize| {
            misses
                .offsets
                .and_then(|o| o.is_valid(r).then(|| o.value(r)))
        };
        let mut held = Vec::new();
        let mut dropped = 0;
        for (r, kept) in keep.iter_mut().enumerate().filter(|(_, kept)| !**kept) {
            // A null key is never found: no retry helps.
            if self.holding.is_some() && offset(r).is_some() && misses.slots.is_valid(r) {
                held.push(r as u32);
            } else {
                *kept = self.miss_now(offset(r), None, ctx);
                dropped += usize::from(!*kept);
            }
        }
        if let (Some(holding), Some(offsets)) = (&mut self.holding, misses.offsets) {
            let copies = self.on_miss.dead_letter_topic().is_some();
            let mut sources = |o: i64| copies.then(|| ctx.source_record(o)).flatten();
            holding.hold(misses.input, (&held, offsets), &mut sources)?;
        }
        self.count_dropped(dropped);
        filter_record_batch(&enriched, &BooleanArray::from(keep)).map_err(OpError::eval)
    }

    /// The last resort for a row not found (`held`: after being held):
    /// whether it is kept with nulls; a dropped row's source record at
    /// `offset` goes to the dead-letter topic, if there is one.
    fn miss_now(
        &self,
        offset: Option<i64>,
        held: Option<Box<Held>>,
        ctx: &mut OpContext<'_>,
    ) -> bool {
        let topic = match self.on_miss.last_resort() {
            OnMiss::KeepNulls | OnMiss::Retry(_) => return true,
            OnMiss::Drop => return false,
            OnMiss::DeadLetter(topic) => topic,
        };
        let Some(offset) = offset else {
            return false;
        };
        let lookup = Arc::clone(&self.name);
        let (reason, copy) = match held {
            None => (DeadLetterReason::LookupMiss { lookup }, None),
            Some(held) => {
                let held_ms =
                    u64::try_from(crate::runtime::now_ms() - held.arrived_ms).unwrap_or(0);
                let reason = DeadLetterReason::LookupMissAfterRetries { lookup, held_ms };
                let Some(copy) = held.source else {
                    tracing::warn!(lookup = %self.name, offset, "a held row has no copy of its source record to dead-letter; dropped");
                    return false;
                };
                (reason, Some(Box::new(copy)))
            }
        };
        ctx.dead_letter(DeadLetter {
            topic: Arc::from(topic.as_str()),
            offset,
            reason,
            copy,
        });
        false
    }

    fn count_dropped(&self, dropped: usize) {
        if dropped > 0 {
            metrics::counter!("flumen_lookup_dropped_total", "lookup" => self.name.to_string())
                .increment(dropped as u64);
        }
    }

    /// Looks the held rows up again when their retry is due: returns those
    /// found, enriched, and those whose time is up and are kept with nulls.
    async fn retry_held(
        &mut self,
        ctx: &mut OpContext<'_>,
    ) -> Result<Option<RecordBatch>, OpError> {
        let Some(Some(retry)) = self.holding.as_mut().map(Holding::take_due).transpose()? else {
            return Ok(None);
        };
        let (keys, rows) = self.keys_of(&retry.rows)?;
        let distinct = distinct(&keys, &rows);
        let found = self.look_up_again(&keys, &rows, &distinct.firsts).await?;
        let used: Vec<Option<&Row>> = distinct
            .slots
            .iter()
            .map(|slot| slot.and_then(|s| found[s as usize].as_ref()))
            .collect();
        metrics::counter!("flumen_lookup_retried_total", "lookup" => self.name.to_string())
            .increment(retry.offsets.len() as u64);
        let mut keep = Vec::with_capacity(used.len());
        let mut dropped = 0;
        for (offset, row) in retry.offsets.iter().zip(&used) {
            let outcome = match &mut self.holding {
                Some(holding) => holding.settle(*offset, row.is_some()),
                None => Outcome::Held,
            };
            keep.push(match outcome {
                Outcome::Found => true,
                Outcome::Held => false,
                Outcome::Expired(held) => {
                    let kept = self.miss_now(Some(*offset), Some(held), ctx);
                    dropped += usize::from(!kept);
                    kept
                }
            });
        }
        self.count_dropped(dropped);
        self.held_gauge();
        let mut all = retry.rows.columns().to_vec();
        all.extend(looked_up(&self.table.columns(), &used)?);
        let released =
            RecordBatch::try_new(Arc::clone(&self.schema), all).map_err(OpError::eval)?;
        filter_record_batch(&released, &BooleanArray::from(keep))
            .map(Some)
            .map_err(OpError::eval)
    }

    /// The row of each distinct key (first rows `firsts`) of held rows: in
    /// the latest scan of a preloaded table, else from the table itself
    /// (not the cache, which may still hold the miss; it gets the result).
    async fn look_up_again(
        &mut self,
        keys: &[ArrayRef],
        rows: &Rows,
        firsts: &[u32],
    ) -> Result<Vec<Option<Row>>, OpError> {
        if firsts.is_empty() {
            return Ok(Vec::new());
        }
        if self.preload.is_some() {
            return self.preloaded_rows(rows, firsts, &vec![true; firsts.len()]);
        }
        let found = self
            .fetch(keys, &UInt32Array::from(firsts.to_vec()))
            .await?;
        if let Some(cache) = &self.cache {
            for (&first, row) in firsts.iter().zip(&found) {
                cache.insert(rows.row(first as usize).as_ref(), row.clone());
            }
        }
        Ok(found)
    }

    fn held_gauge(&self) {
        if let Some(holding) = &self.holding {
            metrics::gauge!("flumen_lookup_held", "lookup" => self.name.to_string())
                .set(holding.len() as f64);
        }
    }

    /// For each row an earlier run enriched, the row it gave (`Some(None)`:
    /// none found); empty when no row is replayed.
    fn replayed_rows(
        &self,
        rows: &Rows,
        distinct: &Distinct,
        offsets: Option<&Int64Array>,
    ) -> Vec<Option<Option<Row>>> {
        let (Some(replayed), Some(offsets)) = (&self.replayed, offsets) else {
            return Vec::new();
        };
        distinct
            .slots
            .iter()
            .enumerate()
            .map(|(r, slot)| {
                let offset = offsets.is_valid(r).then(|| offsets.value(r));
                let offset = offset.filter(|o| *o <= replayed.through)?;
                slot?;
                replayed.in_force(rows.row(r).as_ref(), offset).cloned()
            })
            .collect()
    }

    /// Drops what earlier runs gave once the stream has passed it.
    fn forget_replayed(&mut self, offsets: Option<&Int64Array>) {
        let last = offsets.and_then(|o| o.iter().flatten().max());
        if let (Some(replayed), Some(last)) = (&self.replayed, last) {
            if last >= replayed.through {
                tracing::info!(lookup = %self.name, through = replayed.through, "replayed the enrichment of the previous run");
                self.replayed = None;
            }
        }
    }

    /// The row of each distinct key some row of the batch needs afresh
    /// (not `replayed`): from the cache, else from the table; `None` for
    /// the others.
    async fn rows_of(
        &mut self,
        keys: &[ArrayRef],
        rows: &Rows,
        (distinct, replayed): (&Distinct, &[Option<Option<Row>>]),
    ) -> Result<Vec<Option<Row>>, OpError> {
        let mut wanted = vec![replayed.is_empty(); distinct.firsts.len()];
        if !replayed.is_empty() {
            for (r, slot) in distinct.slots.iter().enumerate() {
                if let (Some(slot), None) = (slot, &replayed[r]) {
                    wanted[slot as usize] = true;
                }
            }
        }
        if self.preload.is_some() {
            return self.preloaded_rows(rows, &distinct.firsts, &wanted);
        }
        let mut found = vec![None; distinct.firsts.len()];
        let mut missing = Vec::new();
        for (slot, &first) in distinct.firsts.iter().enumerate() {
            if !wanted[slot] {
                continue;
            }
            let key = rows.row(first as usize);
            match self.cache.as_ref().and_then(|c| c.get(key.as_ref())) {
                Some(row) => found[slot] = row,
                None => missing.push((slot, first)),
            }
        }
        let label = || ("lookup", self.name.to_string());
        let hits = (wanted.iter().filter(|w| **w).count() - missing.len()) as u64;
        metrics::counter!("flumen_lookup_hits_total", &[label()]).increment(hits);
        if missing.is_empty() {
            return Ok(found);
        }
        metrics::counter!("flumen_lookup_misses_total", &[label()]).increment(missing.len() as u64);
        let indices = UInt32Array::from_iter_values(missing.iter().map(|(_, first)| *first));
        let fetched = self.fetch(keys, &indices).await?;
        for ((slot, first), row) in missing.into_iter().zip(fetched) {
            if let Some(cache) = &self.cache {
                cache.insert(rows.row(first as usize).as_ref(), row.clone());
            }
            found[slot] = row;
        }
        Ok(found)
    }

    /// The row of each `wanted` distinct key (first rows `firsts`) in the
    /// latest scan of a preloaded table.
    fn preloaded_rows(
        &mut self,
        rows: &Rows,
        firsts: &[u32],
        wanted: &[bool],
    ) -> Result<Vec<Option<Row>>, OpError> {
        let latest = self.preload.as_ref().and_then(|p| p.latest());
        let Some(latest) = latest else {
            return Err(OpError::eval(crate::Error::Internal(
                "a preloaded lookup table was not scanned",
            )));
        };
        if self.preloaded.as_ref().map(|p| p.generation) != Some(latest.generation()) {
            self.fetches += 1;
            let key = (&self.converter, self.key_types.as_slice());
            self.preloaded = Some(PreloadIndex::build(&latest, key, self.fetches)?);
        }
        let Some(index) = &self.preloaded else {
            return Err(OpError::eval(crate::Error::Internal("no preload index")));
        };
        let found: Vec<Option<Row>> = firsts
            .iter()
            .zip(wanted)
            .map(|(&first, &wanted)| {
                wanted
                    .then(|| index.get(rows.row(first as usize).as_ref()))
                    .flatten()
            })
            .collect();
        let hits = found.iter().filter(|r| r.is_some()).count() as u64;
        metrics::counter!("flumen_lookup_hits_total", "lookup" => self.name.to_string())
            .increment(hits);
        Ok(found)
    }

    /// Fetches the keys of rows `indices` of `keys` from the table: the row
    /// of each, `None` when not found.
    async fn fetch(
        &mut self,
        keys: &[ArrayRef],
        indices: &UInt32Array,
    ) -> Result<Vec<Option<Row>>, OpError> {
        let wanted = keys
            .iter()
            .enumerate()
            .map(|(i, k)| Ok((format!("k{i}"), take(k, indices, None)?)))
            .collect::<Result<Vec<_>, arrow::error::ArrowError>>()
            .and_then(RecordBatch::try_from_iter)
            .map_err(OpError::eval)?;
        let started = Instant::now();
        let fetched = self.table.fetch(wanted).await.map_err(OpError::Eval)?;
        metrics::histogram!("flumen_lookup_fetch_seconds", "lookup" => self.name.to_string())
            .record(started.elapsed().as_secs_f64());
        let asked = indices.len();
        if fetched.rows.num_rows() != asked || fetched.found.len() != asked {
            return Err(OpError::eval(crate::Error::Internal(
                "a lookup table returned another number of rows than keys",
            )));
        }
        self.fetches += 1;
        let fetch = self.fetches;
        let found = |i: usize| fetched.found.is_valid(i) && fetched.found.value(i);
        Ok((0..asked)
            .map(|i| {
                found(i).then(|| Row {
                    batch: fetched.rows.clone(),
                    index: i as u32,
                    fetch,
                })
            })
            .collect())
    }
}

/// The looked-up `columns` of rows that took the rows `used` (nulls where
/// `None`: a null key or a key not found), assembled with one interleave
/// per column.
fn looked_up(columns: &SchemaRef, used: &[Option<&Row>]) -> Result<Vec<ArrayRef>, OpError> {
    // The batches the rows come from, each once; the null row after them.
    let mut sources: Vec<&RecordBatch> = Vec::new();
    let mut source_of: HashMap<u64, usize> = HashMap::new();
    let null_row = |sources: &Vec<&RecordBatch>| (sources.len(), 0);
    let mut indices = Vec::with_capacity(used.len());
    for row in used {
        indices.push(row.map(|row| {
            let source = *source_of.entry(row.fetch).or_insert_with(|| {
                sources.push(&row.batch);
                sources.len() - 1
            });
            (source, row.index as usize)
        }));
    }
    let null = null_row(&sources);
    let indices: Vec<(usize, usize)> = indices.into_iter().map(|i| i.unwrap_or(null)).collect();
    let mut out = Vec::with_capacity(columns.fields().len());
    for (c, field) in columns.fields().iter().enumerate() {
        let null = new_null_array(field.data_type(), 1);
        let mut parts: Vec<&dyn Array> = sources.iter().map(|b| b.column(c).as_ref()).collect();
        parts.push(null.as_ref());
        out.push(interleave(&parts, &indices).map_err(OpError::eval)?);
    }
    Ok(out)
}

/// The distinct non-null keys of `rows` (`keys`: the key columns).
fn distinct(keys: &[ArrayRef], rows: &Rows) -> Distinct {
    let mut slot_of = HashMap::new();
    let mut firsts = Vec::new();
    let slots = (0..rows.num_rows())
        .map(|r| {
            if keys.iter().any(|k| k.is_null(r)) {
                return None;
            }
            let next = firsts.len() as u32;
            let slot = *slot_of.entry(rows.row(r)).or_insert(next);
            if slot == next {
                firsts.push(r as u32);
            }
            Some(slot)
        })
        .collect();
    Distinct { slots, firsts }
}

impl Operator for LookupOperator {
    fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn process<'a>(
        &'a mut self,
        batch: RecordBatch,
        ctx: &'a mut OpContext,
    ) -> BoxFuture<'a, Result<RecordBatch, OpError>> {
        Box::pin(async move {
            let released = self.retry_held(ctx).await?;
            let enriched = self.enrich(batch, ctx).await?;
            match released {
                Some(released) if released.num_rows() > 0 => {
                    concat_batches(&self.schema, [&released, &enriched]).map_err(OpError::eval)
                }
                _ => Ok(enriched),
            }
        })
    }

    fn due(&self) -> Option<Instant> {
        self.holding.as_ref().and_then(Holding::due)
    }

    fn state(&mut self) -> Option<&mut dyn OperatorState> {
        Some(self)
    }
}

impl OperatorState for LookupOperator {
    /// Loads the rows held for a retry, and opens the replay log when the
    /// store keeps one.
    fn open(&mut self, store: StoreHandle) -> Result<(), StoreError> {
        if let Some(holding) = &mut self.holding {
            holding.open(store.clone())?;
            self.held_gauge();
        }
        self.open_replay_log(store);
        Ok(())
    }

    fn dropped(&self) -> Dropped {
        Dropped::default()
    }
}

impl LookupOperator {
    /// Opens the replay log, when the store keeps one, and reads back what
    /// the previous run gave the records this run will replay.
    fn open_replay_log(&mut self, store: StoreHandle) {
        let Some(log) = store.replay_log().cloned() else {
            return;
        };
        if self.offset_column.is_none() {
            tracing::warn!(
                lookup = %self.name,
                "the lookup's input has no _offset column: its enrichment is not replay-stable"
            );
            return;
        }
        let records = log.take_recovered();
        let columns = self.table.columns();
        let shape = replay::Shape {
            converter: &self.converter,
            keys: self.keys.len(),
            columns: &columns,
        };
        self.replayed = match Replayed::decode(&records, &shape, &mut self.fetches) {
            Ok(replayed) => replayed,
            Err(error) => {
                tracing::warn!(
                    lookup = %self.name, %error,
                    "the replay log cannot be read back; records the previous run processed \
                     without committing are looked up afresh"
                );
                None
            }
        };
        self.writer = Some(ReplayWriter::new(log, store));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use arrow::array::{AsArray, StringArray};
    use arrow::datatypes::DataType;

    use super::*;
    use crate::expr::col;
    use crate::lookup::{Fetched, LookupCache, Scanned};
    use flumen_kafka::RawBatch;
    use std::time::Duration;

    /// Devices and their sites; counts the keys it is asked for.
    struct Sites {
        asked: Arc<AtomicUsize>,
        cache: LookupCache,
        on_miss: OnMiss,
    }

    /// Scans made of the table so far (the sites of a scan end in `-v<n>`).
    static SCANS: AtomicUsize = AtomicUsize::new(0);
    /// Whether the rows of devices `late-*` are in the table yet.
    static LATE_ARRIVED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

    impl LookupTable for Sites {
        fn columns(&self) -> SchemaRef {
            Arc::new(Schema::new(vec![Field::new("site", DataType::Utf8, true)]))
        }

        fn fetch(&self, keys: RecordBatch) -> BoxFuture<'_, Result<Fetched, BoxError>> {
            self.asked.fetch_add(keys.num_rows(), Ordering::SeqCst);
            let devices = keys.column(0).as_string::<i32>();
            let sites: StringArray = devices
                .iter()
                .map(|d| {
                    let late = LATE_ARRIVED.load(Ordering::SeqCst);
                    d.filter(|d| d.starts_with("dev") || (late && d.starts_with("late")))
                        .map(|d| format!("site-of-{d}"))
                })
                .collect();
            let found = sites.iter().map(|s| Some(s.is_some())).collect();
            let rows = RecordBatch::try_new(self.columns(), vec![Arc::new(sites)]);
            Box::pin(async move { Ok(Fetched { rows: rows?, found }) })
        }

        fn scan(&self) -> BoxFuture<'_, Result<Option<Scanned>, BoxError>> {
            let version = SCANS.fetch_add(1, Ordering::SeqCst) + 1;
            let devices: Vec<String> = (0..5).map(|n| format!("dev-{n}")).collect();
            let sites: Vec<String> = devices
                .iter()
                .map(|d| format!("site-of-{d}-v{version}"))
                .collect();
            let keys = RecordBatch::try_from_iter([(
                "device_id",
                Arc::new(StringArray::from(devices)) as ArrayRef,
            )]);
            let rows =
                RecordBatch::try_new(self.columns(), vec![Arc::new(StringArray::from(sites))]);
            Box::pin(async move {
                Ok(Some(Scanned {
                    keys: keys?,
                    rows: rows?,
                }))
            })
        }
    }

    impl Lookup for Sites {
        fn name(&self) -> String {
            "sites".into()
        }
        fn key(&self) -> Vec<Expr> {
            vec![col("device")]
        }
        fn cache(&self) -> LookupCache {
            self.cache
        }
        fn on_miss(&self) -> OnMiss {
            self.on_miss.clone()
        }
        fn open(&self) -> BoxFuture<'_, Result<Arc<dyn LookupTable>, BoxError>> {
            let table = Sites {
                asked: Arc::clone(&self.asked),
                cache: self.cache,
                on_miss: self.on_miss.clone(),
            };
            Box::pin(async move { Ok(Arc::new(table) as Arc<dyn LookupTable>) })
        }
    }

    use datafusion::logical_expr::Expr;

    fn devices(names: &[Option<&str>]) -> RecordBatch {
        let column = Arc::new(StringArray::from(names.to_vec()));
        RecordBatch::try_from_iter_with_nullable([("device", column as ArrayRef, true)])
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// A planned lookup of [`Sites`], and the count of keys it fetched.
    async fn planned(cache: LookupCache, on_miss: OnMiss) -> (Box<dyn Operator>, Arc<AtomicUsize>) {
        let asked = Arc::new(AtomicUsize::new(0));
        let sites = Sites {
            asked: Arc::clone(&asked),
            cache,
            on_miss,
        };
        let join = LookupJoin::new(Arc::new(sites));
        join.connect().await.unwrap_or_else(|e| panic!("{e}"));
        let schema = devices(&[]).schema();
        let op = join
            .plan(&schema, &Arc::new(SessionContext::new()))
            .unwrap_or_else(|e| panic!("{e}"));
        (op, asked)
    }

    async fn sites(op: &mut Box<dyn Operator>, names: &[Option<&str>]) -> Vec<Option<String>> {
        let out = op
            .process(devices(names), &mut OpContext::default())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let sites = out
            .column_by_name("site")
            .map(|c| c.as_string::<i32>().clone());
        let sites = sites.unwrap_or_else(|| panic!("no site column"));
        sites.iter().map(|s| s.map(str::to_string)).collect()
    }

    #[tokio::test]
    async fn each_distinct_key_is_fetched_once_and_rows_keep_their_order() {
        let (mut op, asked) = planned(LookupCache::default(), OnMiss::KeepNulls).await;
        let names = [
            Some("dev-2"),
            Some("dev-1"),
            None,
            Some("dev-2"),
            Some("nope"),
        ];
        let got = sites(&mut op, &names).await;
        let site = |d: &str| Some(format!("site-of-{d}"));
        assert_eq!(
            got,
            vec![site("dev-2"), site("dev-1"), None, site("dev-2"), None]
        );
        assert_eq!(asked.load(Ordering::SeqCst), 3, "dev-2, dev-1 and nope");
        // Found rows and misses are cached.
        sites(&mut op, &names).await;
        assert_eq!(asked.load(Ordering::SeqCst), 3);
        assert!(op.output_schema().field(1).is_nullable());
    }

    #[tokio::test]
    async fn rows_and_misses_live_for_their_own_time() {
        let cache = LookupCache::default()
            .ttl(Duration::ZERO)
            .miss_ttl(Duration::from_secs(3600));
        let (mut op, asked) = planned(cache, OnMiss::KeepNulls).await;
        sites(&mut op, &[Some("dev-1"), Some("nope")]).await;
        sites(&mut op, &[Some("dev-1"), Some("nope")]).await;
        // dev-1 expired at once and was fetched again; the miss was not.
        assert_eq!(asked.load(Ordering::SeqCst), 3);
        let (mut op, asked) = planned(LookupCache::disabled(), OnMiss::KeepNulls).await;
        sites(&mut op, &[Some("dev-1")]).await;
        sites(&mut op, &[Some("dev-1")]).await;
        assert_eq!(asked.load(Ordering::SeqCst), 2, "no cache");
    }

    #[tokio::test]
    async fn a_preloaded_table_is_never_asked_for_keys_and_is_refreshed() {
        let cache = LookupCache::default().preload(Duration::from_millis(100));
        let (mut op, asked) = planned(cache, OnMiss::KeepNulls).await;
        let got = sites(&mut op, &[Some("dev-1"), Some("nope"), None]).await;
        let first = got[0].clone().unwrap_or_default();
        assert!(first.starts_with("site-of-dev-1-v"), "{first}");
        assert_eq!(got[1..], [None, None], "a key not in the scan, a null key");
        // The refresh scans the table again; the partition indexes the new scan.
        let deadline = Instant::now() + Duration::from_secs(10);
        while sites(&mut op, &[Some("dev-1")]).await[0].as_deref() == Some(first.as_str()) {
            assert!(Instant::now() < deadline, "no refresh within 10 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(asked.load(Ordering::SeqCst), 0, "no key was fetched");
    }

    #[tokio::test]
    async fn misses_and_null_keys_are_dropped_when_asked() {
        let (mut op, _) = planned(LookupCache::default(), OnMiss::Drop).await;
        let got = sites(&mut op, &[Some("nope"), Some("dev-1"), None]).await;
        assert_eq!(got, vec![Some("site-of-dev-1".to_string())]);
    }

    #[tokio::test]
    async fn misses_go_to_the_dead_letter_topic_with_their_source_offsets() {
        let on_miss = OnMiss::DeadLetter("misses".into());
        let join = LookupJoin::new(Arc::new(Sites {
            asked: Arc::default(),
            cache: LookupCache::default(),
            on_miss: on_miss.clone(),
        }));
        join.connect().await.unwrap_or_else(|e| panic!("{e}"));
        let ctx = Arc::new(SessionContext::new());
        let refused = join.plan(&devices(&[]).schema(), &ctx).err();
        let refused = refused.map(|e| e.to_string()).unwrap_or_default();
        assert!(refused.contains("needs the _offset column"), "{refused}");
        assert_eq!(
            join.dead_letter_topic().map(|(topic, _)| topic),
            Some("misses".to_string())
        );

        let names = Arc::new(StringArray::from(vec![Some("nope"), Some("dev-1"), None]));
        let offsets = Arc::new(arrow::array::Int64Array::from(vec![7, 8, 9]));
        let batch = RecordBatch::try_from_iter_with_nullable([
            ("device", names as ArrayRef, true),
            (OFFSET_COLUMN, offsets as ArrayRef, false),
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        let mut op = join
            .plan(batch.schema_ref(), &ctx)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut context = OpContext::default();
        let out = op
            .process(batch, &mut context)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out.num_rows(), 1, "only dev-1 is kept");
        let letters = context.take_dead_letters();
        let offsets: Vec<i64> = letters.iter().map(|l| l.offset).collect();
        assert_eq!(offsets, vec![7, 9], "the miss and the null key");
        let headers = letters[0].reason.headers();
        assert!(headers.contains(&("flumen.error.kind", "lookup-miss".to_string())));
    }

    #[tokio::test]
    async fn a_looked_up_column_may_not_shadow_one_of_the_stream() {
        let (_, asked) = planned(LookupCache::default(), OnMiss::KeepNulls).await;
        let join = LookupJoin::new(Arc::new(Sites {
            asked,
            cache: LookupCache::default(),
            on_miss: OnMiss::KeepNulls,
        }));
        join.connect().await.unwrap_or_else(|e| panic!("{e}"));
        let input = RecordBatch::try_from_iter([
            ("device", Arc::new(StringArray::from(vec!["a"])) as ArrayRef),
            ("site", Arc::new(StringArray::from(vec!["b"])) as ArrayRef),
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        let error = join
            .plan(&input.schema(), &Arc::new(SessionContext::new()))
            .err()
            .map(|e| e.to_string());
        let error = error.unwrap_or_default();
        assert!(error.contains("'site' is already a column"), "{error}");
    }

    /// Readings of `names` at offsets from 7, as a batch and as source records.
    fn readings(names: &[&str]) -> (RecordBatch, RawBatch) {
        let mut raw = RawBatch::new(Arc::from("readings"), 0);
        let offsets: Vec<i64> = (7..).take(names.len()).collect();
        for (name, offset) in names.iter().zip(&offsets) {
            raw.push(Some(name.as_bytes()), Some(b"{}"), Some(1), *offset, None);
        }
        let batch = RecordBatch::try_from_iter([
            (
                "device",
                Arc::new(StringArray::from(names.to_vec())) as ArrayRef,
            ),
            (
                OFFSET_COLUMN,
                Arc::new(Int64Array::from(offsets)) as ArrayRef,
            ),
        ]);
        (batch.unwrap_or_else(|e| panic!("{e}")), raw)
    }

    /// A lookup of [`Sites`] planned for [`readings`], opened on `state`.
    async fn retrying(on_miss: OnMiss, state: &crate::state::PartitionState) -> Box<dyn Operator> {
        let join = LookupJoin::new(Arc::new(Sites {
            asked: Arc::default(),
            cache: LookupCache::default(),
            on_miss,
        }));
        join.connect().await.unwrap_or_else(|e| panic!("{e}"));
        let schema = readings(&[]).0.schema();
        let mut op = join
            .plan(&schema, &Arc::new(SessionContext::new()))
            .unwrap_or_else(|e| panic!("{e}"));
        let opened = op.state().map(|s| s.open(state.handle("lookup-0")));
        assert!(matches!(opened, Some(Ok(()))), "the store opens");
        op
    }

    /// Runs `op` on `batch` (an idle tick when empty) once it is due.
    async fn when_due(
        op: &mut Box<dyn Operator>,
        batch: RecordBatch,
        raw: Option<&RawBatch>,
    ) -> (RecordBatch, Vec<DeadLetter>) {
        if let Some(due) = op.due() {
            tokio::time::sleep_until(due.into()).await;
        }
        let mut ctx = OpContext::new(None, raw);
        let out = op
            .process(batch, &mut ctx)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        (out, ctx.take_dead_letters())
    }

    fn column(batch: &RecordBatch, name: &str) -> Vec<String> {
        let column = batch
            .column_by_name(name)
            .map(|c| arrow::compute::cast(c, &DataType::Utf8));
        let column = column
            .and_then(Result::ok)
            .unwrap_or_else(|| panic!("no column {name}"));
        column
            .as_string::<i32>()
            .iter()
            .map(|v| v.unwrap_or("null").to_string())
            .collect()
    }

    #[tokio::test]
    async fn a_held_miss_survives_a_restart_and_comes_out_once_its_row_arrives() {
        use flumen_state::{MemoryStore, StateStore};
        let local: Arc<dyn StateStore> = Arc::new(MemoryStore::default());
        let state = crate::state::PartitionState::in_memory(Arc::clone(&local), 0);
        let state = state.unwrap_or_else(|e| panic!("{e}"));
        let on_miss = OnMiss::Retry(
            crate::lookup::RetryMisses::within(Duration::from_secs(600))
                .every(Duration::from_millis(10)),
        );
        let mut op = retrying(on_miss.clone(), &state).await;
        assert_eq!(op.due(), None, "nothing held");
        let (batch, raw) = readings(&["late-1", "dev-1"]);
        let (out, _) = when_due(&mut op, batch, Some(&raw)).await;
        assert_eq!(column(&out, "device"), ["dev-1"], "late-1 is held");
        assert!(op.due().is_some(), "a held row asks to run without input");
        let (out, _) = when_due(&mut op, readings(&[]).0, None).await;
        assert_eq!(out.num_rows(), 0, "still not in the table");
        // The batch commits; a new run (an empty memory) loads the held row.
        let committed = state.seal(9);
        state.commit(committed, 9).unwrap_or_else(|e| panic!("{e}"));
        let state = crate::state::PartitionState::in_memory(Arc::clone(&local), 0);
        let state = state.unwrap_or_else(|e| panic!("{e}"));
        let mut op = retrying(on_miss.clone(), &state).await;
        assert!(
            op.due().is_some(),
            "the restarted lookup retries what was held"
        );
        LATE_ARRIVED.store(true, Ordering::SeqCst);
        let (batch, raw) = readings(&["dev-2"]);
        let (out, _) = when_due(&mut op, batch, Some(&raw)).await;
        assert_eq!(
            column(&out, "device"),
            ["late-1", "dev-2"],
            "the held row first"
        );
        assert_eq!(column(&out, "site"), ["site-of-late-1", "site-of-dev-2"]);
        assert_eq!(column(&out, OFFSET_COLUMN), ["7", "7"]);
        assert_eq!(op.due(), None, "nothing held any more");
        let committed = state.seal(8);
        state.commit(committed, 8).unwrap_or_else(|e| panic!("{e}"));
        let state = crate::state::PartitionState::in_memory(local, 0);
        let reopened = retrying(on_miss, &state.unwrap_or_else(|e| panic!("{e}"))).await;
        assert_eq!(reopened.due(), None, "the released row left the store");
        // The next row held waits a whole interval, not the old schedule.
        let before = Instant::now();
        let (batch, raw) = readings(&["nope-1"]);
        let mut ctx = OpContext::new(None, Some(&raw));
        let out = op.process(batch, &mut ctx).await;
        assert_eq!(out.map(|o| o.num_rows()).ok(), Some(0));
        let due = op.due().map(|due| due.duration_since(before));
        assert!(due >= Some(Duration::from_millis(10)), "{due:?}");
    }

    #[tokio::test]
    async fn a_miss_still_missing_after_its_time_goes_to_the_dead_letter_topic_as_it_came() {
        let state = crate::state::PartitionState::ephemeral(0);
        let on_miss = OnMiss::Retry(
            crate::lookup::RetryMisses::within(Duration::ZERO)
                .every(Duration::from_millis(10))
                .then(OnMiss::DeadLetter("unknown".into())),
        );
        let mut op = retrying(on_miss, &state).await;
        let (batch, raw) = readings(&["nope-1", "dev-1", "nope-2"]);
        let (out, letters) = when_due(&mut op, batch, Some(&raw)).await;
        assert_eq!(column(&out, "device"), ["dev-1"]);
        assert!(letters.is_empty(), "held first");
        let (out, letters) = when_due(&mut op, readings(&[]).0, None).await;
        assert_eq!(out.num_rows(), 0);
        let offsets: Vec<i64> = letters.iter().map(|l| l.offset).collect();
        assert_eq!(offsets, [7, 9]);
        let copy = letters[1]
            .copy
            .as_deref()
            .map(|c| (c.offset, c.key.clone()));
        assert_eq!(
            copy,
            Some((9, Some(b"nope-2".to_vec()))),
            "the source record travels with it"
        );
        let reason = letters[0].reason.headers();
        assert!(
            reason
                .iter()
                .any(|(k, v)| *k == "flumen.error.reason" && v.contains("looked up again")),
            "{reason:?}"
        );
        assert_eq!(op.due(), None);
    }

    #[tokio::test]
    async fn retries_need_offsets_and_end_in_another_policy() {
        let join = |then: OnMiss| {
            LookupJoin::new(Arc::new(Sites {
                asked: Arc::default(),
                cache: LookupCache::default(),
                on_miss: OnMiss::Retry(
                    crate::lookup::RetryMisses::within(Duration::from_secs(1)).then(then),
                ),
            }))
        };
        let refused = |join: LookupJoin, schema: SchemaRef| async move {
            join.connect().await.unwrap_or_else(|e| panic!("{e}"));
            let ctx = Arc::new(SessionContext::new());
            join.plan(&schema, &ctx)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        let error = refused(join(OnMiss::Drop), devices(&[]).schema()).await;
        assert!(
            error.contains("OnMiss::Retry needs the _offset column"),
            "{error}"
        );
        let again = OnMiss::retry_for(Duration::from_secs(1));
        let error = refused(join(again), readings(&[]).0.schema()).await;
        assert!(error.contains("not retry again"), "{error}");
        let dlq = join(OnMiss::DeadLetter("unknown".into())).dead_letter_topic();
        assert_eq!(dlq.map(|(topic, _)| topic), Some("unknown".to_string()));
    }
}
