//! Producing test input and reading outputs back.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use flumen_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use flumen_kafka::rdkafka::message::Headers;
use flumen_kafka::rdkafka::{Message, Offset, TopicPartitionList};
use flumen_kafka::{Admin, DeliveryBatch, OutRecord, Producer};

use crate::{DevStack, TestkitError};

/// A name no other test run uses: `<prefix>-<pid>-<n>-<nanos>`.
pub fn unique_name(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{prefix}-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A record read back from a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRecord {
    /// Partition it was read from.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Its key.
    pub key: Option<Vec<u8>>,
    /// Its value.
    pub value: Option<Vec<u8>>,
    /// Its headers, as UTF-8 (lossy) name/value pairs.
    pub headers: Vec<(String, String)>,
}

impl ReadRecord {
    /// The key as UTF-8 text.
    pub fn key_str(&self) -> Option<String> {
        self.key
            .as_deref()
            .map(|k| String::from_utf8_lossy(k).into_owned())
    }

    /// The value parsed as JSON (`Null` when absent or not JSON).
    pub fn json(&self) -> serde_json::Value {
        self.value
            .as_deref()
            .and_then(|v| serde_json::from_slice(v).ok())
            .unwrap_or(serde_json::Value::Null)
    }

    /// The value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One record to produce: key, value, and optionally a fixed partition.
#[derive(Debug, Clone, Default)]
pub struct TestRecord {
    /// Key bytes (`None`: no key).
    pub key: Option<Vec<u8>>,
    /// Value bytes (`None`: tombstone).
    pub value: Option<Vec<u8>>,
    /// Partition (`None`: by key).
    pub partition: Option<i32>,
}

impl TestRecord {
    /// A keyed record with a value.
    pub fn new(key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Self {
        TestRecord {
            key: Some(key.as_ref().to_vec()),
            value: Some(value.as_ref().to_vec()),
            partition: None,
        }
    }

    /// Sends the record to a fixed partition.
    pub fn to_partition(mut self, partition: i32) -> Self {
        self.partition = Some(partition);
        self
    }
}

impl DevStack {
    /// Produces `records` to `topic` and waits until all are acknowledged.
    pub async fn produce(
        &self,
        topic: &str,
        records: impl IntoIterator<Item = TestRecord>,
    ) -> Result<usize, TestkitError> {
        let producer = Producer::new(&self.kafka_config())?;
        let batch = DeliveryBatch::new();
        let mut n = 0;
        for r in records {
            let record = OutRecord {
                topic,
                key: r.key.as_deref(),
                value: r.value.as_deref(),
                timestamp_ms: None,
                partition: r.partition,
            };
            producer.send(record, None, &batch).await?;
            n += 1;
        }
        batch.wait().await?;
        Ok(n)
    }

    /// Total records in `topic` (sum over partitions of high minus low watermark).
    pub fn record_count(&self, topic: &str) -> Result<i64, TestkitError> {
        let admin = Admin::new(&self.kafka_config())?;
        let partitions = admin.require_topic(topic)?;
        let mut total = 0;
        for p in 0..partitions {
            let (low, high) = admin.watermarks(topic, p)?;
            total += high - low;
        }
        Ok(total)
    }

    /// Waits until `topic` holds at least `count` records.
    pub async fn wait_for_count(
        &self,
        topic: &str,
        count: i64,
        deadline: Duration,
    ) -> Result<i64, TestkitError> {
        let start = Instant::now();
        loop {
            let n = self.record_count(topic)?;
            if n >= count {
                return Ok(n);
            }
            if start.elapsed() > deadline {
                return Err(TestkitError::Timeout(format!(
                    "topic '{topic}' holds {n} records, expected {count} within {deadline:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Reads every record of `topic` up to its current high watermarks, ordered
    /// by partition then offset.
    pub fn read_all(
        &self,
        topic: &str,
        deadline: Duration,
    ) -> Result<Vec<ReadRecord>, TestkitError> {
        let admin = Admin::new(&self.kafka_config())?;
        let partitions = admin.require_topic(topic)?;
        let mut ends = HashMap::new();
        let mut assignment = TopicPartitionList::new();
        for p in 0..partitions {
            let (low, high) = admin.watermarks(topic, p)?;
            if high > low {
                ends.insert(p, high);
                assignment
                    .add_partition_offset(topic, p, Offset::Offset(low))
                    .map_err(|e| flumen_kafka::KafkaError::client("assigning", e))?;
            }
        }
        let mut out = Vec::new();
        if ends.is_empty() {
            return Ok(out);
        }
        let consumer: BaseConsumer = self
            .kafka_config()
            .client_config(&[
                ("group.id", "flumen-testkit-reader"),
                ("enable.auto.commit", "false"),
            ])
            .create()
            .map_err(|e| flumen_kafka::KafkaError::client("creating reader", e))?;
        consumer
            .assign(&assignment)
            .map_err(|e| flumen_kafka::KafkaError::client("assigning reader", e))?;
        let start = Instant::now();
        let mut done: HashMap<i32, bool> = ends.keys().map(|&p| (p, false)).collect();
        while done.values().any(|d| !d) {
            if start.elapsed() > deadline {
                return Err(TestkitError::Timeout(format!(
                    "reading '{topic}': {} records after {deadline:?}, partitions not finished: {:?}",
                    out.len(),
                    done.iter().filter(|(_, d)| !**d).map(|(p, _)| p).collect::<Vec<_>>()
                )));
            }
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    let headers = m
                        .headers()
                        .map(|hs| {
                            hs.iter()
                                .map(|h| {
                                    (
                                        h.key.to_string(),
                                        h.value
                                            .map(|v| String::from_utf8_lossy(v).into_owned())
                                            .unwrap_or_default(),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    if m.offset() + 1 >= ends[&m.partition()] {
                        done.insert(m.partition(), true);
                    }
                    if m.offset() < ends[&m.partition()] {
                        out.push(ReadRecord {
                            partition: m.partition(),
                            offset: m.offset(),
                            key: m.key().map(<[u8]>::to_vec),
                            value: m.payload().map(<[u8]>::to_vec),
                            headers,
                        });
                    }
                }
                Some(Err(e)) => {
                    return Err(
                        flumen_kafka::KafkaError::client(format!("reading '{topic}'"), e).into(),
                    )
                }
                None => {}
            }
        }
        out.sort_by_key(|r| (r.partition, r.offset));
        Ok(out)
    }
}
