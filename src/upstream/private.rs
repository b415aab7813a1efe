//! The idle connections one client connection keeps for itself: those that started with
//! a PROXY header naming its client (`send_proxy`), which no other client may use. An
//! HTTP/1 session takes one back for its next request to the same worker, so a keep-alive
//! client costs one worker connection per worker, as without the header.

use std::time::Duration;

use super::Upstream;
use crate::ring::Worker;
use crate::ring::state::now_ms;

/// Workers whose connection a client keeps at once. A client is usually sent to a few
/// workers in turn (round robin); past this, the longest kept is closed.
const MAX_PRIVATE: usize = 4;

/// One client connection's idle private connections: worker id, connection, when it went
/// idle (`now_ms()`). Empty (and without an allocation) on pools that do not send PROXY
/// headers.
#[derive(Default)]
pub struct PrivateConns(Vec<(i64, Upstream, u64)>);

impl PrivateConns {
    /// The idle connection to `worker`, if one is kept, was idle less than `max_idle` (the
    /// pool's `idle_timeout`, as in the shared store: a worker may close it about then) and
    /// the worker has not closed it.
    pub fn take(&mut self, worker: &Worker, max_idle: Duration) -> Option<Upstream> {
        let i = self.0.iter().position(|(id, ..)| *id == worker.id)?;
        let (_, up, since) = self.0.remove(i);
        let fresh = now_ms().saturating_sub(since) < max_idle.as_millis() as u64;
        (fresh && !up.stream.is_closed()).then_some(up)
    }

    /// Keeps `up`, whose exchange with `worker` ended cleanly, unless the worker is drained
    /// (weight 0, deleted): then it closes now, as the shared store would close it.
    pub fn put(&mut self, worker: &Worker, up: Upstream) {
        if worker.state.drain.is_drained() {
            return;
        }
        if self.0.len() == MAX_PRIVATE {
            self.0.remove(0);
        }
        self.0.push((worker.id, up, now_ms()));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::{PoolConfig, SendProxy};
    use crate::ring::{Address, WorkerState};
    use crate::upstream::{Connector, IdleConns, connect_upstream};

    fn worker(id: i64, address: &str) -> Arc<Worker> {
        Arc::new(Worker {
            id,
            address: Address::new(address),
            pool_load: Default::default(),
            weight: 1,
            pool: "p".into(),
            version: 1,
            state: Arc::new(WorkerState::default()),
        })
    }

    #[tokio::test]
    async fn kept_per_worker_for_one_client_never_shared() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let (a, b) = (worker(1, &address), worker(2, &address));
        let connector = Connector::new(&PoolConfig {
            send_proxy: SendProxy::V1,
            ..PoolConfig::default()
        });
        let client = "192.0.2.7:5555".parse().unwrap();
        let up = connect_upstream(&a, &connector, client).await.unwrap();
        assert!(up.private);
        // The shared store refuses it: another client would be taken for this one.
        IdleConns::put_upstream(&a, up);
        assert_eq!(IdleConns::count(&a), 0);

        let mut kept = PrivateConns::default();
        let minute = Duration::from_secs(60);
        kept.put(&a, connect_upstream(&a, &connector, client).await.unwrap());
        assert!(kept.take(&b, minute).is_none(), "another worker's");
        assert!(
            kept.take(&a, Duration::ZERO).is_none(),
            "idle too long: closed"
        );
        kept.put(&a, connect_upstream(&a, &connector, client).await.unwrap());
        assert!(kept.take(&a, minute).is_some());
        assert!(kept.take(&a, minute).is_none(), "taken once");

        for id in 0..6 {
            let w = worker(10 + id, &address);
            kept.put(&w, connect_upstream(&w, &connector, client).await.unwrap());
        }
        assert_eq!(kept.0.len(), MAX_PRIVATE, "the longest kept are closed");
        b.state.drain.set(true);
        kept.put(&b, connect_upstream(&b, &connector, client).await.unwrap());
        assert!(
            kept.take(&b, minute).is_none(),
            "a drained worker's is closed"
        );
    }
}
