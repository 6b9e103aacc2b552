//! Compiling and evaluating DataFusion expressions against a batch schema.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{Field, SchemaRef};
use datafusion::common::DFSchema;
use datafusion::logical_expr::Expr;
use datafusion::optimizer::simplify_expressions::{ExprSimplifier, SimplifyContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::prelude::SessionContext;

use super::OpError;

/// Compiles `expr` for batches of `schema` (with type coercion), returning the
/// physical expression and the output field it produces.
pub(crate) fn compile(
    ctx: &SessionContext,
    expr: &Expr,
    schema: &SchemaRef,
) -> Result<(Arc<dyn PhysicalExpr>, Field), OpError> {
    let df_schema = DFSchema::try_from(schema.as_ref().clone()).map_err(OpError::Compile)?;
    let (name, unaliased) = match expr {
        Expr::Alias(alias) => (alias.name.clone(), alias.expr.as_ref().clone()),
        other => (other.schema_name().to_string(), other.clone()),
    };
    // Simplified first: some functions (coalesce, nvl) only run rewritten.
    let simplify = SimplifyContext::builder()
        .with_schema(Arc::new(df_schema.clone()))
        .with_config_options(Arc::clone(ctx.state().config_options()))
        .build();
    let simplified = ExprSimplifier::new(simplify)
        .simplify(unaliased)
        .map_err(OpError::Compile)?;
    let physical = ctx
        .create_physical_expr(simplified, &df_schema)
        .map_err(OpError::Compile)?;
    let data_type = physical.data_type(schema).map_err(OpError::Compile)?;
    let nullable = physical.nullable(schema).map_err(OpError::Compile)?;
    Ok((physical, Field::new(name, data_type, nullable)))
}

/// Evaluates `expr` on `batch` into one array.
pub(crate) fn evaluate(
    expr: &Arc<dyn PhysicalExpr>,
    batch: &RecordBatch,
) -> Result<ArrayRef, OpError> {
    expr.evaluate(batch)
        .and_then(|v| v.into_array(batch.num_rows()))
        .map_err(OpError::eval)
}
