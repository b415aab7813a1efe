//! The idle connections one client connection keeps for itself: those that started with
//! a PROXY header naming its client (`send_proxy`), which no other client may use. An
//! HTTP/1 session takes one back for its next request to the same worker, so a keep-alive
//! client costs one worker connection per worker, as without the header.

use super::Upstream;
use crate::ring::Worker;

/// Workers whose connection a client keeps at once. A client is usually sent to a few
/// workers in turn (round robin); past this, the longest kept is closed.
const MAX_PRIVATE: usize = 4;

/// One client connection's idle private connections, by worker id. Empty (and without an
/// allocation) on pools that do not send PROXY headers.
#[derive(Default)]
pub struct PrivateConns(Vec<(i64, Upstream)>);

impl PrivateConns {
    /// The idle connection to `worker`, if one is kept and the worker has not closed it.
    pub fn take(&mut self, worker: &Worker) -> Option<Upstream> {
        let i = self.0.iter().position(|(id, _)| *id == worker.id)?;
        let (_, up) = self.0.remove(i);
        (!up.stream.is_closed()).then_some(up)
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
        self.0.push((worker.id, up));
    }
}
