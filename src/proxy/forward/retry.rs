//! When a request may go to another worker. A request is only sent again when no one can
//! tell: when nothing reached the worker, or when the request is idempotent and was held
//! whole (no streamed body), and the worker failed before its answer started or answered
//! 502/503/504, within the pool's `retries` and retry budget. Never once any of the
//! response reached the client, and never after a response timeout: that is answered 504
//! by the transport, since a slow worker may still be executing the request.

use crate::balance::RetryBudget;

/// How forwarding to one worker failed, before anything of its answer reached the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No connection: nothing was sent.
    NotSent,
    /// The connection broke, or the answer could not be read, before a response head.
    Broken,
    /// The worker answered 502, 503 or 504.
    GatewayStatus,
}

/// Methods whose repetition has the effect of one (RFC 9110 §9.2.2).
pub fn idempotent(method: &[u8]) -> bool {
    matches!(
        method,
        b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE" | b"PUT" | b"DELETE"
    )
}

/// Whether to try another worker after `failure`. `replayable`: idempotent, held whole, not
/// an upgrade. `may_retry`: within the pool's `retries`. Takes from `budget` when the
/// answer depends on it.
pub fn should_retry(
    failure: Failure,
    replayable: bool,
    may_retry: bool,
    budget: &RetryBudget,
) -> bool {
    match failure {
        Failure::NotSent => may_retry,
        Failure::Broken | Failure::GatewayStatus => replayable && may_retry && budget.take_retry(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_sent_is_always_retried_within_retries() {
        let empty = RetryBudget::new(0);
        while empty.take_retry() {}
        assert!(should_retry(Failure::NotSent, false, true, &empty));
        assert!(!should_retry(Failure::NotSent, true, false, &empty));
    }

    #[test]
    fn sent_requests_are_retried_only_when_replayable_and_in_budget() {
        let budget = RetryBudget::new(100);
        assert!(should_retry(Failure::Broken, true, true, &budget));
        assert!(should_retry(Failure::GatewayStatus, true, true, &budget));
        assert!(!should_retry(Failure::Broken, false, true, &budget));
        assert!(!should_retry(Failure::GatewayStatus, true, false, &budget));
        while budget.take_retry() {}
        assert!(
            !should_retry(Failure::Broken, true, true, &budget),
            "budget spent"
        );
    }

    #[test]
    fn idempotent_methods() {
        for m in ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"] {
            assert!(idempotent(m.as_bytes()), "{m}");
        }
        for m in ["POST", "PATCH", "CONNECT", "get"] {
            assert!(!idempotent(m.as_bytes()), "{m}");
        }
    }
}
