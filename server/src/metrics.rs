//! Request counts and latency histograms, recorded so cheaply that the RESP hot path does
//! not notice them.
//!
//! The server-wide [`Metrics`] hold one [`Histogram`] per RESP verb and per HTTP route:
//! fixed buckets of atomic counters and an atomic sum, each histogram on its own cache
//! line. A RESP connection does not touch them per request: its [`LocalMetrics`] counts
//! the requests of the current batch by verb (a few slots, no allocation) and adds them
//! once, when the batch's replies are ready, with the batch's time. A request costs a
//! short scan of the slots and no clock read. HTTP requests, far heavier, record straight
//! into the atomics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

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
    /// The verbs' labels, in the order of the verb table (the command layer hands
    /// them in: metrics know no verbs of their own).
    verbs: Box<[&'static str]>,
    /// One per verb of the table, then one for unknown verbs.
    resp: Box<[Histogram]>,
    http: Box<[Histogram]>,
    /// How long RESP replies waited for their writes' fsync (group commit).
    pub durability_wait: Histogram,
}

/// The label of RESP requests whose verb is not in the table.
pub(crate) const UNKNOWN_VERB: &str = "unknown";

impl Metrics {
    /// Histograms for `verbs` (the verb table's names, in its order) and the HTTP routes.
    pub fn new(verbs: impl IntoIterator<Item = &'static str>) -> Metrics {
        let verbs: Box<[&'static str]> = verbs.into_iter().collect();
        let resp = (0..=verbs.len()).map(|_| Histogram::default()).collect();
        let http = Route::ALL.iter().map(|_| Histogram::default()).collect();
        Metrics {
            verbs,
            resp,
            http,
            durability_wait: Histogram::default(),
        }
    }

    /// The histogram of each RESP verb, by label.
    pub fn resp(&self) -> impl Iterator<Item = (&'static str, &Histogram)> {
        self.verbs
            .iter()
            .copied()
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

/// Distinct verbs a connection counts in one batch before it records early.
const SLOTS: usize = 8;

/// A RESP connection's requests of the current batch, not yet added to the server's
/// [`Metrics`].
///
/// A batch is what the connection executes from one read, up to writing the replies:
/// every reply of a batch goes out at its end, so each request's latency, as its client
/// sees it from the server, is the batch's time (for a client that does not pipeline, a
/// batch is its one request). Counting a request is a scan of a few slots; the clock is
/// read at the start and the end of the batch only.
#[derive(Debug)]
pub(crate) struct LocalMetrics {
    /// `(verb, requests)`.
    slots: [(u16, u32); SLOTS],
    used: usize,
    started: Instant,
}

impl LocalMetrics {
    pub fn new() -> LocalMetrics {
        LocalMetrics {
            slots: [(0, 0); SLOTS],
            used: 0,
            started: Instant::now(),
        }
    }

    /// A batch starts now.
    pub fn start(&mut self) {
        self.used = 0;
        self.started = Instant::now();
    }

    /// Counts a request of `verb` (an index into the verb table; its length for an unknown
    /// verb) in the current batch.
    pub fn count(&mut self, verb: usize, shared: &Metrics) {
        let verb = u16::try_from(verb).unwrap_or(u16::MAX);
        if let Some(slot) = self.slots[..self.used].iter_mut().find(|s| s.0 == verb) {
            slot.1 = slot.1.saturating_add(1);
            return;
        }
        if self.used == SLOTS {
            // A batch of many verbs: what came so far ends here.
            self.end(shared);
        }
        self.slots[self.used] = (verb, 1);
        self.used += 1;
    }

    /// The replies of the requests counted so far are ready: adds them to the server's
    /// metrics with the time since the batch (or the last end) started.
    pub fn end(&mut self, shared: &Metrics) {
        if self.used == 0 {
            return;
        }
        let now = Instant::now();
        let ns = nanos(now.duration_since(self.started));
        let bucket = bucket_of(ns);
        for &(verb, n) in &self.slots[..self.used] {
            if let Some(h) = shared.resp.get(usize::from(verb)) {
                h.add(bucket, u64::from(n), ns.saturating_mul(u64::from(n)));
            }
        }
        self.used = 0;
        self.started = now;
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
    fn a_connection_adds_its_batch_at_its_end() {
        // More verbs than a connection's slots.
        let verbs = [
            "get", "put", "del", "cas", "keys", "scan", "watch", "multi", "exec", "ping",
        ];
        assert!(verbs.len() > SLOTS);
        let shared = Metrics::new(verbs);
        let mut local = LocalMetrics::new();
        local.start();
        for _ in 0..100 {
            local.count(0, &shared);
        }
        local.count(1, &shared);
        local.count(1, &shared);
        // Nothing reaches the shared histograms before the batch ends...
        assert_eq!(shared.resp[0].snapshot().count, 0);
        local.end(&shared);
        assert_eq!(shared.resp[0].snapshot().count, 100);
        assert_eq!(shared.resp[1].snapshot().count, 2);
        let get = shared.resp[0].snapshot();
        let bucket = get.buckets.iter().position(|&(_, n)| n > 0).unwrap();
        assert_eq!(get.buckets[bucket].1, 100, "one batch, one bucket");
        // ... except when a batch has more distinct verbs than there are slots.
        local.start();
        for verb in 0..=SLOTS {
            local.count(verb, &shared);
        }
        assert_eq!(shared.resp[0].snapshot().count, 101);
        assert_eq!(shared.resp[SLOTS].snapshot().count, 0);
        local.end(&shared);
        assert_eq!(shared.resp[SLOTS].snapshot().count, 1);
        let total: u64 = shared.resp().map(|(_, h)| h.snapshot().count).sum();
        assert_eq!(total, 100 + 2 + SLOTS as u64 + 1);
        let names: Vec<&str> = shared.resp().map(|(n, _)| n).collect();
        assert_eq!(names.first(), Some(&"get"));
        assert_eq!(names.last(), Some(&UNKNOWN_VERB));
    }
}
