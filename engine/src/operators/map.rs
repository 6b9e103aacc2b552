//! `map_batches(f)` and `map(f)`: a user function over whole batches.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::prelude::SessionContext;
use futures::future::BoxFuture;

use super::{column_list, LogicalOperator, OpContext, OpError, Operator};
use crate::plan::BatchFn;

/// Applies a user function to every batch.
pub(crate) struct MapBatches {
    /// The DSL call, e.g. `map_batches` or `map::<In, Out>`.
    pub(crate) name: String,
    pub(crate) f: BatchFn,
}

impl LogicalOperator for MapBatches {
    fn name(&self) -> String {
        self.name.clone()
    }

    /// A user function is opaque: its output schema is what it returns for
    /// an empty batch of the input schema.
    fn plan(
        &self,
        input: &SchemaRef,
        _ctx: &Arc<SessionContext>,
    ) -> Result<Box<dyn Operator>, OpError> {
        let empty = (self.f)(RecordBatch::new_empty(Arc::clone(input))).map_err(|e| {
            OpError::Plan(format!(
                "the function failed on an empty batch, which is how its output \
                 columns are found before any record is read: {e}"
            ))
        })?;
        Ok(Box::new(MapOperator {
            f: Arc::clone(&self.f),
            schema: empty.schema(),
        }))
    }
}

struct MapOperator {
    f: BatchFn,
    schema: SchemaRef,
}

impl MapOperator {
    /// Runs the function; its result must have the planned columns.
    fn map(&self, batch: RecordBatch) -> Result<RecordBatch, OpError> {
        let out = (self.f)(batch).map_err(OpError::Eval)?;
        if out.schema_ref() == &self.schema {
            return Ok(out);
        }
        let same_columns = out.schema().fields().len() == self.schema.fields().len()
            && out
                .schema()
                .fields()
                .iter()
                .zip(self.schema.fields())
                .all(|(a, b)| a.name() == b.name() && a.data_type() == b.data_type());
        let columns = out.columns().to_vec();
        match same_columns {
            true => RecordBatch::try_new(Arc::clone(&self.schema), columns).map_err(OpError::eval),
            false => Err(OpError::eval(format!(
                "the function returned the columns [{}] but returned [{}] for an empty batch; \
                 it must return the same columns for every batch",
                column_list(&out.schema()),
                column_list(&self.schema)
            ))),
        }
    }
}

impl Operator for MapOperator {
    fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn process<'a>(
        &'a mut self,
        batch: RecordBatch,
        _ctx: &'a mut OpContext,
    ) -> BoxFuture<'a, Result<RecordBatch, OpError>> {
        Box::pin(std::future::ready(self.map(batch)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operators::testing::{run, sensor_batch};

    #[test]
    fn a_function_changing_its_columns_is_an_error() {
        let map = MapBatches {
            name: "map_batches".into(),
            f: Arc::new(|batch: RecordBatch| {
                let keep: Vec<usize> = if batch.num_rows() == 0 {
                    vec![0]
                } else {
                    vec![1]
                };
                Ok(batch.project(&keep)?)
            }),
        };
        let Err(OpError::Eval(e)) = run(&map, sensor_batch()) else {
            panic!("expected an evaluation error")
        };
        assert!(e.to_string().contains("[temp]"), "{e}");
    }
}
