//! Rows held by `OnMiss::Retry`: a row whose key was not found waits, in
//! memory and in the lookup's store (so its offset can be committed and a
//! restart keeps it), until a retry finds its key or its time is up.
//!
//! A held row is stored under `h<offset>` (big-endian) as JSON: when it
//! arrived (wall clock, ms), the row as an Arrow IPC stream (base64), and a
//! copy of its source record when it may end in a dead-letter topic.

use std::collections::BTreeMap;
use std::time::Instant;

use arrow::array::{Int64Array, RecordBatch, UInt32Array};
use arrow::compute::{concat_batches, take_record_batch};
use arrow::datatypes::SchemaRef;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use serde::{Deserialize, Serialize};

use crate::lookup::RetryMisses;
use crate::operators::{OpError, SourceRecord, StoreError};
use crate::runtime::now_ms;
use crate::state::StoreHandle;
use crate::window::CorruptState;

/// The key prefix of held rows (and the one after it, to end a range).
const PREFIX: &[u8] = b"h";
const PREFIX_END: &[u8] = b"i";

/// One held row.
#[derive(Debug, Clone)]
pub(super) struct Held {
    /// The row, with the lookup's input schema.
    pub(super) row: RecordBatch,
    /// When it arrived (wall clock, ms).
    pub(super) arrived_ms: i64,
    /// Its source record, when it may be dead-lettered.
    pub(super) source: Option<SourceRecord>,
}

/// How a held row is stored.
#[derive(Serialize, Deserialize)]
struct Stored {
    arrived_ms: i64,
    /// The row as an Arrow IPC stream, base64.
    row: String,
    source: Option<SourceRecord>,
}

/// The rows a lookup holds, by source offset.
pub(super) struct Holding {
    policy: RetryMisses,
    schema: SchemaRef,
    held: BTreeMap<i64, Held>,
    next_retry: Option<Instant>,
    store: Option<StoreHandle>,
}

/// The held rows a retry looks up again.
pub(super) struct Retry {
    pub(super) offsets: Vec<i64>,
    pub(super) rows: RecordBatch,
}

/// What a retry decided for each held row it looked up.
pub(super) enum Outcome {
    /// Found: the row goes on, enriched.
    Found,
    /// Not found, and its time is up: the last resort applies.
    Expired(Box<Held>),
    /// Not found yet: held on.
    Held,
}

impl Holding {
    /// Holds nothing yet; rows of `schema` (the lookup's input).
    pub(super) fn new(policy: RetryMisses, schema: SchemaRef) -> Self {
        Holding {
            policy,
            schema,
            held: BTreeMap::new(),
            next_retry: None,
            store: None,
        }
    }

    /// Loads the rows `store` holds (a restart), and keeps the store.
    pub(super) fn open(&mut self, store: StoreHandle) -> Result<(), StoreError> {
        self.held.clear();
        for (key, value) in store.range(PREFIX, PREFIX_END)? {
            let offset = key
                .get(PREFIX.len()..)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(i64::from_be_bytes)
                .ok_or_else(|| CorruptState(format!("held-row key {key:?} is malformed")))?;
            let held = decode(&value, offset)?;
            if held.row.schema_ref() != &self.schema {
                return Err(CorruptState(format!(
                    "the row held at offset {offset} has the columns {}, the lookup's input {}",
                    crate::operators::column_list(held.row.schema_ref()),
                    crate::operators::column_list(&self.schema)
                ))
                .into());
            }
            self.held.insert(offset, held);
        }
        if !self.held.is_empty() {
            tracing::info!(
                store = store.name(),
                rows = self.held.len(),
                "lookup misses held by the previous run are retried"
            );
            self.next_retry = Some(Instant::now());
        }
        self.store = Some(store);
        Ok(())
    }

    /// Holds rows `indices` of `batch` (source offsets `offsets`, sources
    /// `sources` where kept).
    pub(super) fn hold(
        &mut self,
        batch: &RecordBatch,
        (indices, offsets): (&[u32], &Int64Array),
        sources: &mut dyn FnMut(i64) -> Option<SourceRecord>,
    ) -> Result<(), OpError> {
        if indices.is_empty() {
            return Ok(());
        }
        // Copies the rows: a held row must not keep its whole batch alive.
        let taken = take_record_batch(batch, &UInt32Array::from(indices.to_vec()))
            .map_err(OpError::eval)?;
        let arrived_ms = now_ms();
        for (i, &index) in indices.iter().enumerate() {
            let offset = offsets.value(index as usize);
            let held = Held {
                row: taken.slice(i, 1),
                arrived_ms,
                source: sources(offset),
            };
            if let Some(store) = &self.store {
                store.put(&key(offset), &encode(&held)?);
            }
            self.held.insert(offset, held);
        }
        self.next_retry
            .get_or_insert_with(|| Instant::now() + self.policy.every_value());
        Ok(())
    }

    /// When the held rows are looked up again.
    pub(super) fn due(&self) -> Option<Instant> {
        self.next_retry.filter(|_| !self.held.is_empty())
    }

    /// The held rows, in offset order, when their retry is due.
    pub(super) fn take_due(&mut self) -> Result<Option<Retry>, OpError> {
        if self.due().is_none_or(|due| due > Instant::now()) {
            return Ok(None);
        }
        self.next_retry = Some(Instant::now() + self.policy.every_value());
        let rows: Vec<&RecordBatch> = self.held.values().map(|h| &h.row).collect();
        let rows = concat_batches(&self.schema, rows).map_err(OpError::eval)?;
        let offsets = self.held.keys().copied().collect();
        Ok(Some(Retry { offsets, rows }))
    }

    /// Settles the held row at `offset` after a retry that `found` it or not.
    pub(super) fn settle(&mut self, offset: i64, found: bool) -> Outcome {
        let within = i64::try_from(self.policy.within_value().as_millis()).unwrap_or(i64::MAX);
        let expired = self
            .held
            .get(&offset)
            .is_some_and(|h| now_ms().saturating_sub(h.arrived_ms) >= within);
        if !found && !expired {
            return Outcome::Held;
        }
        if let Some(store) = &self.store {
            store.delete(&key(offset));
        }
        let removed = self.held.remove(&offset);
        if self.held.is_empty() {
            // The next row held waits a whole interval.
            self.next_retry = None;
        }
        match removed {
            Some(held) if !found => Outcome::Expired(Box::new(held)),
            _ => Outcome::Found,
        }
    }

    /// How many rows are held.
    pub(super) fn len(&self) -> usize {
        self.held.len()
    }
}

fn key(offset: i64) -> Vec<u8> {
    [PREFIX, &offset.to_be_bytes()].concat()
}

fn encode(held: &Held) -> Result<Vec<u8>, OpError> {
    use base64::Engine;
    let mut ipc = Vec::new();
    let mut writer =
        StreamWriter::try_new(&mut ipc, held.row.schema_ref()).map_err(OpError::eval)?;
    writer.write(&held.row).map_err(OpError::eval)?;
    writer.finish().map_err(OpError::eval)?;
    drop(writer);
    let stored = Stored {
        arrived_ms: held.arrived_ms,
        row: base64::engine::general_purpose::STANDARD.encode(ipc),
        source: held.source.clone(),
    };
    serde_json::to_vec(&stored).map_err(OpError::eval)
}

fn decode(value: &[u8], offset: i64) -> Result<Held, CorruptState> {
    use base64::Engine;
    let corrupt = |reason: String| CorruptState(format!("held row at offset {offset}: {reason}"));
    let stored: Stored = serde_json::from_slice(value).map_err(|e| corrupt(e.to_string()))?;
    let ipc = base64::engine::general_purpose::STANDARD
        .decode(stored.row)
        .map_err(|e| corrupt(e.to_string()))?;
    let reader = StreamReader::try_new(std::io::Cursor::new(ipc), None)
        .map_err(|e| corrupt(e.to_string()))?;
    let batches = reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| corrupt(e.to_string()))?;
    let row = match batches.as_slice() {
        [row] if row.num_rows() == 1 => row.clone(),
        _ => return Err(corrupt("not one row".into())),
    };
    Ok(Held {
        row,
        arrived_ms: stored.arrived_ms,
        source: stored.source,
    })
}
