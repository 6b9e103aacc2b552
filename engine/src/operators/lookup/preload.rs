//! A preloaded lookup table ([`LookupCache::preload`](crate::lookup::LookupCache::preload)):
//! scanned when the application starts and again every refresh, shared by
//! the partitions; each partition indexes the latest scan by its keys.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::DataType;
use arrow::row::RowConverter;

use super::cache::Row;
use crate::lookup::{LookupTable, Scanned};
use crate::operators::OpError;
use crate::BoxError;

/// The latest scan of a table, shared by the partitions.
#[derive(Default)]
pub(super) struct Preload {
    latest: RwLock<Option<Arc<Snapshot>>>,
}

/// One scan of the table.
pub(super) struct Snapshot {
    /// Counts the scans.
    generation: u64,
    scanned: Scanned,
}

impl Preload {
    /// Scans `table` now, then every `refresh` in the background while the
    /// preload is in use.
    pub(super) async fn start(
        self: &Arc<Self>,
        table: &Arc<dyn LookupTable>,
        (name, refresh): (&str, Duration),
    ) -> Result<(), BoxError> {
        let Some(scanned) = table.scan().await? else {
            return Err(format!("{name} cannot be preloaded: its table cannot be scanned").into());
        };
        tracing::info!(
            lookup = name,
            rows = scanned.rows.num_rows(),
            "lookup table preloaded"
        );
        self.store(scanned);
        let (preload, table, name) = (Arc::downgrade(self), Arc::clone(table), name.to_string());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(refresh).await;
                let Some(preload) = preload.upgrade() else {
                    return;
                };
                match table.scan().await {
                    Ok(Some(scanned)) => preload.store(scanned),
                    Ok(None) => return,
                    Err(error) => tracing::warn!(
                        lookup = %name, %error,
                        "refreshing the preloaded table failed; the last scan stays in use"
                    ),
                }
            }
        });
        Ok(())
    }

    fn store(&self, scanned: Scanned) {
        let mut latest = self.latest.write().unwrap_or_else(|p| p.into_inner());
        let generation = latest.as_ref().map_or(1, |s| s.generation + 1);
        *latest = Some(Arc::new(Snapshot {
            generation,
            scanned,
        }));
    }

    /// The latest scan.
    pub(super) fn latest(&self) -> Option<Arc<Snapshot>> {
        self.latest
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// One partition's index of a scan.
pub(super) struct PreloadIndex {
    pub(super) generation: u64,
    rows: RecordBatch,
    index: HashMap<Box<[u8]>, u32>,
    /// Identifies the scan's rows among the operator's fetches.
    fetch: u64,
}

impl PreloadIndex {
    /// Indexes `snapshot` by its keys, cast to `key_types` and encoded
    /// with `converter` (as the stream's keys are).
    pub(super) fn build(
        snapshot: &Snapshot,
        (converter, key_types): (&RowConverter, &[DataType]),
        fetch: u64,
    ) -> Result<Self, OpError> {
        let keys = &snapshot.scanned.keys;
        if keys.num_columns() != key_types.len()
            || keys.num_rows() != snapshot.scanned.rows.num_rows()
        {
            return Err(OpError::eval(crate::Error::Internal(
                "a lookup table's scan does not match its key",
            )));
        }
        let columns = keys
            .columns()
            .iter()
            .zip(key_types)
            .map(|(column, to)| cast(column, to))
            .collect::<Result<Vec<ArrayRef>, _>>()
            .map_err(OpError::eval)?;
        let encoded = converter.convert_columns(&columns).map_err(OpError::eval)?;
        let mut index = HashMap::with_capacity(keys.num_rows());
        for i in 0..keys.num_rows() {
            index
                .entry(encoded.row(i).as_ref().into())
                .or_insert(i as u32);
        }
        Ok(PreloadIndex {
            generation: snapshot.generation,
            rows: snapshot.scanned.rows.clone(),
            index,
            fetch,
        })
    }

    /// The row of `key`, if the scan had it.
    pub(super) fn get(&self, key: &[u8]) -> Option<Row> {
        self.index.get(key).map(|&index| Row {
            batch: self.rows.clone(),
            index,
            fetch: self.fetch,
        })
    }
}

impl Snapshot {
    /// Counts the scans.
    pub(super) fn generation(&self) -> u64 {
        self.generation
    }
}
