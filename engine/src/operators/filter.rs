//! `filter(predicate)`: keeps the rows for which the predicate is true.

use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::prelude::SessionContext;
use futures::future::BoxFuture;

use super::expr::{compile, evaluate};
use super::{LogicalOperator, OpContext, OpError, Operator};

/// Keeps the rows for which `predicate` is true (null counts as false).
pub(crate) struct Filter(pub(crate) Expr);

impl LogicalOperator for Filter {
    fn name(&self) -> String {
        format!("filter({})", self.0)
    }

    fn plan(
        &self,
        input: &SchemaRef,
        ctx: &Arc<SessionContext>,
    ) -> Result<Box<dyn Operator>, OpError> {
        let (predicate, field) = compile(ctx, &self.0, input)?;
        if field.data_type() != &DataType::Boolean {
            return Err(OpError::Plan(format!(
                "the predicate has type {}; a filter needs Boolean",
                field.data_type()
            )));
        }
        Ok(Box::new(FilterOperator {
            predicate,
            schema: Arc::clone(input),
        }))
    }
}

struct FilterOperator {
    predicate: Arc<dyn PhysicalExpr>,
    schema: SchemaRef,
}

impl FilterOperator {
    fn filter(&self, batch: &RecordBatch) -> Result<RecordBatch, OpError> {
        let mask = evaluate(&self.predicate, batch)?;
        let mask = mask
            .as_boolean_opt()
            .ok_or_else(|| OpError::eval("the predicate is not Boolean"))?;
        filter_record_batch(batch, mask).map_err(OpError::eval)
    }
}

impl Operator for FilterOperator {
    fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn process<'a>(
        &'a mut self,
        batch: RecordBatch,
        _ctx: &'a mut OpContext,
    ) -> BoxFuture<'a, Result<RecordBatch, OpError>> {
        Box::pin(std::future::ready(self.filter(&batch)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expr::{col, lit};
    use crate::operators::testing::{run, sensor_batch};

    #[test]
    fn filter_coerces_literals_and_drops_nulls() -> Result<(), OpError> {
        let out = run(&Filter(col("temp").gt_eq(lit(0))), sensor_batch())?;
        assert_eq!(out.num_rows(), 1);
        Ok(())
    }

    #[test]
    fn plan_errors_name_the_problem() {
        let Err(e) = run(&Filter(col("nope").gt(lit(1))), sensor_batch()) else {
            panic!("expected a plan error")
        };
        assert!(e.to_string().contains("nope"), "{e}");
        let Err(OpError::Plan(m)) = run(&Filter(col("temp") + lit(1.0)), sensor_batch()) else {
            panic!("expected a plan error")
        };
        assert!(m.contains("needs Boolean"), "{m}");
    }
}
