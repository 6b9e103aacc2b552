//! `drop(columns)`: removes columns.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::prelude::SessionContext;
use futures::future::BoxFuture;

use super::{column_list, LogicalOperator, OpContext, OpError, Operator};

/// Removes the named columns.
pub(crate) struct DropColumns(pub(crate) Vec<String>);

impl LogicalOperator for DropColumns {
    fn name(&self) -> String {
        format!("drop({})", self.0.join(", "))
    }

    fn plan(
        &self,
        input: &SchemaRef,
        _ctx: &Arc<SessionContext>,
    ) -> Result<Box<dyn Operator>, OpError> {
        if let Some(missing) = self.0.iter().find(|c| input.index_of(c).is_err()) {
            return Err(OpError::Plan(format!(
                "no column '{missing}' (columns: {})",
                column_list(input)
            )));
        }
        let keep: Vec<usize> = (0..input.fields().len())
            .filter(|&i| !self.0.iter().any(|c| c == input.field(i).name()))
            .collect();
        let schema = input
            .project(&keep)
            .map_err(|e| OpError::Plan(e.to_string()))?;
        Ok(Box::new(KeepColumns {
            keep,
            schema: Arc::new(schema),
        }))
    }
}

/// Keeps the columns at the given indices.
struct KeepColumns {
    keep: Vec<usize>,
    schema: SchemaRef,
}

impl Operator for KeepColumns {
    fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn process<'a>(
        &'a mut self,
        batch: RecordBatch,
        _ctx: &'a mut OpContext,
    ) -> BoxFuture<'a, Result<RecordBatch, OpError>> {
        let columns = self
            .keep
            .iter()
            .map(|&i| Arc::clone(batch.column(i)))
            .collect();
        let out = RecordBatch::try_new(Arc::clone(&self.schema), columns).map_err(OpError::eval);
        Box::pin(std::future::ready(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operators::testing::{run, sensor_batch};

    #[test]
    fn drops_columns_and_names_a_missing_one() -> Result<(), OpError> {
        let out = run(&DropColumns(vec!["temp".into()]), sensor_batch())?;
        assert_eq!(out.num_columns(), 2);
        let Err(OpError::Plan(m)) = run(&DropColumns(vec!["x".into()]), sensor_batch()) else {
            panic!("expected a plan error")
        };
        assert!(m.contains("no column 'x'"), "{m}");
        Ok(())
    }
}
