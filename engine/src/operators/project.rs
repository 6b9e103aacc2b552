//! `select(exprs)` and `with_column(name, expr)`: new columns from expressions.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::prelude::SessionContext;
use futures::future::BoxFuture;

use super::expr::{compile, evaluate};
use super::{LogicalOperator, OpContext, OpError, Operator};
use crate::records::is_metadata_column;

/// Replaces the columns with `exprs`; metadata columns travel along unless
/// selected explicitly.
pub(crate) struct Select(pub(crate) Vec<Expr>);

/// Adds column `.0` computed by `.1`, or replaces the column of that name.
pub(crate) struct WithColumn(pub(crate) String, pub(crate) Expr);

impl LogicalOperator for Select {
    fn name(&self) -> String {
        let exprs: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        format!("select({})", exprs.join(", "))
    }

    fn plan(
        &self,
        input: &SchemaRef,
        ctx: &Arc<SessionContext>,
    ) -> Result<Box<dyn Operator>, OpError> {
        let mut exprs = Vec::new();
        let mut fields = Vec::new();
        for e in &self.0 {
            let (phys, field) = compile(ctx, e, input)?;
            exprs.push(phys);
            fields.push(field);
        }
        for (i, f) in input.fields().iter().enumerate() {
            if is_metadata_column(f.name()) && !fields.iter().any(|x| x.name() == f.name()) {
                exprs.push(Arc::new(Column::new(f.name(), i)));
                fields.push(f.as_ref().clone());
            }
        }
        check_unique(&fields)?;
        Ok(Box::new(Project {
            exprs,
            schema: Arc::new(Schema::new(fields)),
        }))
    }
}

impl LogicalOperator for WithColumn {
    fn name(&self) -> String {
        format!("with_column({}, {})", self.0, self.1)
    }

    fn plan(
        &self,
        input: &SchemaRef,
        ctx: &Arc<SessionContext>,
    ) -> Result<Box<dyn Operator>, OpError> {
        let (phys, field) = compile(ctx, &self.1, input)?;
        let field = Field::new(&self.0, field.data_type().clone(), field.is_nullable());
        let mut exprs: Vec<Arc<dyn PhysicalExpr>> = Vec::new();
        let mut fields = Vec::new();
        for (i, f) in input.fields().iter().enumerate() {
            if f.name() == &self.0 {
                exprs.push(Arc::clone(&phys));
                fields.push(field.clone());
            } else {
                exprs.push(Arc::new(Column::new(f.name(), i)));
                fields.push(f.as_ref().clone());
            }
        }
        if input.index_of(&self.0).is_err() {
            exprs.push(phys);
            fields.push(field);
        }
        Ok(Box::new(Project {
            exprs,
            schema: Arc::new(Schema::new(fields)),
        }))
    }
}

fn check_unique(fields: &[Field]) -> Result<(), OpError> {
    for (i, f) in fields.iter().enumerate() {
        if fields[..i].iter().any(|g| g.name() == f.name()) {
            return Err(OpError::Plan(format!(
                "column '{}' appears twice; alias one of them",
                f.name()
            )));
        }
    }
    Ok(())
}

/// One expression per output column.
struct Project {
    exprs: Vec<Arc<dyn PhysicalExpr>>,
    schema: SchemaRef,
}

impl Project {
    fn project(&self, batch: &RecordBatch) -> Result<RecordBatch, OpError> {
        let columns = self
            .exprs
            .iter()
            .map(|e| evaluate(e, batch))
            .collect::<Result<Vec<_>, _>>()?;
        RecordBatch::try_new(Arc::clone(&self.schema), columns).map_err(OpError::eval)
    }
}

impl Operator for Project {
    fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn process<'a>(
        &'a mut self,
        batch: RecordBatch,
        _ctx: &'a mut OpContext,
    ) -> BoxFuture<'a, Result<RecordBatch, OpError>> {
        Box::pin(std::future::ready(self.project(&batch)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expr::{col, lit};
    use crate::operators::testing::{run, sensor_batch};
    use arrow::array::AsArray;
    use arrow::datatypes::Float64Type;

    #[test]
    fn select_keeps_metadata_and_with_column_replaces() -> Result<(), OpError> {
        let select = Select(vec![col("device"), (col("temp") * lit(2.0)).alias("t2")]);
        let out = run(&select, sensor_batch())?;
        let names: Vec<_> = out
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(names, vec!["device", "t2", "_offset"]);
        let out = run(
            &WithColumn("temp".into(), col("temp") + lit(1.0)),
            sensor_batch(),
        )?;
        assert_eq!(out.column(1).as_primitive::<Float64Type>().value(1), 3.0);
        assert_eq!(out.num_columns(), 3);
        Ok(())
    }

    #[test]
    fn functions_that_run_only_simplified_work() -> Result<(), OpError> {
        use arrow::array::AsArray;
        let filled = crate::expr::coalesce(vec![col("temp"), lit(0.0)]);
        let out = run(&WithColumn("temp".into(), filled), sensor_batch())?;
        let temps = out
            .column(1)
            .as_primitive::<arrow::datatypes::Float64Type>();
        assert_eq!(temps.values().to_vec(), vec![-1.0, 2.0, 0.0]);
        Ok(())
    }

    #[test]
    fn a_duplicate_column_is_refused() {
        let select = Select(vec![col("device"), col("temp").alias("device")]);
        let Err(OpError::Plan(m)) = run(&select, sensor_batch()) else {
            panic!("expected a plan error")
        };
        assert!(m.contains("'device' appears twice"), "{m}");
    }
}
