//! A duration histogram the workers fill with relaxed atomics: no lock and no system call
//! per observation, and a scrape reads it without stopping anyone.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Bucket bounds in seconds for a TLS handshake or a connect on one host or one network:
/// from well under a millisecond (loopback, ECDSA) to the 10 s default deadlines.
pub const DURATION_BOUNDS: [f64; 12] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

pub struct Histogram {
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative); one more than `bounds` for "above the last".
    buckets: Box<[AtomicU64]>,
    sum_nanos: AtomicU64,
}

/// A histogram at one moment: cumulative counts per bound, as the exposition wants them.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// (upper bound in seconds, observations at or below it).
    pub cumulative: Vec<(f64, u64)>,
    /// Every observation (the `+Inf` bucket).
    pub count: u64,
    pub sum_secs: f64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        let buckets = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        Histogram { bounds, buckets, sum_nanos: AtomicU64::new(0) }
    }

    pub fn observe(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let at = self.bounds.iter().position(|&bound| secs <= bound).unwrap_or(self.bounds.len());
        self.buckets[at].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// The count is the sum of the buckets read here, so `+Inf` always equals `_count`
    /// even while workers observe.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut running = 0;
        let mut cumulative = Vec::with_capacity(self.bounds.len());
        for (bound, bucket) in self.bounds.iter().zip(self.buckets.iter()) {
            running += bucket.load(Ordering::Relaxed);
            cumulative.push((*bound, running));
        }
        let count = running + self.buckets[self.bounds.len()].load(Ordering::Relaxed);
        let sum_secs = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        HistogramSnapshot { cumulative, count, sum_secs }
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new(&DURATION_BOUNDS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_the_count_includes_the_slowest() {
        static BOUNDS: [f64; 2] = [0.01, 0.1];
        let histogram = Histogram::new(&BOUNDS);
        for ms in [1, 10, 50, 3000] {
            histogram.observe(Duration::from_millis(ms));
        }
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.cumulative, vec![(0.01, 2), (0.1, 3)], "a bound includes its own value");
        assert_eq!(snapshot.count, 4);
        assert!((snapshot.sum_secs - 3.061).abs() < 1e-9);
    }
}
