//! A latency histogram the hot path can feed without a lock: one atomic add for the bucket,
//! one for the sum. (prometheus-client's own histogram takes a lock per observation.)
//! Buckets are kept per bucket (not cumulative): the exposition's encoder sums them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds in seconds, as Prometheus's defaults stretched to a proxy's range: from
/// well under a millisecond (a proxied cache hit) to a minute (a long poll).
pub const BOUNDS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0,
];
/// The same bounds in microseconds, compared on the hot path without floating point.
const BOUNDS_US: [u64; 15] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000, 60_000_000,
];

#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket, the last one past every bound (+Inf).
    buckets: [AtomicU64; BOUNDS.len() + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    #[inline]
    pub fn observe(&self, value: Duration) {
        let us = value.as_micros().min(u128::from(u64::MAX)) as u64;
        let i = BOUNDS_US.partition_point(|&b| b < us);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// (sum in seconds, count, (upper bound, observations) per bucket, +Inf last).
    pub fn read(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let buckets: Vec<(f64, u64)> = self
            .buckets
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let bound = BOUNDS.get(i).copied().unwrap_or(f64::INFINITY);
                (bound, b.load(Ordering::Relaxed))
            })
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        (sum, count, buckets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(500)); // on a bound: le="0.0005"
        h.observe(Duration::from_micros(501));
        h.observe(Duration::from_secs(120)); // +Inf
        let (sum, count, buckets) = h.read();
        assert_eq!(count, 3);
        assert!((sum - 120.001001).abs() < 1e-9, "{sum}");
        assert_eq!(buckets[0], (0.0005, 1));
        assert_eq!(buckets[1], (0.001, 1));
        assert_eq!(buckets[14], (60.0, 0));
        assert_eq!(buckets[15], (f64::INFINITY, 1));
    }
}
