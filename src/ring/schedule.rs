//! Smooth weighted round robin, precomputed.
//!
//! nginx's algorithm keeps mutable "current weights" and updates every backend on each pick;
//! that needs a lock on a shared hot path. Its output is periodic, so we compute one period
//! per change, off the hot path, and the hot path reads `schedule[cursor % len]`: one atomic
//! increment, no lock. With weights 5,1,1 the period is `A A B A C A A`, never five in a row.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Longest period kept. Weights whose reduced sum is larger are scaled down to fit, which
/// changes shares by less than one part in 65536 per worker.
const MAX_LEN: u64 = 1 << 16;

/// Beyond this many steps (period × active workers), nginx's O(n)-per-pick construction is
/// replaced by an O(log n)-per-pick spread with the same shares (see [`spread`]).
const EXACT_BUDGET: u64 = 1 << 22;

/// One period of the smooth weighted round-robin order: indices into `weights`, each index
/// appearing in proportion to its weight; zero weights never appear.
pub fn smooth_weighted(weights: &[u32]) -> Vec<u32> {
    let g = weights.iter().fold(0u64, |g, &w| gcd(g, u64::from(w)));
    if g == 0 {
        return Vec::new();
    }
    let mut reduced: Vec<u64> = weights.iter().map(|&w| u64::from(w) / g).collect();
    let mut total: u64 = reduced.iter().sum();
    if total > MAX_LEN {
        for w in reduced.iter_mut().filter(|w| **w > 0) {
            *w = (*w * MAX_LEN / total).max(1);
        }
        total = reduced.iter().sum();
    }
    let active = reduced.iter().filter(|&&w| w > 0).count() as u64;
    if total * active <= EXACT_BUDGET {
        nginx(&reduced, total)
    } else {
        spread(&reduced, total)
    }
}

/// nginx's smooth weighted round robin, run for one period.
fn nginx(weights: &[u64], total: u64) -> Vec<u32> {
    let active: Vec<usize> = (0..weights.len()).filter(|&i| weights[i] > 0).collect();
    let mut current = vec![0i64; weights.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = active[0];
        for &i in &active {
            current[i] += weights[i] as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total as i64;
        out.push(best as u32);
    }
    out
}

/// For large pools: worker `i`'s k-th turn is placed at virtual time (k + φᵢ) / wᵢ and turns
/// are taken in time order. Shares are exact and each worker's turns evenly spaced, like
/// nginx's, at O(log n) per turn. The phase φᵢ is the fractional part of i·(golden ratio),
/// so light workers do not all land on the same instant and push a heavy one into a burst.
fn spread(weights: &[u64], total: u64) -> Vec<u32> {
    const GOLDEN: f64 = 0.618_033_988_749_895;
    let phase = |i: usize| ((i + 1) as f64 * GOLDEN).fract();
    let mut heap: BinaryHeap<Reverse<Turn>> = weights
        .iter()
        .enumerate()
        .filter(|(_, w)| **w > 0)
        .map(|(i, &w)| {
            Reverse(Turn {
                at: phase(i) / w as f64,
                k: 0,
                index: i as u32,
            })
        })
        .collect();
    let mut out = Vec::with_capacity(total as usize);
    while let Some(Reverse(t)) = heap.pop() {
        out.push(t.index);
        let i = t.index as usize;
        let k = t.k + 1;
        if k < weights[i] {
            let at = (k as f64 + phase(i)) / weights[i] as f64;
            heap.push(Reverse(Turn {
                at,
                k,
                index: t.index,
            }));
        }
    }
    out
}

#[derive(Clone, Copy, PartialEq)]
struct Turn {
    at: f64,
    k: u64,
    index: u32,
}

impl Eq for Turn {}

impl Ord for Turn {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.at
            .total_cmp(&other.at)
            .then(self.index.cmp(&other.index))
    }
}

impl PartialOrd for Turn {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(schedule: &[u32], n: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for &i in schedule {
            c[i as usize] += 1;
        }
        c
    }

    /// Longest run of one index, counting across the wrap into the next period.
    fn longest_run(schedule: &[u32]) -> usize {
        let twice: Vec<u32> = schedule.iter().chain(schedule).copied().collect();
        let (mut best, mut run) = (0, 0);
        for w in twice.windows(2) {
            run = if w[0] == w[1] { run + 1 } else { 0 };
            best = best.max(run + 1);
        }
        best.min(schedule.len())
    }

    #[test]
    fn five_one_one_interleaves_like_nginx() {
        assert_eq!(smooth_weighted(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn shares_follow_weights_and_zero_drains() {
        let s = smooth_weighted(&[3, 1, 0]);
        assert_eq!(counts(&s, 3), vec![3, 1, 0]);
        assert_eq!(smooth_weighted(&[0, 0]), Vec::<u32>::new());
        assert_eq!(smooth_weighted(&[]), Vec::<u32>::new());
        // Common factors are removed: 300:100 is the same period as 3:1.
        assert_eq!(smooth_weighted(&[300, 100, 0]), s);
    }

    #[test]
    fn equal_weights_are_plain_rotation() {
        assert_eq!(smooth_weighted(&[7, 7, 7]), vec![0, 1, 2]);
    }

    #[test]
    fn large_pool_uses_spread_with_exact_shares() {
        let weights: Vec<u32> = (0..5000).map(|i| 1 + (i % 3)).collect();
        let s = smooth_weighted(&weights);
        assert_eq!(s.len(), weights.iter().sum::<u32>() as usize);
        let c = counts(&s, weights.len());
        assert!(c.iter().zip(&weights).all(|(&c, &w)| c == w as usize));
        assert!(longest_run(&s) <= 2, "bursts in {:?}", &s[..20]);
    }

    #[test]
    fn spread_is_smooth_for_skewed_weights() {
        let s = spread(&[5, 1, 1], 7);
        assert_eq!(counts(&s, 3), vec![5, 1, 1]);
        assert!(longest_run(&s) <= 3, "{s:?}");
    }

    #[test]
    fn huge_weights_are_scaled_to_bounded_period() {
        let weights = vec![10_000, 9_999, 1];
        let s = smooth_weighted(&weights);
        assert!(s.len() as u64 <= MAX_LEN + 3);
        let c = counts(&s, 3);
        assert!(c[2] >= 1, "a non-zero weight keeps at least one turn");
        let share = c[0] as f64 / s.len() as f64;
        assert!((share - 10_000.0 / 20_000.0).abs() < 1e-3, "{share}");
    }
}
