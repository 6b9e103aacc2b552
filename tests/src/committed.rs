//! Reading what a `read_committed` consumer must see, independently of the
//! broker's help.
//!
//! A Kafka broker answers `read_committed` fetches with the list of aborted
//! transactions in the range, and the client drops their records. Tansu 0.6.0
//! always sends an empty list, so librdkafka hands out the records of aborted
//! transactions too. This reader fetches the raw record batches over the Kafka
//! protocol (`kafka-protocol` codecs) and applies the transaction markers
//! itself: records of a producer's transaction are kept until its commit
//! marker and dropped at its abort marker; records of a transaction that is
//! still open are not returned.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flumen_kafka::Admin;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{
    ApiKey, FetchRequest, FetchResponse, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
use kafka_protocol::records::{Record, RecordBatchDecoder};

use crate::{DevStack, ReadRecord, TestkitError};

/// Fetch v11: the last version with topic names and non-flexible headers.
const FETCH_VERSION: i16 = 11;

/// Control record type of an abort marker (the key's second int16).
const ABORT: i16 = 0;

impl DevStack {
    /// Every record of `topic` a `read_committed` consumer must see, by
    /// partition and offset, read from the start of each partition to its end.
    /// Call it once the writers have ended their transactions.
    pub async fn read_committed(
        &self,
        topic: &str,
        deadline: Duration,
    ) -> Result<Vec<ReadRecord>, TestkitError> {
        let partitions = Admin::new(&self.kafka_config())?.require_topic(topic)?;
        let brokers = self.brokers().to_string();
        let topic = topic.to_string();
        tokio::task::spawn_blocking(move || {
            let mut connection = Connection::open(&brokers, deadline)?;
            let mut out = Vec::new();
            for partition in 0..partitions {
                out.extend(connection.read_partition(&topic, partition, deadline)?);
            }
            Ok(out)
        })
        .await
        .map_err(|e| TestkitError::Timeout(format!("committed reader task: {e}")))?
    }
}

fn protocol_error(context: &str, error: impl std::fmt::Display) -> TestkitError {
    TestkitError::Protocol(format!("{context}: {error}"))
}

/// One blocking connection to the (single) dev broker.
struct Connection {
    stream: TcpStream,
    correlation: i32,
}

impl Connection {
    fn open(brokers: &str, timeout: Duration) -> Result<Self, TestkitError> {
        let address = brokers.split(',').next().unwrap_or(brokers);
        let stream = TcpStream::connect(address)
            .map_err(TestkitError::io(format!("connecting to {address}")))?;
        stream
            .set_read_timeout(Some(timeout))
            .map_err(TestkitError::io("setting a read timeout"))?;
        Ok(Connection {
            stream,
            correlation: 0,
        })
    }

    /// One Fetch round trip for `partition` from `offset`; the raw records.
    fn fetch(&mut self, topic: &str, partition: i32, offset: i64) -> Result<Bytes, TestkitError> {
        self.correlation += 1;
        let header = RequestHeader::default()
            .with_request_api_key(ApiKey::Fetch as i16)
            .with_request_api_version(FETCH_VERSION)
            .with_correlation_id(self.correlation)
            .with_client_id(Some(StrBytes::from_static_str("flumen-testkit")));
        let request = FetchRequest::default()
            .with_replica_id((-1).into())
            .with_max_wait_ms(0)
            .with_min_bytes(0)
            .with_max_bytes(16 << 20)
            // Read uncommitted: the markers decide, not the broker.
            .with_isolation_level(0)
            .with_session_epoch(-1)
            .with_topics(vec![FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(partition)
                    .with_fetch_offset(offset)
                    .with_log_start_offset(-1)
                    .with_partition_max_bytes(8 << 20)])]);
        let mut body = BytesMut::new();
        let encode = |e| protocol_error("encoding a fetch request", e);
        header
            .encode(&mut body, FetchRequest::header_version(FETCH_VERSION))
            .map_err(encode)?;
        request.encode(&mut body, FETCH_VERSION).map_err(encode)?;
        let mut frame = BytesMut::with_capacity(body.len() + 4);
        frame.put_i32(body.len() as i32);
        frame.extend_from_slice(&body);
        self.stream
            .write_all(&frame)
            .map_err(TestkitError::io("sending a fetch request"))?;
        let mut size = [0u8; 4];
        self.stream
            .read_exact(&mut size)
            .map_err(TestkitError::io("reading a fetch response"))?;
        let mut response = vec![0u8; i32::from_be_bytes(size).max(0) as usize];
        self.stream
            .read_exact(&mut response)
            .map_err(TestkitError::io("reading a fetch response"))?;
        let mut response = Bytes::from(response);
        let decode = |e| protocol_error("decoding a fetch response", e);
        let header =
            ResponseHeader::decode(&mut response, FetchResponse::header_version(FETCH_VERSION))
                .map_err(decode)?;
        if header.correlation_id != self.correlation {
            return Err(protocol_error(
                "fetch response",
                format!(
                    "correlation id {} for request {}",
                    header.correlation_id, self.correlation
                ),
            ));
        }
        let fetched = FetchResponse::decode(&mut response, FETCH_VERSION).map_err(decode)?;
        let data = fetched
            .responses
            .into_iter()
            .flat_map(|t| t.partitions)
            .find(|p| p.partition_index == partition)
            .ok_or_else(|| protocol_error("fetch response", "the partition is missing"))?;
        if data.error_code != 0 {
            return Err(protocol_error(
                &format!("fetching {topic}/{partition} at {offset}"),
                format!("error code {}", data.error_code),
            ));
        }
        Ok(data.records.unwrap_or_default())
    }

    /// The records of one partition a `read_committed` consumer must see.
    fn read_partition(
        &mut self,
        topic: &str,
        partition: i32,
        deadline: Duration,
    ) -> Result<Vec<ReadRecord>, TestkitError> {
        let started = Instant::now();
        let mut visible = Vec::new();
        let mut open: HashMap<i64, Vec<Record>> = HashMap::new();
        let mut next = 0i64;
        loop {
            if started.elapsed() > deadline {
                return Err(TestkitError::Timeout(format!(
                    "reading {topic}/{partition} with transaction markers: at offset {next} after {deadline:?}"
                )));
            }
            let mut raw = self.fetch(topic, partition, next)?;
            let mut progressed = false;
            while raw.has_remaining() {
                let set = RecordBatchDecoder::decode(&mut raw)
                    .map_err(|e| protocol_error("decoding a record batch", e))?;
                for record in set.records {
                    if record.offset < next {
                        continue;
                    }
                    next = record.offset + 1;
                    progressed = true;
                    if record.control {
                        let kind = record
                            .key
                            .as_ref()
                            .filter(|k| k.len() >= 4)
                            .map(|k| i16::from_be_bytes([k[2], k[3]]));
                        let records = open.remove(&record.producer_id).unwrap_or_default();
                        if kind != Some(ABORT) {
                            visible.extend(records);
                        }
                    } else if record.transactional {
                        open.entry(record.producer_id).or_default().push(record);
                    } else {
                        visible.push(record);
                    }
                }
            }
            if !progressed {
                break;
            }
        }
        visible.sort_by_key(|r| r.offset);
        Ok(visible
            .into_iter()
            .map(|r| ReadRecord {
                partition,
                offset: r.offset,
                key: r.key.map(|k| k.to_vec()),
                value: r.value.map(|v| v.to_vec()),
                headers: r
                    .headers
                    .into_iter()
                    .map(|(k, v)| {
                        let value = v.map(|v| String::from_utf8_lossy(&v).into_owned());
                        (k.to_string(), value.unwrap_or_default())
                    })
                    .collect(),
            })
            .collect())
    }
}
