//! Shutdown: one signal every long-lived task listens for, and a count of the tasks still draining.
//!
//! `run` stops accepting when the token is cancelled; each WebSocket then gets
//! a 1012 close and each SSE stream a last `retry:` line. [`Shutdown::drained`]
//! resolves once every tracked task has finished, so `main` can exit early or
//! give up after its grace period.

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tracker: TaskTracker,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts the drain.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves when the drain starts.
    pub async fn triggered(&self) {
        self.token.cancelled().await;
    }

    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    pub fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }

    /// Resolves when the drain has started and every tracked task is done.
    pub async fn drained(&self) {
        self.token.cancelled().await;
        self.tracker.close();
        self.tracker.wait().await;
    }
}
