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
use datafusion::common::ScalarValue;
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
    output_types: Vec<DataType>,
    pub(crate) output: SchemaRef,
}

/// The output type of an aggregation.
fn output_type(agg: &crate::window::Aggregation) -> DataType {
    match (agg.kind(), &agg.custom) {
        (_, Some(custom)) => custom.output_type(),
        (AggKind::Count, _) => DataType::Int64,
        (AggKind::Collect, _) => {
            DataType::List(Arc::new(Field::new("item", DataType::Float64, true)))
        }
        _ => DataType::Float64,
    }
}

fn output_schema(spec: &WindowSpec, key_name: &str) -> SchemaRef {
    let mut fields = vec![
        Field::new(key_name, DataType::Utf8, false),
        Field::new(WINDOW_START, DataType::Int64, false),
        Field::new(WINDOW_END, DataType::Int64, false),
    ];
    for agg in &spec.aggs {
        fields.push(Field::new(
            agg.name(),
            output_type(agg),
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
                if agg.custom.is_none() && !field.data_type().is_numeric() {
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
        output_types: spec.aggs.iter().map(output_type).collect(),
        output: output_schema(spec, &key_name),
    })
}

impl CompiledWindow {
    /// Feeds `batch` into `core`; returns the emitted windows as a batch and
    /// the source offsets of late records with the watermark each met.
    /// A `heartbeat` moves the event time on after the batch's records.
    pub(crate) fn apply(
        &self,
        core: &mut WindowCore,
        batch: &RecordBatch,
        heartbeat: Option<i64>,
    ) -> Result<(RecordBatch, Vec<(i64, i64)>), OpError> {
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
        let mut raw = Vec::new();
        for (input, kind) in self.inputs.iter().zip(&self.kinds) {
            let evaluated = match input {
                None => None,
                Some(phys) => Some(evaluate(phys, batch).map_err(eval)?),
            };
            match (evaluated, kind) {
                (Some(v), AggKind::Custom) => {
                    values.push(None);
                    raw.push(Some(v));
                }
                (Some(v), _) => {
                    values.push(Some(
                        cast(&v, &DataType::Float64).map_err(|e| eval(e.to_string()))?,
                    ));
                    raw.push(None);
                }
                (None, _) => {
                    values.push(None);
                    raw.push(None);
                }
            }
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
        let processed = core
            .process(&WindowInput {
                keys: &keys,
                timestamps: timestamps.values(),
                offsets: offsets.values(),
                values: &values,
                raw: &raw,
            })
            .map_err(eval)?;
        let mut rows = processed.rows;
        if let Some(time) = heartbeat {
            rows.extend(core.advance_to(time));
        }
        let late = processed
            .late
            .iter()
            .map(|&(row, watermark)| (offsets.value(row as usize), watermark))
            .collect();
        Ok((self.to_batch(&rows)?, late))
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
        for (i, (kind, data_type)) in self.kinds.iter().zip(&self.output_types).enumerate() {
            columns.push(value_column(
                *kind,
                data_type,
                rows.iter().map(|r| &r.values[i]),
            )?);
        }
        columns.push(key);
        columns.push(Arc::new(TimestampMillisecondArray::from_iter_values(
            rows.iter().map(|r| r.end - 1),
        )));
        RecordBatch::try_new(Arc::clone(&self.output), columns)
            .map_err(|e| OpError::Eval(e.to_string()))
    }
}

fn value_column<'a>(
    kind: AggKind,
    data_type: &DataType,
    values: impl Iterator<Item = &'a AggValue>,
) -> Result<ArrayRef, OpError> {
    if kind == AggKind::Custom {
        let scalars: Vec<ScalarValue> = values
            .map(|v| match v {
                AggValue::Scalar(s) => s.clone(),
                _ => ScalarValue::Null,
            })
            .collect();
        if scalars.is_empty() {
            return Ok(arrow::array::new_empty_array(data_type));
        }
        let array = ScalarValue::iter_to_array(scalars)
            .map_err(|e| OpError::Eval(format!("user-defined aggregation result: {e}")))?;
        if array.data_type() != data_type {
            return Err(OpError::Eval(format!(
                "user-defined aggregation returned {} but declared {data_type}",
                array.data_type()
            )));
        }
        return Ok(array);
    }
    Ok(match kind {
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
    })
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
            late: crate::window::LateRecords::Drop,
            store: None,
        };
        let mut op = Operator::new(Op::Window(Arc::new(spec)), Arc::new(SessionContext::new()));
        let out = op
            .apply(
                batch(&[("a", 1, 1.0), ("b", 2, 2.0), ("a", 9, 3.0)], 0),
                None,
            )
            .ok()
            .unwrap();
        assert_eq!(out.num_rows(), 0, "nothing closed yet");
        let out = op
            .apply(batch(&[("a", 10, 5.0), ("b", 25, 1.0)], 3), None)
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

    /// Distinct values of an Int64 column, as a user-defined aggregation.
    struct Distinct;

    impl crate::window::Aggregator for Distinct {
        type State = std::collections::BTreeSet<i64>;
        fn output_type(&self) -> DataType {
            DataType::Int64
        }
        fn initialize(&self) -> Self::State {
            Default::default()
        }
        fn update(
            &self,
            state: &mut Self::State,
            values: &ArrayRef,
        ) -> Result<(), crate::BoxError> {
            let values = values
                .as_primitive_opt::<arrow::datatypes::Int64Type>()
                .ok_or("distinct takes Int64")?;
            state.extend(values.iter().flatten());
            Ok(())
        }
        fn merge(&self, state: &mut Self::State, other: &Self::State) {
            state.extend(other.iter().copied());
        }
        fn result(&self, state: &Self::State) -> ScalarValue {
            ScalarValue::Int64(Some(state.len() as i64))
        }
    }

    #[test]
    fn user_defined_aggregations_see_each_window_slice_and_survive_a_restore() {
        let spec = WindowSpec {
            key: None,
            windows: Ok(Windows::tumbling(std::time::Duration::from_millis(10)).unwrap()),
            grace_ms: 0,
            aggs: vec![
                count(),
                crate::window::aggregate(
                    "distinct",
                    col("_offset") % crate::expr::lit(2i64),
                    Distinct,
                ),
            ],
            emit: Emit::Final,
            late: crate::window::LateRecords::Drop,
            store: None,
        };
        let ctx = Arc::new(SessionContext::new());
        let mut op = Operator::new(Op::Window(Arc::new(spec.clone())), Arc::clone(&ctx));
        let first = batch(&[("a", 1, 1.0), ("b", 2, 2.0), ("a", 3, 3.0)], 0);
        assert_eq!(op.apply(first, None).ok().unwrap().num_rows(), 0);
        // Persist, then continue in a fresh operator restored from the store.
        let store = flumen_state::MemoryStore::default();
        let changes = op.window_state().unwrap().take_changes("w");
        flumen_state::StateStore::write(&store, changes, None).unwrap();
        let mut op = Operator::new(Op::Window(Arc::new(spec)), ctx);
        let entries = flumen_state::StateStore::prefix(&store, "w", b"").unwrap();
        op.window_state().unwrap().restore(entries).unwrap();
        let out = op
            .apply(batch(&[("a", 5, 1.0), ("b", 30, 1.0)], 3), None)
            .ok()
            .unwrap();
        assert_eq!(out.schema().field(4).data_type(), &DataType::Int64);
        let distinct = out.column(4).as_primitive::<arrow::datatypes::Int64Type>();
        // a: offsets 0, 2, 3 -> parities {0, 1}; b: offset 1 -> {1}.
        assert_eq!(distinct.values().to_vec(), vec![2, 1]);
        let counts = out.column(3).as_primitive::<arrow::datatypes::Int64Type>();
        assert_eq!(counts.values().to_vec(), vec![3, 1]);
    }

    #[test]
    fn plan_errors() {
        let spec = |aggs| WindowSpec {
            key: Some(col("nope")),
            windows: Ok(Windows::tumbling(std::time::Duration::from_millis(10)).unwrap()),
            grace_ms: 0,
            aggs,
            emit: Emit::Final,
            late: crate::window::LateRecords::Drop,
            store: None,
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
