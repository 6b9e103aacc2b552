//! Topic administration: create, describe, count partitions.

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;

use crate::{KafkaConfig, KafkaError, Result};

/// A topic to create. Retention and cleanup policy are always set explicitly,
/// so that the topic does not depend on the broker's defaults.
#[derive(Debug, Clone)]
pub struct TopicSpec {
    /// Topic name.
    pub name: String,
    /// Number of partitions.
    pub partitions: i32,
    /// Replication factor.
    pub replication: i32,
    /// `retention.ms`; -1 keeps records forever.
    pub retention_ms: i64,
    /// `cleanup.policy`: `delete` or `compact`.
    pub cleanup_policy: String,
    /// `segment.ms` (`None`: the broker's default): how soon records become
    /// deletable by retention.
    pub segment_ms: Option<i64>,
}

impl TopicSpec {
    /// A `delete`-policy topic that keeps records forever (`retention.ms = -1`),
    /// with the broker's `default.replication.factor` (replication -1). Retention applies to record timestamps, and flumen writes
    /// event time into output timestamps, so a time-based retention would delete
    /// historical results at once.
    pub fn new(name: impl Into<String>, partitions: i32) -> Self {
        TopicSpec {
            name: name.into(),
            partitions,
            replication: -1,
            retention_ms: -1,
            cleanup_policy: "delete".into(),
            segment_ms: None,
        }
    }

    /// Sets the replication factor (-1: the broker's `default.replication.factor`).
    pub fn replication(mut self, replication: i32) -> Self {
        self.replication = replication;
        self
    }

    /// Sets `retention.ms`.
    pub fn retention_ms(mut self, retention_ms: i64) -> Self {
        self.retention_ms = retention_ms;
        self
    }

    /// Sets `segment.ms`.
    pub fn segment_ms(mut self, segment_ms: i64) -> Self {
        self.segment_ms = Some(segment_ms);
        self
    }

    /// Makes this a compacted topic.
    pub fn compacted(mut self) -> Self {
        self.cleanup_policy = "compact".into();
        self
    }
}

/// Administrative operations on one cluster.
pub struct Admin {
    admin: AdminClient<DefaultClientContext>,
    client_config: rdkafka::ClientConfig,
    metadata: BaseConsumer,
    brokers: String,
    timeout: Duration,
}

impl Admin {
    /// Connects (lazily) to the cluster described by `config`.
    pub fn new(config: &KafkaConfig) -> Result<Self> {
        let client_config = config.client_config(&[]);
        let admin = client_config
            .create()
            .map_err(|e| KafkaError::client("creating admin client", e))?;
        let metadata = client_config
            .create()
            .map_err(|e| KafkaError::client("creating metadata client", e))?;
        Ok(Admin {
            admin,
            client_config,
            metadata,
            brokers: config.brokers().to_string(),
            timeout: Duration::from_secs(30),
        })
    }

    /// Creates a topic; an existing topic with that name is left as it is.
    pub async fn create_topic(&self, spec: &TopicSpec) -> Result<()> {
        let retention = spec.retention_ms.to_string();
        let segment = spec.segment_ms.map(|ms| ms.to_string());
        let mut topic = NewTopic::new(
            &spec.name,
            spec.partitions,
            TopicReplication::Fixed(spec.replication),
        )
        .set("retention.ms", &retention)
        .set("cleanup.policy", &spec.cleanup_policy);
        if let Some(segment) = &segment {
            topic = topic.set("segment.ms", segment);
        }
        let options = AdminOptions::new().operation_timeout(Some(self.timeout));
        let results = self
            .admin
            .create_topics([&topic], &options)
            .await
            .map_err(|e| KafkaError::client(format!("creating topic '{}'", spec.name), e))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(KafkaError::client(
                        format!("creating topic '{name}'"),
                        rdkafka::error::KafkaError::AdminOp(code),
                    ))
                }
            }
        }
        self.wait_for_topic(&spec.name, Duration::from_secs(30))
            .await
            .map(|_| ())
    }

    /// Deletes a topic and waits until it is gone from metadata.
    pub async fn delete_topic(&self, topic: &str) -> Result<()> {
        let options = AdminOptions::new().operation_timeout(Some(self.timeout));
        let context = || format!("deleting topic '{topic}'");
        let results = self
            .admin
            .delete_topics(&[topic], &options)
            .await
            .map_err(|e| KafkaError::client(context(), e))?;
        for result in results {
            result.map_err(|(_, code)| {
                KafkaError::client(context(), rdkafka::error::KafkaError::AdminOp(code))
            })?;
        }
        let start = Instant::now();
        while self.partition_count(topic)?.is_some() {
            if start.elapsed() > self.timeout {
                return Err(KafkaError::Timeout {
                    what: format!("topic '{topic}' to disappear from metadata"),
                    waited_ms: start.elapsed().as_millis(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Asks the cluster for its metadata; succeeds once a broker answers.
    pub fn ping(&self, timeout: Duration) -> Result<usize> {
        self.metadata
            .fetch_metadata(None, timeout)
            .map(|m| m.brokers().len())
            .map_err(|e| KafkaError::client(format!("fetching metadata from {}", self.brokers), e))
    }

    /// The partition count of `topic`, or `None` when it does not exist.
    pub fn partition_count(&self, topic: &str) -> Result<Option<i32>> {
        let metadata = self
            .metadata
            .fetch_metadata(Some(topic), self.timeout)
            .map_err(|e| KafkaError::client(format!("fetching metadata of topic '{topic}'"), e))?;
        Ok(metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .and_then(|t| {
                if t.error().is_some() || t.partitions().is_empty() {
                    None
                } else {
                    Some(t.partitions().len() as i32)
                }
            }))
    }

    /// The partition count of `topic`, or a clear error when it does not exist.
    pub fn require_topic(&self, topic: &str) -> Result<i32> {
        self.partition_count(topic)?
            .ok_or_else(|| KafkaError::UnknownTopic {
                topic: topic.to_string(),
                brokers: self.brokers.clone(),
            })
    }

    /// Waits until `topic` shows up in metadata with all its partitions.
    pub async fn wait_for_topic(&self, topic: &str, deadline: Duration) -> Result<i32> {
        let start = Instant::now();
        loop {
            if let Some(count) = self.partition_count(topic)? {
                return Ok(count);
            }
            if start.elapsed() > deadline {
                return Err(KafkaError::Timeout {
                    what: format!("topic '{topic}' to appear in metadata"),
                    waited_ms: start.elapsed().as_millis(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The value of configuration `key` of `topic` as the broker reports it
    /// (`None` when the broker reports no such key).
    pub async fn topic_config(&self, topic: &str, key: &str) -> Result<Option<String>> {
        let options = AdminOptions::new().request_timeout(Some(self.timeout));
        let context = || format!("describing the configuration of topic '{topic}'");
        let results = self
            .admin
            .describe_configs([&ResourceSpecifier::Topic(topic)], &options)
            .await
            .map_err(|e| KafkaError::client(context(), e))?;
        for result in results {
            let resource = result.map_err(|code| {
                KafkaError::client(context(), rdkafka::error::KafkaError::AdminOp(code))
            })?;
            if let Some(entry) = resource.get(key) {
                return Ok(entry.value.clone());
            }
        }
        Ok(None)
    }

    /// The offsets `group` has committed for partitions `0..partitions` of
    /// `topic` (`None`: nothing committed), read without joining the group.
    pub fn group_offsets(
        &self,
        group: &str,
        topic: &str,
        partitions: i32,
    ) -> Result<Vec<Option<i64>>> {
        let context = || format!("reading the offsets group '{group}' committed for '{topic}'");
        let consumer: BaseConsumer = self
            .client_config
            .clone()
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .map_err(|e| KafkaError::client(context(), e))?;
        let mut list = rdkafka::TopicPartitionList::new();
        for p in 0..partitions {
            list.add_partition(topic, p);
        }
        // A group's coordinator may be loading or moving (a new group, a
        // broker that just started): retried for a while.
        let mut attempt = 0;
        let committed = loop {
            attempt += 1;
            match consumer.committed_offsets(list.clone(), self.timeout) {
                Ok(committed) => break committed,
                Err(e) => {
                    let error = KafkaError::client(context(), e);
                    if attempt >= 10 || !error.is_retriable() {
                        return Err(error);
                    }
                    tracing::debug!(%error, attempt, "retrying");
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        };
        Ok((0..partitions)
            .map(|p| {
                committed
                    .find_partition(topic, p)
                    .and_then(|e| match e.offset() {
                        rdkafka::Offset::Offset(o) => Some(o),
                        _ => None,
                    })
            })
            .collect())
    }

    /// The low and high watermarks (first offset, next offset) of one partition.
    pub fn watermarks(&self, topic: &str, partition: i32) -> Result<(i64, i64)> {
        self.metadata
            .fetch_watermarks(topic, partition, self.timeout)
            .map_err(|e| {
                KafkaError::client(format!("fetching watermarks of {topic}/{partition}"), e)
            })
    }
}
