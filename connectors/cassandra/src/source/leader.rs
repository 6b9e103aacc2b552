//! Which instance publishes: every instance of an application runs the
//! source, but only the member of the consumer group `<topic>-publisher`
//! that is assigned the progress topic's single partition publishes (as
//! Kafka Connect runs one task per connector). When that member leaves or
//! dies, the group gives the partition to another, which continues from the
//! recorded progress; its transactional producer (same id) fences the old
//! one, so two leaders never both commit.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use flumen_kafka::{
    AutoOffsetReset, GroupConsumer, GroupMetadata, KafkaConfig, KafkaError, RebalanceListener,
    TopicPartition,
};
use tokio::sync::watch;

use crate::error::CassandraError;

/// Membership in the publishers' group; `is_leader` follows the assignment.
pub(crate) struct Leadership {
    leader: watch::Receiver<bool>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

struct Listener(watch::Sender<bool>);

impl RebalanceListener for Listener {
    fn on_assign(
        &self,
        partitions: &[(TopicPartition, Option<i64>)],
        _: Option<Arc<GroupMetadata>>,
    ) {
        if !partitions.is_empty() {
            self.0.send_replace(true);
        }
    }

    fn on_assign_failed(&self, _: &[TopicPartition], error: KafkaError) {
        tracing::warn!(%error, "source leadership: reading the assignment failed");
    }

    fn on_revoke(&self, partitions: &[TopicPartition]) -> Vec<(TopicPartition, i64)> {
        if !partitions.is_empty() {
            self.0.send_replace(false);
        }
        Vec::new()
    }
}

impl Leadership {
    /// Joins the group `group` on `progress_topic`; a polling thread keeps
    /// the membership until dropped.
    pub(crate) fn join(
        config: &KafkaConfig,
        group: &str,
        progress_topic: &str,
    ) -> Result<Self, CassandraError> {
        let (tx, leader) = watch::channel(false);
        let failed = |source| CassandraError::publish(progress_topic.to_string(), source);
        let consumer = GroupConsumer::new(
            config,
            group,
            AutoOffsetReset::Latest,
            Arc::new(Listener(tx)),
        )
        .map_err(failed)?;
        consumer.subscribe(&[progress_topic]).map_err(failed)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("flumen-source-leader".into())
            .spawn(move || {
                while !stopped.load(Ordering::Acquire) {
                    // Records are not read: polling keeps the membership.
                    let _ = consumer.poll(Duration::from_millis(100));
                }
                consumer.unsubscribe();
            })
            .map_err(|e| CassandraError::Config(format!("starting the leadership thread: {e}")))?;
        Ok(Leadership {
            leader,
            stop,
            thread: Some(thread),
        })
    }

    /// Waits until this member is the leader.
    pub(crate) async fn acquired(&mut self) {
        let _ = self.leader.wait_for(|leader| *leader).await;
    }

    /// Whether this member leads now.
    pub(crate) fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }

    /// Waits until this member stops being the leader.
    pub(crate) async fn lost(&self) {
        let mut leader = self.leader.clone();
        let _ = leader.wait_for(|leader| !*leader).await;
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
