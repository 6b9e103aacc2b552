//! Stopping a running application.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

const RUNNING: u8 = 0;
const STOP: u8 = 1;
const KILL: u8 = 2;

/// How a run ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopMode {
    Running,
    /// Finish in-flight batches, commit, leave the group.
    Graceful,
    /// Stop at once without committing (simulates a crash).
    Kill,
}

/// Stops a running [`Application`](crate::Application) from another task or thread.
#[derive(Debug, Clone, Default)]
pub struct StopHandle {
    state: Arc<AtomicU8>,
}

impl StopHandle {
    /// Asks the application to finish its in-flight batches, commit and return.
    /// Asked before a run has started, that run stops as soon as it is running.
    pub fn stop(&self) {
        let _ = self
            .state
            .compare_exchange(RUNNING, STOP, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Stops at once without finishing batches or committing offsets, as a crash
    /// would. Records processed since the last commit are processed again by the
    /// next run (at-least-once). For tests of recovery.
    pub fn kill(&self) {
        self.state.store(KILL, Ordering::Release);
    }

    /// Back to running, after a run ended, for the next run of the same application.
    pub(crate) fn reset(&self) {
        self.state.store(RUNNING, Ordering::Release);
    }

    pub(crate) fn mode(&self) -> StopMode {
        match self.state.load(Ordering::Acquire) {
            RUNNING => StopMode::Running,
            STOP => StopMode::Graceful,
            _ => StopMode::Kill,
        }
    }
}
