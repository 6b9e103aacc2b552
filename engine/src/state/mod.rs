//! The state of one input partition, in layers behind the operators' store
//! handles ([`StoreHandle`]): a batch's writes, readable at once; the
//! batches processed but not committed yet, still readable; the local
//! RocksDB store. When a batch ends its writes are sealed and logged to the
//! stores' changelog topics (in the batch's deliveries or transaction); once
//! the guarantee allows it they are written with the checkpoint to the local
//! store, in one [`PartitionState::commit`]. Opening the state checks it
//! against the group's committed offset and restores what it lacks from the
//! changelogs.

pub(crate) mod changelog;
mod open;
pub(crate) mod replay_log;
mod store;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use flumen_kafka::{DeliveryBatch, Producer};
use flumen_state::{Checkpoint, StateStore, WriteBatch};

pub(crate) use changelog::{topic_name, Changelogs};
pub(crate) use open::{open, StateSettings, StoreTopics};
use replay_log::ReplayLog;
pub(crate) use replay_log::{ReplayClients, ReplayLogs};
use store::Layers;
pub(crate) use store::StoreHandle;

use crate::runtime::lock;
use crate::Result;

/// The state stores of one input partition.
pub(crate) struct PartitionState {
    /// The local store (RocksDB), holding every store of the partition.
    local: Arc<dyn StateStore>,
    /// The writes the local store does not hold yet.
    layers: Arc<Mutex<Layers>>,
    /// The changelog topic of each store (empty: changelogs are off).
    changelogs: Changelogs,
    /// The replay log of each store that keeps one.
    replay_logs: HashMap<String, Arc<ReplayLog>>,
    partition: i32,
    /// The offset the local store's state reflects the input up to.
    checkpoint: Option<i64>,
}

impl PartitionState {
    /// The state of partition `partition` in `local` alone, without
    /// changelogs.
    #[cfg(test)]
    pub(crate) fn in_memory(local: Arc<dyn StateStore>, partition: i32) -> Result<Self> {
        let checkpoint = local.checkpoint()?.map(|c| c.next_offset);
        Ok(PartitionState {
            local,
            layers: Arc::default(),
            changelogs: Changelogs::new(),
            replay_logs: HashMap::new(),
            partition,
            checkpoint,
        })
    }

    /// A state in memory that is never opened again, without changelogs:
    /// the [`TestDriver`](crate::testing::TestDriver)'s. The bulk writes of
    /// operators that keep their state in memory (windows) are dropped, as
    /// nothing would read them; key-by-key writes are kept.
    pub(crate) fn ephemeral(partition: i32) -> Self {
        PartitionState {
            local: Arc::new(flumen_state::MemoryStore::default()),
            layers: Arc::new(Mutex::new(Layers::never_reopened())),
            changelogs: Changelogs::new(),
            replay_logs: HashMap::new(),
            partition,
            checkpoint: None,
        }
    }

    /// The handle of store `name`.
    pub(crate) fn handle(&self, name: &str) -> StoreHandle {
        let handle = StoreHandle::new(name, Arc::clone(&self.local), Arc::clone(&self.layers));
        handle.with_replay_log(self.replay_logs.get(name).cloned())
    }

    /// The source partition whose state this is.
    pub(crate) fn partition(&self) -> i32 {
        self.partition
    }

    /// The input offset the state reflects records up to (`None`: new state).
    pub(crate) fn checkpoint(&self) -> Option<i64> {
        self.checkpoint
    }

    /// Ends the batch before `next_offset`: returns the writes of its
    /// operators, to log and later commit.
    pub(crate) fn seal(&self, next_offset: i64) -> WriteBatch {
        lock(&self.layers).seal(next_offset)
    }

    /// Whether changes are logged to changelog topics.
    pub(crate) fn is_logged(&self) -> bool {
        !self.changelogs.is_empty()
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
        if changes.is_empty() || !self.is_logged() {
            return Ok(());
        }
        let logged = changelog::Logged {
            changelogs: &self.changelogs,
            partition: self.partition,
            next_offset,
        };
        changelog::send(producer, &logged, changes, ack).await
    }

    /// Writes `changes` and the checkpoint `next_offset` to the local store,
    /// atomically: after the batches they belong to were delivered
    /// (at-least-once) or committed (exactly-once).
    pub(crate) fn commit(&self, changes: WriteBatch, next_offset: i64) -> Result<()> {
        self.local
            .write(changes, Some(Checkpoint { next_offset }))?;
        lock(&self.layers).committed(next_offset);
        Ok(())
    }

    /// The local store (for tests).
    #[cfg(test)]
    pub(crate) fn local(&self) -> &Arc<dyn StateStore> {
        &self.local
    }
}
