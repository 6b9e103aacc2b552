//! The schema of a frame, found before any record flows.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::prelude::SessionContext;

use crate::operators::{OpError, Operator};
use crate::plan::Node;
use crate::topic::Topic;
use crate::{Error, Result};

/// The schema of the frame at `node` (metadata columns included), found by
/// running its chain from `input` on an empty batch.
pub(crate) fn frame_schema(
    input: &Topic,
    node: &Arc<Node>,
    ctx: &Arc<SessionContext>,
) -> Result<SchemaRef> {
    let decoder = crate::runtime::application::decoder_of(input)?;
    let mut batch = RecordBatch::new_empty(Arc::clone(decoder.schema()));
    for n in node.chain() {
        let Some(op) = n.op.clone() else { continue };
        let mut operator = Operator::new(op, Arc::clone(ctx));
        batch = operator.apply(batch, None).map_err(|e| match e {
            OpError::Plan(reason) | OpError::Eval(reason) => {
                Error::Plan(format!("a frame of topic '{}': {reason}", input.name()))
            }
        })?;
    }
    Ok(batch.schema())
}
