//! The state of one input partition, in layers: the operators keep what is
//! open in memory (the cache), every batch's changes are logged to the
//! stores' changelog topics (the changelogging layer, in the batch's
//! deliveries or transaction), and once the guarantee allows it they are
//! written with the checkpoint to the local RocksDB store (the local layer),
//! in one [`PartitionState::commit`]. Opening the state checks it against the
//! group's committed offset and restores what it lacks from the changelogs.

pub(crate) mod changelog;
mod open;

use std::sync::Arc;

use flumen_kafka::{DeliveryBatch, Producer};
use flumen_state::{Checkpoint, StateStore, WriteBatch};

pub(crate) use changelog::{topic_name, Changelogs};
pub(crate) use open::{open, StateSettings};

use crate::Result;

/// The state stores of one input partition.
pub(crate) struct PartitionState {
    /// The local store (RocksDB), holding every store of the partition.
    local: Arc<dyn StateStore>,
    /// The changelog topic of each store (empty: changelogs are off).
    changelogs: Changelogs,
    partition: i32,
    /// The offset the local store's state reflects the input up to.
    checkpoint: Option<i64>,
}

impl PartitionState {
    /// The local store, to load the operators' state from.
    pub(crate) fn local(&self) -> &dyn StateStore {
        &*self.local
    }

    /// The input offset the state reflects records up to (`None`: new state).
    pub(crate) fn checkpoint(&self) -> Option<i64> {
        self.checkpoint
    }

    /// Logs a batch's `changes` to the changelogs, tagged with the batch's
    /// `next_offset`, as deliveries of `ack`.
    pub(crate) async fn log(
        &self,
        producer: &Producer,
        changes: &WriteBatch,
        next_offset: i64,
        ack: &Arc<DeliveryBatch>,
    ) -> Result<()> {
        if changes.is_empty() || self.changelogs.is_empty() {
            return Ok(());
        }
        let logged = changelog::Logged {
            changelogs: &self.changelogs,
            partition: self.partition,
            next_offset,
        };
        changelog::send(producer, &logged, changes, ack).await
    }

    /// The state of partition `partition` in `local` alone (no changelogs).
    #[cfg(test)]
    pub(crate) fn in_memory(local: Arc<dyn StateStore>, partition: i32) -> Self {
        PartitionState {
            local,
            changelogs: Changelogs::new(),
            partition,
            checkpoint: None,
        }
    }

    /// Writes `changes` and the checkpoint `next_offset` to the local store,
    /// atomically: after the batches they belong to were delivered
    /// (at-least-once) or committed (exactly-once).
    pub(crate) fn commit(&self, changes: WriteBatch, next_offset: i64) -> Result<()> {
        self.local
            .write(changes, Some(Checkpoint { next_offset }))
            .map_err(Into::into)
    }
}
