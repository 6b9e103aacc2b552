//! Running a pipeline: the application, partition tasks, commits and stopping.

mod application;
mod at_least_once;
mod driver;
mod event_time;
mod exactly_once;
pub(crate) mod internal_topics;
mod outputs;
mod pipeline;
mod poller;
mod processing;
mod prometheus;
mod repartition;
mod state_dir;
mod stats;
mod stop;
mod worker;

#[cfg(test)]
pub(crate) use application::decoder_of;
pub use application::{Application, ApplicationBuilder, ProcessingGuarantee};
pub use driver::TestDriver;
pub(crate) use event_time::now_ms;
pub use prometheus::serve_metrics;
pub use stats::Stats;
pub use stop::StopHandle;
pub(crate) use worker::file_safe;

/// Locks `m`, also when a panicking holder poisoned it (the data stays usable).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
