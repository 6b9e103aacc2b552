//! The window aggregation operator: evaluates the group key and aggregation
//! inputs per batch, feeds the partition's window state, and turns emitted
//! windows into a batch.

use std::sync::Arc;

use crate::records::{KEY_COLUMN, OFFSET_COLUMN, TIMESTAMP_COLUMN};
use arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, Float64Builder, Int64Array, ListBuilder, RecordBatch,
    StringArray, TimestampMillisecondArray,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::common::ScalarValue;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::prelude::SessionContext;
use futures::future::BoxFuture;

use super::expr::{compile, evaluate};
use super::{
    DeadLetter, DeadLetterReason, LogicalOperator, OpContext, OpError, Operator, OperatorState,
    StoreError, StoreRequest,
};
use crate::plan::WindowSpec;
use crate::state::StoreHandle;
use crate::window::{AggKind, AggValue, Dropped, LateRecords, WindowCore, WindowInput, WindowRow};

/// Column of the group key in results when grouping by the message key.
pub const MESSAGE_KEY: &str = "key";
/// Column of the window start in results (epoch ms).
pub const WINDOW_START: &str = "window_start";
/// Column of the window end in results (epoch ms, exclusive).
pub const WINDOW_END: &str = "window_end";

/// A windowed aggregation (`tumbling` / `hopping` / `custom` + `agg`).
pub(crate) struct WindowAggregate(pub(crate) Arc<WindowSpec>);

impl LogicalOperator for WindowAggregate {
    fn name(&self) -> String {
        let spec = &self.0;
        let aggs: Vec<&str> = spec.aggs.iter().map(|a| a.name()).collect();
        format!(
            "window({}{:?}, {})",
            spec.key
                .as_ref()
                .map_or("_key".to_string(), |k| k.to_string()),
            spec.emit,
            aggs.join(", ")
        )
    }

    fn plan(
        &self,
        input: &SchemaRef,
        ctx: &Arc<SessionContext>,
    ) -> Result<Box<dyn Operator>, OpError> {
        let spec = &self.0;
        let windows = spec
            .windows
            .clone()
            .map_err(|e| OpError::Plan(e.to_string()))?;
        let compiled = compile_window(ctx, spec, input)?;
        let kinds = spec.aggs.iter().map(|a| a.kind()).collect();
        let customs = spec.aggs.iter().map(|a| a.custom.clone()).collect();
        let core = WindowCore::new(windows, spec.grace_ms, kinds, spec.emit)
            .with_customs(customs)
            .with_signature(signature(&spec.aggs));
        let late_topic = match &spec.late {
            LateRecords::DeadLetter(topic) => Some(Arc::from(topic.as_str())),
            LateRecords::Drop => None,
        };
        Ok(Box::new(WindowOperator {
            compiled,
            core,
            late_topic,
            store: None,
        }))
    }

    fn store(&self) -> Option<StoreRequest> {
        Some(StoreRequest {
            name: self.0.store.clone(),
            default_prefix: "window",
            replay_log: false,
            keeps_state: true,
        })
    }

    fn dead_letter_topic(&self) -> Option<(String, String)> {
        match &self.0.late {
            LateRecords::DeadLetter(topic) => {
                Some((topic.clone(), "late-record dead-letter".to_string()))
            }
            LateRecords::Drop => None,
        }
    }
}

/// The aggregations of a window, in order, as `kind(input)` (custom ones by
/// their name): what its stored states mean.
fn signature(aggs: &[crate::window::Aggregation]) -> String {
    aggs.iter()
        .map(|a| {
            let input = a.input().map(ToString::to_string).unwrap_or_default();
            match a.kind() {
                AggKind::Custom => format!("custom {}({input})", a.name()),
                kind => format!("{kind:?}({input})"),
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The window aggregation of one partition.
struct WindowOperator {
    compiled: CompiledWindow,
    core: WindowCore,
    /// Where late records go (`None`: dropped and counted).
    late_topic: Option<Arc<str>>,
    /// Its store, once opened (the core is the store's cache).
    store: Option<StoreHandle>,
}

impl WindowOperator {
    fn run(&mut self, batch: &RecordBatch, ctx: &mut OpContext) -> Result<RecordBatch, OpError> {
        let (out, late) = self
            .compiled
            .apply(&mut self.core, batch, ctx.heartbeat())?;
        if let Some(topic) = &self.late_topic {
            for (offset, watermark) in late {
                ctx.dead_letter(DeadLetter {
                    topic: Arc::clone(topic),
                    offset,
                    reason: DeadLetterReason::Late { watermark },
                    copy: None,
                });
            }
        }
        Ok(out)
    }
}

impl Operator for WindowOperator {
    fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.compiled.output)
    }

    fn process<'a>(
        &'a mut self,
        batch: RecordBatch,
        ctx: &'a mut OpContext,
    ) -> BoxFuture<'a, Result<RecordBatch, OpError>> {
        Box::pin(std::future::ready(self.run(&batch, ctx)))
    }

    fn state(&mut self) -> Option<&mut dyn OperatorState> {
        Some(self)
    }
}

impl OperatorState for WindowOperator {
    fn open(&mut self, store: StoreHandle) -> Result<(), StoreError> {
        // Entries are visited one at a time: the state is never held twice.
        self.core.begin_restore();
        let mut failure = None;
        store.for_each(
            &mut |key, value| match self.core.restore_entry(key, value) {
                Ok(()) => true,
                Err(corrupt) => {
                    failure = Some(corrupt);
                    false
                }
            },
        )?;
        self.core.finish_restore();
        self.store = Some(store);
        failure.map_or(Ok(()), |corrupt| Err(corrupt.into()))
    }

    fn flush(&mut self) {
        match &self.store {
            Some(store) => store.write_batch(self.core.take_changes(store.name())),
            None => drop(self.core.take_changes("")),
        }
    }

    fn dropped(&self) -> Dropped {
        self.core.dropped()
    }
}

/// Where the group key comes from.
enum GroupKey {
    /// An expression (`group_by(expr)`).
    Expr(Arc<dyn PhysicalExpr>),
    /// The message key column, at this index.
    Column(usize),
}

/// A window aggregation compiled for one input schema.
struct CompiledWindow {
    key: GroupKey,
    timestamp: usize,
    offset: usize,
    inputs: Vec<Option<Arc<dyn PhysicalExpr>>>,
    kinds: Vec<AggKind>,
    output_types: Vec<DataType>,
    output: SchemaRef,
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

fn compile_window(
    ctx: &SessionContext,
    spec: &WindowSpec,
    schema: &SchemaRef,
) -> Result<CompiledWindow, OpError> {
    if spec.aggs.is_empty() {
        return Err(OpError::Plan(
            "a window needs at least one aggregation: .agg([count(), ...])".into(),
        ));
    }
    let column = |name: &str| {
        schema.index_of(name).map_err(|_| {
            OpError::Plan(format!(
                "windows need the '{name}' metadata column; do not drop or select it away"
            ))
        })
    };
    let timestamp = column(TIMESTAMP_COLUMN)?;
    let offset = column(OFFSET_COLUMN)?;
    let (key, key_name) = match &spec.key {
        Some(e) => {
            let (phys, field) = compile(ctx, e, schema)?;
            (GroupKey::Expr(phys), field.name().clone())
        }
        None => (
            GroupKey::Column(column(KEY_COLUMN)?),
            MESSAGE_KEY.to_string(),
        ),
    };
    Ok(CompiledWindow {
        key,
        timestamp,
        offset,
        inputs: compile_inputs(ctx, spec, schema, &key_name)?,
        kinds: spec.aggs.iter().map(|a| a.kind()).collect(),
        output_types: spec.aggs.iter().map(output_type).collect(),
        output: output_schema(spec, &key_name),
    })
}

/// The input expression of each aggregation (`None` for `count()`).
fn compile_inputs(
    ctx: &SessionContext,
    spec: &WindowSpec,
    schema: &SchemaRef,
    key_name: &str,
) -> Result<Vec<Option<Arc<dyn PhysicalExpr>>>, OpError> {
    let mut names: Vec<&str> = vec![key_name, WINDOW_START, WINDOW_END];
    let mut inputs = Vec::new();
    for agg in &spec.aggs {
        if names.contains(&agg.name()) {
            return Err(OpError::Plan(format!(
                "output column '{}' appears twice; alias one of them",
                agg.name()
            )));
        }
        names.push(agg.name());
        let Some(e) = agg.input() else {
            inputs.push(None);
            continue;
        };
        let (phys, field) = compile(ctx, e, schema)?;
        if agg.custom.is_none() && !field.data_type().is_numeric() {
            return Err(OpError::Plan(format!(
                "{}: aggregations take numbers; '{e}' has type {}",
                agg.name(),
                field.data_type()
            )));
        }
        inputs.push(Some(phys));
    }
    Ok(inputs)
}

/// The values of each aggregation for one batch: as numbers for the
/// built-in ones, as evaluated for user-defined ones.
struct AggInputs {
    numbers: Vec<Option<ArrayRef>>,
    raw: Vec<Option<ArrayRef>>,
}

impl CompiledWindow {
    /// Feeds `batch` into `core`; returns the emitted windows as a batch and
    /// the source offsets of late records with the watermark each met.
    /// A `heartbeat` moves the event time on after the batch's records.
    fn apply(
        &self,
        core: &mut WindowCore,
        batch: &RecordBatch,
        heartbeat: Option<i64>,
    ) -> Result<(RecordBatch, Vec<(i64, i64)>), OpError> {
        let timestamps =
            cast(batch.column(self.timestamp), &DataType::Int64).map_err(OpError::eval)?;
        let timestamps = timestamps.as_primitive::<arrow::datatypes::Int64Type>();
        let offsets = batch
            .column(self.offset)
            .as_primitive_opt::<arrow::datatypes::Int64Type>()
            .ok_or_else(|| OpError::eval("_offset is not Int64"))?;
        let keys = self.keys(batch, timestamps)?;
        let inputs = self.inputs(batch)?;
        let numbers: Vec<Option<&Float64Array>> = inputs
            .numbers
            .iter()
            .map(|v| v.as_ref().map(|a| a.as_primitive()))
            .collect();
        let processed = core
            .process(&WindowInput {
                keys: &keys,
                timestamps: timestamps.values(),
                offsets: offsets.values(),
                values: &numbers,
                raw: &inputs.raw,
            })
            .map_err(OpError::eval)?;
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

    /// The group keys as strings, null where the event time is (records
    /// without an event time cannot be placed in a window).
    fn keys(
        &self,
        batch: &RecordBatch,
        timestamps: &arrow::array::Int64Array,
    ) -> Result<StringArray, OpError> {
        let keys: ArrayRef = match &self.key {
            GroupKey::Expr(phys) => evaluate(phys, batch)?,
            GroupKey::Column(i) => Arc::clone(batch.column(*i)),
        };
        let keys = cast(&keys, &DataType::Utf8).map_err(OpError::eval)?;
        let keys = keys.as_string::<i32>();
        if timestamps.null_count() == 0 {
            return Ok(keys.clone());
        }
        Ok(keys
            .iter()
            .zip(timestamps.iter())
            .map(|(k, t)| t.and(k))
            .collect())
    }

    fn inputs(&self, batch: &RecordBatch) -> Result<AggInputs, OpError> {
        let mut inputs = AggInputs {
            numbers: Vec::new(),
            raw: Vec::new(),
        };
        for (input, kind) in self.inputs.iter().zip(&self.kinds) {
            let evaluated = match input {
                None => None,
                Some(phys) => Some(evaluate(phys, batch)?),
            };
            let (number, raw) = match (evaluated, kind) {
                (Some(v), AggKind::Custom) => (None, Some(v)),
                (Some(v), _) => (
                    Some(cast(&v, &DataType::Float64).map_err(OpError::eval)?),
                    None,
                ),
                (None, _) => (None, None),
            };
            inputs.numbers.push(number);
            inputs.raw.push(raw);
        }
        Ok(inputs)
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
        RecordBatch::try_new(Arc::clone(&self.output), columns).map_err(OpError::eval)
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
            .map_err(|e| OpError::eval(format!("user-defined aggregation result: {e}")))?;
        if array.data_type() != data_type {
            return Err(OpError::eval(format!(
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
    use crate::window::{count, sum, Emit, Windows};
    use arrow::array::Int32Array;

    fn planned(spec: &WindowSpec) -> Box<dyn Operator> {
        let schema = batch(&[], 0).schema();
        WindowAggregate(Arc::new(spec.clone()))
            .plan(&schema, &Arc::new(SessionContext::new()))
            .unwrap_or_else(|e| panic!("plan: {e}"))
    }

    fn apply(op: &mut Box<dyn Operator>, batch: RecordBatch) -> RecordBatch {
        futures::executor::block_on(op.process(batch, &mut OpContext::default()))
            .unwrap_or_else(|e| panic!("process: {e}"))
    }

    fn state(op: &mut Box<dyn Operator>) -> &mut dyn OperatorState {
        op.state().unwrap_or_else(|| panic!("a window keeps state"))
    }

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
        let mut op = planned(&spec);
        let out = apply(
            &mut op,
            batch(&[("a", 1, 1.0), ("b", 2, 2.0), ("a", 9, 3.0)], 0),
        );
        assert_eq!(out.num_rows(), 0, "nothing closed yet");
        let out = apply(&mut op, batch(&[("a", 10, 5.0), ("b", 25, 1.0)], 3));
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
        let stored = crate::state::PartitionState::in_memory(
            Arc::new(flumen_state::MemoryStore::default()),
            0,
        )
        .unwrap();
        let mut op = planned(&spec);
        state(&mut op).open(stored.handle("w")).unwrap();
        let first = batch(&[("a", 1, 1.0), ("b", 2, 2.0), ("a", 3, 3.0)], 0);
        assert_eq!(apply(&mut op, first).num_rows(), 0);
        // Persist, then continue in a fresh operator restored from the store.
        state(&mut op).flush();
        stored.commit(stored.seal(3), 3).unwrap();
        let mut op = planned(&spec);
        state(&mut op).open(stored.handle("w")).unwrap();
        let out = apply(&mut op, batch(&[("a", 5, 1.0), ("b", 30, 1.0)], 3));
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
            .unwrap()
            .to_string();
        assert!(err.contains("nope"), "{err}");
        let err = compile_window(&ctx, &spec(vec![]), &schema)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("at least one aggregation"), "{err}");
    }
}
