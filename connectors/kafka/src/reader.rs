//! Reading one partition from its beginning to its end, outside any consumer
//! group: what restoring a state store from its changelog needs.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError as RdKafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::config::KafkaConfig;
use crate::consumer::{FETCH_MAX_BYTES, FETCH_QUEUE_BACKOFF};
use crate::error::{KafkaError, Result};

/// One record met by [`read_partition`].
pub struct PartitionRecord<'a> {
    /// Its offset.
    pub offset: i64,
    /// Its key.
    pub key: Option<&'a [u8]>,
    /// Its value (`None`: a tombstone).
    pub value: Option<&'a [u8]>,
    /// The partition's high watermark when reading started, for progress
    /// reports (only a hint: some brokers report less than the end).
    pub end_hint: i64,
    headers: Option<&'a rdkafka::message::BorrowedHeaders>,
}

impl std::fmt::Debug for PartitionRecord<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionRecord")
            .field("offset", &self.offset)
            .field("key", &self.key)
            .field("value", &self.value)
            .finish()
    }
}

impl PartitionRecord<'_> {
    /// The value of header `name`, as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers?
            .iter()
            .find(|h| h.key == name)
            .and_then(|h| std::str::from_utf8(h.value?).ok())
    }
}

/// The reader's client context: the end of the partition, which the reader
/// asks for, is not reported as a global error.
struct ReaderContext;

impl ClientContext for ReaderContext {
    fn error(&self, error: RdKafkaError, reason: &str) {
        match error {
            RdKafkaError::Global(rdkafka::types::RDKafkaErrorCode::PartitionEOF) => {}
            error => tracing::error!("librdkafka: {error}: {reason}"),
        }
    }
}

impl ConsumerContext for ReaderContext {}

/// Reads `topic` partition `partition` from its first record until its end
/// (the broker's end-of-partition signal) or until `each` breaks; returns the
/// records read. Fails when no progress is made for `stall` (broker gone).
pub fn read_partition(
    config: &KafkaConfig,
    topic: &str,
    partition: i32,
    stall: Duration,
    each: impl FnMut(PartitionRecord<'_>) -> ControlFlow<()>,
) -> Result<u64> {
    read_partition_from(config, (topic, partition), None, stall, each)
}

/// [`read_partition`] from offset `from` (`None`: the first record; an
/// offset retention deleted: the first record kept).
pub fn read_partition_from(
    config: &KafkaConfig,
    (topic, partition): (&str, i32),
    from: Option<i64>,
    stall: Duration,
    mut each: impl FnMut(PartitionRecord<'_>) -> ControlFlow<()>,
) -> Result<u64> {
    let consumer: BaseConsumer<ReaderContext> = config
        .client_config(&[
            ("group.id", "flumen-partition-reader"),
            ("enable.auto.commit", "false"),
            ("enable.partition.eof", "true"),
            ("auto.offset.reset", "earliest"),
            FETCH_MAX_BYTES,
            ("max.partition.fetch.bytes", "10485760"),
            FETCH_QUEUE_BACKOFF,
        ])
        .create_with_context(ReaderContext)
        .map_err(|e| KafkaError::client("creating a partition reader", e))?;
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(
            topic,
            partition,
            from.map_or(Offset::Beginning, Offset::Offset),
        )
        .map_err(|e| KafkaError::client(format!("reading {topic}/{partition}"), e))?;
    consumer
        .assign(&assignment)
        .map_err(|e| KafkaError::client(format!("reading {topic}/{partition}"), e))?;
    let end_hint = consumer
        .fetch_watermarks(topic, partition, Duration::from_secs(10))
        .map_or(0, |(_, high)| high);
    let mut read = 0u64;
    let mut progress = Instant::now();
    loop {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                read += 1;
                progress = Instant::now();
                let record = PartitionRecord {
                    offset: message.offset(),
                    key: message.key(),
                    value: message.payload(),
                    end_hint,
                    headers: message.headers(),
                };
                if each(record).is_break() {
                    return Ok(read);
                }
            }
            Some(Err(RdKafkaError::PartitionEOF(_))) => return Ok(read),
            Some(Err(e)) => {
                return Err(KafkaError::client(
                    format!("reading {topic}/{partition}"),
                    e,
                ))
            }
            None if progress.elapsed() > stall => {
                return Err(KafkaError::Timeout {
                    what: format!(
                        "the next record or the end of {topic}/{partition} ({read} records read)"
                    ),
                    waited_ms: stall.as_millis(),
                })
            }
            None => {}
        }
    }
}
