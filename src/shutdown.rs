//! Graceful shutdown, shared by every task.
//!
//! Two steps: `drain` stops the accept loops and asks open connections to finish their
//! current request; `cut`, after the deadline, closes whatever is still open. The tracker
//! counts connection tasks so the caller knows when the drain is complete.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    /// Cancelled when shutdown starts: stop accepting, finish in-flight work.
    pub drain: CancellationToken,
    /// Cancelled at the deadline: close everything still open.
    pub cut: CancellationToken,
    /// Connection tasks still running.
    pub tracker: TaskTracker,
    /// Set with `drain`: read once per request, where the token's lock would show.
    draining: Arc<AtomicBool>,
}

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Whether the drain has started: a response now says `Connection: close`.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Starts the drain and waits up to `grace` for in-flight work; then cuts the rest.
    /// Returns whether everything finished within the deadline.
    pub async fn run(&self, grace: Duration) -> bool {
        self.draining.store(true, Ordering::Relaxed);
        self.drain.cancel();
        self.tracker.close();
        let finished = tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok();
        self.cut.cancel();
        if !finished {
            // Cut tasks end at their next poll; give them a moment to close their sockets.
            let _ = tokio::time::timeout(Duration::from_secs(1), self.tracker.wait()).await;
        }
        finished
    }
}
