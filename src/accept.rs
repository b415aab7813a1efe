//! The accept loop every listening socket shares (proxy listeners and the admin endpoint):
//! connection limits, and tracking of each connection's task for graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::shutdown::Shutdown;

/// Accepts connections until the drain starts, serving each on its own tracked task. With
/// `max_connections`, it stops accepting while that many are open: new clients wait in the
/// kernel's backlog rather than being refused.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    shutdown: Shutdown,
    max_connections: Option<usize>,
    serve: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = max_connections.map(|n| Arc::new(Semaphore::new(n)));
    loop {
        let permit = match &slots {
            Some(s) => tokio::select! {
                _ = shutdown.drain.cancelled() => return,
                p = s.clone().acquire_owned() => Some(p.expect("never closed")),
            },
            None => None,
        };
        let accepted = tokio::select! {
            _ = shutdown.drain.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let served = serve(stream, peer);
                shutdown.tracker.spawn(async move {
                    served.await;
                    drop(permit);
                });
            }
            Err(e) => {
                // Out of file descriptors or similar: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
