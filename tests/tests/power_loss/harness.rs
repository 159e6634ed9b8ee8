//! Power-loss simulation: random workloads on a store whose files sit on a
//! simulated page cache (`logkv::io::SimFs`), with the power cut at random
//! points — in the middle of a write, between a write and its fsync, between a
//! rename and the fsync of its directory, during compaction, bucket creation
//! and drop. A cut loses, keeps or tears every unsynced write and may undo
//! unsynced directory changes; faults make some fsyncs fail with EIO/ENOSPC.
//!
//! After every cut the store must open, and each bucket must hold exactly the
//! state of a reference store (on the real file system, never cut) that has
//! applied every write acknowledged as durable plus a prefix of the writes that
//! were not: nothing acknowledged is lost, nothing is half there (batches are
//! atomic), nothing is invented, no purge comes back, revisions never go back
//! nor are reused for other data (the next writes get the same revisions as in
//! the reference).
//!
//! Under `FsyncPolicy::Always` a write is durable when it returns; under
//! `Never` only at `sync` (and clean close). Bucket creation and drop are
//! durable when they return under every policy.
//!
//! `LOGKV_SIM_RUNS` sets how many workloads each test runs (each of
//! `LOGKV_SIM_STEPS` steps, with many cuts); `LOGKV_SEED` replays one seed.
//! The seed of each run is printed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use logkv::io::{CutStyle, SimFaults, SimFs, Storage};
use logkv::{
    BucketConfig, Clock, Entry, Error, FsyncPolicy, ManualClock, Op, Options, Store, WriteOp,
};

use crate::common::{copy_store_dir, Rng, T0};

const BUCKETS: &[&str] = &["default", "b1", "b2"];
const KEYS: &[&str] = &["a", "a.b", "b", "c.d.e", "key-longer-than-twenty-two-bytes"];

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn seeds(default_runs: u64) -> Vec<u64> {
    if let Ok(s) = std::env::var("LOGKV_SEED") {
        return vec![s.parse().expect("LOGKV_SEED is a number")];
    }
    let runs = env_u64("LOGKV_SIM_RUNS", default_runs);
    let base = crate::common::seed_from_env("LOGKV_SIM_SEED");
    (0..runs)
        .map(|i| base.wrapping_add(i.wrapping_mul(0x9E37_79B9)))
        .collect()
}

fn config_of(name: &str) -> BucketConfig {
    match name {
        "b1" => BucketConfig {
            history: 3,
            ..Default::default()
        },
        "b2" => BucketConfig {
            history: 2,
            ttl: Some(Duration::from_secs(5)),
            ..Default::default()
        },
        _ => BucketConfig::default(),
    }
}

fn options(storage: Storage, clock: &ManualClock, fsync: FsyncPolicy) -> Options {
    Options {
        storage,
        fsync,
        background: false,
        segment_size: 4096,
        clock: Arc::new(clock.clone()),
        ..Default::default()
    }
}

/// A change to the store, replayable on the reference.
#[derive(Debug, Clone)]
enum Change {
    Write {
        bucket: &'static str,
        ops: Vec<OpSpec>,
    },
    CreateBucket(&'static str),
    DropBucket(&'static str),
    Sweep(&'static str),
    DeleteGlob(&'static str, &'static str),
}

impl Change {
    fn bucket(&self) -> &'static str {
        match self {
            Change::Write { bucket, .. }
            | Change::CreateBucket(bucket)
            | Change::DropBucket(bucket)
            | Change::Sweep(bucket)
            | Change::DeleteGlob(bucket, _) => bucket,
        }
    }
}

/// One write of a change, with its revisions in dense numbering (see [`dense`]).
#[derive(Debug, Clone)]
struct OpSpec {
    kind: Kind,
    key: &'static str,
    value: Vec<u8>,
    ttl_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Put,
    Create,
    Update(u64),
    CasAbsent,
    Delete,
    DeleteAt(u64),
    Purge,
    Revert(u64),
}

impl OpSpec {
    /// The write for a bucket that skipped `lost` (its own revision numbers).
    fn write_op(&self, lost: &[(u64, u64)]) -> WriteOp {
        let (key, value) = (self.key, self.value.clone());
        let op = match self.kind {
            Kind::Put => WriteOp::put(key, value),
            Kind::Create => WriteOp::create(key, value),
            Kind::Update(r) => WriteOp::update(key, value, sparse(lost, r)),
            Kind::CasAbsent => WriteOp::cas(key, value, None),
            Kind::Delete => WriteOp::delete(key),
            Kind::DeleteAt(r) => WriteOp::delete_at(key, sparse(lost, r)),
            Kind::Purge => WriteOp::purge(key),
            Kind::Revert(r) => WriteOp::revert(key, sparse(lost, r)),
        };
        match self.ttl_ms {
            Some(ms) => op.with_ttl(Duration::from_millis(ms)),
            None => op,
        }
    }
}

/// What a change returned, comparable between the store and the reference.
type Outcome = Result<String, String>;

/// An error as text, its revisions in dense numbering.
fn error_kind(e: &Error, lost: &[(u64, u64)]) -> String {
    match e {
        Error::Batch { index, source } => format!("batch {index}: {}", error_kind(source, lost)),
        Error::Io { .. } | Error::Poisoned { .. } | Error::InDoubt { .. } => "io".into(),
        Error::WrongRevision { expected, latest } => format!(
            "expected {}, latest {}",
            dense(lost, *expected),
            dense(lost, *latest)
        ),
        other => format!("{other}"),
    }
}

/// A revision counter (a bucket's last revision, which may be a skipped one:
/// the counter resumes above what it skipped) in dense numbering.
fn dense_counter(lost: &[(u64, u64)], counter: u64) -> u64 {
    counter
        - lost
            .iter()
            .filter(|&&(a, _)| a <= counter)
            .map(|&(a, b)| b.min(counter) - a + 1)
            .sum::<u64>()
}

/// The inverse of [`dense`]: the bucket's own number for a dense revision.
fn sparse(lost: &[(u64, u64)], dense_revision: u64) -> u64 {
    let mut r = dense_revision;
    if r == 0 {
        return 0;
    }
    for &(a, b) in lost {
        if r >= a {
            r += b - a + 1;
        }
    }
    r
}

/// The lost revision ranges of a bucket of `store` (none if it has no such bucket).
fn lost_of(store: &Store, bucket: &str) -> Vec<(u64, u64)> {
    store
        .bucket(bucket)
        .map(|b| b.lost_revisions())
        .unwrap_or_default()
}

/// Whether an error means "the disk failed" (the outcome of the change is unknown).
fn is_io(e: &Error) -> bool {
    match e {
        Error::Io { .. } | Error::Poisoned { .. } | Error::InDoubt { .. } => true,
        Error::Batch { source, .. } => is_io(source),
        _ => false,
    }
}

/// A revision in dense numbering: minus the revisions the bucket skipped below
/// it after unclean stops (`Bucket::lost_revisions`), so that the subject,
/// which skips them, and the reference, which never stops uncleanly, number
/// the same writes alike. A revision inside a skipped range is a reuse: a
/// revision that may have been seen, given to other data.
fn dense(lost: &[(u64, u64)], revision: u64) -> u64 {
    assert!(
        !lost.iter().any(|&(a, b)| (a..=b).contains(&revision)),
        "revision {revision} was skipped as lost ({lost:?}), and given again"
    );
    revision
        - lost
            .iter()
            .filter(|&&(_, b)| b < revision)
            .map(|&(a, b)| b - a + 1)
            .sum::<u64>()
}

fn apply(store: &Store, change: &Change) -> Result<String, Error> {
    match change {
        Change::Write { bucket, ops } => {
            let b = store.bucket(bucket)?;
            let lost = b.lost_revisions();
            let ops: Vec<WriteOp> = ops.iter().map(|o| o.write_op(&lost)).collect();
            let written = b.write(&ops)?;
            Ok(format!(
                "{:?}",
                written
                    .iter()
                    .map(|w| dense(&lost, w.revision))
                    .collect::<Vec<_>>()
            ))
        }
        Change::CreateBucket(name) => store
            .create_bucket(name, config_of(name))
            .map(|_| "ok".into()),
        Change::DropBucket(name) => store.drop_bucket(name).map(|()| "ok".into()),
        Change::Sweep(name) => store.bucket(name)?.sweep_expired().map(|n| n.to_string()),
        Change::DeleteGlob(name, glob) => {
            store.bucket(name)?.delete_glob(glob).map(|n| n.to_string())
        }
    }
}

/// The deletes a multi-write change makes, in the order it makes them: DELGLOB and
/// the TTL sweep write one DEL marker per key (each its own write, in key order), so
/// a power cut can keep any prefix of them. `None` for a change written at once.
/// `clock` is `store`'s, at `at_ms`.
fn victims(
    store: &Store,
    clock: &ManualClock,
    change: &Change,
    at_ms: u64,
) -> Option<Vec<(String, u64)>> {
    let b = store.bucket(change.bucket()).ok()?;
    match change {
        Change::DeleteGlob(_, glob) => Some(
            b.search(glob, usize::MAX)
                .ok()?
                .into_iter()
                .map(|e| (e.key, e.revision))
                .collect(),
        ),
        Change::Sweep(_) => {
            // The sweep marks values that have expired, which reads hide: they are read
            // with the clock at 0 (nothing has expired then; reads change nothing).
            clock.set(0);
            let retained = b.history(">");
            clock.set(at_ms);
            let mut latest: BTreeMap<String, Entry> = BTreeMap::new();
            for e in retained.ok()? {
                if latest.get(&e.key).is_none_or(|l| l.revision < e.revision) {
                    latest.insert(e.key.clone(), e);
                }
            }
            Some(
                latest
                    .into_values()
                    .filter(|e| e.op == Op::Put && e.expires_ms != 0 && e.expires_ms <= at_ms)
                    .map(|e| (e.key, e.revision))
                    .collect(),
            )
        }
        _ => None,
    }
}

/// Makes the first `m` of a multi-write change's deletes (see [`victims`]).
fn apply_partial(store: &Store, clock: &ManualClock, change: &Change, at_ms: u64, m: usize) {
    let Some(victims) = victims(store, clock, change, at_ms) else {
        return;
    };
    let Ok(b) = store.bucket(change.bucket()) else {
        return;
    };
    for (key, revision) in victims.into_iter().take(m) {
        let _ = b.write(&[WriteOp::delete_at(&key, revision)]);
    }
}

/// Everything a bucket holds that a client can see.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BucketState {
    config: BucketConfig,
    last_revision: u64,
    entries: Vec<(String, u64, Op, Vec<u8>, u64, u64)>,
    /// Each key's latest retained revision as writers see it (0 for none): what
    /// UPDATE and DEL REV check, and WRONGREV reports. It can differ where the
    /// entries do not (an expired value is hidden from reads, not from writers).
    latest: Vec<(&'static str, u64)>,
}

/// The latest revision of `key` as a writer of `b` sees it, asked with a DEL REV
/// that cannot match (its WRONGREV says it and writes nothing).
fn writers_latest(b: &logkv::Bucket, key: &str) -> u64 {
    match b.write(&[WriteOp::delete_at(key, u64::MAX)]) {
        Err(Error::WrongRevision { latest, .. }) => latest,
        other => panic!("a DEL REV that cannot match got {other:?}"),
    }
}

fn bucket_state(store: &Store, name: &str) -> Option<BucketState> {
    let b = store.bucket(name).ok()?;
    let lost = b.lost_revisions();
    let mut entries: Vec<_> = b
        .history(">")
        .expect("history")
        .into_iter()
        .map(|e: Entry| {
            (
                e.key,
                dense(&lost, e.revision),
                e.op,
                e.value.to_vec(),
                e.created_ms,
                e.expires_ms,
            )
        })
        .collect();
    entries.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    let latest = KEYS
        .iter()
        .map(|&k| (k, dense(&lost, writers_latest(&b, k))))
        .collect();
    Some(BucketState {
        config: b.config(),
        last_revision: dense_counter(&lost, b.status().expect("status").last_revision),
        entries,
        latest,
    })
}

fn state(store: &Store) -> BTreeMap<String, BucketState> {
    store
        .bucket_names()
        .into_iter()
        .filter_map(|n| bucket_state(store, &n).map(|s| (n, s)))
        .collect()
}

/// The store under test, on the simulated page cache.
struct Subject {
    sim: SimFs,
    clock: ManualClock,
    fsync: FsyncPolicy,
    store: Option<Store>,
}

impl Subject {
    fn store(&self) -> &Store {
        self.store.as_ref().expect("store is open")
    }

    fn try_open(&self) -> logkv::Result<Store> {
        let opts = options(Storage::simulated(&self.sim), &self.clock, self.fsync);
        Store::open(self.sim.root().join("store"), opts)
    }

    /// Opens with the power on and no faults: this must always succeed.
    fn open(&mut self) -> Store {
        match self.try_open() {
            Ok(s) => s,
            Err(e) => panic!("the store must open after a power cut: {e}"),
        }
    }
}

/// The reference: the same changes on the real file system, applied only once
/// they are known durable in the subject.
struct Reference {
    dir: tempfile::TempDir,
    clock: ManualClock,
    store: Option<Store>,
    /// The clock when it was last opened (as the subject was).
    opened_at: u64,
}

impl Reference {
    fn path(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    fn open_at(path: &Path, clock: &ManualClock) -> Store {
        Store::open(path, options(Storage::os(), clock, FsyncPolicy::Never))
            .expect("reference opens")
    }

    /// Closes and opens the reference with the clock at `at` (opening ages entries out).
    fn reopen(&mut self, at: u64) {
        self.store = None;
        self.clock.set(at);
        self.store = Some(Reference::open_at(&self.path(), &self.clock));
        self.opened_at = at;
    }

    fn apply(&mut self, at_ms: u64, change: &Change) -> Outcome {
        self.clock.set(at_ms);
        let store = self.store.as_ref().expect("reference open");
        apply(store, change).map_err(|e| error_kind(&e, &lost_of(store, change.bucket())))
    }
}

struct Run {
    _root: tempfile::TempDir,
    rng: Rng,
    subject: Subject,
    reference: Reference,
    /// Changes the subject accepted (or may have made) that are not known durable yet,
    /// with the clock at which they ran and what the subject said.
    pending: Vec<(u64, Change, Option<Outcome>)>,
    cuts: u64,
    acked: u64,
}

impl Run {
    fn new(seed: u64, fsync: FsyncPolicy) -> Run {
        let mut rng = Rng::new(seed);
        let root = tempfile::tempdir().expect("tempdir");
        let sim = SimFs::new(root.path(), rng.next_u64()).expect("sim");
        let clock = ManualClock::new(T0);
        let mut subject = Subject {
            sim,
            clock: clock.clone(),
            fsync,
            store: None,
        };
        subject.store = Some(subject.open());
        let ref_dir = tempfile::tempdir().expect("tempdir");
        let ref_clock = ManualClock::new(T0);
        let store = Reference::open_at(&ref_dir.path().join("store"), &ref_clock);
        let reference = Reference {
            dir: ref_dir,
            clock: ref_clock,
            store: Some(store),
            opened_at: T0,
        };
        Run {
            _root: root,
            rng,
            subject,
            reference,
            pending: Vec::new(),
            cuts: 0,
            acked: 0,
        }
    }

    fn random_change(&mut self) -> Change {
        let names = self.subject.store().bucket_names();
        let pick = |rng: &mut Rng, xs: &[&'static str]| xs[rng.below(xs.len() as u64) as usize];
        let bucket = pick(&mut self.rng, BUCKETS);
        let roll = self.rng.below(100);
        if roll < 4 && bucket != "default" {
            return if names.iter().any(|n| n == bucket) {
                Change::DropBucket(bucket)
            } else {
                Change::CreateBucket(bucket)
            };
        }
        if roll < 7 {
            return Change::Sweep(bucket);
        }
        if roll < 9 {
            return Change::DeleteGlob(bucket, pick(&mut self.rng, &["a*", "*", "c.*"]));
        }
        let n = if self.rng.below(4) == 0 {
            2 + self.rng.below(3)
        } else {
            1
        };
        let last = self
            .subject
            .store()
            .bucket(bucket)
            .ok()
            .and_then(|b| {
                Some(dense_counter(
                    &b.lost_revisions(),
                    b.status().ok()?.last_revision,
                ))
            })
            .unwrap_or(0);
        let ops = (0..n)
            .map(|_| {
                let key = pick(&mut self.rng, KEYS);
                let len = match self.rng.below(10) {
                    0 => 1500 + self.rng.below(1500) as usize,
                    1 => 0,
                    _ => 1 + self.rng.below(40) as usize,
                };
                let value = self.rng.bytes(len);
                let near = last.saturating_sub(self.rng.below(3));
                let (kind, ttl_ms) = match self.rng.below(12) {
                    0 => (Kind::Create, None),
                    1 => (Kind::Update(near), None),
                    2 => (Kind::CasAbsent, None),
                    3 => (Kind::Delete, None),
                    4 => (Kind::DeleteAt(near), None),
                    5 => (Kind::Purge, None),
                    6 => (Kind::Revert(near), None),
                    7 => (Kind::Put, Some(1 + self.rng.below(3000))),
                    _ => (Kind::Put, None),
                };
                OpSpec {
                    kind,
                    key,
                    value,
                    ttl_ms,
                }
            })
            .collect();
        Change::Write { bucket, ops }
    }

    /// Whether a change becomes durable when it returns.
    fn durable_on_return(&self, change: &Change) -> bool {
        self.subject.fsync == FsyncPolicy::Always
            || matches!(change, Change::CreateBucket(_) | Change::DropBucket(_))
    }

    /// Applies the pending changes to the reference, checking that it says what the subject said.
    fn settle(&mut self) {
        self.settle_where(|_| true);
    }

    /// The same for the pending changes `which` picks (bucket logs are durable each on its own).
    fn settle_where(&mut self, which: impl Fn(&Change) -> bool) {
        let (now, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|(_, c, _)| which(c));
        self.pending = later;
        for (at, change, said) in now {
            let got = self.reference.apply(at, &change);
            if let Some(said) = said {
                assert_eq!(got, said, "the reference disagrees on {change:?}");
            }
            self.acked += 1;
        }
    }

    fn trace(&self, what: &str) {
        if std::env::var_os("LOGKV_SIM_TRACE").is_some() {
            eprintln!("step: {what} (sim {:?})", self.subject.sim.stats());
        }
    }

    fn step(&mut self) {
        let now = self.subject.clock.now_ms();
        match self.rng.below(100) {
            0..=2 => self.subject.clock.advance(1 + self.rng.below(4000)),
            3..=5 => {
                self.trace("sync");
                if self.subject.store().sync().is_ok() {
                    self.settle();
                } else {
                    self.cut();
                }
            }
            6..=7 => {
                let names = self.subject.store().bucket_names();
                let name = &names[self.rng.below(names.len() as u64) as usize];
                self.trace(&format!("compact {name}"));
                let compacted = self.subject.store().bucket(name).and_then(|b| b.compact());
                self.trace(&format!("compacted: {compacted:?}"));
                if compacted.is_err() {
                    self.cut();
                }
            }
            8 => {
                self.trace("clean close");
                // A clean close (sync and snapshot), then reopen.
                let store = self.subject.store.take().expect("open");
                if store.close().is_err() {
                    self.subject.store = None;
                    self.cut();
                    return;
                }
                self.settle();
                // The power may go, or a fault strike, while the store opens.
                match self.subject.try_open() {
                    Ok(store) => {
                        self.subject.store = Some(store);
                        self.reference.reopen(now);
                    }
                    Err(e) if is_io(&e) => self.cut(),
                    Err(e) => panic!("reopen after a clean close failed: {e}"),
                }
            }
            9..=11 => {
                let n = self.rng.below(30);
                self.trace(&format!("power cut after {n} more changes"));
                self.subject.sim.crash_after(n);
            }
            12 => {
                self.subject.sim.crash_now();
                self.cut();
            }
            _ => {
                let change = self.random_change();
                // Sweeps and glob deletes are not atomic: a cut inside one may keep any part of it,
                // which the reference cannot replay. They run with the power on, and sync after.
                let whole = matches!(change, Change::Sweep(_) | Change::DeleteGlob(..));
                if whole && self.subject.sim.is_crashed() {
                    self.cut();
                    return;
                }
                if whole {
                    self.subject.sim.crash_after(u64::MAX);
                }
                let result = apply(self.subject.store(), &change);
                self.trace(&format!("{change:?} -> {result:?}"));
                match result {
                    Err(e) if is_io(&e) || self.subject.sim.is_crashed() => {
                        self.pending.push((now, change, None));
                        self.cut();
                    }
                    result => {
                        let lost = lost_of(self.subject.store(), change.bucket());
                        let said = result.map_err(|e| error_kind(&e, &lost));
                        self.pending.push((now, change.clone(), Some(said)));
                        if whole && self.subject.store().sync().is_err() {
                            self.cut();
                            return;
                        }
                        if whole || self.subject.fsync == FsyncPolicy::Always {
                            self.settle();
                        } else if self.durable_on_return(&change) {
                            let bucket = change.bucket();
                            self.settle_where(|c| c.bucket() == bucket);
                        }
                    }
                }
            }
        }
    }

    /// Cuts the power, reopens the subject and checks it against the reference.
    fn cut(&mut self) {
        self.trace("CUT");
        self.cuts += 1;
        self.subject.sim.crash_now();
        // Dropped with the power off: nothing more reaches the disk.
        self.subject.store = None;
        // One cut in five tears every unsynced write (the worst case for a torn tail).
        let style = if self.rng.below(5) == 0 {
            CutStyle::TearAll
        } else {
            CutStyle::Random
        };
        self.subject.sim.restart_with(style).expect("restart");
        let faults = SimFaults::default();
        self.subject.sim.set_faults(faults);
        let store = self.subject.open();
        let recovered = state(&store);
        self.subject.store = Some(store);
        self.match_prefix(&recovered);
        let sync_error_one_in = if self.rng.below(3) == 0 { 20 } else { 0 };
        self.subject.sim.set_faults(SimFaults {
            sync_error_one_in,
            write_error_one_in: sync_error_one_in,
        });
    }

    /// Finds, bucket by bucket, the prefix of the pending changes whose result
    /// the subject holds, and moves the reference there.
    ///
    /// Each candidate is built as the subject was: the reference as of its last
    /// open, the changes applied at the times they ran, then one open at the
    /// time of the subject's recovery (opening ages entries out by the clock).
    fn match_prefix(&mut self, recovered: &BTreeMap<String, BucketState>) {
        let now = self.subject.clock.now_ms();
        let pending = std::mem::take(&mut self.pending);
        self.reference.store = None;
        let mut chosen: BTreeMap<&str, (usize, Option<usize>)> = BTreeMap::new();
        for &bucket in BUCKETS {
            let mine: Vec<&(u64, Change, Option<Outcome>)> = pending
                .iter()
                .filter(|(_, c, _)| c.bucket() == bucket)
                .collect();
            // Candidates: the first j changes whole, then (for a change that writes key
            // by key) the first m of the next change's writes.
            let try_candidate = |j: usize, partial: Option<usize>| -> (bool, usize) {
                let scratch = tempfile::tempdir().expect("tempdir");
                let path = scratch.path().join("store");
                copy_store_dir(&self.reference.path(), &path);
                let clock = ManualClock::new(self.reference.opened_at);
                let cand = Reference::open_at(&path, &clock);
                for (at, change, _) in &mine[..j] {
                    clock.set(*at);
                    let _ = apply(&cand, change);
                }
                let mut writes = 0;
                if let (Some(m), Some((at, change, _))) = (partial, mine.get(j)) {
                    clock.set(*at);
                    writes = victims(&cand, &clock, change, *at).map_or(0, |v| v.len());
                    apply_partial(&cand, &clock, change, *at, m);
                }
                drop(cand);
                clock.set(now);
                let cand = Reference::open_at(&path, &clock);
                (
                    bucket_state(&cand, bucket).as_ref() == recovered.get(bucket),
                    writes,
                )
            };
            let mut found = None;
            for j in 0..=mine.len() {
                if try_candidate(j, None).0 {
                    found = Some((j, None));
                    break;
                }
                let (_, writes) = try_candidate(j, Some(0));
                if let Some(m) = (1..writes).find(|&m| try_candidate(j, Some(m)).0) {
                    found = Some((j, Some(m)));
                    break;
                }
            }
            let Some(j) = found else {
                self.reference.reopen(self.reference.opened_at);
                panic!(
                    "bucket {bucket}: the recovered state is not the reference after any prefix of the {} unacknowledged changes\n\
                     recovered: {:#?}\nreference (acknowledged only): {:#?}\npending: {:#?}",
                    mine.len(),
                    recovered.get(bucket),
                    self.reference.store.as_ref().and_then(|s| bucket_state(s, bucket)),
                    mine
                );
            };
            chosen.insert(bucket, j);
        }
        // Move the reference to the chosen prefixes, in the original order, then open it as the subject was.
        self.reference.reopen(self.reference.opened_at);
        let mut taken: BTreeMap<&str, usize> = BTreeMap::new();
        for (at, change, said) in pending {
            let b = change.bucket();
            let n = taken.entry(b).or_insert(0);
            let (whole, partial) = chosen.get(b).copied().unwrap_or((0, None));
            if *n < whole {
                let got = self.reference.apply(at, &change);
                if let Some(said) = said {
                    assert_eq!(got, said, "the reference disagrees on {change:?}");
                }
            } else if *n == whole {
                if let Some(m) = partial {
                    self.reference.clock.set(at);
                    let store = self.reference.store.as_ref().expect("reference open");
                    apply_partial(store, &self.reference.clock, &change, at, m);
                }
            }
            *n += 1;
        }
        self.reference.reopen(now);
        let reference = state(self.reference.store.as_ref().expect("open"));
        assert_eq!(
            &reference, recovered,
            "the reference, moved to the matched prefixes, differs"
        );
    }
}

fn run(seed: u64, fsync: FsyncPolicy, steps: u64) -> (u64, u64) {
    eprintln!("power_loss: seed {seed} ({fsync:?}, {steps} steps; replay with LOGKV_SEED={seed})");
    let mut r = Run::new(seed, fsync);
    for _ in 0..steps {
        if r.subject.store.is_none() {
            r.cut();
        }
        r.step();
    }
    r.subject.sim.crash_now();
    r.cut();
    (r.cuts, r.acked)
}

fn run_many(fsync: FsyncPolicy, default_runs: u64) {
    let steps = env_u64("LOGKV_SIM_STEPS", 300);
    let (mut cuts, mut acked) = (0, 0);
    for seed in seeds(default_runs) {
        let (c, a) = run(seed, fsync, steps);
        cuts += c;
        acked += a;
    }
    eprintln!(
        "power_loss ({fsync:?}): {cuts} power cuts, {acked} changes acknowledged and checked"
    );
    assert!(cuts > 0 && acked > 0);
}

#[test]
fn power_cuts_lose_nothing_acknowledged_under_always() {
    run_many(FsyncPolicy::Always, 4);
}

#[test]
fn power_cuts_keep_a_prefix_under_never() {
    run_many(FsyncPolicy::Never, 4);
}
