//! Replay logs: what an operator took from outside the stream (a lookup's
//! rows), appended to a topic of its own at once, outside the partition's
//! transactions, so that a run that replays records a crashed or aborted
//! run had processed can give them the same values.
//!
//! The log is partitioned like the input and kept for [`RETENTION`]. Its
//! records are only read back from a position the operator keeps in its
//! store ([`ReplayLog::mark_position`]): the store commits with the input
//! offsets, so the position a restarted run reads from is one the
//! committed state wrote, and everything logged after it is there.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flumen_kafka::{read_partition_from, Admin, DeliveryBatch, KafkaConfig, OutRecord, Producer};

use super::StoreHandle;
use crate::runtime::{file_safe, lock};
use crate::{Error, Result};

/// The key under which a store keeps its replay log's position.
pub(crate) const POSITION_KEY: &[u8] = b"\xffflumen:replay-log-position";

/// How long a replay log keeps its records: a run restarted later than
/// this after a crash finds the enrichment of the crashed run's
/// uncommitted records gone, and looks them up afresh (with a warning).
pub(crate) const RETENTION: Duration = Duration::from_secs(6 * 3600);

/// The replay-log topic of store `store` of the pipeline reading `topic` in
/// application `group`.
pub(crate) fn topic_name(group: &str, topic: &str, store: &str) -> String {
    format!("{group}-replay-{}-{}", file_safe(topic), file_safe(store))
}

/// The replay-log topics of one pipeline, by store name.
pub(crate) type ReplayLogs = HashMap<String, String>;

/// The clients replay logs append and read with, shared by an application.
pub(crate) struct ReplayClients {
    /// Not transactional, idempotent, no linger: appends are awaited.
    producer: Producer,
    admin: Admin,
    kafka: KafkaConfig,
}

impl std::fmt::Debug for ReplayClients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayClients").finish_non_exhaustive()
    }
}

impl ReplayClients {
    /// Clients for the cluster `kafka` (producer settings already applied).
    pub(crate) fn new(kafka: &KafkaConfig) -> Result<Self> {
        let producer = Producer::new(&kafka.clone().set("linger.ms", "0"))?;
        Ok(ReplayClients {
            producer,
            admin: Admin::new(kafka)?,
            kafka: kafka.clone(),
        })
    }
}

/// One store's replay log in one partition.
pub(crate) struct ReplayLog {
    clients: Arc<ReplayClients>,
    topic: String,
    partition: i32,
    /// The records read back when the state was opened, oldest first.
    recovered: Mutex<Vec<Vec<u8>>>,
}

impl ReplayLog {
    /// Opens partition `partition` of `topic` and reads it back from
    /// `position` (`None`: the committed state holds none, so every record
    /// kept is of runs that never committed: from the first).
    pub(crate) async fn open(
        clients: &Arc<ReplayClients>,
        (topic, partition): (&str, i32),
        position: Option<i64>,
    ) -> Result<Self> {
        let recovered = read_from(clients, (topic, partition), position).await?;
        tracing::info!(
            topic,
            partition,
            ?position,
            records = recovered.len(),
            "replay log opened"
        );
        Ok(ReplayLog {
            clients: Arc::clone(clients),
            topic: topic.to_string(),
            partition,
            recovered: Mutex::new(recovered),
        })
    }

    /// The records logged from the committed position on, once.
    pub(crate) fn take_recovered(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut *lock(&self.recovered))
    }

    /// Writes the log's current end to `store` as the position a restart
    /// reads back from: everything appended after this call is read back
    /// by a run restarted from a state that holds this write.
    pub(crate) async fn mark_position(&self, store: &StoreHandle) -> Result<()> {
        let clients = Arc::clone(&self.clients);
        let (topic, partition) = (self.topic.clone(), self.partition);
        let (_, end) = blocking("the replay log's end", move || {
            clients.admin.watermarks(&topic, partition)
        })
        .await?;
        store.put(POSITION_KEY, &end.to_be_bytes());
        Ok(())
    }

    /// Appends `value` and waits until the brokers hold it.
    pub(crate) async fn append(&self, value: &[u8]) -> Result<()> {
        let ack = DeliveryBatch::new();
        let record = OutRecord {
            topic: &self.topic,
            key: None,
            value: Some(value),
            timestamp_ms: None,
            partition: Some(self.partition),
        };
        self.clients.producer.send(record, None, &ack).await?;
        ack.wait().await.map_err(Error::from)
    }
}

/// The position kept in a store's committed state, if any.
pub(crate) fn position_of(value: Option<Vec<u8>>) -> Option<i64> {
    let bytes: [u8; 8] = value?.try_into().ok()?;
    Some(i64::from_be_bytes(bytes))
}

/// Reads partition `partition` of `topic` from `position` (`None`: the
/// first record) to its end.
async fn read_from(
    clients: &Arc<ReplayClients>,
    (topic, partition): (&str, i32),
    position: Option<i64>,
) -> Result<Vec<Vec<u8>>> {
    let clients = Arc::clone(clients);
    let topic = topic.to_string();
    blocking("reading the replay log", move || {
        let (first, end) = clients.admin.watermarks(&topic, partition)?;
        if position.unwrap_or(first) >= end {
            return Ok(Vec::new());
        }
        if let Some(position) = position.filter(|p| *p < first) {
            tracing::warn!(
                topic,
                partition,
                position,
                first,
                "the replay log lost records to retention: records the last run processed \
                 without committing are looked up afresh"
            );
        }
        let mut records = Vec::new();
        let stall = Duration::from_secs(60);
        read_partition_from(
            &clients.kafka,
            (&topic, partition),
            position,
            stall,
            |record| {
                records.extend(record.value.map(<[u8]>::to_vec));
                ControlFlow::Continue(())
            },
        )?;
        Ok(records)
    })
    .await
}

/// Runs a blocking client call off the async threads.
async fn blocking<T: Send + 'static>(
    what: &'static str,
    call: impl FnOnce() -> flumen_kafka::Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(call)
        .await
        .map_err(|e| Error::Task {
            task: what.into(),
            source: Box::new(e),
        })?
        .map_err(Error::from)
}
