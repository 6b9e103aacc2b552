//! Owned, contiguous copies of consumed records, one micro-batch per partition.

use std::sync::Arc;

use rdkafka::message::{BorrowedMessage, Headers, OwnedHeaders};
use rdkafka::Message;

/// The consumed records of one partition, stored in contiguous buffers (no
/// allocation per record except for records that carry headers).
#[derive(Debug, Clone)]
pub struct RawBatch {
    topic: Arc<str>,
    partition: i32,
    data: Vec<u8>,
    keys: Vec<Option<(u32, u32)>>,
    values: Vec<Option<(u32, u32)>>,
    timestamps: Vec<Option<i64>>,
    offsets: Vec<i64>,
    headers: Vec<Option<OwnedHeaders>>,
}

impl RawBatch {
    /// An empty batch for `topic`/`partition`.
    pub fn new(topic: Arc<str>, partition: i32) -> Self {
        RawBatch {
            topic,
            partition,
            data: Vec::new(),
            keys: Vec::new(),
            values: Vec::new(),
            timestamps: Vec::new(),
            offsets: Vec::new(),
            headers: Vec::new(),
        }
    }

    fn append(&mut self, bytes: Option<&[u8]>) -> Option<(u32, u32)> {
        bytes.map(|b| {
            let start = self.data.len() as u32;
            self.data.extend_from_slice(b);
            (start, self.data.len() as u32)
        })
    }

    /// Appends a record.
    pub fn push(
        &mut self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        timestamp_ms: Option<i64>,
        offset: i64,
        headers: Option<OwnedHeaders>,
    ) {
        let key = self.append(key);
        let value = self.append(value);
        self.keys.push(key);
        self.values.push(value);
        self.timestamps.push(timestamp_ms);
        self.offsets.push(offset);
        self.headers.push(headers);
    }

    /// Appends a consumed message.
    pub fn push_message(&mut self, message: &BorrowedMessage<'_>) {
        let headers = message.headers().map(|h| h.detach());
        self.push(
            message.key(),
            message.payload(),
            message.timestamp().to_millis(),
            message.offset(),
            headers,
        );
    }

    /// Source topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Source topic, shared.
    pub fn topic_arc(&self) -> &Arc<str> {
        &self.topic
    }

    /// Source partition.
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.offsets.len()
    }

    /// Whether the batch has no records.
    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    /// Bytes of keys and values held.
    pub fn byte_size(&self) -> usize {
        self.data.len()
    }

    fn slice(&self, range: Option<(u32, u32)>) -> Option<&[u8]> {
        range.map(|(s, e)| &self.data[s as usize..e as usize])
    }

    /// Key of record `i`.
    pub fn key(&self, i: usize) -> Option<&[u8]> {
        self.slice(self.keys[i])
    }

    /// Value of record `i`.
    pub fn value(&self, i: usize) -> Option<&[u8]> {
        self.slice(self.values[i])
    }

    /// Message timestamp (epoch ms) of record `i`.
    pub fn timestamp(&self, i: usize) -> Option<i64> {
        self.timestamps[i]
    }

    /// Offset of record `i`.
    pub fn offset(&self, i: usize) -> i64 {
        self.offsets[i]
    }

    /// Headers of record `i`.
    pub fn headers(&self, i: usize) -> Option<&OwnedHeaders> {
        self.headers[i].as_ref()
    }

    /// Whether record `i` is a heartbeat (has a [`HEARTBEAT_HEADER`] header).
    pub fn is_heartbeat(&self, i: usize) -> bool {
        use rdkafka::message::Headers;
        self.headers(i)
            .is_some_and(|h| h.iter().any(|header| header.key == HEARTBEAT_HEADER))
    }

    /// The index of the record at `offset` (offsets ascend in a batch).
    pub fn index_of(&self, offset: i64) -> Option<usize> {
        self.offsets.binary_search(&offset).ok()
    }

    /// Offset of the last record (`None` when empty).
    pub fn last_offset(&self) -> Option<i64> {
        self.offsets.last().copied()
    }

    /// Offset of the first record (`None` when empty).
    pub fn first_offset(&self) -> Option<i64> {
        self.offsets.first().copied()
    }
}

/// The header that marks a record as a heartbeat: not a row, only a promise
/// from its producer that the partition's later records have message
/// timestamps at or after the heartbeat's. flumen moves the partition's event
/// time to it, so windows close while the input is quiet.
pub const HEARTBEAT_HEADER: &str = "flumen-heartbeat";

/// Copies the headers of `source` and appends `extra` (name, value) pairs.
pub fn headers_with(source: Option<&OwnedHeaders>, extra: &[(&str, &str)]) -> OwnedHeaders {
    let mut headers =
        OwnedHeaders::new_with_capacity(extra.len() + source.map_or(0, |h| h.count()));
    if let Some(source) = source {
        for header in source.iter() {
            headers = headers.insert(rdkafka::message::Header {
                key: header.key,
                value: header.value,
            });
        }
    }
    for (key, value) in extra {
        headers = headers.insert(rdkafka::message::Header {
            key,
            value: Some(*value),
        });
    }
    headers
}
