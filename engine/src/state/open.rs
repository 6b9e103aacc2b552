//! Opening a partition's state: the local RocksDB store (waiting for the
//! previous owner in this process, rebuilding a damaged one), checked against
//! the group's committed offset and caught up from the changelogs.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flumen_kafka::TopicPartition;
use flumen_state::{BlockCache, RocksStore, StateError, StateStore, StoreIdentity};

use super::replay_log::{self, ReplayClients, ReplayLog, ReplayLogs};
use super::{changelog, Changelogs, PartitionState};
use crate::runtime::file_safe;
use crate::runtime::Stats;
use crate::{Error, Result};

/// How long opening a state waits for the previous owner in this process
/// (a task being torn down) to release its lock.
const STATE_LOCK_WAIT: Duration = Duration::from_secs(30);

/// Where and how partitions keep their state.
#[derive(Debug, Clone)]
pub(crate) struct StateSettings {
    /// The cluster, for restoring from changelogs.
    pub(crate) kafka: flumen_kafka::KafkaConfig,
    /// One RocksDB database per (source topic, partition) below this directory.
    pub(crate) dir: std::path::PathBuf,
    /// The application (consumer group) the state belongs to.
    pub(crate) application: String,
    pub(crate) cache: BlockCache,
    /// The clients of replay logs (exactly-once runs whose operators keep
    /// one).
    pub(crate) replay: Option<Arc<ReplayClients>>,
}

/// The topics a partition's stores log to.
#[derive(Clone, Copy)]
pub(crate) struct StoreTopics<'a> {
    /// The changelog topic of each store (empty: changelogs are off).
    pub(crate) changelogs: &'a Changelogs,
    /// The replay-log topic of each store that keeps one.
    pub(crate) replay_logs: &'a ReplayLogs,
}

/// Opens the state of partition `tp` with `stores` (none: `None`), whose
/// changes are logged to `topics`, and brings it up to the group's
/// `committed` offset.
pub(crate) async fn open(
    settings: &StateSettings,
    tp: &TopicPartition,
    (stores, topics): (&[String], StoreTopics<'_>),
    committed: Option<i64>,
    stats: &Arc<Stats>,
) -> Result<Option<PartitionState>> {
    let changelogs = topics.changelogs;
    if stores.is_empty() {
        return Ok(None);
    }
    let path = settings.dir.join(state_dir_name(tp));
    let can_rebuild = !changelogs.is_empty();
    let local = Arc::new(open_local(settings, tp, &path, stores, can_rebuild).await?);
    let mut checkpoint = local.checkpoint()?.map(|c| c.next_offset);
    if let Some(committed) = committed {
        if checkpoint.is_none_or(|c| c < committed) && committed > 0 {
            if changelogs.is_empty() {
                return Err(Error::StateBehind {
                    topic: tp.topic.clone(),
                    partition: tp.partition,
                    path: path.display().to_string(),
                    group: settings.application.clone(),
                    checkpoint: checkpoint.map_or("none".into(), |c| c.to_string()),
                    committed,
                });
            }
            tracing::info!(
                %tp, path = %path.display(), ?checkpoint, committed,
                "the state is behind the committed offset; restoring it from the changelog"
            );
            let target = Arc::clone(&local) as Arc<dyn StateStore>;
            let catch_up = CatchUp {
                settings,
                tp,
                changelogs,
                stats,
            };
            catch_up.run(target, (checkpoint, committed)).await?;
            checkpoint = Some(committed);
        }
    }
    match checkpoint {
        Some(at) => tracing::info!(
            %tp, path = %path.display(), checkpoint = at, ?committed,
            "state opened; records before the checkpoint are skipped"
        ),
        None => tracing::info!(%tp, path = %path.display(), "new state"),
    }
    let replay_logs = open_replay_logs(settings, tp, topics.replay_logs, &*local).await?;
    Ok(Some(PartitionState {
        local,
        layers: Arc::default(),
        changelogs: changelogs.clone(),
        replay_logs,
        partition: tp.partition,
        checkpoint,
    }))
}

/// Opens the replay log of each store that keeps one, read back from the
/// position its committed state holds.
async fn open_replay_logs(
    settings: &StateSettings,
    tp: &TopicPartition,
    topics: &ReplayLogs,
    local: &dyn StateStore,
) -> Result<HashMap<String, Arc<ReplayLog>>> {
    let mut logs = HashMap::new();
    let Some(clients) = &settings.replay else {
        return Ok(logs);
    };
    for (store, topic) in topics {
        let position = replay_log::position_of(local.get(store, replay_log::POSITION_KEY)?);
        let log = ReplayLog::open(clients, (topic, tp.partition), position).await?;
        logs.insert(store.clone(), Arc::new(log));
    }
    Ok(logs)
}

/// Opens the RocksDB state at `path` with `stores`, waiting while the
/// previous owner in this process still holds it. A damaged state, or
/// another partition's, is deleted when it `can_rebuild` from changelogs.
async fn open_local(
    settings: &StateSettings,
    tp: &TopicPartition,
    path: &Path,
    stores: &[String],
    can_rebuild: bool,
) -> Result<RocksStore> {
    let names: Vec<&str> = stores.iter().map(String::as_str).collect();
    let identity = StoreIdentity::new(&settings.application, &tp.topic, tp.partition);
    let deadline = Instant::now() + STATE_LOCK_WAIT;
    let mut rebuilt = false;
    loop {
        match RocksStore::open_with_cache(path, &identity, &names, &settings.cache) {
            Ok(store) => return Ok(store),
            // The previous owner of this partition in this process may still be closing.
            Err(StateError::Locked { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // Only damaged files or another identity's state are rebuilt;
            // any other failure (disk full, permissions, file limits)
            // stops the run and leaves the files as they are.
            Err(e) if can_rebuild && !rebuilt && e.is_rebuildable() => {
                tracing::warn!(
                    %tp, path = %path.display(), error = %e,
                    "the state directory is corrupt or not this partition's; deleting it and rebuilding the state from the changelog"
                );
                std::fs::remove_dir_all(path).map_err(|io| Error::Io {
                    what: format!(
                        "deleting the unusable state at {} (it was: {e})",
                        path.display()
                    ),
                    source: io,
                })?;
                rebuilt = true;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Rebuilding a partition's local store from its changelogs.
struct CatchUp<'a> {
    settings: &'a StateSettings,
    tp: &'a TopicPartition,
    changelogs: &'a Changelogs,
    stats: &'a Arc<Stats>,
}

impl CatchUp<'_> {
    /// Applies the changes tagged after `from` (the local checkpoint) up to
    /// `committed` to `store`, off the async threads.
    async fn run(
        self,
        store: Arc<dyn StateStore>,
        (from, committed): (Option<i64>, i64),
    ) -> Result<()> {
        let kafka = self.settings.kafka.clone();
        let (changelogs, partition) = (self.changelogs.clone(), self.tp.partition);
        let stats = Arc::clone(self.stats);
        tokio::task::spawn_blocking(move || {
            let counted = |n| stats.add_restored(n);
            changelog::restore(
                &kafka,
                &changelogs,
                partition,
                from,
                committed,
                &*store,
                &counted,
            )
        })
        .await
        .map_err(|e| Error::Task {
            task: format!("restoring {}", self.tp),
            source: Box::new(e),
        })?
        .map(drop)
    }
}

/// The directory name of a partition's state: topic and partition.
fn state_dir_name(tp: &TopicPartition) -> String {
    format!("{}-{}", file_safe(&tp.topic), tp.partition)
}
