//! Raw records -> Arrow `RecordBatch`, separating records that cannot be decoded.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BinaryBuilder, BooleanArray, Int32Array, Int64Array, Int64Builder,
    RecordBatch, StringBuilder, TimestampMillisecondArray,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Schema, SchemaRef, TimeUnit};
use arrow_json::ReaderBuilder;

use super::{json_check, metadata_fields, BadInputKind, Format};
use super::{FormatError, Result};
use flumen_kafka::RawBatch;

/// Where a record's event time comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum TimestampSource {
    /// The Kafka message timestamp (default).
    #[default]
    Message,
    /// A field of the value: `Int64` epoch milliseconds or an Arrow `Timestamp`.
    Field(String),
}

/// A record that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRecord {
    /// Index of the record in its [`RawBatch`].
    pub index: usize,
    /// What kind of problem it has.
    pub kind: BadInputKind,
    /// A human-readable reason naming the field where there is one.
    pub reason: String,
}

/// The result of decoding one [`RawBatch`].
#[derive(Debug)]
pub struct Decoded {
    /// The decoded records, value columns first, then the metadata columns.
    pub batch: RecordBatch,
    /// For each row of `batch`, the index of its record in the raw batch (ascending).
    pub rows: Vec<u32>,
    /// The records that could not be decoded, in index order.
    pub bad: Vec<BadRecord>,
    /// The latest message timestamp of the batch's heartbeats (records with
    /// a [`HEARTBEAT_HEADER`](flumen_kafka::HEARTBEAT_HEADER) header; they are not rows).
    pub heartbeat: Option<i64>,
}

/// Decodes raw records of one topic into Arrow batches.
#[derive(Debug, Clone)]
pub struct RecordDecoder {
    key_format: Format,
    value_format: Format,
    key_required: bool,
    max_record_bytes: usize,
    timestamp_field: Option<usize>,
    schema: SchemaRef,
}

impl RecordDecoder {
    /// A decoder for records with the given key and value formats. Fails when the
    /// timestamp field does not exist or has a type that is not a time.
    pub fn new(
        key_format: Format,
        value_format: Format,
        timestamp: TimestampSource,
        key_required: bool,
        max_record_bytes: usize,
    ) -> Result<Self> {
        let value_fields = value_format.value_fields();
        let timestamp_field = match &timestamp {
            TimestampSource::Message => None,
            TimestampSource::Field(name) => {
                let index = value_fields
                    .iter()
                    .position(|f| f.name() == name)
                    .ok_or_else(|| {
                        FormatError::Invalid(format!(
                            "timestamp field '{name}' is not in the value schema (fields: {})",
                            value_fields
                                .iter()
                                .map(|f| f.name().as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ))
                    })?;
                match value_fields[index].data_type() {
                    DataType::Int64 | DataType::Timestamp(..) => Some(index),
                    other => {
                        return Err(FormatError::Invalid(format!(
                            "timestamp field '{name}' has type {other}; expected Int64 (epoch ms) or Timestamp"
                        )))
                    }
                }
            }
        };
        let mut fields = value_fields;
        fields.extend(metadata_fields(&key_format));
        Ok(RecordDecoder {
            key_format,
            value_format,
            key_required,
            max_record_bytes,
            timestamp_field,
            schema: Arc::new(Schema::new(fields)),
        })
    }

    /// The schema of decoded batches.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Decodes `raw`; records that cannot be decoded are listed in [`Decoded::bad`].
    pub fn decode(&self, raw: &RawBatch) -> Result<Decoded> {
        let (candidates, mut bad, heartbeat) = self.screen(raw);
        let (values, rows) = match &self.value_format {
            Format::Json { schema } => decode_json(schema, raw, &candidates, &mut bad)?,
            other => (decode_plain(other, raw, &candidates), candidates),
        };
        let (mut columns, rows, timestamps) = self.event_times(raw, values, rows, &mut bad)?;
        bad.sort_by_key(|b| b.index);
        columns.push(self.key_column(raw, &rows));
        columns.push(Arc::new(timestamps));
        columns.push(Arc::new(Int32Array::from(vec![
            raw.partition();
            rows.len()
        ])));
        columns.push(Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|&i| raw.offset(i as usize)),
        )));
        let batch = RecordBatch::try_new(Arc::clone(&self.schema), columns)
            .map_err(|e| FormatError::Invalid(format!("assembling decoded batch: {e}")))?;
        Ok(Decoded {
            batch,
            rows,
            bad,
            heartbeat,
        })
    }

    /// Sorts the records of `raw` into candidates for decoding, bad records
    /// and heartbeats (their latest timestamp).
    fn screen(&self, raw: &RawBatch) -> (Vec<u32>, Vec<BadRecord>, Option<i64>) {
        let mut bad = Vec::new();
        let mut candidates = Vec::with_capacity(raw.len());
        let mut heartbeat = None;
        for i in 0..raw.len() {
            if raw.is_heartbeat(i) {
                heartbeat = heartbeat.max(raw.timestamp(i));
                continue;
            }
            match self.check_record(raw, i) {
                Ok(()) => candidates.push(i as u32),
                Err((kind, reason)) => bad.push(BadRecord {
                    index: i,
                    kind,
                    reason,
                }),
            }
        }
        (candidates, bad, heartbeat)
    }

    /// The event times of the decoded rows: message timestamps, or the
    /// timestamp field; rows without one move to `bad`.
    fn event_times(
        &self,
        raw: &RawBatch,
        values: Vec<ArrayRef>,
        rows: Vec<u32>,
        bad: &mut Vec<BadRecord>,
    ) -> Result<(Vec<ArrayRef>, Vec<u32>, TimestampMillisecondArray)> {
        let Some(index) = self.timestamp_field else {
            let times = TimestampMillisecondArray::from_iter(
                rows.iter().map(|&i| raw.timestamp(i as usize)),
            );
            return Ok((values, rows, times));
        };
        let column = cast(
            values[index].as_ref(),
            &DataType::Timestamp(TimeUnit::Millisecond, None),
        )
        .map_err(|e| FormatError::Invalid(format!("casting the timestamp field: {e}")))?;
        let column = column
            .as_any()
            .downcast_ref::<TimestampMillisecondArray>()
            .cloned()
            .ok_or_else(|| FormatError::Invalid("timestamp cast gave another type".into()))?;
        if column.null_count() == 0 {
            return Ok((values, rows, column));
        }
        let name = self.schema.field(index).name();
        let keep = BooleanArray::from_iter(column.iter().map(|v| Some(v.is_some())));
        for (row, value) in column.iter().enumerate() {
            if value.is_none() {
                bad.push(BadRecord {
                    index: rows[row] as usize,
                    kind: BadInputKind::MissingField,
                    reason: format!("timestamp field '{name}' is missing or null"),
                });
            }
        }
        let values = filter_columns(values, &keep)?;
        let rows = rows
            .into_iter()
            .zip(column.iter())
            .filter(|(_, v)| v.is_some())
            .map(|(r, _)| r)
            .collect();
        let filtered = arrow::compute::filter(&column, &keep)
            .map_err(|e| FormatError::Invalid(e.to_string()))?;
        let times = filtered
            .as_any()
            .downcast_ref::<TimestampMillisecondArray>()
            .cloned()
            .ok_or_else(|| FormatError::Invalid("timestamp filter gave another type".into()))?;
        Ok((values, rows, times))
    }

    fn check_record(
        &self,
        raw: &RawBatch,
        i: usize,
    ) -> std::result::Result<(), (BadInputKind, String)> {
        let key = raw.key(i);
        let value = raw.value(i);
        let size = key.map_or(0, <[u8]>::len) + value.map_or(0, <[u8]>::len);
        if size > self.max_record_bytes {
            return Err((
                BadInputKind::Oversized,
                format!(
                    "record is {size} bytes; the limit is {} bytes",
                    self.max_record_bytes
                ),
            ));
        }
        match key {
            None if self.key_required => {
                return Err((
                    BadInputKind::NullKey,
                    "record has no key; this topic requires keys".into(),
                ))
            }
            None => {}
            Some(key) => check_plain(&self.key_format, key)
                .map_err(|r| (BadInputKind::InvalidKey, format!("key: {r}")))?,
        }
        match (&self.value_format, value) {
            (Format::Json { .. }, None) => Err((
                BadInputKind::NullValue,
                "record has no value (tombstone); expected a JSON object".into(),
            )),
            (Format::Json { .. }, Some(_)) | (_, None) => Ok(()),
            (format, Some(value)) => check_plain(format, value)
                .map_err(|r| (BadInputKind::InvalidValue, format!("value: {r}"))),
        }
    }

    fn key_column(&self, raw: &RawBatch, rows: &[u32]) -> ArrayRef {
        plain_column(&self.key_format, rows.iter().map(|&i| raw.key(i as usize)))
    }
}

/// Why a plain (string, int) key or value does not fit its format.
#[derive(Debug, thiserror::Error)]
enum PlainError {
    #[error("not valid UTF-8: {0}")]
    NotUtf8(#[from] std::str::Utf8Error),
    #[error("expected a 4- or 8-byte big-endian integer, found {0} bytes")]
    IntLength(usize),
}

fn check_plain(format: &Format, bytes: &[u8]) -> std::result::Result<(), PlainError> {
    match format {
        Format::Json { .. } | Format::String => {
            std::str::from_utf8(bytes)?;
            Ok(())
        }
        Format::Int if bytes.len() != 4 && bytes.len() != 8 => {
            Err(PlainError::IntLength(bytes.len()))
        }
        Format::Int | Format::Bytes => Ok(()),
    }
}

/// Why a run of records did not decode together as JSON.
#[derive(Debug, thiserror::Error)]
enum JsonRejected {
    #[error("{0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("the value is not exactly one JSON object")]
    NotOneObject,
    #[error("required field '{0}' is missing or null")]
    RequiredMissing(String),
}

fn decode_int(bytes: &[u8]) -> Option<i64> {
    match bytes.len() {
        4 => bytes
            .try_into()
            .ok()
            .map(|b| i64::from(i32::from_be_bytes(b))),
        8 => bytes.try_into().ok().map(i64::from_be_bytes),
        _ => None,
    }
}

/// Builds a column from already-checked plain (string, bytes, int) values.
fn plain_column<'a>(format: &Format, values: impl Iterator<Item = Option<&'a [u8]>>) -> ArrayRef {
    match format {
        Format::Json { .. } | Format::String => {
            let mut builder = StringBuilder::new();
            for v in values {
                builder.append_option(v.map(String::from_utf8_lossy));
            }
            Arc::new(builder.finish())
        }
        Format::Bytes => {
            let mut builder = BinaryBuilder::new();
            for v in values {
                builder.append_option(v);
            }
            Arc::new(builder.finish())
        }
        Format::Int => {
            let mut builder = Int64Builder::new();
            for v in values {
                builder.append_option(v.and_then(decode_int));
            }
            Arc::new(builder.finish())
        }
    }
}

fn decode_plain(format: &Format, raw: &RawBatch, rows: &[u32]) -> Vec<ArrayRef> {
    vec![plain_column(
        format,
        rows.iter().map(|&i| raw.value(i as usize)),
    )]
}

fn filter_columns(columns: Vec<ArrayRef>, keep: &BooleanArray) -> Result<Vec<ArrayRef>> {
    columns
        .iter()
        .map(|c| arrow::compute::filter(c.as_ref(), keep))
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| FormatError::Invalid(format!("filtering decoded rows: {e}")))
}

/// Decodes `rows` of `raw` in one pass. Fails (without saying which record) when
/// any record is bad; the caller then takes the slow path.
fn decode_json_fast(
    schema: &SchemaRef,
    raw: &RawBatch,
    rows: &[u32],
) -> std::result::Result<RecordBatch, JsonRejected> {
    let mut decoder = ReaderBuilder::new(Arc::clone(schema))
        .with_batch_size(rows.len().max(1) + 1)
        .build_decoder()?;
    for (n, &i) in rows.iter().enumerate() {
        let value = raw.value(i as usize).unwrap_or_default();
        let read = decoder.decode(value)?;
        if read != value.len() || decoder.has_partial_record() || decoder.len() != n + 1 {
            return Err(JsonRejected::NotOneObject);
        }
    }
    let batch = decoder
        .flush()?
        .unwrap_or_else(|| RecordBatch::new_empty(Arc::clone(schema)));
    for (field, column) in schema.fields().iter().zip(batch.columns()) {
        if !field.is_nullable() && column.null_count() > 0 {
            return Err(JsonRejected::RequiredMissing(field.name().clone()));
        }
    }
    Ok(batch)
}

fn decode_json(
    schema: &SchemaRef,
    raw: &RawBatch,
    candidates: &[u32],
    bad: &mut Vec<BadRecord>,
) -> Result<(Vec<ArrayRef>, Vec<u32>)> {
    if let Ok(batch) = decode_json_fast(schema, raw, candidates) {
        return Ok((batch.columns().to_vec(), candidates.to_vec()));
    }
    // Slow path: find the bad records one by one, then decode the rest together.
    let mut good = Vec::with_capacity(candidates.len());
    for &i in candidates {
        match decode_json_fast(schema, raw, &[i]) {
            Ok(_) => good.push(i),
            Err(rejected) => {
                let value = raw.value(i as usize).unwrap_or_default();
                let (kind, reason) = json_check::explain(schema, value, &rejected.to_string());
                bad.push(BadRecord {
                    index: i as usize,
                    kind,
                    reason,
                });
            }
        }
    }
    let batch = decode_json_fast(schema, raw, &good).map_err(|e| {
        FormatError::Invalid(format!("records that decode alone fail together: {e}"))
    })?;
    Ok((batch.columns().to_vec(), good))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{AsArray, Float64Array};
    use arrow::datatypes::{Field, Float64Type};

    fn sensor() -> Format {
        Format::json(Schema::new(vec![
            Field::new("device", DataType::Utf8, false),
            Field::new("ts", DataType::Int64, false),
            Field::new("temp", DataType::Float64, true),
        ]))
    }

    fn raw(values: &[Option<&str>]) -> RawBatch {
        let mut raw = RawBatch::new("in".into(), 2);
        for (i, v) in values.iter().enumerate() {
            raw.push(
                Some(b"k"),
                v.map(str::as_bytes),
                Some(1000 + i as i64),
                10 + i as i64,
                None,
            );
        }
        raw
    }

    #[test]
    fn decodes_good_records_with_metadata() -> Result<()> {
        let decoder = RecordDecoder::new(
            Format::String,
            sensor(),
            TimestampSource::Field("ts".into()),
            false,
            1024,
        )?;
        let raw = raw(&[
            Some(r#"{"device":"a","ts":5,"temp":1.5}"#),
            Some(r#"{"device":"b","ts":6}"#),
        ]);
        let d = decoder.decode(&raw)?;
        assert!(d.bad.is_empty());
        assert_eq!(d.rows, vec![0, 1]);
        let temp = d
            .batch
            .column_by_name("temp")
            .and_then(|c| c.as_any().downcast_ref::<Float64Array>().cloned());
        assert_eq!(temp, Some(Float64Array::from(vec![Some(1.5), None])));
        let offsets = d.batch.column_by_name("_offset").map(|c| {
            c.as_primitive::<arrow::datatypes::Int64Type>()
                .values()
                .to_vec()
        });
        assert_eq!(offsets, Some(vec![10, 11]));
        let ts = d.batch.column_by_name("_timestamp").map(|c| {
            c.as_primitive::<arrow::datatypes::TimestampMillisecondType>()
                .values()
                .to_vec()
        });
        assert_eq!(ts, Some(vec![5, 6]));
        Ok(())
    }

    #[test]
    fn separates_each_kind_of_bad_record() -> Result<()> {
        let decoder = RecordDecoder::new(
            Format::String,
            sensor(),
            TimestampSource::Message,
            false,
            64,
        )?;
        let long = format!(r#"{{"device":"{}","ts":1}}"#, "x".repeat(80));
        let raw = raw(&[
            Some(r#"{"device":"a","ts":1,"temp":2.0}"#),
            Some(r#"{"device":"a","ts":"#),
            Some(r#"{"device":"a","ts":1,"temp":"hot"}"#),
            Some(r#"{"ts":1}"#),
            None,
            Some(&long),
            Some(r#"{"device":"z","ts":9,"temp":3.0}"#),
        ]);
        let d = decoder.decode(&raw)?;
        let kinds: Vec<_> = d.bad.iter().map(|b| (b.index, b.kind)).collect();
        assert_eq!(
            kinds,
            vec![
                (1, BadInputKind::MalformedJson),
                (2, BadInputKind::WrongType),
                (3, BadInputKind::MissingField),
                (4, BadInputKind::NullValue),
                (5, BadInputKind::Oversized),
            ]
        );
        assert_eq!(d.rows, vec![0, 6]);
        let temp = d
            .batch
            .column_by_name("temp")
            .map(|c| c.as_primitive::<Float64Type>().values().to_vec());
        assert_eq!(temp, Some(vec![2.0, 3.0]));
        Ok(())
    }

    #[test]
    fn keys_are_checked() -> Result<()> {
        let decoder = RecordDecoder::new(
            Format::Int,
            Format::String,
            TimestampSource::Message,
            true,
            64,
        )?;
        let mut raw = RawBatch::new("in".into(), 0);
        raw.push(Some(&7i64.to_be_bytes()), Some(b"a"), None, 0, None);
        raw.push(None, Some(b"b"), None, 1, None);
        raw.push(Some(b"abc"), Some(b"c"), None, 2, None);
        raw.push(Some(&9i32.to_be_bytes()), Some(&[0xff]), None, 3, None);
        let d = decoder.decode(&raw)?;
        let kinds: Vec<_> = d.bad.iter().map(|b| b.kind).collect();
        assert_eq!(
            kinds,
            vec![
                BadInputKind::NullKey,
                BadInputKind::InvalidKey,
                BadInputKind::InvalidValue
            ]
        );
        let keys = d.batch.column_by_name("_key").map(|c| {
            c.as_primitive::<arrow::datatypes::Int64Type>()
                .values()
                .to_vec()
        });
        assert_eq!(keys, Some(vec![7]));
        Ok(())
    }

    #[test]
    fn rejects_a_bad_timestamp_field() {
        let err = RecordDecoder::new(
            Format::String,
            sensor(),
            TimestampSource::Field("device".into()),
            false,
            64,
        );
        assert!(
            matches!(err, Err(FormatError::Invalid(m)) if m.contains("'device' has type Utf8"))
        );
    }
}
