//! Watches: change streams fed from the log.
//!
//! The path of an event: a write appends its records, applies them to the
//! index, and — still under the index write lock — publishes the new log end
//! and revision to the bucket's [`WatchHub`]: one uncontended mutex, two
//! stores, and a condvar broadcast only if some watcher is blocked. After the
//! index lock is released it pokes the few change listeners (e.g. one per
//! bucket in the server). That is all the writer does: nothing per watcher,
//! no queue to fill.
//!
//! Each [`Watch`] keeps its own cursor into the log (segment + offset) and
//! decodes records itself, at its own pace, up to the published end. The log
//! is the buffer: a watcher that never reads costs the writer nothing and
//! holds no memory but its cursor. Revisions in the log are consecutive; a
//! watcher that finds a gap (compaction removed records it had not read yet)
//! reports [`WatchEvent::Lost`] and ends.
//!
//! Initial data (the latest entry of each matching key, or its retained
//! history) is taken from the index under the same lock that the writer holds
//! when it publishes, together with the published end: every revision up to
//! that point comes from the snapshot, every later one from the log, so
//! nothing is missed and nothing delivered twice.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::bucket::BucketCore;
use crate::entry::{Entry, Op};
use crate::error::{Error, Result};
use crate::index::RecordRef;
use crate::key::Subject;
use crate::log::record::{decode, Decoded};
use crate::log::segment::Segment;
use crate::log::LogPos;
use crate::sync::{AtomicBool, AtomicU64, Condvar, Mutex, Ordering};

/// The meeting point of one bucket's writer and its watchers.
pub(crate) struct WatchHub {
    /// Log position just past the last visible write.
    end: AtomicU64,
    /// Its revision.
    revision: AtomicU64,
    closed: AtomicBool,
    /// Watchers blocked in `wait_past`; changes of `end` and `closed` happen under this lock.
    waiters: Mutex<usize>,
    changed: Condvar,
    listeners: parking_lot::Mutex<Vec<Sender<()>>>,
}

impl WatchHub {
    pub fn new(end: LogPos, revision: u64) -> WatchHub {
        WatchHub {
            end: AtomicU64::new(end.to_bits()),
            revision: AtomicU64::new(revision),
            closed: AtomicBool::new(false),
            waiters: Mutex::new(0),
            changed: Condvar::new(),
            listeners: parking_lot::Mutex::new(Vec::new()),
        }
    }

    /// Publishes a new end and wakes blocked watchers; called by the writer
    /// under the index write lock.
    pub fn publish(&self, end: LogPos, revision: u64) {
        let waiters = lock(&self.waiters);
        // End first, revision second; `published` reads them the other way
        // round, so a reader that sees a revision also sees its end.
        self.end.store(end.to_bits(), Ordering::SeqCst);
        self.revision.store(revision, Ordering::SeqCst);
        if *waiters > 0 {
            self.changed.notify_all();
        }
    }

    /// Pokes the change listeners; called by the writer after the index lock is released.
    pub fn wake(&self) {
        let mut listeners = self.listeners.lock();
        if !listeners.is_empty() {
            listeners.retain(|tx| !matches!(tx.try_send(()), Err(TrySendError::Disconnected(()))));
        }
    }

    /// The published end and revision.
    pub fn published(&self) -> (LogPos, u64) {
        let revision = self.revision.load(Ordering::SeqCst);
        (LogPos::from_bits(self.end.load(Ordering::SeqCst)), revision)
    }

    /// Ends every watch of this bucket (it was dropped).
    pub fn close(&self) {
        let _g = lock(&self.waiters);
        self.closed.store(true, Ordering::SeqCst);
        self.changed.notify_all();
        self.listeners.lock().clear();
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Blocks until the published end passes `pos`, the hub closes, or `deadline`.
    pub fn wait_past(&self, pos: LogPos, deadline: Option<Instant>) {
        let mut g = lock(&self.waiters);
        *g += 1;
        while LogPos::from_bits(self.end.load(Ordering::SeqCst)) <= pos && !self.is_closed() {
            match deadline {
                None => g = self.changed.wait(g).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        break;
                    }
                    g = match self.changed.wait_timeout(g, d - now) {
                        Ok((g, _)) => g,
                        Err(e) => e.into_inner().0,
                    };
                }
            }
        }
        *g -= 1;
    }

    /// A channel that receives a token (coalesced) after writes; for event loops
    /// that cannot block in [`Watch::recv`].
    pub fn listen(&self) -> Receiver<()> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.listeners.lock().push(tx);
        rx
    }
}

fn lock<T>(m: &Mutex<T>) -> crate::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a watch delivers and from where.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchOptions {
    /// Initial data holds every retained entry of matching keys, not just the latest.
    pub include_history: bool,
    /// Entries come without values.
    pub meta_only: bool,
    /// DEL and PURGE entries are skipped.
    pub ignore_deletes: bool,
    /// No initial data: only writes made after the watch started.
    pub updates_only: bool,
    /// Resume: every retained matching entry with revision >= this, then live entries.
    pub from_revision: Option<u64>,
}

/// One event of a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// An entry (initial data or a live write). `delta` counts the initial entries still to come.
    Entry(Entry),
    /// The initial data is complete; live entries follow.
    Ready,
    /// Entries the watch had not read yet were compacted away; the watch has ended.
    Lost {
        /// The lowest revision still in the log.
        first_retained: u64,
    },
}

/// A live change stream over the keys of one bucket matching a pattern.
///
/// Pull-based: [`Watch::try_next`] never blocks, [`Watch::recv`] and
/// [`Watch::recv_timeout`] wait for writes. Also an [`Iterator`] of blocking
/// receives. Dropping it unsubscribes.
pub struct Watch {
    core: Arc<BucketCore>,
    /// This watch's own copy of the bucket name: entries clone it, and a
    /// reference count shared by every watch would bounce between cores.
    bucket: Arc<str>,
    _keep: Arc<dyn std::any::Any + Send + Sync>,
    subject: Subject,
    opts: WatchOptions,
    initial: VecDeque<(String, RecordRef)>,
    initial_segments: HashMap<u32, Arc<Segment>>,
    /// Whether initial entries carry a `delta` (they do, except after FROM).
    counted: bool,
    ready_pending: bool,
    tail: Option<Arc<Segment>>,
    offset: u64,
    /// The last revision read from the log (matching or not).
    last_seen: u64,
    ended: bool,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("subject", &self.subject.as_str())
            .field("last_seen", &self.last_seen)
            .finish()
    }
}

impl Watch {
    pub(crate) fn start(
        core: Arc<BucketCore>,
        keep: Arc<dyn std::any::Any + Send + Sync>,
        pattern: &str,
        opts: WatchOptions,
    ) -> Result<Watch> {
        core.check_open()?;
        let subject = Subject::new(pattern)?;
        let now = core.now();
        let (initial, end, revision, segments) = {
            let ix = core.index.read();
            let (end, revision) = core.hub.published();
            let mut picked: Vec<(String, RecordRef)> = Vec::new();
            let wanted =
                |r: &RecordRef| !(r.expired(now) || opts.ignore_deletes && r.op() != Op::Put);
            if !opts.updates_only || opts.from_revision.is_some() {
                for (k, latest) in ix.prefixed(subject.literal_prefix().as_bytes()) {
                    if !subject.matches(k.as_str()) {
                        continue;
                    }
                    match opts.from_revision {
                        Some(from) => ix.for_each_rev(latest, |r| {
                            if r.revision >= from && wanted(r) {
                                picked.push((k.as_str().to_string(), *r));
                            }
                        }),
                        None if opts.include_history => ix.for_each_rev(latest, |r| {
                            if wanted(r) {
                                picked.push((k.as_str().to_string(), *r));
                            }
                        }),
                        None => {
                            if wanted(latest) {
                                picked.push((k.as_str().to_string(), *latest));
                            }
                        }
                    }
                }
            }
            picked.sort_unstable_by_key(|(_, r)| r.revision);
            let mut segments = HashMap::new();
            for (_, r) in &picked {
                if let std::collections::hash_map::Entry::Vacant(v) = segments.entry(r.slot) {
                    if let Some(s) = core.log.segment(r.slot) {
                        v.insert(s);
                    }
                }
            }
            (picked, end, revision, segments)
        };
        let tail = core.log.segment_by_seq(end.seq());
        Ok(Watch {
            bucket: Arc::from(&*core.name),
            counted: opts.from_revision.is_none(),
            core,
            _keep: keep,
            subject,
            opts,
            initial: initial.into(),
            initial_segments: segments,
            ready_pending: true,
            offset: end.offset(),
            tail,
            last_seen: revision,
            ended: false,
        })
    }

    /// The pattern watched.
    pub fn pattern(&self) -> &str {
        self.subject.as_str()
    }

    /// The next event if one is available now; `Ok(None)` if not (yet).
    /// After the bucket is dropped, or after [`WatchEvent::Lost`], returns [`Error::Closed`].
    pub fn try_next(&mut self) -> Result<Option<WatchEvent>> {
        if self.ended {
            return Err(Error::Closed);
        }
        if let Some((key, rev)) = self.initial.pop_front() {
            let mut e = self
                .core
                .load_from(self.initial_segments.get(&rev.slot), &key, &rev)?;
            if self.counted {
                e.delta = self.initial.len() as u64;
            }
            if self.initial.is_empty() {
                self.initial_segments.clear();
            }
            return Ok(Some(WatchEvent::Entry(self.shape(e))));
        }
        if self.ready_pending {
            self.ready_pending = false;
            return Ok(Some(WatchEvent::Ready));
        }
        if self.core.hub.is_closed() {
            self.ended = true;
            return Err(Error::Closed);
        }
        self.next_live()
    }

    /// Blocks until the next event. [`Error::Closed`] once the watch has ended.
    pub fn recv(&mut self) -> Result<WatchEvent> {
        loop {
            if let Some(ev) = self.try_next()? {
                return Ok(ev);
            }
            self.core.hub.wait_past(self.cursor_pos(), None);
        }
    }

    /// Waits up to `timeout` for the next event; `Ok(None)` on timeout.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<WatchEvent>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(ev) = self.try_next()? {
                return Ok(Some(ev));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            self.core.hub.wait_past(self.cursor_pos(), Some(deadline));
        }
    }

    /// The log position this watch has read up to.
    fn cursor_pos(&self) -> LogPos {
        match &self.tail {
            Some(s) => LogPos::new(s.id.seq, self.offset),
            None => LogPos::default(),
        }
    }

    fn shape(&self, mut e: Entry) -> Entry {
        if self.opts.meta_only {
            e.value = Bytes::new();
        }
        e
    }

    fn lost(&mut self) -> Result<Option<WatchEvent>> {
        self.ended = true;
        let first_retained = self.core.first_retained_revision();
        Ok(Some(WatchEvent::Lost { first_retained }))
    }

    /// Reads the log from the cursor up to the published end.
    fn next_live(&mut self) -> Result<Option<WatchEvent>> {
        loop {
            let (end, published_rev) = self.core.hub.published();
            // The segment is moved out and back rather than cloned: an `Arc`
            // clone per record would make every watch hammer one shared count.
            let Some(seg) = self.tail.take() else {
                // The segment the watch started in is gone already: start at the first one.
                match self.core.log.segments().into_iter().next() {
                    Some(s) => {
                        self.offset = s.data_start;
                        self.tail = Some(s);
                        continue;
                    }
                    None => return Ok(None),
                }
            };
            let step = self.read_one(&seg, end, published_rev);
            match step {
                Step::Next => match self.core.log.segment_after(seg.id.seq) {
                    Some(next) => {
                        self.offset = next.data_start;
                        self.tail = Some(next);
                    }
                    None => {
                        self.tail = Some(seg);
                        return Ok(None);
                    }
                },
                Step::Skip => self.tail = Some(seg),
                Step::Done(result) => {
                    self.tail = Some(seg);
                    return result;
                }
            }
        }
    }

    /// One step of [`Watch::next_live`] in segment `seg`.
    fn read_one(&mut self, seg: &Segment, end: LogPos, published_rev: u64) -> Step {
        if LogPos::new(seg.id.seq, self.offset) >= end {
            if self.last_seen < published_rev {
                // At the end of the log without having seen every revision:
                // compaction removed records this watch had not read.
                return Step::Done(self.lost());
            }
            return Step::Done(Ok(None));
        }
        if self.offset >= seg.data_end() {
            // This segment is sealed (the published end lies beyond it): move on.
            return Step::Next;
        }
        let bytes = seg.range(self.offset, seg.data_end());
        let rec = match decode(bytes, seg.header.salt) {
            Decoded::Record(r) => r,
            Decoded::End | Decoded::Invalid(_) => {
                return Step::Done(Err(Error::Corrupt {
                    path: seg.path.clone(),
                    offset: self.offset,
                    reason: "watch found no valid record below the published end".into(),
                }))
            }
        };
        let h = rec.header;
        if h.revision != self.last_seen + 1 {
            if h.revision <= self.last_seen {
                // Already seen (a compacted copy of records read before).
                self.offset += h.record_len() as u64;
                return Step::Skip;
            }
            return Step::Done(self.lost());
        }
        self.last_seen = h.revision;
        self.offset += h.record_len() as u64;
        let key = std::str::from_utf8(rec.key).unwrap_or("");
        if !self.subject.matches(key) || (self.opts.ignore_deletes && h.op != Op::Put) {
            return Step::Skip;
        }
        let expires =
            crate::bucket::effective_expiry(h.expires_ms, h.created_ms, self.core.config.ttl_ms());
        let entry = Entry {
            bucket: Arc::clone(&self.bucket),
            key: key.to_string(),
            value: if self.opts.meta_only {
                Bytes::new()
            } else {
                Bytes::copy_from_slice(rec.value)
            },
            revision: h.revision,
            created_ms: h.created_ms,
            op: h.op,
            delta: 0,
            expires_ms: expires,
        };
        Step::Done(Ok(Some(WatchEvent::Entry(entry))))
    }
}

/// What one read step of a watch found.
enum Step {
    /// The segment is used up: go to the next.
    Next,
    /// A record that is not for this watch: go on.
    Skip,
    /// An answer for the caller.
    Done(Result<Option<WatchEvent>>),
}

impl Iterator for Watch {
    type Item = Result<WatchEvent>;

    /// Blocking; ends when the watch ends.
    fn next(&mut self) -> Option<Self::Item> {
        match self.recv() {
            Err(Error::Closed) => None,
            other => Some(other),
        }
    }
}

/// Model checks of the writer → watcher handoff (`RUSTFLAGS="--cfg loom"`):
/// no interleaving loses a wake-up or lets a watcher miss a published write.
#[cfg(all(test, loom))]
mod loom_tests {
    use super::WatchHub;
    use crate::log::LogPos;
    use loom::sync::Arc;

    /// A position in the first segment.
    fn at(offset: u64) -> LogPos {
        LogPos::new(1, offset)
    }

    #[test]
    fn loom_publish_wakes_a_waiting_watcher() {
        loom::model(|| {
            let hub = Arc::new(WatchHub::new(at(0), 0));
            let writer = {
                let hub = Arc::clone(&hub);
                loom::thread::spawn(move || {
                    hub.publish(at(10), 1);
                    hub.wake();
                })
            };
            hub.wait_past(at(0), None);
            assert_eq!(hub.published(), (at(10), 1));
            writer.join().unwrap();
        });
    }

    #[test]
    fn loom_two_writes_two_watchers_see_the_last() {
        loom::model(|| {
            let hub = Arc::new(WatchHub::new(at(0), 0));
            let writer = {
                let hub = Arc::clone(&hub);
                loom::thread::spawn(move || {
                    hub.publish(at(5), 1);
                    hub.wake();
                    hub.publish(at(9), 2);
                    hub.wake();
                })
            };
            let watcher = {
                let hub = Arc::clone(&hub);
                loom::thread::spawn(move || {
                    let mut seen = at(0);
                    while seen < at(9) {
                        hub.wait_past(seen, None);
                        let (end, _) = hub.published();
                        assert!(end > seen, "woken without progress");
                        seen = end;
                    }
                })
            };
            hub.wait_past(at(4), None);
            assert!(hub.published().0 >= at(5));
            writer.join().unwrap();
            watcher.join().unwrap();
        });
    }

    #[test]
    fn loom_close_releases_a_waiter() {
        loom::model(|| {
            let hub = Arc::new(WatchHub::new(at(0), 0));
            let closer = {
                let hub = Arc::clone(&hub);
                loom::thread::spawn(move || hub.close())
            };
            hub.wait_past(at(0), None);
            assert!(hub.is_closed());
            closer.join().unwrap();
        });
    }
}
