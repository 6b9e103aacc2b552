//! Running a pipeline: the application, partition tasks, commits and stopping.

mod application;
mod pipeline;
mod stats;
mod stop;
mod worker;

pub use application::{Application, ApplicationBuilder};
pub use stats::Stats;
pub use stop::StopHandle;
