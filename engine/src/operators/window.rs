//! The window aggregation operator: evaluates the group key and aggregation
//! inputs per batch, feeds the partition's window state, and turns emitted
//! windows into a batch.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, Float64Builder, Int64Array, ListBuilder, RecordBatch,
    StringArray, TimestampMillisecondArray,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::prelude::SessionContext;
use flumen_kafka::format::{KEY_COLUMN, OFFSET_COLUMN, TIMESTAMP_COLUMN};

use super::{compile, evaluate, OpError};
use crate::plan::WindowSpec;
use crate::window::{AggKind, AggValue, WindowCore, WindowInput, WindowRow};

/// Column of the group key in results when grouping by the message key.
pub const MESSAGE_KEY: &str = "key";
/// Column of the window start in results (epoch ms).
pub const WINDOW_START: &str = "window_start";
/// Column of the window end in results (epoch ms, exclusive).
pub const WINDOW_END: &str = "window_end";

/// A window aggregation compiled for one input schema.
pub(crate) struct CompiledWindow {
    key: Option<Arc<dyn PhysicalExpr>>,
    key_index: Option<usize>,
    timestamp: usize,
    offset: usize,
    inputs: Vec<Option<Arc<dyn PhysicalExpr>>>,
    kinds: Vec<AggKind>,
    pub(crate) output: SchemaRef,
}

fn output_schema(spec: &WindowSpec, key_name: &str) -> SchemaRef {
    let mut fields = vec![
        Field::new(key_name, DataType::Utf8, false),
        Field::new(WINDOW_START, DataType::Int64, false),
        Field::new(WINDOW_END, DataType::Int64, false),
    ];
    for agg in &spec.aggs {
        let data_type = match agg.kind() {
            AggKind::Count => DataType::Int64,
            AggKind::Collect => {
                DataType::List(Arc::new(Field::new("item", DataType::Float64, true)))
            }
            _ => DataType::Float64,
        };
        fields.push(Field::new(
            agg.name(),
            data_type,
            agg.kind() != AggKind::Count,
        ));
    }
    fields.push(Field::new(KEY_COLUMN, DataType::Utf8, false));
    fields.push(Field::new(
        TIMESTAMP_COLUMN,
        DataType::Timestamp(TimeUnit::Millisecond, None),
        false,
    ));
    Arc::new(Schema::new(fields))
}

pub(crate) fn compile_window(
    ctx: &SessionContext,
    spec: &WindowSpec,
    schema: &SchemaRef,
) -> Result<CompiledWindow, String> {
    spec.windows.as_ref().map_err(Clone::clone)?;
    if spec.aggs.is_empty() {
        return Err("a window needs at least one aggregation: .agg([count(), ...])".into());
    }
    let column = |name: &str| {
        schema.index_of(name).map_err(|_| {
            format!("windows need the '{name}' metadata column; do not drop or select it away")
        })
    };
    let timestamp = column(TIMESTAMP_COLUMN)?;
    let offset = column(OFFSET_COLUMN)?;
    let (key, key_index, key_name) = match &spec.key {
        Some(e) => {
            let (phys, field) = compile(ctx, e, schema)?;
            (Some(phys), None, field.name().clone())
        }
        None => (None, Some(column(KEY_COLUMN)?), MESSAGE_KEY.to_string()),
    };
    let mut names: Vec<&str> = vec![&key_name, WINDOW_START, WINDOW_END];
    let mut inputs = Vec::new();
    for agg in &spec.aggs {
        if names.contains(&agg.name()) {
            return Err(format!(
                "output column '{}' appears twice; alias one of them",
                agg.name()
            ));
        }
        names.push(agg.name());
        inputs.push(match agg.input() {
            None => None,
            Some(e) => {
                let (phys, field) = compile(ctx, e, schema)?;
                if !field.data_type().is_numeric() {
                    return Err(format!(
                        "{}: aggregations take numbers; '{}' has type {}",
                        agg.name(),
                        e,
                        field.data_type()
                    ));
                }
                Some(phys)
            }
        });
    }
    Ok(CompiledWindow {
        key,
        key_index,
        timestamp,
        offset,
        inputs,
        kinds: spec.aggs.iter().map(|a| a.kind()).collect(),
        output: output_schema(spec, &key_name),
    })
}

impl CompiledWindow {
    /// Feeds `batch` into `core` and returns the emitted windows as a batch.
    pub(crate) fn apply(
        &self,
        core: &mut WindowCore,
        batch: &RecordBatch,
    ) -> Result<RecordBatch, OpError> {
        let eval = |e: String| OpError::Eval(e);
        let keys: ArrayRef = match (&self.key, self.key_index) {
            (Some(phys), _) => evaluate(phys, batch).map_err(eval)?,
            (None, Some(i)) => Arc::clone(batch.column(i)),
            (None, None) => return Err(eval("window without a key".into())),
        };
        let keys = cast(&keys, &DataType::Utf8).map_err(|e| eval(e.to_string()))?;
        let timestamps = cast(batch.column(self.timestamp), &DataType::Int64)
            .map_err(|e| eval(e.to_string()))?;
        let timestamps = timestamps.as_primitive::<arrow::datatypes::Int64Type>();
        let offsets = batch
            .column(self.offset)
            .as_primitive_opt::<arrow::datatypes::Int64Type>();
        let offsets = offsets.ok_or_else(|| eval("_offset is not Int64".into()))?;
        let mut values = Vec::new();
        for input in &self.inputs {
            values.push(match input {
                None => None,
                Some(phys) => {
                    let v = evaluate(phys, batch).map_err(eval)?;
                    Some(cast(&v, &DataType::Float64).map_err(|e| eval(e.to_string()))?)
                }
            });
        }
        let values: Vec<Option<&Float64Array>> = values
            .iter()
            .map(|v| v.as_ref().map(|a| a.as_primitive()))
            .collect();
        // Records without an event time cannot be placed in a window.
        let keys = keys.as_string::<i32>();
        let keys = if timestamps.null_count() > 0 {
            let masked: StringArray = keys
                .iter()
                .zip(timestamps.iter())
                .map(|(k, t)| t.and(k))
                .collect();
            masked
        } else {
            keys.clone()
        };
        let rows = core.process(&WindowInput {
            keys: &keys,
            timestamps: timestamps.values(),
            offsets: offsets.values(),
            values: &values,
        });
        self.to_batch(&rows)
    }

    fn to_batch(&self, rows: &[WindowRow]) -> Result<RecordBatch, OpError> {
        let key: ArrayRef = Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.key.as_str()),
        ));
        let mut columns = vec![
            Arc::clone(&key),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.start))) as ArrayRef,
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.end))),
        ];
        for (i, kind) in self.kinds.iter().enumerate() {
            columns.push(value_column(*kind, rows.iter().map(|r| &r.values[i])));
        }
        columns.push(key);
        columns.push(Arc::new(TimestampMillisecondArray::from_iter_values(
            rows.iter().map(|r| r.end - 1),
        )));
        RecordBatch::try_new(Arc::clone(&self.output), columns)
            .map_err(|e| OpError::Eval(e.to_string()))
    }
}

fn value_column<'a>(kind: AggKind, values: impl Iterator<Item = &'a AggValue>) -> ArrayRef {
    match kind {
        AggKind::Count => Arc::new(Int64Array::from_iter(values.map(|v| match v {
            AggValue::Int(n) => Some(*n),
            _ => None,
        }))),
        AggKind::Collect => {
            let mut builder = ListBuilder::new(Float64Builder::new());
            for v in values {
                if let AggValue::List(items) = v {
                    builder.values().append_slice(items);
                }
                builder.append(true);
            }
            Arc::new(builder.finish())
        }
        _ => Arc::new(Float64Array::from_iter(values.map(|v| match v {
            AggValue::Float(f) => *f,
            _ => None,
        }))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expr::col;
    use crate::operators::Operator;
    use crate::plan::Op;
    use crate::window::{count, sum, Emit, Windows};
    use arrow::array::Int32Array;

    fn batch(rows: &[(&str, i64, f64)], first_offset: i64) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("temp", DataType::Float64, false),
            Field::new(KEY_COLUMN, DataType::Utf8, true),
            Field::new(
                TIMESTAMP_COLUMN,
                DataType::Timestamp(TimeUnit::Millisecond, None),
                true,
            ),
            Field::new("_partition", DataType::Int32, false),
            Field::new(OFFSET_COLUMN, DataType::Int64, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.2))),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(TimestampMillisecondArray::from_iter_values(
                    rows.iter().map(|r| r.1),
                )),
                Arc::new(Int32Array::from(vec![0; rows.len()])),
                Arc::new(Int64Array::from_iter_values(
                    (0..rows.len() as i64).map(|i| first_offset + i),
                )),
            ],
        )
        .unwrap()
    }

    #[test]
    fn tumbling_final_emits_closed_windows_as_rows() {
        let spec = WindowSpec {
            key: None,
            windows: Ok(Windows::tumbling(std::time::Duration::from_millis(10)).unwrap()),
            grace_ms: 0,
            aggs: vec![count(), sum(col("temp")).alias("sum")],
            emit: Emit::Final,
        };
        let mut op = Operator::new(Op::Window(Arc::new(spec)), Arc::new(SessionContext::new()));
        let out = op
            .apply(batch(&[("a", 1, 1.0), ("b", 2, 2.0), ("a", 9, 3.0)], 0))
            .ok()
            .unwrap();
        assert_eq!(out.num_rows(), 0, "nothing closed yet");
        let out = op
            .apply(batch(&[("a", 10, 5.0), ("b", 25, 1.0)], 3))
            .ok()
            .unwrap();
        let names: Vec<_> = out
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(
            names,
            [
                "key",
                "window_start",
                "window_end",
                "count",
                "sum",
                "_key",
                "_timestamp"
            ]
        );
        assert_eq!(out.num_rows(), 3, "[0,10) for a and b, [10,20) for a");
        let keys: Vec<_> = out.column(0).as_string::<i32>().iter().flatten().collect();
        assert_eq!(keys, ["a", "b", "a"]);
        let counts = out
            .column(3)
            .as_primitive::<arrow::datatypes::Int64Type>()
            .values()
            .to_vec();
        assert_eq!(counts, [2, 1, 1]);
        let sums = out
            .column(4)
            .as_primitive::<arrow::datatypes::Float64Type>()
            .values()
            .to_vec();
        assert_eq!(sums, [4.0, 2.0, 5.0]);
    }

    #[test]
    fn plan_errors() {
        let spec = |aggs| WindowSpec {
            key: Some(col("nope")),
            windows: Ok(Windows::tumbling(std::time::Duration::from_millis(10)).unwrap()),
            grace_ms: 0,
            aggs,
            emit: Emit::Final,
        };
        let schema = batch(&[], 0).schema();
        let ctx = SessionContext::new();
        let err = compile_window(&ctx, &spec(vec![count()]), &schema)
            .err()
            .unwrap();
        assert!(err.contains("nope"), "{err}");
        let err = compile_window(&ctx, &spec(vec![]), &schema).err().unwrap();
        assert!(err.contains("at least one aggregation"), "{err}");
    }
}
