//! Producing test input and reading outputs back.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flumen_kafka::rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use flumen_kafka::rdkafka::error::KafkaError;
use flumen_kafka::rdkafka::message::{BorrowedMessage, Headers};
use flumen_kafka::rdkafka::types::RDKafkaErrorCode;
use flumen_kafka::rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
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
    /// Produces `records` to `topic` (batched as the producer likes) and waits
    /// until all are acknowledged.
    pub async fn produce(
        &self,
        topic: &str,
        records: impl IntoIterator<Item = TestRecord>,
    ) -> Result<usize, TestkitError> {
        self.produce_with(&self.kafka_config(), topic, records)
            .await
    }

    /// Produces `records` one record per producer request (`linger.ms=0`,
    /// one message per batch): input that trickles in, as from many clients.
    pub async fn produce_one_by_one(
        &self,
        topic: &str,
        records: impl IntoIterator<Item = TestRecord>,
    ) -> Result<usize, TestkitError> {
        let config = self
            .kafka_config()
            .set("linger.ms", "0")
            .set("batch.num.messages", "1");
        self.produce_with(&config, topic, records).await
    }

    async fn produce_with(
        &self,
        config: &flumen_kafka::KafkaConfig,
        topic: &str,
        records: impl IntoIterator<Item = TestRecord>,
    ) -> Result<usize, TestkitError> {
        let producer = Producer::new(config)?;
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

    /// Waits until `topic` holds at least `count` records (counted by reading).
    pub async fn wait_for_count(
        &self,
        topic: &str,
        count: usize,
        deadline: Duration,
    ) -> Result<usize, TestkitError> {
        let reader = Reader::new(self, topic, Isolation::ReadUncommitted)?;
        let topic = topic.to_string();
        tokio::task::spawn_blocking(move || {
            let start = Instant::now();
            let mut seen = 0;
            while seen < count {
                if start.elapsed() > deadline {
                    return Err(TestkitError::Timeout(format!(
                        "topic '{topic}' holds {seen} records, expected {count} within {deadline:?}"
                    )));
                }
                if let Some(Polled::Record(_)) = reader.next()? {
                    seen += 1;
                }
            }
            Ok(seen)
        })
        .await
        .map_err(|e| TestkitError::Timeout(format!("reader task: {e}")))?
    }

    /// Reads every record of `topic` written so far (`read_uncommitted`),
    /// ordered by partition then offset. Call it once the writers have finished.
    pub async fn read_all(
        &self,
        topic: &str,
        deadline: Duration,
    ) -> Result<Vec<ReadRecord>, TestkitError> {
        self.read_to_end(topic, Isolation::ReadUncommitted, deadline)
            .await
    }

    /// Every record of `topic` a `read_committed` consumer sees, by partition
    /// and offset, up to each partition's last stable offset. Call it once the
    /// writers have ended their transactions.
    pub async fn read_committed(
        &self,
        topic: &str,
        deadline: Duration,
    ) -> Result<Vec<ReadRecord>, TestkitError> {
        self.read_to_end(topic, Isolation::ReadCommitted, deadline)
            .await
    }

    /// Hands every record of `topic` a `read_committed` consumer sees to
    /// `visit` as it comes (each partition's in offset order, partitions
    /// interleaved), up to each partition's last stable offset, without
    /// keeping them; stops at `visit`'s first error. Returns how many
    /// records it saw.
    pub async fn visit_committed(
        &self,
        topic: &str,
        deadline: Duration,
        visit: impl FnMut(ReadRecord) -> Result<(), String> + Send + 'static,
    ) -> Result<usize, TestkitError> {
        self.visit_to_end(topic, Isolation::ReadCommitted, deadline, visit)
            .await
    }

    /// Reads each partition from its start until the consumer reports its end.
    async fn read_to_end(
        &self,
        topic: &str,
        isolation: Isolation,
        deadline: Duration,
    ) -> Result<Vec<ReadRecord>, TestkitError> {
        let records = Arc::new(Mutex::new(Vec::new()));
        let collected = Arc::clone(&records);
        self.visit_to_end(topic, isolation, deadline, move |record| {
            collected.lock().map_err(|e| e.to_string())?.push(record);
            Ok(())
        })
        .await?;
        // A panic in `visit` (the only way to poison the lock) already failed the read.
        let mut out = records
            .lock()
            .map(|mut r| std::mem::take(&mut *r))
            .unwrap_or_default();
        out.sort_by_key(|r| (r.partition, r.offset));
        Ok(out)
    }

    /// Hands each record to `visit` until every partition reported its end.
    async fn visit_to_end(
        &self,
        topic: &str,
        isolation: Isolation,
        deadline: Duration,
        mut visit: impl FnMut(ReadRecord) -> Result<(), String> + Send + 'static,
    ) -> Result<usize, TestkitError> {
        let reader = Reader::new(self, topic, isolation)?;
        let partitions = reader.partitions;
        let topic = topic.to_string();
        tokio::task::spawn_blocking(move || {
            let start = Instant::now();
            let mut ended: HashSet<i32> = HashSet::new();
            let mut seen = 0;
            while ended.len() < partitions as usize {
                if start.elapsed() > deadline {
                    return Err(TestkitError::Timeout(format!(
                        "reading '{topic}': {seen} records, {} of {partitions} partitions \
                         read to their end after {deadline:?}",
                        ended.len()
                    )));
                }
                match reader.next()? {
                    Some(Polled::Record(record)) => {
                        seen += 1;
                        visit(record).map_err(TestkitError::Check)?;
                    }
                    Some(Polled::End(partition)) => {
                        ended.insert(partition);
                    }
                    None => {}
                }
            }
            Ok(seen)
        })
        .await
        .map_err(|e| TestkitError::Timeout(format!("reader task: {e}")))?
    }
}

/// The isolation level of a [`Reader`].
#[derive(Debug, Clone, Copy)]
enum Isolation {
    ReadUncommitted,
    ReadCommitted,
}

/// What one poll of a [`Reader`] gave.
enum Polled {
    Record(ReadRecord),
    /// The consumer reached the end of this partition (the high watermark,
    /// or the last stable offset under `read_committed`).
    End(i32),
}

/// The [`Reader`]'s client context: librdkafka also reports each partition
/// end as a client error, which the default context logs at ERROR; the reader
/// takes the ends from its polls, so those reports are dropped here.
struct EndsQuietly;

impl ClientContext for EndsQuietly {
    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(error, KafkaError::Global(RDKafkaErrorCode::PartitionEOF)) {
            tracing::error!(%error, reason, "testkit reader");
        }
    }
}

impl ConsumerContext for EndsQuietly {}

/// Reads a topic from the beginning of every partition, outside any group.
struct Reader {
    consumer: BaseConsumer<EndsQuietly>,
    topic: String,
    partitions: i32,
}

impl Reader {
    fn new(stack: &DevStack, topic: &str, isolation: Isolation) -> Result<Self, TestkitError> {
        let partitions = Admin::new(&stack.kafka_config())?.require_topic(topic)?;
        let isolation = match isolation {
            Isolation::ReadUncommitted => "read_uncommitted",
            Isolation::ReadCommitted => "read_committed",
        };
        let consumer: BaseConsumer<EndsQuietly> = stack
            .kafka_config()
            .client_config(&[
                ("group.id", "flumen-testkit-reader"),
                ("enable.auto.commit", "false"),
                ("enable.partition.eof", "true"),
                ("isolation.level", isolation),
            ])
            .create_with_context(EndsQuietly)
            .map_err(|e| flumen_kafka::KafkaError::client("creating reader", e))?;
        let mut assignment = TopicPartitionList::new();
        for p in 0..partitions {
            assignment
                .add_partition_offset(topic, p, Offset::Beginning)
                .map_err(|e| flumen_kafka::KafkaError::client("assigning", e))?;
        }
        consumer
            .assign(&assignment)
            .map_err(|e| flumen_kafka::KafkaError::client("assigning reader", e))?;
        Ok(Reader {
            consumer,
            topic: topic.to_string(),
            partitions,
        })
    }

    /// The next record or partition end, or `None` when nothing came within 100 ms.
    fn next(&self) -> Result<Option<Polled>, TestkitError> {
        match self.consumer.poll(Duration::from_millis(100)) {
            None => Ok(None),
            Some(Err(KafkaError::PartitionEOF(partition))) => Ok(Some(Polled::End(partition))),
            Some(Err(e)) => {
                Err(flumen_kafka::KafkaError::client(format!("reading '{}'", self.topic), e).into())
            }
            Some(Ok(m)) => Ok(Some(Polled::Record(read_record(&m)))),
        }
    }
}

fn read_record(m: &BorrowedMessage<'_>) -> ReadRecord {
    let headers = m
        .headers()
        .map(|hs| {
            hs.iter()
                .map(|h| {
                    let value = h.value.map(|v| String::from_utf8_lossy(v).into_owned());
                    (h.key.to_string(), value.unwrap_or_default())
                })
                .collect()
        })
        .unwrap_or_default();
    ReadRecord {
        partition: m.partition(),
        offset: m.offset(),
        key: m.key().map(<[u8]>::to_vec),
        value: m.payload().map(<[u8]>::to_vec),
        headers,
    }
}
