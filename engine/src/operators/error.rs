//! Why an operator could not be planned or could not process a batch.

use datafusion::error::DataFusionError;

use crate::BoxError;

/// Why an operator could not be planned or could not process a batch.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OpError {
    /// The operation does not fit its input schema (found when planning).
    #[error("{0}")]
    Plan(String),
    /// An expression of the operation cannot be compiled for its input.
    #[error("{0}")]
    Compile(#[source] DataFusionError),
    /// Evaluation failed on data.
    #[error("{0}")]
    Eval(#[source] BoxError),
}

impl OpError {
    /// An evaluation error from any error type.
    pub(crate) fn eval(error: impl Into<BoxError>) -> Self {
        OpError::Eval(error.into())
    }
}
