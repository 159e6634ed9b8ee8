//! Group commit across connections, the way Redis's event loop does it.
//!
//! With `--fsync always` a reply may go out only once the writes it reports
//! are durable. A connection posts its durability ticket (the log position just
//! past its writes) to the bucket's sync state, queues the bucket for a small,
//! fixed pool of syncer threads (unless it is queued already), and awaits the
//! broadcast of the durable position: no thread per waiting connection, and no
//! thread per bucket either (a store may have thousands). A syncer takes the
//! highest ticket posted and makes the log durable up to it with one
//! group-commit fsync; writes that arrive meanwhile are covered by the next one.
//! So one fsync serves every connection that wrote while the previous one ran,
//! and up to one fsync per pool thread runs at a time across buckets.
//!
//! A durability ticket comes from the engine's `write_each` / `write_nowait` and is used
//! only in this file: a session notes it in its [`PendingDurability`], and the connection
//! has that waited for before it sends the replies.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{unbounded, Receiver, Sender};
use logkv::{Bucket, DurabilityTicket, FsyncPolicy};
use parking_lot::Mutex;
use tokio::sync::watch;

/// The durability that the replies about to be sent depend on: per bucket, the largest
/// ticket of the writes whose replies are not sent yet. Stays empty unless the fsync
/// policy is `always`.
pub(crate) struct PendingDurability {
    wait_for_fsync: bool,
    tickets: Vec<(Bucket, DurabilityTicket)>,
}

impl PendingDurability {
    /// Nothing pending, under `policy`.
    pub fn new(policy: FsyncPolicy) -> PendingDurability {
        PendingDurability {
            wait_for_fsync: policy == FsyncPolicy::Always,
            tickets: Vec::new(),
        }
    }

    /// Remembers that the replies about to be sent need `bucket`'s log durable up to
    /// `ticket` (as returned by the engine's `write_each` / `write_nowait`).
    pub fn note(&mut self, bucket: &Bucket, ticket: DurabilityTicket) {
        if !self.wait_for_fsync || ticket == DurabilityTicket::default() {
            return;
        }
        // By the bucket's identity: one dropped and created again under its name is another.
        let id = bucket.id();
        match self.tickets.iter_mut().find(|(b, _)| b.id() == id) {
            Some((_, t)) => *t = (*t).max(ticket),
            None => self.tickets.push((bucket.clone(), ticket)),
        }
    }

    /// Takes what is pending, leaving nothing (under the same policy).
    pub fn take(&mut self) -> PendingDurability {
        PendingDurability {
            wait_for_fsync: self.wait_for_fsync,
            tickets: std::mem::take(&mut self.tickets),
        }
    }

    /// Whether some reply waits for durability.
    pub fn is_empty(&self) -> bool {
        self.tickets.is_empty()
    }

    /// Waits until every noted write is durable (each bucket's syncer fsyncs for every
    /// connection waiting at once), then forgets them, also when it fails.
    pub async fn wait(&mut self, syncers: &Syncers) -> Result<(), SyncFailure> {
        let mut result = Ok(());
        for (bucket, ticket) in &self.tickets {
            result = syncers.wait(bucket, *ticket).await;
            if result.is_err() {
                break;
            }
        }
        self.tickets.clear();
        result
    }
}

/// Why writes were not made durable. Their outcome is unknown: they are in the log, and
/// may be durable after a later sync or a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyncFailure {
    message: String,
    /// The bucket's log refuses writes from now on (an fsync failed).
    pub poisoned: bool,
}

impl SyncFailure {
    fn of(e: &logkv::Error) -> SyncFailure {
        SyncFailure {
            message: e.to_string(),
            poisoned: matches!(e.cause(), logkv::Error::Poisoned { .. }),
        }
    }

    fn server(message: &str) -> SyncFailure {
        SyncFailure {
            message: message.to_string(),
            poisoned: false,
        }
    }
}

impl std::error::Error for SyncFailure {}

impl std::fmt::Display for SyncFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// What a bucket's syncs have made durable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Durable {
    /// Every ticket up to this is durable.
    up_to: DurabilityTicket,
    /// The fsync that failed and poisoned the log; every later wait fails with it.
    failed: Option<SyncFailure>,
    /// Syncs that could not run (no descriptor): the highest ticket one was for, why,
    /// and the round of the last one. A wait up to that ticket that began before that
    /// round fails with it; later waits go on (their own sync round covers them).
    refused: Option<(DurabilityTicket, SyncFailure, u64)>,
    /// Sync rounds recorded so far.
    round: u64,
}

impl Durable {
    /// What a wait for `ticket`, begun when `round` rounds were recorded, gets once it
    /// has an answer.
    fn outcome(&self, ticket: DurabilityTicket, round: u64) -> Option<Result<(), SyncFailure>> {
        if self.up_to >= ticket {
            return Some(Ok(()));
        }
        let refused = self
            .refused
            .as_ref()
            .filter(|(t, _, r)| *t >= ticket && *r > round);
        self.failed
            .clone()
            .or_else(|| refused.map(|(_, why, _)| why.clone()))
            .map(Err)
    }

    /// Records what a sync up to `target` gave. A refusal's ticket only rises: two
    /// pool threads may sync one bucket at once, and the one for the lower ticket
    /// may end last.
    fn record(&mut self, target: DurabilityTicket, synced: &logkv::Result<()>) {
        self.round += 1;
        match synced {
            Ok(()) => self.up_to = self.up_to.max(target),
            Err(e) => {
                let failure = SyncFailure::of(e);
                if failure.poisoned {
                    self.failed = Some(failure);
                } else {
                    let highest = self
                        .refused
                        .as_ref()
                        .map_or(target, |(t, ..)| target.max(*t));
                    self.refused = Some((highest, failure, self.round));
                }
            }
        }
    }
}

/// The sync state of one bucket, shared by its waiters and the pool.
struct State {
    bucket: Bucket,
    /// The highest ticket a connection waits for.
    requested: Mutex<DurabilityTicket>,
    /// The bucket is in the pool's queue (or being synced and will look again).
    queued: AtomicBool,
    durable: watch::Sender<Durable>,
}

/// The pool's threads and their queue, started on first use.
struct Pool {
    queue: Sender<Arc<State>>,
    threads: Vec<JoinHandle<()>>,
}

/// Durability waits of every bucket, served by a fixed pool of syncer threads.
#[derive(Default)]
pub(crate) struct Syncers {
    /// By bucket id: a bucket dropped and created again under its name is another log.
    map: Mutex<HashMap<u64, Arc<State>>>,
    pool: Mutex<Option<Pool>>,
    /// How many connections each group-commit round served.
    groups: Arc<GroupSizes>,
}

/// Upper bounds of the group-size buckets (a last bucket holds the rest).
pub(crate) const GROUP_BOUNDS: [u64; 10] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512];

/// How many waiting connections each fsync round served: the group commit at work.
#[derive(Default)]
pub(crate) struct GroupSizes {
    counts: [std::sync::atomic::AtomicU64; GROUP_BOUNDS.len() + 1],
    sum: std::sync::atomic::AtomicU64,
}

impl GroupSizes {
    fn record(&self, waiters: u64) {
        let bucket = GROUP_BOUNDS.partition_point(|&b| b < waiters);
        if let Some(c) = self.counts.get(bucket) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.sum.fetch_add(waiters, Ordering::Relaxed);
    }

    /// (upper bound, rounds) per bucket, not cumulative, and the sum of the sizes.
    pub fn snapshot(&self) -> (Vec<(f64, u64)>, u64) {
        let buckets = self
            .counts
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let bound = GROUP_BOUNDS.get(i).map_or(f64::MAX, |&b| b as f64);
                (bound, c.load(Ordering::Relaxed))
            })
            .collect();
        (buckets, self.sum.load(Ordering::Relaxed))
    }
}

/// Syncer threads: enough that slow fsyncs of some buckets do not hold up the others.
fn pool_size() -> usize {
    std::thread::available_parallelism()
        .map_or(2, std::num::NonZeroUsize::get)
        .clamp(4, 16)
}

impl Syncers {
    /// Waits until the writes of `bucket` up to `ticket` are durable.
    pub async fn wait(&self, bucket: &Bucket, ticket: DurabilityTicket) -> Result<(), SyncFailure> {
        let state = self.state(bucket);
        let mut rx = state.durable.subscribe();
        // Rounds recorded before this wait began answer it only if they succeeded.
        let began = rx.borrow().round;
        {
            let mut requested = state.requested.lock();
            *requested = (*requested).max(ticket);
        }
        if !state.queued.swap(true, Ordering::AcqRel) {
            self.enqueue(Arc::clone(&state))?;
        }
        let done = rx
            .wait_for(|d| d.outcome(ticket, began).is_some())
            .await
            .map_err(|_| SyncFailure::server("the syncer stopped (server shutting down)"))?;
        done.outcome(ticket, began).unwrap_or(Ok(()))
    }

    fn state(&self, bucket: &Bucket) -> Arc<State> {
        let mut map = self.map.lock();
        if let Some(s) = map.get(&bucket.id()) {
            return Arc::clone(s);
        }
        // The sync states of dropped buckets go (their waiters hold their own).
        map.retain(|_, s| s.bucket.is_open());
        let state = Arc::new(State {
            bucket: bucket.clone(),
            requested: Mutex::new(DurabilityTicket::default()),
            queued: AtomicBool::new(false),
            durable: watch::Sender::new(Durable::default()),
        });
        map.insert(bucket.id(), Arc::clone(&state));
        state
    }

    /// Queues a bucket for the pool, starting the pool on first use.
    fn enqueue(&self, state: Arc<State>) -> Result<(), SyncFailure> {
        let mut pool = self.pool.lock();
        if pool.is_none() {
            let (queue, work) = unbounded();
            let mut threads = Vec::new();
            for i in 0..pool_size() {
                let work: Receiver<Arc<State>> = work.clone();
                let groups = Arc::clone(&self.groups);
                let handle = std::thread::Builder::new()
                    .name(format!("logkv-sync-{i}"))
                    .spawn(move || run(&work, &groups))
                    .map_err(|e| {
                        SyncFailure::server(&format!("cannot start a syncer thread: {e}"))
                    })?;
                threads.push(handle);
            }
            *pool = Some(Pool { queue, threads });
        }
        pool.as_ref()
            .ok_or_else(|| SyncFailure::server("no syncer pool"))?
            .queue
            .send(state)
            .map_err(|_| SyncFailure::server("the syncer pool stopped (server shutting down)"))
    }

    /// How many connections each fsync round served.
    pub fn group_sizes(&self) -> &GroupSizes {
        &self.groups
    }

    /// Stops the pool and waits for its threads (at shutdown, after the connections).
    pub fn shutdown(&self) {
        self.map.lock().clear();
        if let Some(pool) = self.pool.lock().take() {
            drop(pool.queue);
            for h in pool.threads {
                let _ = h.join();
            }
        }
    }
}

/// A pool thread: syncs the buckets it is given until the queue closes.
fn run(work: &Receiver<Arc<State>>, groups: &GroupSizes) {
    while let Ok(state) = work.recv() {
        // Cleared before the ticket is read: a ticket posted from now on queues
        // the bucket again, so none is left waiting.
        state.queued.store(false, Ordering::Release);
        let target = *state.requested.lock();
        if target <= state.durable.borrow().up_to || state.durable.borrow().failed.is_some() {
            continue;
        }
        // One group-commit fsync covers everything written so far, including
        // writes whose connections have not posted their ticket yet; every
        // connection waiting now (a subscriber each) is served by it.
        groups.record(state.durable.receiver_count() as u64);
        let synced = sync_retrying(&state.bucket, target);
        state.durable.send_modify(|d| d.record(target, &synced));
    }
}

/// Makes `bucket`'s log durable up to `target`. A sync that could not run for want of a
/// descriptor (a passing peak of connections) is tried again a few times, about a
/// quarter of a second in all, before its waiters are told.
fn sync_retrying(bucket: &Bucket, target: DurabilityTicket) -> logkv::Result<()> {
    logkv_cluster::descriptors::retry_blocking(
        &"a durability wait",
        std::time::Duration::from_millis(256),
        logkv::Error::is_out_of_descriptors,
        || bucket.wait_durable(target),
    )
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use logkv::{Error, Options, Store, WriteOp};

    use super::*;

    /// Two tickets of one bucket, the second past the first.
    fn two_tickets() -> (DurabilityTicket, DurabilityTicket) {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options {
            background: false,
            ..Options::default()
        };
        let store = Store::open(dir.path(), opts).unwrap();
        let b = store.default_bucket().unwrap();
        let (_, first) = b.write_each(&[WriteOp::put("k", "1")]).unwrap();
        let (_, second) = b.write_each(&[WriteOp::put("k", "2")]).unwrap();
        assert!(first < second);
        (first, second)
    }

    fn emfile() -> logkv::Error {
        Error::in_doubt(Error::Io {
            path: PathBuf::from("seg"),
            source: std::io::Error::from_raw_os_error(24), // EMFILE,
        })
    }

    fn poisoned() -> logkv::Error {
        Error::in_doubt(Error::Poisoned {
            reason: "EIO".into(),
            path: PathBuf::from("seg"),
        })
    }

    /// A sync that could not run fails the waits it was for, not the later ones (the
    /// log goes on: before, one such failure failed every later wait of the bucket
    /// until a restart); a failed fsync fails every later wait.
    #[test]
    fn a_sync_that_could_not_run_fails_only_its_own_waits() {
        let (first, second) = two_tickets();
        let mut d = Durable::default();
        assert_eq!(d.outcome(first, 0), None, "waits");

        d.record(first, &Err(emfile()));
        let failed = d.outcome(first, 0).expect("answered").unwrap_err();
        assert!(!failed.poisoned);
        assert!(
            failed.to_string().contains("Too many open files"),
            "{failed}"
        );
        assert_eq!(d.outcome(second, 0), None, "a later write still waits");
        assert_eq!(
            d.outcome(first, d.round),
            None,
            "a wait begun after the refusal waits for its own round"
        );

        // Two rounds ending out of order: the refusal's ticket does not go back.
        d.record(second, &Err(emfile()));
        d.record(first, &Err(emfile()));
        assert!(d.outcome(second, 1).expect("answered").is_err());

        d.record(second, &Ok(()));
        assert_eq!(
            d.outcome(first, 0),
            Some(Ok(())),
            "covered by the next sync"
        );
        assert_eq!(d.outcome(second, 0), Some(Ok(())));

        let mut d = Durable::default();
        d.record(first, &Err(poisoned()));
        assert!(
            d.outcome(second, 5)
                .expect("answered")
                .unwrap_err()
                .poisoned
        );
    }
}
