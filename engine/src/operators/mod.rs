//! Physical operators: plan operations compiled against a batch schema.

mod expr;
mod map;
mod window;

use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::prelude::SessionContext;
use flumen_kafka::format::is_metadata_column;

pub(crate) use expr::compile;
pub use map::typed_map;
pub use window::{WINDOW_END, WINDOW_START};

use crate::plan::Op;

/// Why an operator could not process a batch.
#[derive(Debug)]
pub(crate) enum OpError {
    /// The operation does not fit the batch schema (found before any data flows).
    Plan(String),
    /// Evaluation failed on data.
    Eval(String),
}

enum Compiled {
    Filter(Arc<dyn PhysicalExpr>),
    Project(Vec<Arc<dyn PhysicalExpr>>, SchemaRef),
    Keep(Vec<usize>, SchemaRef),
    Map,
    Window(window::CompiledWindow),
}

/// One plan operation with its compiled form for the last schema it saw.
pub(crate) struct Operator {
    op: Op,
    ctx: Arc<SessionContext>,
    compiled: Option<(SchemaRef, Compiled)>,
    /// Window state of this partition (window operations only).
    windows: Option<crate::window::WindowCore>,
    /// Source offsets of the records the last batch found late, with the
    /// watermark each met (window operations only).
    late: Vec<(i64, i64)>,
}

/// The aggregations of a window, in order, as `kind(input)` (custom ones by
/// their name): what its stored states mean.
fn signature(aggs: &[crate::window::Aggregation]) -> String {
    aggs.iter()
        .map(|a| {
            let input = a.input().map(ToString::to_string).unwrap_or_default();
            match a.kind() {
                crate::window::AggKind::Custom => format!("custom {}({input})", a.name()),
                kind => format!("{kind:?}({input})"),
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl Operator {
    pub(crate) fn new(op: Op, ctx: Arc<SessionContext>) -> Self {
        let windows = match &op {
            Op::Window(spec) => spec.windows.as_ref().ok().map(|w| {
                let kinds = spec.aggs.iter().map(|a| a.kind()).collect();
                let customs = spec.aggs.iter().map(|a| a.custom.clone()).collect();
                crate::window::WindowCore::new(*w, spec.grace_ms, kinds, spec.emit)
                    .with_customs(customs)
                    .with_signature(signature(&spec.aggs))
            }),
            _ => None,
        };
        Operator {
            op,
            ctx,
            compiled: None,
            windows,
            late: Vec::new(),
        }
    }

    /// The window state, for window operations.
    pub(crate) fn window_state(&mut self) -> Option<&mut crate::window::WindowCore> {
        self.windows.as_mut()
    }

    /// Source offsets of the records the last batch found late, with their watermarks.
    pub(crate) fn take_late(&mut self) -> Vec<(i64, i64)> {
        std::mem::take(&mut self.late)
    }

    pub(crate) fn name(&self) -> String {
        self.op.name()
    }

    /// Records a window operator dropped so far (late, no key); zero for other operators.
    pub(crate) fn dropped(&self) -> crate::window::Dropped {
        self.windows
            .as_ref()
            .map(|w| w.dropped())
            .unwrap_or_default()
    }

    fn compile(&self, schema: &SchemaRef) -> Result<Compiled, OpError> {
        let plan = |e: String| OpError::Plan(format!("{}: {e}", self.op.name()));
        Ok(match &self.op {
            Op::Filter(e) => {
                let (phys, field) = compile(&self.ctx, e, schema).map_err(plan)?;
                if field.data_type() != &DataType::Boolean {
                    return Err(plan(format!(
                        "the predicate has type {}; a filter needs Boolean",
                        field.data_type()
                    )));
                }
                Compiled::Filter(phys)
            }
            Op::Select(exprs) => {
                let mut physs = Vec::new();
                let mut fields = Vec::new();
                for e in exprs {
                    let (phys, field) = compile(&self.ctx, e, schema).map_err(plan)?;
                    physs.push(phys);
                    fields.push(field);
                }
                // Metadata columns travel along unless selected explicitly.
                for (i, f) in schema.fields().iter().enumerate() {
                    if is_metadata_column(f.name()) && !fields.iter().any(|x| x.name() == f.name())
                    {
                        physs.push(Arc::new(
                            datafusion::physical_expr::expressions::Column::new(f.name(), i),
                        ));
                        fields.push(f.as_ref().clone());
                    }
                }
                check_unique(&fields).map_err(plan)?;
                Compiled::Project(physs, Arc::new(Schema::new(fields)))
            }
            Op::WithColumn(name, e) => {
                let (phys, field) = compile(&self.ctx, e, schema).map_err(plan)?;
                let (physs, fields) = with_column(schema, name, phys, &field);
                Compiled::Project(physs, Arc::new(Schema::new(fields)))
            }
            Op::Drop(columns) => {
                for c in columns {
                    if schema.index_of(c).is_err() {
                        return Err(plan(format!(
                            "no column '{c}' (columns: {})",
                            column_list(schema)
                        )));
                    }
                }
                let keep: Vec<usize> = (0..schema.fields().len())
                    .filter(|&i| !columns.iter().any(|c| c == schema.field(i).name()))
                    .collect();
                let projected = schema.project(&keep).map_err(|e| plan(e.to_string()))?;
                Compiled::Keep(keep, Arc::new(projected))
            }
            Op::MapBatches(..) => Compiled::Map,
            Op::Repartition(_) => {
                return Err(plan(
                    "a repartition is a stage boundary and cannot run as an operator".into(),
                ))
            }
            Op::Window(spec) => {
                Compiled::Window(window::compile_window(&self.ctx, spec, schema).map_err(plan)?)
            }
        })
    }

    /// Applies the operation to `batch`, compiling it first when the schema is
    /// new. A `heartbeat` (event time without a record) moves windows on.
    pub(crate) fn apply(
        &mut self,
        batch: RecordBatch,
        heartbeat: Option<i64>,
    ) -> Result<RecordBatch, OpError> {
        let schema = batch.schema();
        let fresh = match &self.compiled {
            Some((s, _)) => !Arc::ptr_eq(s, &schema) && s != &schema,
            None => true,
        };
        if fresh {
            let compiled = self.compile(&schema)?;
            self.compiled = Some((Arc::clone(&schema), compiled));
        }
        let eval = |e: String| OpError::Eval(e);
        let Some((_, compiled)) = &self.compiled else {
            return Err(OpError::Eval("operator was not compiled".into()));
        };
        match (compiled, &self.op) {
            (Compiled::Filter(predicate), _) => {
                let mask = evaluate(predicate, &batch).map_err(eval)?;
                let mask = mask
                    .as_boolean_opt()
                    .ok_or_else(|| eval("predicate is not Boolean".into()))?;
                filter_record_batch(&batch, mask).map_err(|e| eval(e.to_string()))
            }
            (Compiled::Project(exprs, out), _) => {
                let columns = exprs
                    .iter()
                    .map(|e| evaluate(e, &batch))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(eval)?;
                RecordBatch::try_new(Arc::clone(out), columns).map_err(|e| eval(e.to_string()))
            }
            (Compiled::Keep(keep, out), _) => {
                let columns = keep.iter().map(|&i| Arc::clone(batch.column(i))).collect();
                RecordBatch::try_new(Arc::clone(out), columns).map_err(|e| eval(e.to_string()))
            }
            (Compiled::Map, Op::MapBatches(_, f)) => f(batch).map_err(|e| eval(e.to_string())),
            (Compiled::Map, _) => Err(eval("map without a function".into())),
            (Compiled::Window(w), _) => match self.windows.as_mut() {
                Some(core) => {
                    let (out, late) = w.apply(core, &batch, heartbeat)?;
                    self.late = late;
                    Ok(out)
                }
                None => Err(eval("window state missing".into())),
            },
        }
    }
}

pub(crate) fn evaluate(
    expr: &Arc<dyn PhysicalExpr>,
    batch: &RecordBatch,
) -> Result<ArrayRef, String> {
    expr.evaluate(batch)
        .and_then(|v| v.into_array(batch.num_rows()))
        .map_err(|e| e.to_string())
}

/// The columns of `schema` with `name` replaced by (or, when missing, added
/// as) `phys` of type `field`.
fn with_column(
    schema: &SchemaRef,
    name: &str,
    phys: Arc<dyn PhysicalExpr>,
    field: &Field,
) -> (Vec<Arc<dyn PhysicalExpr>>, Vec<Field>) {
    let field = Field::new(name, field.data_type().clone(), field.is_nullable());
    let mut physs: Vec<Arc<dyn PhysicalExpr>> = Vec::new();
    let mut fields = Vec::new();
    let mut replaced = false;
    for (i, f) in schema.fields().iter().enumerate() {
        if f.name() == name {
            physs.push(Arc::clone(&phys));
            fields.push(field.clone());
            replaced = true;
        } else {
            physs.push(Arc::new(
                datafusion::physical_expr::expressions::Column::new(f.name(), i),
            ));
            fields.push(f.as_ref().clone());
        }
    }
    if !replaced {
        physs.push(phys);
        fields.push(field);
    }
    (physs, fields)
}

fn check_unique(fields: &[Field]) -> Result<(), String> {
    for (i, f) in fields.iter().enumerate() {
        if fields[..i].iter().any(|g| g.name() == f.name()) {
            return Err(format!(
                "column '{}' appears twice; alias one of them",
                f.name()
            ));
        }
    }
    Ok(())
}

pub(crate) fn column_list(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expr::{col, lit};
    use arrow::array::{Float64Array, Int64Array, StringArray};
    use arrow::datatypes::Float64Type;

    fn batch() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("device", DataType::Utf8, false),
            Field::new("temp", DataType::Float64, true),
            Field::new("_offset", DataType::Int64, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec!["a", "b", "c"])),
                Arc::new(Float64Array::from(vec![Some(-1.0), Some(2.0), None])),
                Arc::new(Int64Array::from(vec![0, 1, 2])),
            ],
        )
        .unwrap_or_else(|e| panic!("test batch: {e}"))
    }

    fn run(op: Op) -> Result<RecordBatch, OpError> {
        Operator::new(op, Arc::new(SessionContext::new())).apply(batch(), None)
    }

    #[test]
    fn filter_coerces_literals_and_drops_nulls() {
        let out = run(Op::Filter(col("temp").gt_eq(lit(0)))).unwrap_or_else(|_| panic!("filter"));
        assert_eq!(out.num_rows(), 1);
    }

    #[test]
    fn select_keeps_metadata_and_with_column_replaces() {
        let out = run(Op::Select(vec![
            col("device"),
            (col("temp") * lit(2.0)).alias("t2"),
        ]))
        .unwrap_or_else(|_| panic!("select"));
        let names: Vec<_> = out
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(names, vec!["device", "t2", "_offset"]);
        let out = run(Op::WithColumn("temp".into(), col("temp") + lit(1.0)))
            .unwrap_or_else(|_| panic!("with_column"));
        assert_eq!(out.column(1).as_primitive::<Float64Type>().value(1), 3.0);
        assert_eq!(out.num_columns(), 3);
    }

    #[test]
    fn plan_errors_name_the_problem() {
        let Err(OpError::Plan(m)) = run(Op::Filter(col("nope").gt(lit(1)))) else {
            panic!("expected a plan error")
        };
        assert!(m.contains("nope"), "{m}");
        let Err(OpError::Plan(m)) = run(Op::Filter(col("temp") + lit(1.0))) else {
            panic!("expected a plan error")
        };
        assert!(m.contains("needs Boolean"), "{m}");
        let Err(OpError::Plan(m)) = run(Op::Drop(vec!["x".into()])) else {
            panic!("expected a plan error")
        };
        assert!(m.contains("no column 'x'"), "{m}");
    }
}
