//! Compiling DataFusion expressions against a batch schema.

use std::sync::Arc;

use arrow::datatypes::{Field, SchemaRef};
use datafusion::common::DFSchema;
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::prelude::SessionContext;

/// Compiles `expr` for batches of `schema` (with type coercion), returning the
/// physical expression and the output field it produces.
pub(crate) fn compile(
    ctx: &SessionContext,
    expr: &Expr,
    schema: &SchemaRef,
) -> Result<(Arc<dyn PhysicalExpr>, Field), String> {
    let df_schema = DFSchema::try_from(schema.as_ref().clone()).map_err(|e| e.to_string())?;
    let (name, unaliased) = match expr {
        Expr::Alias(alias) => (alias.name.clone(), alias.expr.as_ref().clone()),
        other => (other.schema_name().to_string(), other.clone()),
    };
    let physical = ctx
        .create_physical_expr(unaliased, &df_schema)
        .map_err(|e| format!("{e}"))?;
    let data_type = physical.data_type(schema).map_err(|e| e.to_string())?;
    let nullable = physical.nullable(schema).map_err(|e| e.to_string())?;
    Ok((physical, Field::new(name, data_type, nullable)))
}
