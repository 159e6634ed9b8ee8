//! Request counts and latency histograms, recorded so cheaply that the RESP hot path does
//! not notice them.
//!
//! The server-wide [`Metrics`] hold one [`Histogram`] per RESP verb and per HTTP route:
//! fixed buckets of atomic counters and an atomic sum, each histogram on its own cache
//! line. A RESP connection does not touch them per request: its [`LocalMetrics`] keeps the
//! requests of the current batch (a few `(verb, bucket, count, sum)` slots, no allocation)
//! and the connection flushes them once per batch, as it does its command counter. A
//! request costs one clock read (the end of one request is the start of the next) and a
//! short scan of the slots. HTTP requests, far heavier, record straight into the atomics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::command::verb_names;

/// Upper bounds of the latency buckets, in nanoseconds (the last bucket is +Inf).
pub(crate) const BOUNDS_NS: [u64; 19] = [
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// Buckets per histogram, +Inf included.
const BUCKETS: usize = BOUNDS_NS.len() + 1;

/// The bucket of a duration.
fn bucket_of(ns: u64) -> usize {
    BOUNDS_NS.partition_point(|&bound| bound < ns)
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A latency histogram with atomic buckets, alone on its cache line(s).
#[derive(Debug, Default)]
#[repr(align(64))]
pub(crate) struct Histogram {
    counts: [AtomicU64; BUCKETS],
    sum_ns: AtomicU64,
}

/// A histogram as read at one moment: `(upper bound in seconds, count)` per bucket (not
/// cumulative; `f64::MAX` for +Inf), the total count, the sum in seconds.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HistogramSnapshot {
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum_seconds: f64,
}

impl Histogram {
    /// Adds `n` observations of bucket `bucket` whose durations add up to `sum_ns`.
    fn add(&self, bucket: usize, n: u64, sum_ns: u64) {
        if let Some(c) = self.counts.get(bucket) {
            c.fetch_add(n, Ordering::Relaxed);
            self.sum_ns.fetch_add(sum_ns, Ordering::Relaxed);
        }
    }

    /// Records one observation.
    pub fn record(&self, d: Duration) {
        let ns = nanos(d);
        self.add(bucket_of(ns), 1, ns);
    }

    /// The counts now.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut buckets = Vec::with_capacity(BUCKETS);
        let mut count = 0;
        for (i, c) in self.counts.iter().enumerate() {
            let n = c.load(Ordering::Relaxed);
            count += n;
            let bound = BOUNDS_NS.get(i).map_or(f64::MAX, |&ns| ns as f64 / 1e9);
            buckets.push((bound, n));
        }
        let sum_seconds = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        HistogramSnapshot {
            buckets,
            count,
            sum_seconds,
        }
    }
}

/// The HTTP gateway's routes, as metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    Get,
    Put,
    Delete,
    Keys,
    Search,
    Scan,
    Watch,
    Healthz,
    Metrics,
}

impl Route {
    /// Every route, in label order.
    pub const ALL: [Route; 9] = [
        Route::Get,
        Route::Put,
        Route::Delete,
        Route::Keys,
        Route::Search,
        Route::Scan,
        Route::Watch,
        Route::Healthz,
        Route::Metrics,
    ];

    /// The label value.
    pub fn name(self) -> &'static str {
        match self {
            Route::Get => "get",
            Route::Put => "put",
            Route::Delete => "delete",
            Route::Keys => "keys",
            Route::Search => "search",
            Route::Scan => "scan",
            Route::Watch => "watch",
            Route::Healthz => "healthz",
            Route::Metrics => "metrics",
        }
    }
}

/// The server-wide request metrics.
#[derive(Debug)]
pub(crate) struct Metrics {
    /// One per verb of the table, then one for unknown verbs.
    resp: Box<[Histogram]>,
    http: Box<[Histogram]>,
    /// How long RESP replies waited for their writes' fsync (group commit).
    pub durability_wait: Histogram,
}

/// The label of RESP requests whose verb is not in the table.
pub(crate) const UNKNOWN_VERB: &str = "unknown";

impl Metrics {
    pub fn new() -> Metrics {
        let resp = (0..=verb_names().count())
            .map(|_| Histogram::default())
            .collect();
        let http = Route::ALL.iter().map(|_| Histogram::default()).collect();
        Metrics {
            resp,
            http,
            durability_wait: Histogram::default(),
        }
    }

    /// The histogram of each RESP verb, by label.
    pub fn resp(&self) -> impl Iterator<Item = (&'static str, &Histogram)> {
        verb_names()
            .chain(std::iter::once(UNKNOWN_VERB))
            .zip(self.resp.iter())
    }

    /// The histogram of each HTTP route, by label.
    pub fn http(&self) -> impl Iterator<Item = (&'static str, &Histogram)> {
        Route::ALL.iter().map(|r| r.name()).zip(self.http.iter())
    }

    /// Records one HTTP request.
    pub fn record_http(&self, route: Route, d: Duration) {
        if let Some(h) = Route::ALL
            .iter()
            .position(|&r| r == route)
            .and_then(|i| self.http.get(i))
        {
            h.record(d);
        }
    }
}

/// Slots of a connection's batch before an early flush.
const SLOTS: usize = 8;

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    verb: u16,
    bucket: u8,
    count: u32,
    sum_ns: u64,
}

/// A RESP connection's requests not yet added to the server's [`Metrics`].
#[derive(Debug)]
pub(crate) struct LocalMetrics {
    slots: [Slot; SLOTS],
    used: usize,
    /// When the request now running started (the previous one's end).
    mark: Instant,
}

impl LocalMetrics {
    pub fn new() -> LocalMetrics {
        LocalMetrics {
            slots: [Slot::default(); SLOTS],
            used: 0,
            mark: Instant::now(),
        }
    }

    /// A batch of requests starts now.
    pub fn start(&mut self) {
        self.mark = Instant::now();
    }

    /// The request of `verb` (an index into the verb table, its length for an unknown
    /// verb) ends now; the next one starts.
    pub fn finish(&mut self, verb: usize, shared: &Metrics) {
        let now = Instant::now();
        let ns = nanos(now.duration_since(self.mark));
        self.mark = now;
        self.add(verb, 1, ns, shared);
    }

    /// `n` requests of `verb` that ended together now (a batch of writes), started at the
    /// last mark.
    pub fn finish_together(&mut self, verbs: &[u16], shared: &Metrics) {
        let now = Instant::now();
        let ns = nanos(now.duration_since(self.mark));
        self.mark = now;
        for &verb in verbs {
            self.add(usize::from(verb), 1, ns, shared);
        }
    }

    fn add(&mut self, verb: usize, n: u32, ns: u64, shared: &Metrics) {
        let verb = u16::try_from(verb).unwrap_or(u16::MAX);
        let bucket = u8::try_from(bucket_of(ns)).unwrap_or(u8::MAX);
        let used = &mut self.slots[..self.used];
        if let Some(s) = used
            .iter_mut()
            .find(|s| s.verb == verb && s.bucket == bucket)
        {
            s.count += n;
            s.sum_ns = s.sum_ns.saturating_add(ns);
            return;
        }
        if self.used == SLOTS {
            self.flush(shared);
        }
        self.slots[self.used] = Slot {
            verb,
            bucket,
            count: n,
            sum_ns: ns,
        };
        self.used += 1;
    }

    /// Adds what this connection recorded to the server's metrics.
    pub fn flush(&mut self, shared: &Metrics) {
        for s in &self.slots[..self.used] {
            if let Some(h) = shared.resp.get(usize::from(s.verb)) {
                h.add(usize::from(s.bucket), u64::from(s.count), s.sum_ns);
            }
        }
        self.used = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(10_000), 0);
        assert_eq!(bucket_of(10_001), 1);
        assert_eq!(bucket_of(u64::MAX), BOUNDS_NS.len());
        let h = Histogram::default();
        h.record(Duration::from_micros(30));
        h.record(Duration::from_secs(60));
        let s = h.snapshot();
        assert_eq!(s.count, 2);
        assert_eq!(s.buckets.len(), BUCKETS);
        assert_eq!(s.buckets[2], (50e-6, 1));
        assert_eq!(s.buckets[BUCKETS - 1], (f64::MAX, 1));
        assert!((s.sum_seconds - 60.000_03).abs() < 1e-9);
    }

    #[test]
    fn a_connection_flushes_its_batch() {
        let shared = Metrics::new();
        let mut local = LocalMetrics::new();
        local.start();
        for _ in 0..100 {
            local.finish(0, &shared);
        }
        local.finish_together(&[1, 1, 2], &shared);
        // Nothing reaches the shared histograms before the flush...
        assert_eq!(shared.resp[0].snapshot().count, 0);
        local.flush(&shared);
        assert_eq!(shared.resp[0].snapshot().count, 100);
        assert_eq!(shared.resp[1].snapshot().count, 2);
        assert_eq!(shared.resp[2].snapshot().count, 1);
        // ... except when more distinct slots are needed than there are.
        for verb in 0..=SLOTS {
            local.add(verb, 1, 0, &shared);
        }
        assert_eq!(shared.resp[0].snapshot().count, 101);
        local.flush(&shared);
        let total: u64 = shared.resp().map(|(_, h)| h.snapshot().count).sum();
        assert_eq!(total, 100 + 3 + SLOTS as u64 + 1);
        let names: Vec<&str> = shared.resp().map(|(n, _)| n).collect();
        assert_eq!(names.first(), Some(&"get"));
        assert_eq!(names.last(), Some(&UNKNOWN_VERB));
    }
}
