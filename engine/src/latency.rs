//! Latency histograms with fixed buckets, cheap to record from several threads
//! (a few relaxed atomic additions), read as a snapshot ([`Latencies`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets, in microseconds (a last bucket holds the rest).
const BOUNDS_US: [u64; 14] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
    5_000_000,
];

/// Recorded latencies.
#[derive(Debug)]
pub(crate) struct LatencyHistogram {
    counts: [AtomicU64; BOUNDS_US.len() + 1],
    sum_us: AtomicU64,
}

impl Default for LatencyHistogram {
    fn default() -> LatencyHistogram {
        LatencyHistogram {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_us: AtomicU64::new(0),
        }
    }
}

impl LatencyHistogram {
    /// Records one observation.
    pub(crate) fn record(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let bucket = BOUNDS_US.partition_point(|&b| b < us);
        if let Some(c) = self.counts.get(bucket) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// What has been recorded so far.
    pub(crate) fn snapshot(&self) -> Latencies {
        Latencies {
            bounds_us: BOUNDS_US.iter().copied().chain([u64::MAX]).collect(),
            counts: self
                .counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
            sum_us: self.sum_us.load(Ordering::Relaxed),
        }
    }
}

/// A snapshot of a latency histogram: how many observations fell in each
/// bucket (not cumulative), and their sum.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Latencies {
    /// Each bucket's upper bound, in microseconds (the last is `u64::MAX`).
    pub bounds_us: Vec<u64>,
    /// Observations per bucket.
    pub counts: Vec<u64>,
    /// The sum of every observation, in microseconds.
    pub sum_us: u64,
}

impl Latencies {
    /// How many observations there are.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Adds another snapshot of the same buckets (e.g. to sum over buckets).
    pub fn merge(&mut self, other: &Latencies) {
        if self.counts.is_empty() {
            *self = other.clone();
            return;
        }
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.sum_us += other.sum_us;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_their_bucket_and_snapshots_merge() {
        let h = LatencyHistogram::default();
        h.record(Duration::from_micros(40));
        h.record(Duration::from_micros(50));
        h.record(Duration::from_micros(51));
        h.record(Duration::from_secs(60));
        let s = h.snapshot();
        assert_eq!(s.counts[0], 2, "50 µs is at most 50");
        assert_eq!(s.counts[1], 1);
        assert_eq!(*s.counts.last().unwrap(), 1, "over the last bound");
        assert_eq!(s.count(), 4);
        assert_eq!(s.sum_us, 40 + 50 + 51 + 60_000_000);
        let mut total = Latencies::default();
        total.merge(&s);
        total.merge(&s);
        assert_eq!(total.count(), 8);
    }
}
