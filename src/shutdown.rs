//! Graceful shutdown, shared by every task, and the process signals that start it.
//!
//! Two steps: `drain` stops the accept loops and asks open connections to finish their
//! current request; `cut`, after the deadline, closes whatever is still open. The tracker
//! counts connection tasks so the caller knows when the drain is complete.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tokio_util::task::TaskTracker;

/// The signals the process handles: SIGTERM and SIGINT stop it gracefully; SIGHUP, which
/// operators send by habit to reload, is logged and ignored until reload exists. Without
/// a handler each of them kills the process at once (SIGHUP with exit 129, no log, no
/// drain).
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers. Call it before starting anything, so a signal that arrives
    /// during startup is held for [`Signals::stop_requested`] instead of killing the
    /// process. Needs a tokio runtime.
    pub fn register() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// Waits for SIGTERM or SIGINT and returns its name; logs and ignores every SIGHUP.
    pub async fn stop_requested(&mut self) -> &'static str {
        loop {
            tokio::select! {
                _ = self.term.recv() => return "SIGTERM",
                _ = self.int.recv() => return "SIGINT",
                _ = self.hup.recv() => tracing::warn!(
                    "SIGHUP received: configuration reload is not supported yet; ignoring"
                ),
            }
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    /// Cancelled when shutdown starts: stop accepting, finish in-flight work.
    pub drain: CancellationToken,
    /// Cancelled at the deadline: close everything still open.
    pub cut: CancellationToken,
    /// Connection tasks still running.
    pub tracker: TaskTracker,
    /// Set just before `drain` and `cut` are cancelled: read where the tokens' locks would
    /// show, once or more per request.
    draining: Arc<AtomicBool>,
    cutting: Arc<AtomicBool>,
}

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Whether the drain has started: a response now says `Connection: close`.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Resolves when the drain starts; see [`Signal`].
    pub fn drain_signal(&self) -> Signal<'_> {
        Signal::new(&self.draining, &self.drain)
    }

    /// Resolves at the cut; see [`Signal`].
    pub fn cut_signal(&self) -> Signal<'_> {
        Signal::new(&self.cutting, &self.cut)
    }

    /// Starts the drain and waits up to `grace` for in-flight work; then cuts the rest.
    /// Returns whether everything finished within the deadline.
    pub async fn run(&self, grace: Duration) -> bool {
        self.draining.store(true, Ordering::Release);
        self.drain.cancel();
        self.tracker.close();
        let finished = tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok();
        self.cutting.store(true, Ordering::Release);
        self.cut.cancel();
        if !finished {
            // Cut tasks end at their next poll; give them a moment to close their sockets.
            let _ = tokio::time::timeout(Duration::from_secs(1), self.tracker.wait()).await;
        }
        finished
    }
}

/// A wait for the drain or the cut for a connection's whole life, that costs one atomic
/// load per poll after the first. A connection's task polls it on every wake-up (several
/// per request), and the token's own future takes a lock each time. The first poll
/// registers the task with the token; later ones read the flag, which is set before the
/// token is cancelled, so the wake-up the cancel causes finds it set.
pub struct Signal<'a> {
    flag: &'a AtomicBool,
    wait: Pin<Box<WaitForCancellationFuture<'a>>>,
    registered: bool,
}

impl<'a> Signal<'a> {
    fn new(flag: &'a AtomicBool, token: &'a CancellationToken) -> Signal<'a> {
        Signal {
            flag,
            wait: Box::pin(token.cancelled()),
            registered: false,
        }
    }
}

impl Future for Signal<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.flag.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        if !self.registered {
            if self.wait.as_mut().poll(cx).is_ready() {
                return Poll::Ready(());
            }
            // The token now holds this task's waker (a task's waker does not change).
            self.registered = true;
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn signals_fire_at_drain_and_cut() {
        let shutdown = Shutdown::new();
        let (polled, ready) = tokio::sync::oneshot::channel();
        let task = {
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let mut drain = shutdown.drain_signal();
                let mut cut = shutdown.cut_signal();
                // Polled several times before anything happens, as by a busy connection.
                for _ in 0..3 {
                    tokio::select! {
                        biased;
                        _ = &mut drain => panic!("drained too early"),
                        _ = &mut cut => panic!("cut too early"),
                        _ = tokio::task::yield_now() => {}
                    }
                }
                polled.send(()).unwrap();
                drain.await;
                assert!(shutdown.is_draining());
                cut.await;
            })
        };
        ready.await.unwrap();
        // A connection that never finishes: the grace runs out and the cut comes.
        let _never = shutdown.tracker.spawn(std::future::pending::<()>());
        let finished = shutdown.run(Duration::from_millis(50)).await;
        assert!(!finished);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("both signals fired")
            .unwrap();
    }
}
