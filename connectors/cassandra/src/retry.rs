//! Which failed requests are tried again, and how long to wait between tries.

use std::time::Duration;

use backon::ExponentialBuilder;
use scylla::errors::{DbError, ExecutionError, RequestAttemptError};

/// Exponential backoff from 50 ms, with jitter, at most 5 s apart, `retries` times.
pub(crate) fn backoff(retries: usize) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(5))
        .with_max_times(retries)
        .with_jitter()
}

/// Whether a failed request may succeed when tried again.
pub(crate) fn retryable(error: &ExecutionError) -> bool {
    match error {
        ExecutionError::LastAttemptError(RequestAttemptError::DbError(db, _)) => matches!(
            db,
            DbError::Overloaded
                | DbError::WriteTimeout { .. }
                | DbError::ReadTimeout { .. }
                | DbError::Unavailable { .. }
                | DbError::IsBootstrapping
                | DbError::ServerError
        ),
        ExecutionError::LastAttemptError(
            RequestAttemptError::BrokenConnectionError(_)
            | RequestAttemptError::UnableToAllocStreamId,
        ) => true,
        ExecutionError::ConnectionPoolError(_)
        | ExecutionError::RequestTimeout(_)
        | ExecutionError::EmptyPlan => true,
        _ => false,
    }
}
