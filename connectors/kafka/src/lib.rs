//! # flumen-kafka
//!
//! The Kafka side of flumen, its transport: a consumer-group member with
//! manual commits and rebalance callbacks ([`GroupConsumer`]), an idempotent
//! or transactional producer whose deliveries are tracked per batch
//! ([`Producer`]), topic administration ([`Admin`]), partition readers, and
//! [`RawBatch`]es of records copied out of the consumer. What records mean
//! (formats, metadata columns, bad input) is the engine's (`flumen::format`).
//!
//! ```
//! use flumen_kafka::RawBatch;
//!
//! let mut raw = RawBatch::new("readings".into(), 0);
//! raw.push(Some(b"dev-1"), Some(br#"{"device":"dev-1","temp":21.5}"#), Some(1_000), 0, None);
//! assert_eq!((raw.len(), raw.first_offset()), (1, Some(0)));
//! ```

mod admin;
mod allocator;
mod config;
mod consumer;
mod error;
mod producer;
mod reader;
mod record;

pub use admin::{Admin, TopicSpec};
pub use allocator::JEMALLOC;
pub use config::{is_secret_property, redacted, KafkaConfig};
pub use consumer::{
    AutoOffsetReset, GroupConsumer, GroupMetadata, ListenerContext, RebalanceListener,
    TopicPartition, FETCH_DEFAULTS,
};
pub use error::{KafkaError, Result};
pub use producer::{DeliveryBatch, DeliveryContext, DeliveryTicket, OutRecord, Producer};
pub use reader::{read_partition, read_partition_from, PartitionRecord};
pub use record::{headers_with, RawBatch, HEARTBEAT_HEADER};

/// Re-export of the librdkafka binding, for callers that need its types.
pub use rdkafka;
