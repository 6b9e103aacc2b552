//! # flumen-kafka
//!
//! The Kafka side of flumen: a consumer-group member with manual commits and
//! rebalance callbacks ([`GroupConsumer`]), an idempotent producer whose deliveries
//! are tracked per batch ([`Producer`]), topic administration ([`Admin`]) and record
//! formats that decode straight into Arrow ([`format`]).
//!
//! ```
//! use arrow::datatypes::{DataType, Field, Schema};
//! use flumen_kafka::format::{Format, RecordDecoder, TimestampSource};
//! use flumen_kafka::RawBatch;
//!
//! let value = Format::json(Schema::new(vec![
//!     Field::new("device", DataType::Utf8, false),
//!     Field::new("temp", DataType::Float64, true),
//! ]));
//! let decoder = RecordDecoder::new(Format::String, value, TimestampSource::Message, false, 1 << 20)?;
//! let mut raw = RawBatch::new("readings".into(), 0);
//! raw.push(Some(b"dev-1"), Some(br#"{"device":"dev-1","temp":21.5}"#), Some(1_000), 0, None);
//! raw.push(Some(b"dev-2"), Some(br#"{"device":"dev-2","temp":"#), Some(1_001), 1, None);
//! let decoded = decoder.decode(&raw)?;
//! assert_eq!(decoded.batch.num_rows(), 1);
//! assert_eq!(decoded.bad[0].index, 1);
//! # Ok::<(), flumen_kafka::KafkaError>(())
//! ```

mod admin;
mod config;
mod consumer;
mod error;
pub mod format;
mod producer;
mod reader;
mod record;

pub use admin::{Admin, TopicSpec};
pub use config::{is_secret_property, redacted, KafkaConfig};
pub use consumer::{
    AutoOffsetReset, GroupConsumer, GroupMetadata, ListenerContext, RebalanceListener,
    TopicPartition, FETCH_DEFAULTS,
};
pub use error::{KafkaError, Result};
pub use producer::{DeliveryBatch, DeliveryContext, DeliveryTicket, OutRecord, Producer};
pub use reader::{read_partition, PartitionRecord};
pub use record::{headers_with, RawBatch, HEARTBEAT_HEADER};

/// Re-export of the librdkafka binding, for callers that need its types.
pub use rdkafka;
