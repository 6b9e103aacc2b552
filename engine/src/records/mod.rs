//! Kafka records as the engine sees them: how keys and values turn into
//! Arrow columns (with the metadata columns `_key`, `_timestamp`,
//! `_partition`, `_offset`) and back, and what makes an input record bad.

mod decode;
mod encode;
mod json_check;

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

pub use decode::{BadRecord, Decoded, RecordDecoder, TimestampSource};
pub use encode::RecordEncoder;

/// A format that cannot work, or a record that cannot be encoded.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// A schema or format was declared in a way that cannot work.
    #[error("invalid format: {0}")]
    Invalid(String),
    /// Encoding a record for output failed.
    #[error("cannot encode a record for topic '{topic}': {reason}")]
    Encode {
        /// The destination topic.
        topic: String,
        /// Why it failed.
        reason: String,
    },
}

/// Result of the record formats.
pub type Result<T, E = FormatError> = std::result::Result<T, E>;

/// Column holding the record key.
pub const KEY_COLUMN: &str = "_key";
/// Column holding the record's event time (epoch ms, `Timestamp(ms)`).
pub const TIMESTAMP_COLUMN: &str = "_timestamp";
/// Column holding the source partition.
pub const PARTITION_COLUMN: &str = "_partition";
/// Column holding the source offset.
pub const OFFSET_COLUMN: &str = "_offset";
/// Column holding the value of a non-JSON format.
pub const VALUE_COLUMN: &str = "value";

/// Whether a column is flumen metadata (`_key`, `_timestamp`, ...) rather than data.
pub fn is_metadata_column(name: &str) -> bool {
    name.starts_with('_')
}

/// How the bytes of a key or value are interpreted.
#[derive(Debug, Clone)]
pub enum Format {
    /// A JSON object per record, decoded against `schema` (declared, or inferred
    /// from a sample with [`Format::json_inferred`]).
    Json {
        /// The declared fields. Non-nullable fields are required.
        schema: SchemaRef,
    },
    /// UTF-8 text, in a `Utf8` column.
    String,
    /// Raw bytes, in a `Binary` column.
    Bytes,
    /// A big-endian integer of 4 or 8 bytes (Kafka's Integer/Long serializers), in an `Int64` column.
    Int,
}

impl Format {
    /// JSON against a declared schema.
    pub fn json(schema: Schema) -> Self {
        Format::Json {
            schema: Arc::new(schema),
        }
    }

    /// JSON with a schema inferred from sample records (every field nullable).
    pub fn json_inferred<'a>(samples: impl IntoIterator<Item = &'a [u8]>) -> Result<Self> {
        let values = samples
            .into_iter()
            .map(serde_json::from_slice::<serde_json::Value>)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| FormatError::Invalid(format!("a sample record is not JSON: {e}")))?;
        if values.is_empty() {
            return Err(FormatError::Invalid(
                "cannot infer a JSON schema from no samples".into(),
            ));
        }
        let schema = arrow_json::reader::infer_json_schema_from_iterator(values.iter().map(Ok))
            .map_err(|e| FormatError::Invalid(format!("cannot infer a JSON schema: {e}")))?;
        Ok(Format::json(schema))
    }

    /// The Arrow type a key in this format decodes to.
    pub fn key_type(&self) -> DataType {
        match self {
            Format::Json { .. } | Format::String => DataType::Utf8,
            Format::Bytes => DataType::Binary,
            Format::Int => DataType::Int64,
        }
    }

    /// The Arrow fields a value in this format decodes to.
    pub fn value_fields(&self) -> Vec<Field> {
        match self {
            Format::Json { schema } => schema.fields().iter().map(|f| f.as_ref().clone()).collect(),
            Format::String => vec![Field::new(VALUE_COLUMN, DataType::Utf8, true)],
            Format::Bytes => vec![Field::new(VALUE_COLUMN, DataType::Binary, true)],
            Format::Int => vec![Field::new(VALUE_COLUMN, DataType::Int64, true)],
        }
    }

    /// A short name for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Format::Json { .. } => "json",
            Format::String => "string",
            Format::Bytes => "bytes",
            Format::Int => "int",
        }
    }
}

/// The metadata columns appended to every decoded batch.
pub fn metadata_fields(key_format: &Format) -> Vec<Field> {
    vec![
        Field::new(KEY_COLUMN, key_format.key_type(), true),
        Field::new(
            TIMESTAMP_COLUMN,
            DataType::Timestamp(TimeUnit::Millisecond, None),
            true,
        ),
        Field::new(PARTITION_COLUMN, DataType::Int32, false),
        Field::new(OFFSET_COLUMN, DataType::Int64, false),
    ]
}

/// Why a record could not be decoded. Each kind can have its own policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BadInputKind {
    /// The value is not valid JSON.
    MalformedJson,
    /// A field holds a value of the wrong type.
    WrongType,
    /// A required (non-nullable) field is missing or null.
    MissingField,
    /// The key is null but the topic requires keys.
    NullKey,
    /// The value is null (a tombstone) where a JSON object was expected.
    NullValue,
    /// Key plus value exceed the topic's record size limit.
    Oversized,
    /// The key does not match the key format (invalid UTF-8, wrong integer width).
    InvalidKey,
    /// The value does not match a non-JSON value format.
    InvalidValue,
    /// The record's event time is further ahead of the partition's stream
    /// time (or the wall clock, when later) than the topic allows.
    FutureTimestamp,
}

impl BadInputKind {
    /// Every kind.
    pub const ALL: [BadInputKind; 9] = [
        BadInputKind::MalformedJson,
        BadInputKind::WrongType,
        BadInputKind::MissingField,
        BadInputKind::NullKey,
        BadInputKind::NullValue,
        BadInputKind::Oversized,
        BadInputKind::InvalidKey,
        BadInputKind::InvalidValue,
        BadInputKind::FutureTimestamp,
    ];

    /// The kind's name in headers, metrics and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            BadInputKind::MalformedJson => "malformed_json",
            BadInputKind::WrongType => "wrong_type",
            BadInputKind::MissingField => "missing_field",
            BadInputKind::NullKey => "null_key",
            BadInputKind::NullValue => "null_value",
            BadInputKind::Oversized => "oversized",
            BadInputKind::InvalidKey => "invalid_key",
            BadInputKind::InvalidValue => "invalid_value",
            BadInputKind::FutureTimestamp => "future_timestamp",
        }
    }
}

impl std::fmt::Display for BadInputKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn infers_a_schema_from_samples() -> Result<()> {
        let format = Format::json_inferred([
            &br#"{"device":"a","temp":1.5,"n":3}"#[..],
            &br#"{"device":"b","temp":2}"#[..],
        ])?;
        let fields: Vec<_> = format
            .value_fields()
            .iter()
            .map(|f| (f.name().clone(), f.data_type().clone()))
            .collect();
        assert!(fields.contains(&("device".into(), DataType::Utf8)));
        assert!(fields.contains(&("temp".into(), DataType::Float64)));
        assert!(fields.contains(&("n".into(), DataType::Int64)));
        assert!(matches!(
            Format::json_inferred([&b"{"[..]]),
            Err(FormatError::Invalid(_))
        ));
        Ok(())
    }
}
