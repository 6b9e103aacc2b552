//! Changelog topics: every state change of a window store is produced, next to
//! the outputs of its micro-batch, to `<group>-changelog-<topic>-<store>`
//! (partitioned like the input, compacted), tagged with the batch's next
//! source offset. A state directory that is missing, empty or behind the
//! group's committed offset is rebuilt from it before processing resumes.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flumen_kafka::{
    headers_with, read_partition, DeliveryBatch, KafkaConfig, OutRecord, PartitionRecord, Producer,
};
use flumen_state::{BatchOp, Checkpoint, StateStore, WriteBatch};

use crate::error::{Error, Result};
use crate::runtime::file_safe;
use crate::runtime::internal_topics::GENESIS_KEY;

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

/// Where a batch's changes are logged.
pub(crate) struct Logged<'a> {
    /// The changelog topic of each store.
    pub(crate) changelogs: &'a Changelogs,
    /// The input partition (and so the changelog partition).
    pub(crate) partition: i32,
    /// The batch's next input offset, tagged on every change.
    pub(crate) next_offset: i64,
}

/// Produces `changes` to their stores' changelogs, tagged with the batch's
/// next offset; `ack` tracks the deliveries.
pub(crate) async fn send(
    producer: &Producer,
    logged: &Logged<'_>,
    changes: &WriteBatch,
    ack: &Arc<DeliveryBatch>,
) -> Result<()> {
    let Logged {
        changelogs,
        partition,
        next_offset,
    } = *logged;
    let tag = next_offset.to_string();
    for op in changes.ops() {
        let (store, key, value) = match op {
            BatchOp::Put { store, key, value } => (store, key, Some(value.as_slice())),
            BatchOp::Delete { store, key } => (store, key, None),
        };
        let Some(topic) = changelogs.get(store) else {
            continue;
        };
        let bytes = key.len() + value.map_or(0, <[u8]>::len);
        if bytes > producer.max_record_bytes() {
            return Err(Error::StateTooLarge {
                store: store.clone(),
                topic: topic.clone(),
                partition,
                bytes,
                limit: producer.max_record_bytes(),
            });
        }
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
        let mut replay = Replay {
            store: name,
            topic,
            partition,
            tags: (from, until),
            target: store,
            on_applied,
            batch: WriteBatch::default(),
            genesis: false,
            applied: 0,
            last_log: Instant::now(),
        };
        let mut failure = None;
        read_partition(
            config,
            topic,
            partition,
            Duration::from_secs(60),
            |record| match replay.apply(&record) {
                Ok(()) => ControlFlow::Continue(()),
                Err(error) => {
                    failure = Some(error);
                    ControlFlow::Break(())
                }
            },
        )?;
        if let Some(error) = failure {
            return Err(error);
        }
        applied += replay.finish()?;
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

/// Applying one changelog partition to a store, in write batches.
struct Replay<'a> {
    store: &'a str,
    topic: &'a str,
    partition: i32,
    /// Changes tagged after `.0` (the local checkpoint; `None`: an empty
    /// state) up to `.1` (the group's committed offset) are applied.
    tags: (Option<i64>, i64),
    target: &'a dyn StateStore,
    on_applied: &'a dyn Fn(u64),
    batch: WriteBatch,
    /// Whether the record flumen writes first to a changelog it creates was seen.
    genesis: bool,
    applied: u64,
    last_log: Instant,
}

impl Replay<'_> {
    /// Applies one changelog record (when its tag is in range).
    fn apply(&mut self, record: &PartitionRecord<'_>) -> Result<()> {
        if record.key == Some(GENESIS_KEY) {
            self.genesis = true;
            return Ok(());
        }
        let Some(tag) = record
            .header(OFFSET_HEADER)
            .and_then(|t| t.parse::<i64>().ok())
        else {
            return Err(Error::ChangelogRecord {
                topic: self.topic.to_string(),
                partition: self.partition,
                offset: record.offset,
                reason: format!("no '{OFFSET_HEADER}' header: it was not written by flumen"),
            });
        };
        // Changes of batches whose offsets were never committed (a crashed
        // run) are skipped: their records are processed again and produce
        // them again. They can be followed by changes of later runs with
        // smaller tags, so reading goes on to the end. Changes the local
        // state already has are skipped too.
        let (from, until) = self.tags;
        if tag > until || from.is_some_and(|f| tag <= f) {
            return Ok(());
        }
        let key = record.key.unwrap_or_default();
        match record.value {
            Some(value) => self.batch.put(self.store, key, value),
            None => self.batch.delete(self.store, key),
        }
        self.applied += 1;
        if self.batch.len() >= RESTORE_BATCH {
            self.flush()?;
            self.log_progress(record);
        }
        Ok(())
    }

    /// Writes the changes gathered so far.
    fn flush(&mut self) -> Result<()> {
        let changes = self.batch.len() as u64;
        self.target.write(std::mem::take(&mut self.batch), None)?;
        metrics::counter!("flumen_restored_changes_total", "store" => self.topic.to_string())
            .increment(changes);
        (self.on_applied)(changes);
        Ok(())
    }

    fn log_progress(&mut self, record: &PartitionRecord<'_>) {
        if self.last_log.elapsed() < Duration::from_secs(5) {
            return;
        }
        self.last_log = Instant::now();
        let percent = (100 * (record.offset + 1) / record.end_hint.max(1)).min(100);
        tracing::info!(
            topic = self.topic,
            partition = self.partition,
            applied = self.applied,
            up_to = self.tags.1,
            at_offset = record.offset,
            "restoring state: about {percent}% of the changelog read"
        );
    }

    /// Writes the rest after the whole partition was read; returns the
    /// changes applied. Refuses a changelog that lost its beginning.
    fn finish(mut self) -> Result<u64> {
        if !self.genesis {
            return Err(Error::ChangelogLost {
                topic: self.topic.to_string(),
                partition: self.partition,
                reason: format!(
                    "its first record (written when flumen created it) is gone: the topic \
                     was deleted and created again, or truncated, so the changes up to the \
                     committed offset {} are not all in it. Reset the group's offsets \
                     (or use a new consumer group) to recompute the state from the input",
                    self.tags.1
                ),
            });
        }
        self.flush()?;
        Ok(self.applied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use flumen_kafka::TopicSpec;
    use flumen_state::{RocksStore, StoreIdentity};
    use flumen_testkit::{unique_name, DevStack};

    #[test]
    fn topic_names_are_kafka_safe() {
        assert_eq!(
            topic_name("app", "in/x", "window 0"),
            "app-changelog-in_x-window_0"
        );
    }

    /// Entries of the restored store.
    const ENTRIES: usize = 1_000_000;

    fn key(i: usize) -> Vec<u8> {
        format!("key-{i:08}").into_bytes()
    }

    /// A changelog of more than a million changes as the runtime writes it
    /// (puts, overwrites, deletes, a crashed run's uncommitted changes, then a
    /// later run's), restored onto an empty state directory: the store holds
    /// exactly the committed state. Prints the restore speed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_million_entries_are_restored_exactly_up_to_the_committed_offset() {
        let stack = DevStack::start().expect("dev stack");
        let topic = unique_name("changelog");
        stack
            .create_topic_spec(&TopicSpec::new(&topic, 1).compacted())
            .await
            .expect("topic");
        // (key, value or tombstone, tag) in log order, and the state they
        // must leave when restored up to `committed`.
        let extra = ENTRIES / 20;
        let mut log: Vec<(Vec<u8>, Option<Vec<u8>>, i64)> = Vec::new();
        for i in 0..ENTRIES + extra {
            log.push((
                key(i),
                Some(format!("v1-{i}").into_bytes()),
                (i / 10_000) as i64 + 1,
            ));
        }
        let committed = log.last().map_or(0, |c| c.2) + 1;
        for i in (0..ENTRIES).step_by(7) {
            log.push((key(i), Some(format!("v2-{i}").into_bytes()), committed - 1));
        }
        for i in ENTRIES..ENTRIES + extra {
            log.push((key(i), None, committed));
        }
        // A crashed run's changes past the committed offset: skipped.
        for i in (0..ENTRIES).step_by(11) {
            log.push((key(i), Some(b"uncommitted".to_vec()), committed + 5));
        }
        // The next run processed those records again, committed up to `committed`.
        for i in (0..ENTRIES).step_by(13) {
            log.push((key(i), Some(format!("v3-{i}").into_bytes()), committed));
        }
        let mut expected: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        for (k, v, tag) in &log {
            if *tag > committed {
                continue;
            }
            match v {
                Some(v) => expected.insert(k.clone(), v.clone()),
                None => expected.remove(k),
            };
        }
        assert_eq!(expected.len(), ENTRIES);

        let producer = Producer::new(&stack.kafka_config()).expect("producer");
        let ack = DeliveryBatch::new();
        let genesis = OutRecord {
            topic: &topic,
            key: Some(GENESIS_KEY),
            value: Some(b"genesis"),
            timestamp_ms: None,
            partition: Some(0),
        };
        producer.send(genesis, None, &ack).await.expect("send");
        for (k, v, tag) in &log {
            let record = OutRecord {
                topic: &topic,
                key: Some(k),
                value: v.as_deref(),
                timestamp_ms: None,
                partition: Some(0),
            };
            let headers = headers_with(None, &[(OFFSET_HEADER, tag.to_string().as_str())]);
            producer
                .send(record, Some(headers), &ack)
                .await
                .expect("send");
        }
        ack.wait().await.expect("changelog written");

        let dir = tempfile::tempdir().expect("state dir");
        let store = RocksStore::open(
            &dir.path().join("state"),
            &StoreIdentity::new("app", "input", 0),
            &["window-0"],
        )
        .expect("store");
        let changelogs = Changelogs::from([("window-0".to_string(), topic.clone())]);
        let counted = std::sync::atomic::AtomicU64::new(0);
        let started = Instant::now();
        let applied = tokio::task::block_in_place(|| {
            restore(
                &stack.kafka_config(),
                &changelogs,
                0,
                None,
                committed,
                &store,
                &|n| {
                    counted.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                },
            )
        })
        .expect("restore");
        let seconds = started.elapsed().as_secs_f64();
        eprintln!(
            "restored {} entries from {applied} changes of {} in {seconds:.2} s: \
             {:.0} changes/s (debug build)",
            expected.len(),
            log.len(),
            applied as f64 / seconds
        );
        let skipped = log.iter().filter(|c| c.2 > committed).count();
        assert_eq!(applied as usize, log.len() - skipped, "changes applied");
        assert_eq!(counted.into_inner(), applied, "progress counted");
        assert_eq!(
            store.checkpoint().expect("checkpoint"),
            Some(Checkpoint {
                next_offset: committed
            })
        );
        let restored = store.prefix("window-0", b"").expect("entries");
        assert_eq!(restored.len(), expected.len(), "entries");
        for ((k, v), (ek, ev)) in restored.iter().zip(&expected) {
            assert_eq!((k, v), (ek, ev), "entry");
        }
    }

    /// Defect 3 of #16: a changelog that was deleted and created again (no
    /// genesis record) is refused by a restore that needs it, instead of
    /// restoring an empty or partial state.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_recreated_changelog_is_refused_instead_of_restored_partially() {
        let stack = DevStack::start().expect("dev stack");
        let topic = unique_name("changelog");
        stack
            .create_topic_spec(&TopicSpec::new(&topic, 1).compacted())
            .await
            .expect("topic");
        let producer = Producer::new(&stack.kafka_config()).expect("producer");
        let ack = DeliveryBatch::new();
        // What a run writes after the topic was recreated: changes tagged
        // above the group's committed offset (100), and no genesis record.
        for i in 0..10 {
            let record = OutRecord {
                topic: &topic,
                key: Some(&key(i)),
                value: Some(b"after"),
                timestamp_ms: None,
                partition: Some(0),
            };
            let headers = headers_with(None, &[(OFFSET_HEADER, "150")]);
            producer
                .send(record, Some(headers), &ack)
                .await
                .expect("send");
        }
        ack.wait().await.expect("written");
        let dir = tempfile::tempdir().expect("state dir");
        let store = RocksStore::open(
            &dir.path().join("state"),
            &StoreIdentity::new("app", "input", 0),
            &["window-0"],
        )
        .expect("store");
        let changelogs = Changelogs::from([("window-0".to_string(), topic.clone())]);
        let error = tokio::task::block_in_place(|| {
            restore(
                &stack.kafka_config(),
                &changelogs,
                0,
                None,
                100,
                &store,
                &|_| {},
            )
        })
        .expect_err("refused");
        let text = error.to_string();
        assert!(matches!(error, Error::ChangelogLost { .. }), "{text}");
        assert!(text.contains(&topic) && text.contains("100"), "{text}");
        assert_eq!(
            store.checkpoint().expect("checkpoint"),
            None,
            "nothing checkpointed"
        );
    }
}
