//! Topics: where records come from and go to, and how they are read.

use std::collections::BTreeMap;

use crate::records::{BadInputKind, Format, TimestampSource};
use arrow::datatypes::Schema;

/// What to do with a record that cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum BadInputPolicy {
    /// Stop the application with an error naming topic, partition, offset and
    /// reason; offsets are committed up to (not including) the bad record, so a
    /// restart resumes at it. The default.
    #[default]
    Fail,
    /// Drop the record, count it (`flumen_bad_records_total`) and log it once
    /// per [`Topic::log_every`] records.
    Skip,
    /// Forward the raw record to this topic with the error in its headers
    /// (`flumen.error.kind`, `flumen.error.reason`, `flumen.source.topic`,
    /// `flumen.source.partition`, `flumen.source.offset`).
    DeadLetter(String),
}

impl BadInputPolicy {
    /// Shorthand for [`BadInputPolicy::DeadLetter`].
    pub fn dead_letter(topic: impl Into<String>) -> Self {
        BadInputPolicy::DeadLetter(topic.into())
    }

    /// The policy's name in metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            BadInputPolicy::Fail => "fail",
            BadInputPolicy::Skip => "skip",
            BadInputPolicy::DeadLetter(_) => "dead_letter",
        }
    }
}

/// Default bound on how far a record's event time may be ahead of its
/// partition's stream time or the wall clock, whichever is later (one day).
pub const DEFAULT_MAX_EVENT_TIME_AHEAD: std::time::Duration =
    std::time::Duration::from_secs(24 * 3600);

/// Default limit on key + value bytes of one input record: 1,000,000, the
/// producer's default `message.max.bytes`, so that what is read can also be
/// written (to a dead-letter topic, for example).
pub const DEFAULT_MAX_RECORD_BYTES: usize = 1_000_000;

/// A Kafka topic with its formats: the input of a frame or the output of `to_topic`.
///
/// Keys default to UTF-8 strings; values default to JSON.
#[derive(Debug, Clone)]
pub struct Topic {
    pub(crate) name: String,
    pub(crate) key_format: Format,
    pub(crate) value_format: Option<Format>,
    pub(crate) timestamp: TimestampSource,
    pub(crate) key_required: bool,
    pub(crate) max_record_bytes: usize,
    pub(crate) policy: BadInputPolicy,
    pub(crate) policies: BTreeMap<BadInputKind, BadInputPolicy>,
    pub(crate) key_column: Option<String>,
    pub(crate) log_every: u64,
    pub(crate) max_event_time_ahead: Option<std::time::Duration>,
}

impl Topic {
    fn with_value(name: impl Into<String>, value_format: Option<Format>) -> Self {
        Topic {
            name: name.into(),
            key_format: Format::String,
            value_format,
            timestamp: TimestampSource::Message,
            key_required: false,
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            policy: BadInputPolicy::Fail,
            policies: BTreeMap::new(),
            key_column: None,
            log_every: 1000,
            max_event_time_ahead: Some(DEFAULT_MAX_EVENT_TIME_AHEAD),
        }
    }

    /// A topic of JSON values. As an input it needs a schema ([`Topic::schema`]);
    /// as an output every non-metadata column is written.
    pub fn json(name: impl Into<String>) -> Self {
        Topic::with_value(name, None)
    }

    /// A topic of UTF-8 string values (column `value`).
    pub fn string(name: impl Into<String>) -> Self {
        Topic::with_value(name, Some(Format::String))
    }

    /// A topic of raw byte values (column `value`).
    pub fn bytes(name: impl Into<String>) -> Self {
        Topic::with_value(name, Some(Format::Bytes))
    }

    /// A topic of big-endian integer values (column `value`).
    pub fn int(name: impl Into<String>) -> Self {
        Topic::with_value(name, Some(Format::Int))
    }

    /// Declares the JSON value schema. Non-nullable fields are required.
    pub fn schema(mut self, schema: Schema) -> Self {
        self.value_format = Some(Format::json(schema));
        self
    }

    /// Sets the value format explicitly.
    pub fn value_format(mut self, format: Format) -> Self {
        self.value_format = Some(format);
        self
    }

    /// Sets the key format (default: UTF-8 string).
    pub fn key_format(mut self, format: Format) -> Self {
        self.key_format = format;
        self
    }

    /// Takes event time from a value field (`Int64` epoch ms or `Timestamp`)
    /// instead of the message timestamp.
    pub fn timestamp_field(mut self, field: impl Into<String>) -> Self {
        self.timestamp = TimestampSource::Field(field.into());
        self
    }

    /// Treats records without a key as bad input ([`BadInputKind::NullKey`]).
    pub fn require_key(mut self) -> Self {
        self.key_required = true;
        self
    }

    /// Records whose key plus value exceed `bytes` are bad input ([`BadInputKind::Oversized`]).
    pub fn max_record_bytes(mut self, bytes: usize) -> Self {
        self.max_record_bytes = bytes;
        self
    }

    /// How far a record's event time may be ahead of the partition's stream
    /// time (the largest event time accepted so far) or the wall clock,
    /// whichever is later; records beyond it are bad input
    /// ([`BadInputKind::FutureTimestamp`]). Default one day; `None`: no bound
    /// (for inputs whose event times lie in the future on purpose).
    pub fn max_event_time_ahead(mut self, ahead: Option<std::time::Duration>) -> Self {
        self.max_event_time_ahead = ahead;
        self
    }

    pub(crate) fn max_event_time_ahead_ms(&self) -> Option<i64> {
        self.max_event_time_ahead
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }

    /// The policy for every kind of bad input not given its own.
    pub fn on_bad_input(mut self, policy: BadInputPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The policy for one kind of bad input.
    pub fn on_bad_input_of(mut self, kind: BadInputKind, policy: BadInputPolicy) -> Self {
        self.policies.insert(kind, policy);
        self
    }

    /// With [`BadInputPolicy::Skip`], log one skipped record in every `n` (default 1000).
    pub fn log_every(mut self, n: u64) -> Self {
        self.log_every = n.max(1);
        self
    }

    /// As an output: take the record key from this column (default: keep `_key`).
    pub fn key_column(mut self, column: impl Into<String>) -> Self {
        self.key_column = Some(column.into());
        self
    }

    /// The topic name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The policy that applies to `kind`.
    pub fn policy_for(&self, kind: BadInputKind) -> &BadInputPolicy {
        self.policies.get(&kind).unwrap_or(&self.policy)
    }

    /// Every dead-letter topic this topic's policies name.
    pub(crate) fn dead_letter_topics(&self) -> Vec<&str> {
        let mut topics: Vec<&str> = std::iter::once(&self.policy)
            .chain(self.policies.values())
            .filter_map(|p| match p {
                BadInputPolicy::DeadLetter(t) => Some(t.as_str()),
                _ => None,
            })
            .collect();
        topics.sort_unstable();
        topics.dedup();
        topics
    }
}
