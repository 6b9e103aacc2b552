//! The internal topics flumen creates (changelog and repartition topics):
//! created with the configured replication factor, checked when they exist,
//! and, for changelogs, marked so that a lost history is detected.
//!
//! A changelog gets a *genesis* record in every partition when it is created
//! (or found empty for a partition the group never committed): a key no store
//! uses, never overwritten, so compaction keeps it. A restore that needs the
//! changelog and does not meet it reads a topic that was deleted and
//! recreated, or truncated: it stops with [`Error::ChangelogLost`] instead of
//! restoring a partial state.

use std::time::Duration;

use flumen_kafka::{Admin, DeliveryBatch, KafkaConfig, OutRecord, Producer, TopicSpec};

use crate::error::{Error, Result};

/// Key of a changelog partition's genesis record.
pub(crate) const GENESIS_KEY: &[u8] = b"g:flumen-changelog-genesis";

/// How long writing the genesis records may take.
const GENESIS_TIMEOUT: Duration = Duration::from_secs(30);

/// Creates the repartition topic `name` with `partitions` partitions, or
/// checks that the existing one has them.
pub(crate) async fn ensure_repartition(
    admin: &Admin,
    name: &str,
    partitions: i32,
    replication: i32,
) -> Result<()> {
    match admin.partition_count(name)? {
        Some(existing) if existing != partitions => Err(Error::InternalTopic {
            topic: name.to_string(),
            reason: format!(
                "the repartition topic has {existing} partitions, the pipeline needs \
                 {partitions}; delete it (and the group's state) or set \
                 .partitions({existing}) on the group_by"
            ),
        }),
        Some(_) => Ok(()),
        None => {
            tracing::info!(topic = %name, partitions, replication, "creating the repartition topic");
            let spec = TopicSpec::new(name, partitions).replication(replication);
            Ok(admin.create_topic(&spec).await?)
        }
    }
}

/// Creates the replay log `name` (partitioned like its input `source`,
/// records kept for [`RETENTION`](crate::state::replay_log::RETENTION)), or
/// checks the existing one's partitions.
pub(crate) async fn ensure_replay_log(
    admin: &Admin,
    name: &str,
    source: &str,
    replication: i32,
) -> Result<()> {
    let partitions = admin.require_topic(source)?;
    match admin.partition_count(name)? {
        Some(existing) if existing != partitions => Err(Error::InternalTopic {
            topic: name.to_string(),
            reason: format!(
                "the replay log has {existing} partitions, its input '{source}' has \
                 {partitions}; delete the replay log"
            ),
        }),
        Some(_) => Ok(()),
        None => {
            tracing::info!(topic = %name, partitions, "creating the replay log topic");
            let retention = crate::state::replay_log::RETENTION.as_millis() as i64;
            let spec = TopicSpec::new(name, partitions)
                .replication(replication)
                .retention_ms(retention)
                .segment_ms(retention / 6);
            Ok(admin.create_topic(&spec).await?)
        }
    }
}

/// What a changelog needs to be checked or created.
pub(crate) struct ChangelogTopic<'a> {
    /// The changelog topic.
    pub(crate) name: &'a str,
    /// The input topic whose partitions it mirrors.
    pub(crate) source: &'a str,
    /// The consumer group.
    pub(crate) group: &'a str,
    /// The replication factor for a new changelog.
    pub(crate) replication: i32,
}

/// Creates the changelog, or checks the existing one (as many partitions as
/// its input, `cleanup.policy` compact), and writes the genesis record to
/// every partition that is empty and that the group has never committed.
///
/// A partition the group has committed whose changelog lacks the genesis
/// record (the topic was deleted and created again) can still run on a local
/// state that is current; a restore from it fails with [`Error::ChangelogLost`].
pub(crate) async fn ensure_changelog(
    admin: &Admin,
    kafka: &KafkaConfig,
    topic: &ChangelogTopic<'_>,
) -> Result<()> {
    let partitions = admin.require_topic(topic.source)?;
    let committed = admin.group_offsets(topic.group, topic.source, partitions)?;
    let created = match admin.partition_count(topic.name)? {
        Some(existing) => {
            check_changelog(admin, topic.name, existing, partitions).await?;
            false
        }
        None => {
            if committed.iter().any(Option::is_some) {
                tracing::warn!(
                    topic = %topic.name, group = %topic.group,
                    "creating a changelog for an input the group has committed offsets on: \
                     partitions whose local state is missing or behind cannot be restored"
                );
            }
            tracing::info!(topic = %topic.name, partitions, "creating the changelog topic");
            let spec = TopicSpec::new(topic.name, partitions)
                .replication(topic.replication)
                .compacted();
            admin.create_topic(&spec).await?;
            true
        }
    };
    let mut unmarked = Vec::new();
    for (p, offset) in committed.iter().enumerate() {
        let p = p as i32;
        // A topic just created is empty; an existing one is asked.
        if offset.is_none() && (created || end_offset(admin, topic.name, p).await? == 0) {
            unmarked.push(p);
        }
    }
    write_genesis(kafka, topic.name, unmarked).await
}

/// The end offset of a partition, asked up to three times (a partition whose
/// leader moves answers a moment later).
async fn end_offset(admin: &Admin, topic: &str, partition: i32) -> Result<i64> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match admin.watermarks(topic, partition) {
            Ok((_, high)) => return Ok(high),
            Err(e) if attempt < 3 && e.is_retriable() => {
                tracing::debug!(%topic, partition, error = %e, "retrying the watermarks");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

async fn check_changelog(admin: &Admin, name: &str, existing: i32, partitions: i32) -> Result<()> {
    if existing != partitions {
        return Err(Error::InternalTopic {
            topic: name.to_string(),
            reason: format!(
                "the changelog has {existing} partitions, its input has {partitions}: \
                 partition p of the changelog must hold the state of input partition p"
            ),
        });
    }
    let policy = admin.topic_config(name, "cleanup.policy").await?;
    if !policy.as_deref().is_some_and(|p| p.contains("compact")) {
        return Err(Error::InternalTopic {
            topic: name.to_string(),
            reason: format!(
                "the changelog's cleanup.policy is {}, not compact: the broker would delete \
                 state that a restore needs",
                policy.as_deref().unwrap_or("unset")
            ),
        });
    }
    Ok(())
}

/// Writes the genesis record to `partitions` of changelog `topic`.
async fn write_genesis(
    kafka: &KafkaConfig,
    topic: &str,
    partitions: impl IntoIterator<Item = i32>,
) -> Result<()> {
    let producer = Producer::new(kafka)?;
    let ack = DeliveryBatch::new();
    for partition in partitions {
        let record = OutRecord {
            topic,
            key: Some(GENESIS_KEY),
            value: Some(b"flumen changelog"),
            timestamp_ms: None,
            partition: Some(partition),
        };
        producer.send(record, None, &ack).await?;
    }
    match tokio::time::timeout(GENESIS_TIMEOUT, ack.wait()).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(Error::InternalTopic {
            topic: topic.to_string(),
            reason: format!("writing its genesis records took longer than {GENESIS_TIMEOUT:?}"),
        }),
    }
}
