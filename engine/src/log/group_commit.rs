//! Group commit: writers share fsyncs.
//!
//! Writers append under the bucket's writer lock, release it, and then wait
//! here until their bytes are durable. The first waiter that finds no sync in
//! progress becomes the leader: it fdatasyncs the active segment once for every
//! byte written so far. Every sync has a generation number, and a writer that
//! arrives while one runs parks for the generation that will cover it: the
//! running one if its bytes were written before that sync started, else the
//! next. Waiters of even and odd generations sleep at two [`Gate`]s, so when
//! a sync ends its leader wakes exactly the waiters it covered, all with one
//! system call, and none has to take a lock to learn that it is durable
//! (nobody is woken to find that it must sleep again, as all were on one
//! condvar). If some waited for the next generation (they wrote while the
//! sync ran), the leader offers its place to one of them, woken first, which
//! syncs at once for all of them and for whatever was written by then.
//! Concurrent writers therefore share fsyncs, and 16 writers cost about as
//! many fsyncs as 1; nobody waits on a timer, so a lone writer pays nothing
//! for the sharing.
//!
//! After an fsync the leader writes the durability mark of the active
//! segment (see [`super::mark`]), at most once every [`LogConfig::mark_every`](super::LogConfig) (50 ms by default): the mark
//! lives in the segment's first page, so writing it after every fsync would
//! make every later fsync flush two pages instead of one. A mark that lags is
//! still a lower bound of what is durable, which is all recovery relies on;
//! only damage to records synced within that time after the last mark is
//! then cut as a torn tail rather than refused as corruption. Every sync of the log, the one that seals a
//! segment included, goes through here, so a failed fsync always poisons the
//! log: it is never retried, since Linux reports a writeback error once and a
//! later fsync may succeed for pages that were dropped. Every waiter, and
//! every later caller, gets the error.
//!
//! One failure is not an fsync's: a leader that cannot open the segment's
//! file to sync it (no descriptor left, `EMFILE`/`ENFILE`; the store's open
//! files were all in use) ran no fsync, so no write-back error was reported
//! and the page cache still holds every byte. That sync's waiters fail, with
//! the error, and the log stays usable: the next waiter leads a sync of
//! everything written, the failed writes included. A mark that cannot be
//! written for the same reason after a successful fsync is skipped (a mark
//! that lags is still a lower bound).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::position::LogPos;
use super::segment::Segment;
use crate::error::{Error, Result};
use crate::sync::{AtomicBool, AtomicU64, Condvar, Gate, Mutex, MutexGuard, Ordering};

/// What group commit flushes: the active segment (a stand-in in the loom models).
pub(crate) trait Flush: Send + Sync {
    /// The segment's sequence number (its place in the log).
    fn seq(&self) -> u64;
    /// Its file, for errors.
    fn path(&self) -> &Path;
    /// `fdatasync`.
    fn sync_data(&self) -> Result<()>;
    /// Writes the durability mark: everything below `end` is durable.
    fn write_mark(&self, end: u64, flags: u64) -> Result<()>;
}

impl Flush for Segment {
    fn seq(&self) -> u64 {
        self.id.seq
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn sync_data(&self) -> Result<()> {
        Segment::sync_data(self)
    }

    fn write_mark(&self, end: u64, flags: u64) -> Result<()> {
        Segment::write_mark(self, end, flags)
    }
}

struct State<F> {
    /// Everything below this position has been written to the page cache.
    written: LogPos,
    /// Everything below this position is on stable storage.
    synced: LogPos,
    /// The leader's place is taken: a sync runs, or the place is offered to
    /// a waiter, or set aside for (or held by) a caller that changes the files.
    syncing: bool,
    /// Syncs started so far: the generation of the last (the running one, if any).
    started: u64,
    /// What the running sync covers (`None`: no sync runs).
    running: Option<LogPos>,
    /// Waiters parked for a generation, by its parity (at most two
    /// generations are waited for: the running or offered one, and the next).
    parked: ByParity<usize>,
    /// The leader's place is offered to the waiters of this generation.
    offered: Option<u64>,
    /// Callers waiting for the place to change the files (a mark, a cut).
    holders: usize,
    /// The place is set aside for one of them.
    for_holder: bool,
    /// The segment the next sync must flush.
    active: Arc<F>,
    /// The reason a sync failed; once set, the log accepts no more writes.
    failed: Option<String>,
    /// The error code of the last sync that could not open its file (see
    /// [`GroupCommit::not_run`]).
    not_run_code: i32,
    /// When the last mark after an fsync was written (`None`: not yet).
    last_mark: Option<Instant>,
    /// The flags of the marks written after fsyncs.
    mark_flags: u64,
}

impl<F: Flush> State<F> {
    /// The error every caller gets once a sync has failed.
    fn poisoned(&self) -> Option<Error> {
        self.failed.as_ref().map(|why| Error::Poisoned {
            reason: why.clone(),
            path: self.active.path().to_path_buf(),
        })
    }

    /// Whether everything below `pos` is durable (a position past what was
    /// written — a ticket of a call that wrote nothing, or of bytes a
    /// truncation removed after making them durable — needs nothing more than
    /// what was written).
    fn covers(&self, pos: LogPos) -> bool {
        self.synced >= pos.min(self.written)
    }
}

/// Whom a sync's end wakes, once the lock is released.
#[must_use = "the waiters must be woken"]
#[derive(Clone, Copy)]
struct Wakes {
    /// The generation offered the leader's place (its gate was opened).
    offer: Option<u64>,
    /// The generation whose waiters are done (its gate was opened).
    done: Option<u64>,
    /// A sync failed: every gate was opened.
    all: bool,
}

/// Group-commit coordinator for one log.
pub(crate) struct GroupCommit<F = Segment> {
    state: Mutex<State<F>>,
    /// The last generation whose sync succeeded: its waiters are durable.
    done: AtomicU64,
    /// The generation the leader's place is offered to (0: none).
    offer: AtomicU64,
    /// A sync failed (the reason is in the state).
    poisoned: AtomicBool,
    /// The last generation whose sync could not open its file (0: none): its
    /// waiters fail unless a later sync covered them.
    not_run: AtomicU64,
    /// Where the waiters of even and of odd generations sleep.
    gates: ByParity<Gate>,
    /// Where holders wait for the place.
    holder_turn: Condvar,
    fsyncs: AtomicU64,
    /// The shortest time between two marks written after fsyncs.
    mark_every: Duration,
    /// How long each fsync took.
    latency: crate::latency::LatencyHistogram,
}

/// One for the even generations and one for the odd.
#[derive(Default)]
struct ByParity<T>([T; 2]);

impl<T> ByParity<T> {
    fn of(&self, generation: u64) -> &T {
        let [even, odd] = &self.0;
        if generation.is_multiple_of(2) {
            even
        } else {
            odd
        }
    }

    fn of_mut(&mut self, generation: u64) -> &mut T {
        let [even, odd] = &mut self.0;
        if generation.is_multiple_of(2) {
            even
        } else {
            odd
        }
    }
}

impl<F: Flush> GroupCommit<F> {
    /// A coordinator whose log is written up to `written` in `active` and
    /// known durable up to `synced`; marks carry `mark_flags` and are written
    /// after an fsync at most once every `mark_every`.
    pub(crate) fn new(
        active: Arc<F>,
        written: LogPos,
        synced: LogPos,
        mark_flags: u64,
        mark_every: Duration,
    ) -> GroupCommit<F> {
        GroupCommit {
            state: Mutex::new(State {
                written,
                synced: synced.min(written),
                syncing: false,
                started: 0,
                running: None,
                parked: ByParity::default(),
                offered: None,
                holders: 0,
                for_holder: false,
                active,
                failed: None,
                not_run_code: 0,
                last_mark: None,
                mark_flags,
            }),
            done: AtomicU64::new(0),
            offer: AtomicU64::new(0),
            poisoned: AtomicBool::new(false),
            not_run: AtomicU64::new(0),
            gates: ByParity([Gate::new(), Gate::new()]),
            holder_turn: Condvar::new(),
            fsyncs: AtomicU64::new(0),
            mark_every,
            latency: crate::latency::LatencyHistogram::default(),
        }
    }

    /// The flags of the marks written after fsyncs from now on.
    pub(crate) fn set_mark_flags(&self, flags: u64) {
        self.lock().mark_flags = flags;
    }

    /// Records that bytes up to `pos` are written.
    pub(crate) fn note_written(&self, pos: LogPos) {
        let mut s = self.lock();
        s.written = s.written.max(pos);
    }

    /// Records a rotation: the old segment was sealed durable (with
    /// [`GroupCommit::sync_all_then`]), and later syncs flush `active`, whose
    /// records start at `start`.
    pub(crate) fn rotated(&self, start: LogPos, active: Arc<F>) {
        let mut s = self.lock();
        s.synced = s.synced.max(start);
        s.written = s.written.max(start);
        s.active = active;
    }

    /// Fails if an earlier sync failed.
    pub(crate) fn check(&self) -> Result<()> {
        match self.lock().poisoned() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Whether bytes are written but not yet synced.
    pub(crate) fn dirty(&self) -> bool {
        let s = self.lock();
        s.written > s.synced
    }

    /// Waits until everything below `pos` is durable, syncing as leader if needed.
    pub(crate) fn wait_durable(&self, pos: LogPos) -> Result<()> {
        let mut s = self.lock();
        loop {
            if let Some(e) = s.poisoned() {
                return Err(e);
            }
            if s.covers(pos) {
                return Ok(());
            }
            if !s.syncing {
                s = self.lead(s)?;
                continue;
            }
            // The generation that covers `pos`: the running sync's, if it
            // started after `pos` was written, else the next.
            let generation = match s.running {
                Some(target) if pos.min(s.written) <= target => s.started,
                _ => s.started + 1,
            };
            let gate = self.gates.of(generation);
            *s.parked.of_mut(generation) += 1;
            let mut ticket = gate.ticket();
            drop(s);
            s = loop {
                if self.done.load(Ordering::SeqCst) >= generation {
                    return Ok(());
                }
                if self.poisoned.load(Ordering::SeqCst) {
                    break self.lock();
                }
                if self.not_run.load(Ordering::SeqCst) >= generation {
                    // This generation's sync, or a later one, could not run; but
                    // the generation may have been synced between the two loads.
                    if self.done.load(Ordering::SeqCst) >= generation {
                        return Ok(());
                    }
                    let s = self.lock();
                    return Err(Error::io(
                        s.active.path(),
                        std::io::Error::from_raw_os_error(s.not_run_code),
                    ));
                }
                if self.offer.load(Ordering::SeqCst) == generation {
                    let mut s = self.lock();
                    if s.offered == Some(generation) {
                        // The place is this thread's: sync for the generation.
                        s.offered = None;
                        self.offer.store(0, Ordering::SeqCst);
                        *s.parked.of_mut(generation) -= 1;
                        break self.lead(s)?;
                    }
                }
                gate.wait(ticket);
                ticket = gate.ticket();
            };
        }
    }

    /// Syncs everything written so far as the leader of a new generation
    /// (the place is free, or was offered to this thread), then wakes the
    /// waiters it covered and hands the place on; returns the lock again, or
    /// the error of a sync that could not open its file ([`GroupCommit::not_run`]).
    fn lead<'a>(&'a self, mut s: MutexGuard<'a, State<F>>) -> Result<MutexGuard<'a, State<F>>> {
        s.syncing = true;
        s.started += 1;
        let generation = s.started;
        let target = s.written;
        s.running = Some(target);
        let segment = Arc::clone(&s.active);
        let started = Instant::now();
        let mark_due = s
            .last_mark
            .is_none_or(|at| started.duration_since(at) >= self.mark_every);
        let mark_flags = s.mark_flags;
        drop(s);
        let mut marked = mark_due && target.seq() == segment.seq();
        let result = match segment.sync_data() {
            Err(e) if no_descriptor(&e).is_some() => return Err(self.not_run(generation, e)),
            Ok(()) if marked => match segment.write_mark(target.offset(), mark_flags) {
                Err(e) if no_descriptor(&e).is_some() => {
                    tracing::warn!(error = %e, "no descriptor to write a durability mark; it lags");
                    marked = false;
                    Ok(())
                }
                written => written,
            },
            synced => synced,
        };
        self.latency.record(started.elapsed());
        let (mut s, mut wakes) = self.finish_sync(result, |s| {
            if marked {
                s.last_mark = Some(started);
            }
            s.synced = s.synced.max(target);
        });
        if s.failed.is_none() {
            self.done.store(generation, Ordering::SeqCst);
            if std::mem::take(s.parked.of_mut(generation)) > 0 {
                self.gates.of(generation).open();
                wakes.done = Some(generation);
            }
        }
        drop(s);
        self.wake(wakes);
        Ok(self.lock())
    }

    /// Ends the lead of `generation`, whose sync could not open its file
    /// (`e`): no fsync ran, so nothing was lost and the log is not poisoned.
    /// Its waiters fail with the error (unless a later sync covers them
    /// first); the place is handed on as after a sync, so the next waiter
    /// tries again. Returns the error, for the leader.
    fn not_run(&self, generation: u64, e: Error) -> Error {
        tracing::warn!(error = %e, "a sync could not open its file: its writes are not durable yet and their callers fail; the log stays usable");
        let mut s = self.lock();
        s.not_run_code = no_descriptor(&e).unwrap_or(libc::EMFILE);
        self.not_run.store(generation, Ordering::SeqCst);
        let mut wakes = self.hand_on(&mut s);
        if std::mem::take(s.parked.of_mut(generation)) > 0 {
            self.gates.of(generation).open();
            wakes.done = Some(generation);
        }
        drop(s);
        self.wake(wakes);
        e
    }

    /// Makes everything written durable, then writes a mark with `flags` at
    /// the durable end and fsyncs it (a clean close's mark, or one clearing
    /// it). The mark is written only over data already durable, so a power
    /// cut during its fsync can never leave it claiming more than the disk has.
    /// A mark whose file cannot be opened (no descriptor left) is not written:
    /// the caller fails and the log is not poisoned; the same when the mark is
    /// written but its sync cannot open the file, unless the mark says clean.
    pub(crate) fn sync_with_mark(&self, flags: u64) -> Result<()> {
        let s = self.sync_all_then_hold()?;
        let synced = s.synced;
        let segment = Arc::clone(&s.active);
        drop(s);
        if synced.seq() != segment.seq() {
            return self.end_hold(Ok(()), |_| {});
        }
        let started = Instant::now();
        let result = match segment.write_mark(synced.offset(), flags) {
            Err(e) if no_descriptor(&e).is_some() => return Err(self.end_hold_unopened(e)),
            Err(e) => Err(e),
            // The file went out of the cache between the mark and its sync, and
            // could not be opened again. The mark written claims only durable
            // data; one saying the log is clean must not stay unsynced while
            // the log goes on (a crash would take what follows it for nothing),
            // so only that one poisons.
            Ok(()) => match segment.sync_data() {
                Err(e) if no_descriptor(&e).is_some() && flags & super::mark::FLAG_CLEAN == 0 => {
                    return Err(self.end_hold_unopened(e));
                }
                synced => synced,
            },
        };
        self.latency.record(started.elapsed());
        self.end_hold(result, |_| {})
    }

    /// Everything written was made durable by a sync outside group commit (a
    /// sync of the whole file system while a store opens, when nothing else
    /// uses the log): records it, and writes the active segment's mark for it
    /// with `flags`, which the next such sync makes durable. A failure to
    /// write the mark poisons the log, as a failed mark after a sync does.
    pub(crate) fn synced_elsewhere(&self, flags: u64) -> Result<()> {
        let mut s = self.lock();
        if let Some(e) = s.poisoned() {
            return Err(e);
        }
        debug_assert!(!s.syncing, "a sync runs while the log is being opened");
        s.synced = s.written;
        if s.synced.seq() == s.active.seq() {
            if let Err(e) = s.active.write_mark(s.synced.offset(), flags) {
                s.failed = Some(e.to_string());
                self.poisoned.store(true, Ordering::SeqCst);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Cuts the log back to `at`, in `active`: makes everything written
    /// durable, then runs `cut` (which changes the files) while no sync runs
    /// and none can start, and from then on the log is written and durable
    /// exactly up to `at`. A failure of `cut` poisons the log, as a failed
    /// sync does: the files may be half cut.
    pub(crate) fn truncate(
        &self,
        at: LogPos,
        active: Arc<F>,
        cut: impl FnOnce() -> Result<()>,
    ) -> Result<()> {
        drop(self.sync_all_then_hold()?);
        self.end_hold(cut(), |s| {
            s.written = at;
            s.synced = at;
            s.active = active;
        })
    }

    /// Makes everything written durable, then runs `sync` (a sync of its own,
    /// such as an fsync that also carries a file's new length) while no other
    /// sync runs or can start. A failure of `sync` poisons the log, as a
    /// failed fdatasync does.
    pub(crate) fn sync_all_then(&self, sync: impl FnOnce() -> Result<()>) -> Result<()> {
        drop(self.sync_all_then_hold()?);
        let result = self.timed(sync);
        self.end_hold(result, |_| {})
    }

    /// Runs a sync made with the leader's place held (a mark's, a sealed
    /// segment's), recording how long it took with the leaders' fsyncs.
    fn timed(&self, sync: impl FnOnce() -> Result<()>) -> Result<()> {
        let started = Instant::now();
        let result = sync();
        self.latency.record(started.elapsed());
        result
    }

    /// Makes everything written durable, then takes the leader's place (no
    /// other sync runs or starts until [`GroupCommit::end_hold`]).
    fn sync_all_then_hold(&self) -> Result<MutexGuard<'_, State<F>>> {
        self.sync_all()?;
        let mut s = self.lock();
        s.holders += 1;
        while s.failed.is_none() && s.syncing && !s.for_holder {
            s = self
                .holder_turn
                .wait(s)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        s.holders -= 1;
        if s.for_holder {
            // Set aside for a holder (`syncing` stays set): this one.
            s.for_holder = false;
        } else if s.failed.is_none() {
            s.syncing = true;
        }
        if let Some(e) = s.poisoned() {
            if s.syncing {
                let wakes = self.hand_on(&mut s);
                drop(s);
                self.wake(wakes);
            }
            return Err(e);
        }
        Ok(s)
    }

    /// Gives up the place [`GroupCommit::sync_all_then_hold`] took, after
    /// work that ended with `result` (and, if it succeeded, `update`); the
    /// log's error if it is poisoned.
    fn end_hold(&self, result: Result<()>, update: impl FnOnce(&mut State<F>)) -> Result<()> {
        let (s, wakes) = self.finish_sync(result, update);
        let poisoned = s.poisoned();
        drop(s);
        self.wake(wakes);
        match poisoned {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Gives up the place [`GroupCommit::sync_all_then_hold`] took, when the
    /// work held for could not open its file (`e`, no descriptor left):
    /// nothing was written or synced, so the log is not poisoned and no sync
    /// is counted. Returns `e`, for the caller.
    fn end_hold_unopened(&self, e: Error) -> Error {
        tracing::warn!(error = %e, "no descriptor to write a durability mark; the caller fails, the log stays usable");
        let mut s = self.lock();
        let wakes = self.hand_on(&mut s);
        drop(s);
        self.wake(wakes);
        e
    }

    /// Ends the leader's hold: counts the sync, records a failure (the log is
    /// poisoned: never retried; every waiter fails) or else applies
    /// `update`, and hands the place on. Returns the lock and whom to wake
    /// once it is released.
    fn finish_sync(
        &self,
        result: Result<()>,
        update: impl FnOnce(&mut State<F>),
    ) -> (MutexGuard<'_, State<F>>, Wakes) {
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        let mut s = self.lock();
        match result {
            // After a failed fsync the kernel may have dropped dirty pages:
            // retrying could report success for lost data. Refuse from here on.
            Err(e) => {
                tracing::error!(error = %e, "sync failed (fsync, or opening the file for it); the log refuses writes until reopened");
                s.failed = Some(e.to_string());
            }
            Ok(()) => update(&mut s),
        }
        let wakes = self.hand_on(&mut s);
        (s, wakes)
    }

    /// Gives up the leader's place: to a holder waiting for it, else offers
    /// it to the waiters of the next generation, else frees it. After a
    /// failure, frees it and opens every gate.
    fn hand_on(&self, s: &mut State<F>) -> Wakes {
        s.running = None;
        let mut wakes = Wakes {
            offer: None,
            done: None,
            all: false,
        };
        if s.failed.is_some() {
            self.poisoned.store(true, Ordering::SeqCst);
            s.syncing = false;
            s.offered = None;
            s.parked = ByParity::default();
            for gate in &self.gates.0 {
                gate.open();
            }
            wakes.all = true;
            self.holder_turn.notify_all();
            return wakes;
        }
        if s.holders > 0 {
            s.for_holder = true;
            self.holder_turn.notify_all();
            return wakes;
        }
        let next = s.started + 1;
        if *s.parked.of(next) > 0 {
            s.offered = Some(next);
            self.offer.store(next, Ordering::SeqCst);
            self.gates.of(next).open();
            wakes.offer = Some(next);
        } else {
            s.syncing = false;
        }
        wakes
    }

    /// Wakes, with the lock released, whom a sync's end opened gates for:
    /// one waiter offered the place first (the next fsync waits for it), then
    /// every waiter that is done.
    fn wake(&self, wakes: Wakes) {
        if let Some(generation) = wakes.offer {
            self.gates.of(generation).wake_one();
        }
        if wakes.all {
            for gate in &self.gates.0 {
                gate.wake_all();
            }
        } else if let Some(generation) = wakes.done {
            self.gates.of(generation).wake_all();
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<F>> {
        // A panic while holding the lock leaves consistent positions behind.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Everything below this position is durable.
    pub(crate) fn durable_end(&self) -> LogPos {
        self.lock().synced
    }

    /// How long the fsyncs took.
    pub(crate) fn latencies(&self) -> crate::latency::Latencies {
        self.latency.snapshot()
    }

    /// Syncs made so far: leaders' fdatasyncs, and the syncs run with the
    /// leader's place held (marks, a sealed segment's fsync).
    pub(crate) fn fsyncs(&self) -> u64 {
        self.fsyncs.load(Ordering::Relaxed)
    }

    /// Makes everything written so far durable.
    pub(crate) fn sync_all(&self) -> Result<()> {
        let target = self.lock().written;
        self.wait_durable(target)
    }
}

/// The error code when `e` says no descriptor was left to open a file
/// (`EMFILE`, `ENFILE`): an open failed, before any fsync or write ran.
fn no_descriptor(e: &Error) -> Option<i32> {
    match e {
        Error::Io { source, .. } if crate::io::out_of_descriptors(source) => source.raw_os_error(),
        _ => None,
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::sync::Mutex as StdMutex;

    use super::*;

    /// A segment that records the marks written to it.
    #[derive(Default)]
    struct Marks(StdMutex<Vec<u64>>);

    impl Flush for Marks {
        fn seq(&self) -> u64 {
            1
        }
        fn path(&self) -> &Path {
            Path::new("marks")
        }
        fn sync_data(&self) -> Result<()> {
            Ok(())
        }
        fn write_mark(&self, end: u64, _flags: u64) -> Result<()> {
            self.0.lock().unwrap().push(end);
            Ok(())
        }
    }

    /// Three syncs in a row; the marks they wrote.
    fn marks_of_three_syncs(mark_every: Duration) -> Vec<u64> {
        let disk = Arc::new(Marks::default());
        let start = LogPos::new(1, 0);
        let gc = GroupCommit::new(Arc::clone(&disk), start, start, 0, mark_every);
        for end in [10, 20, 30] {
            gc.note_written(LogPos::new(1, end));
            gc.wait_durable(LogPos::new(1, end)).unwrap();
            assert_eq!(gc.durable_end(), LogPos::new(1, end));
        }
        let marks = disk.0.lock().unwrap().clone();
        marks
    }

    /// A disk whose page cache and stable storage are two numbers, and whose
    /// fsync takes a little while (so that writers pile up behind it).
    #[derive(Default)]
    struct SlowDisk {
        cache: std::sync::atomic::AtomicU64,
        durable: std::sync::atomic::AtomicU64,
    }

    impl Flush for SlowDisk {
        fn seq(&self) -> u64 {
            1
        }
        fn path(&self) -> &Path {
            Path::new("slow")
        }
        fn sync_data(&self) -> Result<()> {
            let cached = self.cache.load(Ordering::SeqCst);
            std::thread::sleep(Duration::from_micros(50));
            self.durable.fetch_max(cached, Ordering::SeqCst);
            Ok(())
        }
        fn write_mark(&self, _end: u64, _flags: u64) -> Result<()> {
            Ok(())
        }
    }

    /// 16 threads, 500 writes each, every one waited for: each returns only
    /// once its bytes are durable, and none is left asleep (a wake-up that
    /// reached one sleeper instead of all of them hung this about one run in
    /// six).
    #[test]
    fn sixteen_writers_all_return_durable() {
        let disk = Arc::new(SlowDisk::default());
        let start = LogPos::new(1, 0);
        let gc = Arc::new(GroupCommit::new(
            Arc::clone(&disk),
            start,
            start,
            0,
            Duration::ZERO,
        ));
        // Stands in for the bucket's writer lock: appends are serialized.
        let appender = Arc::new(StdMutex::new(0u64));
        let writers: Vec<_> = (0..16)
            .map(|_| {
                let (disk, gc, appender) =
                    (Arc::clone(&disk), Arc::clone(&gc), Arc::clone(&appender));
                std::thread::spawn(move || {
                    for _ in 0..500 {
                        let end = {
                            let mut end = appender.lock().unwrap();
                            *end += 10;
                            disk.cache.fetch_max(*end, Ordering::SeqCst);
                            gc.note_written(LogPos::new(1, *end));
                            *end
                        };
                        gc.wait_durable(LogPos::new(1, end)).unwrap();
                        assert!(disk.durable.load(Ordering::SeqCst) >= end);
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        assert_eq!(gc.durable_end(), LogPos::new(1, 16 * 500 * 10));
    }

    /// A sync run with the leader's place held (a sealed segment's fsync)
    /// runs once the data written are durable; its failure poisons the log.
    #[test]
    fn a_sync_with_the_place_held_follows_the_data_and_its_failure_poisons() {
        let disk = Arc::new(SlowDisk::default());
        let start = LogPos::new(1, 0);
        let gc = GroupCommit::new(Arc::clone(&disk), start, start, 0, Duration::ZERO);
        disk.cache.store(10, Ordering::SeqCst);
        gc.note_written(LogPos::new(1, 10));
        let mut ran = false;
        gc.sync_all_then(|| {
            ran = true;
            assert_eq!(disk.durable.load(Ordering::SeqCst), 10, "data first");
            Ok(())
        })
        .expect("synced");
        assert!(ran);
        assert_eq!(gc.durable_end(), LogPos::new(1, 10));
        assert!(gc.check().is_ok());

        assert_eq!(gc.fsyncs(), 2, "the data's fdatasync and the held sync");
        assert_eq!(gc.latencies().count(), 2, "both syncs timed");

        // Data durable already: no sync of them, but the held one still runs.
        let failed = gc.sync_all_then(|| {
            Err(Error::io(
                Path::new("seg"),
                std::io::Error::other("injected"),
            ))
        });
        assert!(failed.is_err());
        assert_eq!(gc.fsyncs(), 3);
        assert_eq!(gc.latencies().count(), 3, "a failed sync is timed too");
        assert!(gc.check().is_err(), "the log is poisoned");
        assert!(gc.wait_durable(LogPos::new(1, 10)).is_err());
        let mut ran_after = false;
        assert!(gc
            .sync_all_then(|| {
                ran_after = true;
                Ok(())
            })
            .is_err());
        assert!(!ran_after, "a poisoned log runs no sync");
    }

    /// A disk whose next open (for a sync, or for a mark) finds no descriptor.
    #[derive(Default)]
    struct OutOfDescriptors {
        refuse_sync: std::sync::atomic::AtomicBool,
        refuse_mark: std::sync::atomic::AtomicBool,
        syncs: std::sync::atomic::AtomicU64,
        marks: StdMutex<Vec<u64>>,
    }

    fn emfile() -> Error {
        Error::io(
            Path::new("seg"),
            std::io::Error::from_raw_os_error(libc::EMFILE),
        )
    }

    impl Flush for OutOfDescriptors {
        fn seq(&self) -> u64 {
            1
        }
        fn path(&self) -> &Path {
            Path::new("seg")
        }
        fn sync_data(&self) -> Result<()> {
            if self.refuse_sync.swap(false, Ordering::SeqCst) {
                return Err(emfile());
            }
            self.syncs.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        fn write_mark(&self, end: u64, _flags: u64) -> Result<()> {
            if self.refuse_mark.swap(false, Ordering::SeqCst) {
                return Err(emfile());
            }
            self.marks.lock().unwrap().push(end);
            Ok(())
        }
    }

    /// A sync that could not open its file ran no fsync: its caller fails, the
    /// log is not poisoned, and the next wait syncs everything written (the
    /// failed write included). A mark that cannot be opened is skipped. An
    /// fsync's own failure still poisons.
    #[test]
    fn a_sync_without_a_descriptor_fails_its_waiters_but_not_the_log() {
        let disk = Arc::new(OutOfDescriptors::default());
        let start = LogPos::new(1, 0);
        let gc = GroupCommit::new(Arc::clone(&disk), start, start, 0, Duration::ZERO);
        gc.note_written(LogPos::new(1, 10));
        disk.refuse_sync.store(true, Ordering::SeqCst);
        let refused = gc.wait_durable(LogPos::new(1, 10)).unwrap_err();
        assert!(
            refused.to_string().contains("Too many open files"),
            "{refused}"
        );
        assert_eq!(gc.durable_end(), start);
        assert!(gc.check().is_ok(), "not poisoned");
        gc.note_written(LogPos::new(1, 20));
        gc.wait_durable(LogPos::new(1, 20))
            .expect("the next sync runs");
        assert_eq!(gc.durable_end(), LogPos::new(1, 20));
        assert_eq!(disk.syncs.load(Ordering::SeqCst), 1);

        disk.refuse_mark.store(true, Ordering::SeqCst);
        gc.note_written(LogPos::new(1, 30));
        gc.wait_durable(LogPos::new(1, 30))
            .expect("synced, mark skipped");
        gc.note_written(LogPos::new(1, 40));
        gc.wait_durable(LogPos::new(1, 40)).unwrap();
        assert_eq!(*disk.marks.lock().unwrap(), vec![20, 40]);
        assert!(gc.check().is_ok());
    }

    /// A mark written with the place held (a clean close's, or the one that
    /// clears it before the first eager write) whose file cannot be opened:
    /// its caller fails, nothing is written or counted, the log goes on.
    #[test]
    fn a_held_mark_without_a_descriptor_fails_its_caller_but_not_the_log() {
        let disk = Arc::new(OutOfDescriptors::default());
        let start = LogPos::new(1, 0);
        let gc = GroupCommit::new(Arc::clone(&disk), start, start, 0, Duration::ZERO);
        gc.note_written(LogPos::new(1, 10));
        gc.wait_durable(LogPos::new(1, 10)).unwrap();
        let fsyncs = gc.fsyncs();
        disk.refuse_mark.store(true, Ordering::SeqCst);
        let refused = gc.sync_with_mark(1).unwrap_err();
        assert!(
            refused.to_string().contains("Too many open files"),
            "{refused}"
        );
        assert!(gc.check().is_ok(), "not poisoned");
        assert_eq!(gc.fsyncs(), fsyncs, "no sync ran");
        gc.note_written(LogPos::new(1, 20));
        gc.wait_durable(LogPos::new(1, 20))
            .expect("the place was handed on");
        gc.sync_with_mark(1).expect("the next mark is written");
        assert_eq!(*disk.marks.lock().unwrap(), vec![10, 20, 20]);

        // Written, then its sync finds no descriptor: the same for a mark that
        // does not say clean; one that does (a clean close's) poisons.
        disk.refuse_sync.store(true, Ordering::SeqCst);
        gc.sync_with_mark(0).unwrap_err();
        assert!(gc.check().is_ok(), "not poisoned");
        disk.refuse_sync.store(true, Ordering::SeqCst);
        gc.sync_with_mark(super::super::mark::FLAG_CLEAN)
            .unwrap_err();
        assert!(gc.check().is_err(), "an unsynced clean mark poisons");
    }

    #[test]
    fn a_mark_follows_every_fsync_when_asked() {
        assert_eq!(marks_of_three_syncs(Duration::ZERO), vec![10, 20, 30]);
    }

    #[test]
    fn marks_are_spaced_and_stay_a_lower_bound() {
        // The first fsync marks; the next two come within the interval and
        // leave the mark behind what is durable (a lower bound, never more).
        assert_eq!(marks_of_three_syncs(Duration::from_secs(3600)), vec![10]);
    }
}

/// Model checks of group commit (`RUSTFLAGS="--cfg loom"`): whatever the
/// interleaving, a waiter returns only once an fsync that started after its
/// bytes were written has finished, and a failed fsync fails every waiter it
/// did not cover and every later one.
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::sync::AtomicBool;
    use loom::sync::Arc;

    /// A segment whose page cache and disk are two numbers.
    struct Disk {
        /// Bytes written to the page cache.
        cache: AtomicU64,
        /// Bytes on stable storage.
        durable: AtomicU64,
        /// The next fsync fails.
        fail_next: AtomicBool,
        /// The next sync finds no descriptor to open the file with.
        no_descriptor_next: AtomicBool,
    }

    impl Flush for Disk {
        fn seq(&self) -> u64 {
            1
        }
        fn path(&self) -> &Path {
            Path::new("disk")
        }
        fn sync_data(&self) -> Result<()> {
            if self.fail_next.swap(false, Ordering::SeqCst) {
                return Err(Error::Internal("EIO".into()));
            }
            if self.no_descriptor_next.swap(false, Ordering::SeqCst) {
                return Err(Error::io(
                    Path::new("disk"),
                    std::io::Error::from_raw_os_error(libc::EMFILE),
                ));
            }
            let cached = self.cache.load(Ordering::SeqCst);
            self.durable.fetch_max(cached, Ordering::SeqCst);
            Ok(())
        }
        fn write_mark(&self, _end: u64, _flags: u64) -> Result<()> {
            Ok(())
        }
    }

    /// A disk (whose next fsync fails with `fail`) and its coordinator.
    fn setup(fail: bool) -> (std::sync::Arc<Disk>, Arc<GroupCommit<Disk>>) {
        let disk = std::sync::Arc::new(Disk {
            cache: AtomicU64::new(0),
            durable: AtomicU64::new(0),
            fail_next: AtomicBool::new(fail),
            no_descriptor_next: AtomicBool::new(false),
        });
        let start = LogPos::new(1, 0);
        let gc = Arc::new(GroupCommit::new(
            std::sync::Arc::clone(&disk),
            start,
            start,
            0,
            std::time::Duration::ZERO,
        ));
        (disk, gc)
    }

    /// A writer: writes `end` bytes, notes them, waits; what it returns.
    fn write(disk: &Disk, gc: &GroupCommit<Disk>, end: u64) -> Result<()> {
        disk.cache.fetch_max(end, Ordering::SeqCst);
        gc.note_written(LogPos::new(1, end));
        gc.wait_durable(LogPos::new(1, end))
    }

    #[test]
    fn loom_every_waiter_returns_durable() {
        loom::model(|| {
            let (disk, gc) = setup(false);
            let (d2, g2) = (std::sync::Arc::clone(&disk), Arc::clone(&gc));
            let t = loom::thread::spawn(move || {
                write(&d2, &g2, 20).expect("durable");
                assert!(d2.durable.load(Ordering::SeqCst) >= 20);
            });
            write(&disk, &gc, 10).expect("durable");
            assert!(disk.durable.load(Ordering::SeqCst) >= 10);
            t.join().expect("writer");
        });
    }

    /// Two writers, of 10 and 20 bytes, when the first sync fails: each one
    /// that returns durable is, and the failed sync covered neither.
    fn two_writers_and_a_failed_sync(disk: &std::sync::Arc<Disk>, gc: &Arc<GroupCommit<Disk>>) {
        let (d2, g2) = (std::sync::Arc::clone(disk), Arc::clone(gc));
        let t = loom::thread::spawn(move || {
            let r = write(&d2, &g2, 20);
            if r.is_ok() {
                assert!(d2.durable.load(Ordering::SeqCst) >= 20);
            }
            r.is_ok()
        });
        let mine = write(disk, gc, 10);
        if mine.is_ok() {
            assert!(disk.durable.load(Ordering::SeqCst) >= 10);
        }
        let theirs = t.join().expect("writer");
        assert!(!(mine.is_ok() && theirs), "the failed sync covered someone");
    }

    #[test]
    fn loom_a_failed_fsync_fails_its_waiters_and_every_later_one() {
        loom::model(|| {
            let (disk, gc) = setup(true);
            two_writers_and_a_failed_sync(&disk, &gc);
            assert!(gc.check().is_err(), "the log is poisoned");
            assert!(write(&disk, &gc, 30).is_err(), "a later wait fails too");
        });
    }

    #[test]
    fn loom_a_sync_without_a_descriptor_fails_only_its_waiters() {
        loom::model(|| {
            let (disk, gc) = setup(false);
            disk.no_descriptor_next.store(true, Ordering::SeqCst);
            two_writers_and_a_failed_sync(&disk, &gc);
            assert!(gc.check().is_ok(), "the log is not poisoned");
            write(&disk, &gc, 30).expect("the log goes on");
            assert!(disk.durable.load(Ordering::SeqCst) >= 30);
        });
    }

    #[test]
    fn loom_a_mark_sync_and_a_writer() {
        loom::model(|| {
            let (disk, gc) = setup(false);
            let (d2, g2) = (std::sync::Arc::clone(&disk), Arc::clone(&gc));
            let t = loom::thread::spawn(move || {
                write(&d2, &g2, 20).expect("durable");
                assert!(d2.durable.load(Ordering::SeqCst) >= 20);
            });
            gc.sync_with_mark(0).expect("mark synced");
            t.join().expect("writer");
            assert!(gc.check().is_ok());
        });
    }

    /// A model with three threads, its preemptions bounded so that it ends
    /// in minutes (every interleaving with up to three preemptions).
    fn model_of_three(f: impl Fn() + Sync + Send + 'static) {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(3);
        builder.check(f);
    }

    /// A writer thread for each of `ends`; each returns whether its write
    /// returned durable, having checked that it then is.
    fn spawn_writers(
        disk: &std::sync::Arc<Disk>,
        gc: &Arc<GroupCommit<Disk>>,
        ends: [u64; 2],
    ) -> Vec<loom::thread::JoinHandle<bool>> {
        ends.into_iter()
            .map(|end| {
                let (d, g) = (std::sync::Arc::clone(disk), Arc::clone(gc));
                loom::thread::spawn(move || {
                    let durable = write(&d, &g, end).is_ok();
                    if durable {
                        assert!(d.durable.load(Ordering::SeqCst) >= end);
                    }
                    durable
                })
            })
            .collect()
    }

    #[test]
    fn loom_three_writers_share_syncs_and_hand_off() {
        // Two waiters can be covered by one sync (woken together), or wait
        // for the next generation, whose sync one of them is offered.
        model_of_three(|| {
            let (disk, gc) = setup(false);
            let writers = spawn_writers(&disk, &gc, [20, 30]);
            write(&disk, &gc, 10).expect("durable");
            assert!(disk.durable.load(Ordering::SeqCst) >= 10);
            for w in writers {
                assert!(w.join().expect("writer"), "a writer failed");
            }
            assert!(gc.fsyncs() <= 3);
        });
    }

    #[test]
    fn loom_a_failed_fsync_fails_every_queued_waiter() {
        model_of_three(|| {
            let (disk, gc) = setup(true);
            let writers = spawn_writers(&disk, &gc, [20, 30]);
            // The first fsync fails and no later one runs: nobody is durable.
            assert!(write(&disk, &gc, 10).is_err());
            for w in writers {
                assert!(!w.join().expect("writer"), "a waiter returned durable");
            }
            assert_eq!(disk.durable.load(Ordering::SeqCst), 0);
        });
    }

    #[test]
    fn loom_a_mark_sync_waits_for_the_place_among_writers() {
        model_of_three(|| {
            let (disk, gc) = setup(false);
            let writers = spawn_writers(&disk, &gc, [10, 20]);
            gc.sync_with_mark(0).expect("mark synced");
            for w in writers {
                assert!(w.join().expect("writer"), "a writer failed");
            }
            assert!(gc.check().is_ok());
        });
    }
}
