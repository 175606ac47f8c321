//! Waking idle workers when this process queues a run.

use std::sync::Arc;

use tokio::sync::Notify;

/// Wakes an idle worker at once when a run is queued in this process, instead of at its next poll.
/// Runs queued elsewhere (another replica, the CLI) are found by the poll.
#[derive(Clone, Default)]
pub struct Wake(Arc<Notify>);

impl Wake {
    /// Wakes one idle worker, or the next to go idle when none is waiting.
    pub fn wake(&self) {
        self.0.notify_one();
    }

    /// What an idle worker waits on, besides its poll timer.
    pub async fn woken(&self) {
        self.0.notified().await;
    }
}
