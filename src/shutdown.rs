//! Graceful shutdown, shared by every task, and the process signals that start it or ask
//! for a reload.
//!
//! Two steps: `drain` stops the accept loops and asks open connections to finish their
//! current request; `cut`, after the deadline, closes whatever is still open. The tracker
//! counts connection tasks so the caller knows when the drain is complete. Each listener
//! has a [`Shutdown::child`] of the process's: a reload that removes the listener drains
//! and cuts it alone, and the process's shutdown reaches it as well.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tokio_util::task::TaskTracker;

/// The signals the process handles: SIGTERM and SIGINT stop it gracefully; SIGHUP reloads
/// the configuration. Without a handler each of them kills the process at once (SIGHUP
/// with exit 129, no log, no drain).
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers. Call it before starting anything, so a signal that arrives
    /// during startup is held for [`Signals::next`] instead of killing the process. Needs a
    /// tokio runtime.
    pub fn register() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// Waits for the next signal. Several SIGHUPs sent while a reload runs are one reload
    /// (the kernel merges pending signals, and one reread sees the latest file anyway).
    pub async fn next(&mut self) -> SignalEvent {
        tokio::select! {
            _ = self.term.recv() => SignalEvent::Stop("SIGTERM"),
            _ = self.int.recv() => SignalEvent::Stop("SIGINT"),
            _ = self.hup.recv() => SignalEvent::Reload,
        }
    }
}

/// What a signal asks of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalEvent {
    /// Stop gracefully; the signal's name, for the log.
    Stop(&'static str),
    /// Reread the configuration file and apply it (SIGHUP).
    Reload,
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
    draining: Arc<Flag>,
    cutting: Arc<Flag>,
}

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// A shutdown of its own for part of the work (one listener and its connections): it
    /// drains and cuts when this one does, and can also be run alone. Its connections are
    /// tracked by its own tracker; whoever serves them waits for that tracker inside a task
    /// of this one's, so [`Shutdown::run`] here still waits for them.
    pub fn child(&self) -> Shutdown {
        Shutdown {
            drain: self.drain.child_token(),
            cut: self.cut.child_token(),
            tracker: TaskTracker::new(),
            draining: Arc::new(Flag::below(&self.draining)),
            cutting: Arc::new(Flag::below(&self.cutting)),
        }
    }

    /// Whether the drain has started: a response now says `Connection: close`.
    pub fn is_draining(&self) -> bool {
        self.draining.is_set()
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
        self.draining.set();
        self.drain.cancel();
        self.tracker.close();
        let finished = tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok();
        self.cutting.set();
        self.cut.cancel();
        if !finished {
            // Cut tasks end at their next poll; give them a moment to close their sockets.
            let _ = tokio::time::timeout(Duration::from_secs(1), self.tracker.wait()).await;
        }
        finished
    }
}

/// A shutdown step's flag, set just before its token is cancelled. A child's flag also
/// reads its parent's: the parent's cancel reaches the child's token, and the wake-up it
/// causes must find a flag set.
#[derive(Debug, Default)]
struct Flag {
    set: AtomicBool,
    parent: Option<Arc<Flag>>,
}

impl Flag {
    fn below(parent: &Arc<Flag>) -> Flag {
        Flag {
            set: AtomicBool::new(false),
            parent: Some(parent.clone()),
        }
    }

    fn set(&self) {
        self.set.store(true, Ordering::Release);
    }

    #[inline]
    fn is_set(&self) -> bool {
        self.set.load(Ordering::Acquire) || self.parent.as_ref().is_some_and(|p| p.is_set())
    }
}

/// A wait for the drain or the cut for a connection's whole life, that costs an atomic
/// load per poll after the first (two under a listener's child shutdown). A connection's task polls it on every wake-up (several
/// per request), and the token's own future takes a lock each time. The first poll
/// registers the task with the token; later ones read the flag, which is set before the
/// token is cancelled, so the wake-up the cancel causes finds it set.
pub struct Signal<'a> {
    flag: &'a Flag,
    wait: Pin<Box<WaitForCancellationFuture<'a>>>,
    registered: bool,
}

impl<'a> Signal<'a> {
    fn new(flag: &'a Flag, token: &'a CancellationToken) -> Signal<'a> {
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
        if self.flag.is_set() {
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

    #[tokio::test]
    async fn a_child_drains_alone_or_with_its_parent() {
        let parent = Shutdown::new();
        let alone = parent.child();
        let with_parent = parent.child();
        let _never = alone.tracker.spawn(std::future::pending::<()>());
        assert!(!alone.run(Duration::from_millis(10)).await);
        assert!(alone.is_draining() && alone.cut.is_cancelled());
        assert!(!parent.is_draining() && !with_parent.is_draining());

        // The parent's drain reaches a child's signal that was already polled (registered).
        let (polled, ready) = tokio::sync::oneshot::channel();
        let task = {
            let child = with_parent.clone();
            tokio::spawn(async move {
                let mut drain = child.drain_signal();
                tokio::select! {
                    biased;
                    _ = &mut drain => panic!("drained too early"),
                    _ = tokio::task::yield_now() => {}
                }
                polled.send(()).unwrap();
                drain.await;
                assert!(child.is_draining());
            })
        };
        ready.await.unwrap();
        assert!(parent.run(Duration::from_millis(10)).await);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the child saw its parent's drain")
            .unwrap();
        assert!(with_parent.cut.is_cancelled());
    }
}
