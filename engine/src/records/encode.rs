//! Arrow rows -> record keys and values for an output topic.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StructArray};
use arrow::compute::cast;
use arrow::datatypes::{
    DataType, Field, FieldRef, Fields, Int64Type, Schema, TimeUnit, TimestampMillisecondType,
};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use arrow_json::writer::{make_encoder, EncoderOptions};

use super::{is_metadata_column, Format, KEY_COLUMN, TIMESTAMP_COLUMN, VALUE_COLUMN};
use super::{FormatError, Result};
use flumen_kafka::RawBatch;

/// Encodes the rows of batches for one output topic. Columns whose names start
/// with `_` (flumen metadata) are not written into JSON values.
#[derive(Debug, Clone)]
pub struct RecordEncoder {
    topic: Arc<str>,
    key_format: Format,
    value_format: Format,
    value_columns: Vec<usize>,
    value_fields: Fields,
    key_index: Option<usize>,
    timestamp_index: Option<usize>,
}

impl RecordEncoder {
    /// An encoder for batches of `schema`. The key comes from `key_column`, or from
    /// `_key` when that column exists and no key column is named. Fails when a named
    /// column is missing or has a type the format cannot write.
    pub fn new(
        topic: &str,
        key_format: Format,
        value_format: Format,
        key_column: Option<String>,
        schema: &Schema,
    ) -> Result<Self> {
        let invalid = |reason: String| FormatError::Encode {
            topic: topic.to_string(),
            reason,
        };
        let key_index = match &key_column {
            Some(name) => Some(schema.index_of(name).map_err(|_| {
                invalid(format!(
                    "key column '{name}' is not in the frame (columns: {})",
                    column_list(schema)
                ))
            })?),
            None => schema.index_of(KEY_COLUMN).ok(),
        };
        let (value_columns, value_fields): (Vec<usize>, Vec<FieldRef>) = match &value_format {
            Format::Json { .. } => schema
                .fields()
                .iter()
                .enumerate()
                .filter(|(_, f)| !is_metadata_column(f.name()))
                .map(|(i, f)| (i, Arc::clone(f)))
                .unzip(),
            plain => {
                let index = schema.index_of(VALUE_COLUMN).map_err(|_| {
                    invalid(format!(
                        "a {} value needs a '{VALUE_COLUMN}' column (columns: {})",
                        plain.name(),
                        column_list(schema)
                    ))
                })?;
                let data_type = schema.field(index).data_type();
                if !plain_type_ok(plain, data_type) {
                    return Err(invalid(format!(
                        "column '{VALUE_COLUMN}' has type {data_type}, which a {} value cannot hold",
                        plain.name()
                    )));
                }
                (vec![index], vec![Arc::clone(&schema.fields()[index])])
            }
        };
        if let Some(index) = key_index {
            let data_type = schema.field(index).data_type();
            if matches!(key_format, Format::Int) && !data_type.is_integer() {
                return Err(invalid(format!(
                    "key column '{}' has type {data_type}; an int key needs an integer column",
                    schema.field(index).name()
                )));
            }
        }
        let timestamp_index = schema.index_of(TIMESTAMP_COLUMN).ok().filter(|&i| {
            matches!(
                schema.field(i).data_type(),
                DataType::Timestamp(..) | DataType::Int64
            )
        });
        Ok(RecordEncoder {
            topic: Arc::from(topic),
            key_format,
            value_format,
            value_columns,
            value_fields: Fields::from(value_fields),
            key_index,
            timestamp_index,
        })
    }

    /// The output topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    fn error(&self, reason: impl std::fmt::Display) -> FormatError {
        FormatError::Encode {
            topic: self.topic.to_string(),
            reason: reason.to_string(),
        }
    }

    /// Encodes every row of `batch` into a [`RawBatch`] of keys, values and timestamps.
    pub fn encode(&self, batch: &RecordBatch) -> Result<RawBatch> {
        let rows = batch.num_rows();
        let mut out = RawBatch::new(Arc::clone(&self.topic), -1);
        let keys = match self.key_index {
            Some(i) => Some(self.encode_keys(batch.column(i))?),
            None => None,
        };
        let timestamps = match self.timestamp_index {
            Some(i) => Some(
                cast(
                    batch.column(i),
                    &DataType::Timestamp(TimeUnit::Millisecond, None),
                )
                .map_err(|e| self.error(e))?,
            ),
            None => None,
        };
        let timestamps = timestamps
            .as_ref()
            .map(|t| t.as_primitive::<TimestampMillisecondType>());
        let options = EncoderOptions::default();
        let mut value = Vec::with_capacity(128);
        match &self.value_format {
            Format::Json { .. } => {
                let columns: Vec<ArrayRef> = self
                    .value_columns
                    .iter()
                    .map(|&i| Arc::clone(batch.column(i)))
                    .collect();
                let array = StructArray::try_new(self.value_fields.clone(), columns, None)
                    .map_err(|e| self.error(e))?;
                let field: FieldRef = Arc::new(Field::new("", array.data_type().clone(), false));
                let mut encoder =
                    make_encoder(&field, &array, &options).map_err(|e| self.error(e))?;
                for row in 0..rows {
                    value.clear();
                    encoder.encode(row, &mut value);
                    push_row(&mut out, &keys, row, Some(&value), timestamps);
                }
            }
            plain => {
                let column = batch.column(self.value_columns[0]);
                let values = encode_plain(plain, column).map_err(|e| self.error(e))?;
                for (row, v) in values.iter().enumerate() {
                    push_row(&mut out, &keys, row, v.as_deref(), timestamps);
                }
            }
        }
        Ok(out)
    }

    fn encode_keys(&self, column: &ArrayRef) -> Result<Vec<Option<Vec<u8>>>> {
        encode_plain(&self.key_format, column).map_err(|e| self.error(format!("key: {e}")))
    }
}

fn push_row(
    out: &mut RawBatch,
    keys: &Option<Vec<Option<Vec<u8>>>>,
    row: usize,
    value: Option<&[u8]>,
    timestamps: Option<&arrow::array::TimestampMillisecondArray>,
) {
    let key = keys.as_ref().and_then(|k| k[row].as_deref());
    let ts = timestamps.and_then(|t| t.is_valid(row).then(|| t.value(row)));
    out.push(key, value, ts, row as i64, None);
}

fn column_list(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn plain_type_ok(format: &Format, data_type: &DataType) -> bool {
    match format {
        Format::Int => data_type.is_integer(),
        Format::Bytes => matches!(
            data_type,
            DataType::Binary | DataType::LargeBinary | DataType::Utf8 | DataType::LargeUtf8
        ),
        Format::String | Format::Json { .. } => true,
    }
}

/// Encodes each value of `column` as a plain key or value of `format`.
fn encode_plain(
    format: &Format,
    column: &ArrayRef,
) -> std::result::Result<Vec<Option<Vec<u8>>>, arrow::error::ArrowError> {
    let len = column.len();
    let valid = |i: usize| column.is_valid(i);
    Ok(match (format, column.data_type()) {
        (_, DataType::Utf8) => {
            let a = column.as_string::<i32>();
            (0..len)
                .map(|i| valid(i).then(|| a.value(i).as_bytes().to_vec()))
                .collect()
        }
        (_, DataType::LargeUtf8) => {
            let a = column.as_string::<i64>();
            (0..len)
                .map(|i| valid(i).then(|| a.value(i).as_bytes().to_vec()))
                .collect()
        }
        (_, DataType::Binary) => {
            let a = column.as_binary::<i32>();
            (0..len)
                .map(|i| valid(i).then(|| a.value(i).to_vec()))
                .collect()
        }
        (Format::Int, t) if t.is_integer() => {
            let a = cast(column, &DataType::Int64)?;
            let a = a.as_primitive::<Int64Type>();
            (0..len)
                .map(|i| valid(i).then(|| a.value(i).to_be_bytes().to_vec()))
                .collect()
        }
        (Format::Json { .. }, _) => {
            let field: FieldRef = Arc::new(Field::new("", column.data_type().clone(), true));
            let options = EncoderOptions::default();
            let mut encoder = make_encoder(&field, column.as_ref(), &options)?;
            (0..len)
                .map(|i| {
                    valid(i).then(|| {
                        let mut out = Vec::new();
                        encoder.encode(i, &mut out);
                        out
                    })
                })
                .collect()
        }
        _ => {
            let options = FormatOptions::default();
            let formatter = ArrayFormatter::try_new(column.as_ref(), &options)?;
            (0..len)
                .map(|i| valid(i).then(|| formatter.value(i).to_string().into_bytes()))
                .collect()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, Int64Array, StringArray, TimestampMillisecondArray};

    #[test]
    fn writes_json_values_without_metadata() -> Result<()> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("device", DataType::Utf8, false),
            Field::new("temp", DataType::Float64, true),
            Field::new("_key", DataType::Utf8, true),
            Field::new(
                "_timestamp",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                true,
            ),
        ]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(StringArray::from(vec!["a", "b"])),
                Arc::new(Float64Array::from(vec![Some(1.5), None])),
                Arc::new(StringArray::from(vec![Some("k1"), None])),
                Arc::new(TimestampMillisecondArray::from(vec![Some(7), Some(8)])),
            ],
        )
        .map_err(|e| FormatError::Invalid(e.to_string()))?;
        let kept = RecordEncoder::new(
            "out",
            Format::String,
            Format::json(Schema::empty()),
            None,
            &schema,
        )?;
        let raw = kept.encode(&batch)?;
        assert_eq!(raw.value(0), Some(&br#"{"device":"a","temp":1.5}"#[..]));
        assert_eq!(raw.value(1), Some(&br#"{"device":"b"}"#[..]));
        assert_eq!((raw.key(0), raw.key(1)), (Some(&b"k1"[..]), None));
        assert_eq!(raw.timestamp(1), Some(8));
        let by_device = RecordEncoder::new(
            "out",
            Format::String,
            Format::json(Schema::empty()),
            Some("device".into()),
            &schema,
        )?;
        assert_eq!(by_device.encode(&batch)?.key(1), Some(&b"b"[..]));
        Ok(())
    }

    #[test]
    fn plain_formats_and_errors() -> Result<()> {
        let schema = Arc::new(Schema::new(vec![Field::new(
            "value",
            DataType::Int64,
            true,
        )]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![Arc::new(Int64Array::from(vec![5]))],
        )
        .map_err(|e| FormatError::Invalid(e.to_string()))?;
        let enc = RecordEncoder::new(
            "out",
            Format::String,
            Format::Int,
            Some("value".into()),
            &schema,
        )?;
        let raw = enc.encode(&batch)?;
        assert_eq!(raw.value(0), Some(&5i64.to_be_bytes()[..]));
        assert_eq!(raw.key(0), Some(&b"5"[..]));
        let err = RecordEncoder::new(
            "out",
            Format::String,
            Format::String,
            Some("nope".into()),
            &schema,
        );
        assert!(
            matches!(err, Err(FormatError::Encode { reason, .. }) if reason.contains("key column 'nope'"))
        );
        Ok(())
    }
}
