//! Changelog topics: every state change of a window store is produced, next to
//! the outputs of its micro-batch, to `<group>-changelog-<topic>-<store>`
//! (partitioned like the input, compacted), tagged with the batch's next
//! source offset. A state directory that is missing, empty or behind the
//! group's committed offset is rebuilt from it before processing resumes.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flumen_kafka::{headers_with, read_partition, DeliveryBatch, KafkaConfig, OutRecord, Producer};
use flumen_state::{BatchOp, Checkpoint, StateStore, WriteBatch};

use crate::error::{Error, Result};
use crate::runtime::worker::file_safe;

/// Header holding the next source offset the change reflects.
const OFFSET_HEADER: &str = "flumen.offset";

/// Changes applied to the store per RocksDB write batch while restoring.
const RESTORE_BATCH: usize = 10_000;

/// The changelog topic of store `store` of the pipeline reading `topic` in
/// application `group`.
pub(crate) fn topic_name(group: &str, topic: &str, store: &str) -> String {
    // Kafka topic names allow the same characters as flumen's file names.
    format!(
        "{group}-changelog-{}-{}",
        file_safe(topic),
        file_safe(store)
    )
}

/// The changelog topics of one pipeline, by store name.
pub(crate) type Changelogs = HashMap<String, String>;

/// Produces `changes` to their stores' changelogs, partition `partition`,
/// tagged `next_offset`; `ack` tracks the deliveries.
pub(crate) async fn send(
    producer: &Producer,
    changelogs: &Changelogs,
    partition: i32,
    changes: &WriteBatch,
    next_offset: i64,
    ack: &Arc<DeliveryBatch>,
) -> Result<()> {
    let tag = next_offset.to_string();
    for op in changes.ops() {
        let (store, key, value) = match op {
            BatchOp::Put { store, key, value } => (store, key, Some(value.as_slice())),
            BatchOp::Delete { store, key } => (store, key, None),
        };
        let Some(topic) = changelogs.get(store) else {
            continue;
        };
        let record = OutRecord {
            topic,
            key: Some(key),
            value,
            timestamp_ms: None,
            partition: Some(partition),
        };
        let headers = headers_with(None, &[(OFFSET_HEADER, tag.as_str())]);
        producer.send(record, Some(headers), ack).await?;
    }
    Ok(())
}

/// Rebuilds `store` from its changelogs: applies, in write batches, every
/// change tagged after `from` (the local checkpoint; `None`: an empty state)
/// up to `until` (the group's committed offset) and no further, in log
/// order, then checkpoints at `until`. Returns the changes applied. Blocking.
///
/// Changes from batches a crashed run never committed are in the log too,
/// tagged above that run's commit; a later run that committed further
/// produces the same values again after them (a window's state after a given
/// prefix of its partition does not depend on how it was cut into batches),
/// so applying every change up to `until` in log order ends in the state at
/// `until`.
pub(crate) fn restore(
    config: &KafkaConfig,
    changelogs: &Changelogs,
    partition: i32,
    from: Option<i64>,
    until: i64,
    store: &dyn StateStore,
    on_applied: &dyn Fn(u64),
) -> Result<u64> {
    let started = Instant::now();
    let mut applied = 0u64;
    for (name, topic) in changelogs {
        let mut batch = WriteBatch::default();
        let mut failure = None;
        let mut last_log = Instant::now();
        read_partition(
            config,
            topic,
            partition,
            Duration::from_secs(60),
            |record| {
                let Some(tag) = record
                    .header(OFFSET_HEADER)
                    .and_then(|t| t.parse::<i64>().ok())
                else {
                    failure = Some(format!(
                        "changelog {topic}/{partition} offset {}: no '{OFFSET_HEADER}' header",
                        record.offset
                    ));
                    return ControlFlow::Break(());
                };
                // Changes of batches whose offsets were never committed (a
                // crashed run) are skipped: their records are processed again and
                // produce them again. They can be followed by changes of later
                // runs with smaller tags, so reading goes on to the end.
                // Changes the local state already has are skipped too.
                if tag > until || from.is_some_and(|f| tag <= f) {
                    return ControlFlow::Continue(());
                }
                let key = record.key.unwrap_or_default();
                match record.value {
                    Some(value) => batch.put(name, key, value),
                    None => batch.delete(name, key),
                }
                applied += 1;
                if batch.len() >= RESTORE_BATCH {
                    if let Err(e) = store.write(std::mem::take(&mut batch), None) {
                        failure = Some(e.to_string());
                        return ControlFlow::Break(());
                    }
                    metrics::counter!("flumen_restored_changes_total", "store" => topic.clone())
                        .increment(RESTORE_BATCH as u64);
                    on_applied(RESTORE_BATCH as u64);
                    if last_log.elapsed() > Duration::from_secs(5) {
                        last_log = Instant::now();
                        let percent = (100 * (record.offset + 1) / record.end_hint.max(1)).min(100);
                        tracing::info!(
                            %topic, partition, applied, up_to = until, at_offset = record.offset,
                            "restoring state: about {percent}% of the changelog read"
                        );
                    }
                }
                ControlFlow::Continue(())
            },
        )?;
        if let Some(reason) = failure {
            return Err(Error::Runtime(format!(
                "restoring state from {topic}: {reason}"
            )));
        }
        metrics::counter!("flumen_restored_changes_total", "store" => topic.clone())
            .increment(batch.len() as u64);
        let rest = batch.len() as u64;
        store.write(batch, None)?;
        on_applied(rest);
    }
    store.write(
        WriteBatch::default(),
        Some(Checkpoint { next_offset: until }),
    )?;
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(
        partition,
        applied,
        up_to = until,
        seconds,
        per_sec = applied as f64 / seconds.max(1e-9),
        "state restored from the changelog"
    );
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_are_kafka_safe() {
        assert_eq!(
            topic_name("app", "in/x", "window 0"),
            "app-changelog-in_x-window_0"
        );
    }
}
