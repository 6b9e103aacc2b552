//! Typed row maps through serde (`serde_arrow`).

use std::sync::{Arc, OnceLock};

use crate::records::is_metadata_column;
use arrow::array::RecordBatch;
use arrow::datatypes::{FieldRef, Schema};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_arrow::schema::{SchemaLike, TracingOptions};

use crate::plan::{BatchFn, BoxError};

/// The output type of a `map` has no Arrow schema.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot derive an Arrow schema for the map output type: {0}")]
struct NoSchema(#[source] Arc<serde_arrow::Error>);

/// Builds a batch function that maps each row `In -> Out` through serde. Metadata
/// columns (`_key`, `_timestamp`, ...) of the input are carried over unless `Out`
/// has fields of the same names.
pub fn typed_map<In, Out, F>(f: F) -> BatchFn
where
    In: DeserializeOwned + 'static,
    Out: Serialize + DeserializeOwned + 'static,
    F: Fn(In) -> Out + Send + Sync + 'static,
{
    let out_fields: OnceLock<Result<Vec<FieldRef>, NoSchema>> = OnceLock::new();
    Arc::new(move |batch: RecordBatch| -> Result<RecordBatch, BoxError> {
        let fields = out_fields
            .get_or_init(|| {
                Vec::<FieldRef>::from_type::<Out>(TracingOptions::default().allow_null_fields(true))
                    .map_err(|e| NoSchema(Arc::new(e)))
            })
            .clone()?;
        let schema = batch.schema();
        let data: Vec<usize> = (0..schema.fields().len())
            .filter(|&i| !is_metadata_column(schema.field(i).name()))
            .collect();
        let input = batch.project(&data)?;
        let rows: Vec<In> = serde_arrow::from_record_batch(&input)?;
        let mapped: Vec<Out> = rows.into_iter().map(&f).collect();
        let out = serde_arrow::to_record_batch(&fields, &mapped)?;
        let mut all_fields: Vec<FieldRef> = out.schema().fields().iter().cloned().collect();
        let mut columns = out.columns().to_vec();
        for (i, field) in schema.fields().iter().enumerate() {
            if is_metadata_column(field.name())
                && !all_fields.iter().any(|f| f.name() == field.name())
            {
                all_fields.push(Arc::clone(field));
                columns.push(Arc::clone(batch.column(i)));
            }
        }
        Ok(RecordBatch::try_new(
            Arc::new(Schema::new(all_fields)),
            columns,
        )?)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{AsArray, Float64Array, Int64Array};
    use arrow::datatypes::{DataType, Field, Float64Type};
    use serde::Deserialize;

    #[derive(Deserialize)]
    struct Reading {
        temp: f64,
    }

    #[derive(Serialize, Deserialize)]
    struct Fahrenheit {
        temp_f: f64,
    }

    #[test]
    fn maps_rows_and_keeps_metadata() -> Result<(), BoxError> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("temp", DataType::Float64, false),
            Field::new("_offset", DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Float64Array::from(vec![0.0, 100.0])),
                Arc::new(Int64Array::from(vec![4, 5])),
            ],
        )?;
        let f = typed_map(|r: Reading| Fahrenheit {
            temp_f: r.temp * 9.0 / 5.0 + 32.0,
        });
        let out = f(batch)?;
        assert_eq!(
            out.column(0)
                .as_primitive::<Float64Type>()
                .values()
                .to_vec(),
            vec![32.0, 212.0]
        );
        assert_eq!(out.schema().field(1).name(), "_offset");
        Ok(())
    }
}
