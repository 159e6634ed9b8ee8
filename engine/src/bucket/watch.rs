//! Watches: change streams read from the log.
//!
//! A write publishes the new log end to the bucket's watch hub
//! (`watch_hub.rs`) and does nothing per watcher. Each [`Watch`] keeps its own
//! cursor into the log (segment + offset) and decodes records itself, at its
//! own pace, up to the published end. The log is the buffer: a watcher that
//! never reads costs the writer nothing and holds no memory but its cursor.
//! Revisions in the log are consecutive; a watcher that finds a gap
//! (compaction removed records it had not read yet) reports
//! [`WatchEvent::Lost`] and ends.
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

use super::{effective_expiry, BucketCore, KeepStoreOpen};
use crate::entry::{Entry, EntryRef, Op};
use crate::error::{Error, Result};
use crate::index::RecordRef;
use crate::key::Subject;
use crate::log::record::{decode, Decoded, RecordHeader, HEADER_LEN};
use crate::log::segment::Segment;
use crate::log::LogPos;

/// What a watch delivers and from where.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[allow(
    clippy::struct_excessive_bools,
    reason = "independent switches, one per WATCH keyword"
)]
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
    /// Most memory the list of the initial data may take ([`Watch::initial_bytes`]): a
    /// watch whose list would be larger is refused with [`Error::WatchTooLarge`] while
    /// the list is made, before it holds more. `None`: no limit. (A server sets its
    /// client memory budget: a larger list would have its connection closed anyway.)
    pub max_initial_bytes: Option<usize>,
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

/// One event of a watch, borrowed from the watch: what [`Watch::try_next_ref`]
/// hands out, without copying the entry out of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchEventRef<'a> {
    /// An entry (initial data or a live write); see [`WatchEvent::Entry`].
    Entry(EntryRef<'a>),
    /// The initial data is complete; live entries follow.
    Ready,
    /// Entries the watch had not read yet were compacted away; the watch has ended.
    Lost {
        /// The lowest revision still in the log.
        first_retained: u64,
    },
}

impl WatchEventRef<'_> {
    /// An owned copy.
    pub fn to_event(&self) -> WatchEvent {
        match *self {
            WatchEventRef::Entry(e) => WatchEvent::Entry(e.to_entry()),
            WatchEventRef::Ready => WatchEvent::Ready,
            WatchEventRef::Lost { first_retained } => WatchEvent::Lost { first_retained },
        }
    }
}

/// A live change stream over the keys of one bucket matching a pattern.
///
/// Pull-based: [`Watch::try_next`] and [`Watch::try_next_ref`] never block, [`Watch::recv`] and
/// [`Watch::recv_timeout`] wait for writes. Also an [`Iterator`] of blocking
/// receives. Dropping it unsubscribes.
#[allow(
    clippy::struct_excessive_bools,
    reason = "independent switches of one watch's progress, each read in one place"
)]
pub struct Watch {
    core: Arc<BucketCore>,
    /// This watch's own copy of the bucket name: entries clone it, and a
    /// reference count shared by every watch would bounce between cores.
    bucket: Arc<str>,
    _store: KeepStoreOpen,
    subject: Subject,
    opts: WatchOptions,
    initial: VecDeque<(String, RecordRef)>,
    /// The bytes of the keys still in `initial` (see [`Watch::initial_bytes`]).
    initial_key_bytes: usize,
    initial_segments: HashMap<u32, Arc<Segment>>,
    /// The initial entry [`Watch::try_next_ref`] handed out last (it lends it).
    held: Option<Entry>,
    /// Whether initial entries carry a `delta` (they do, except after FROM).
    counted: bool,
    ready_pending: bool,
    tail: Option<Arc<Segment>>,
    offset: u64,
    /// The last revision read from the log (matching or not).
    last_seen: u64,
    /// The bucket's last visible revision when the watch started.
    start_revision: u64,
    ended: bool,
    /// Resumed (`FROM`) just past a revision that an unclean stop took back:
    /// the client's history is not the bucket's, so the watch reports `lost`.
    resumed_in_lost: bool,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("subject", &self.subject.as_str())
            .field("last_seen", &self.last_seen)
            .finish_non_exhaustive()
    }
}

impl Watch {
    /// Starts a watch on the keys of `core` matching `pattern`.
    pub(super) fn start(
        core: Arc<BucketCore>,
        store: KeepStoreOpen,
        pattern: &str,
        opts: WatchOptions,
    ) -> Result<Watch> {
        core.check_open()?;
        let subject = Subject::new(pattern)?;
        let now = core.now();
        if !opts.updates_only || opts.from_revision.is_some() {
            core.ensure_key_order();
        }
        let (initial, end, revision, segments) = {
            let ix = core.index.read();
            let (end, revision) = core.hub.published();
            let mut picked: Vec<(String, RecordRef)> = Vec::new();
            // What the list takes, as `initial_bytes` counts it (the list's spare room aside).
            let mut listed = 0usize;
            let wanted =
                |r: &RecordRef| !(r.expired(now) || opts.ignore_deletes && r.op() != Op::Put);
            if !opts.updates_only || opts.from_revision.is_some() {
                for (k, latest) in ix.prefixed(subject.literal_prefix().as_bytes()) {
                    if !subject.matches(k.as_str()) {
                        continue;
                    }
                    let before = picked.len();
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
                    let entry = k.as_str().len() + std::mem::size_of::<(String, RecordRef)>();
                    listed = listed.saturating_add((picked.len() - before) * entry);
                    match opts.max_initial_bytes {
                        Some(max) if listed > max => {
                            return Err(Error::WatchTooLarge {
                                bytes: listed as u64,
                                max: max as u64,
                            })
                        }
                        _ => {}
                    }
                }
            }
            picked.sort_unstable_by_key(|(_, r)| r.revision);
            let segments = core.segments_of(picked.iter().map(|(_, r)| r.slot));
            (picked, end, revision, segments)
        };
        #[cfg(test)]
        tests::before_cursor();
        let (tail, offset) = live_cursor(&core, end);
        // Resumed where this bucket has no history: in a range an unclean stop gave
        // up, or past every revision it has given out (the client saw another
        // history: a bucket dropped and created again under the name). A replica
        // behind the others is exempt from the second: it gives them out later.
        let next_rev = core.writer.lock().next_rev;
        let resumed_in_lost = opts.from_revision.is_some_and(|from| {
            from > 1 && core.lost.contains(from - 1) || (!core.replicated && from > next_rev)
        });
        Ok(Watch {
            bucket: Arc::from(&*core.name),
            counted: opts.from_revision.is_none(),
            core,
            _store: store,
            subject,
            opts,
            initial_key_bytes: initial.iter().map(|(k, _)| k.capacity()).sum(),
            initial: initial.into(),
            initial_segments: segments,
            held: None,
            ready_pending: true,
            offset,
            tail,
            last_seen: revision,
            start_revision: revision,
            ended: false,
            resumed_in_lost,
        })
    }

    /// The bucket's last visible revision when the watch started: the initial
    /// data is as of it, and the live entries are the ones after it. A client
    /// that has seen `ready` resumes with `FROM` this + 1 (the gateway gives it
    /// as `ready`'s event id).
    pub fn start_revision(&self) -> u64 {
        self.start_revision
    }

    /// The pattern watched.
    pub fn pattern(&self) -> &str {
        self.subject.as_str()
    }

    /// The memory the initial entries not yet delivered hold (their keys and where their
    /// records are; the values are read as they are delivered): a watch of many keys
    /// holds some 60 bytes a key until its initial data has been read. Nothing once it
    /// has. For a server that counts what each client makes it hold.
    pub fn initial_bytes(&self) -> usize {
        self.initial.capacity() * std::mem::size_of::<(String, RecordRef)>()
            + self.initial_key_bytes
    }

    /// The next event if one is available now; `Ok(None)` if not (yet).
    /// After the bucket is dropped, or after [`WatchEvent::Lost`], returns [`Error::Closed`].
    pub fn try_next(&mut self) -> Result<Option<WatchEvent>> {
        Ok(match self.advance()? {
            None => None,
            Some(Next::Initial(e)) => Some(WatchEvent::Entry(e)),
            Some(Next::Live(r)) => {
                let e = self.live_entry(&r)?;
                Some(WatchEvent::Entry(Entry {
                    // The watch's own count, not one shared by every watch.
                    bucket: Arc::clone(&self.bucket),
                    key: e.key.to_string(),
                    value: Bytes::copy_from_slice(e.value),
                    revision: e.revision,
                    created_ms: e.created_ms,
                    op: e.op,
                    delta: e.delta,
                    expires_ms: e.expires_ms,
                }))
            }
            Some(Next::Ready) => Some(WatchEvent::Ready),
            Some(Next::Lost(first_retained)) => Some(WatchEvent::Lost { first_retained }),
        })
    }

    /// As [`Watch::try_next`], but the event is borrowed from the watch until
    /// its next call: a live entry's key and value are read in place from the
    /// log, with no copy and no allocation. For a caller that encodes each
    /// event and lets it go (a server sending it to a socket).
    pub fn try_next_ref(&mut self) -> Result<Option<WatchEventRef<'_>>> {
        Ok(match self.advance()? {
            None => None,
            Some(Next::Initial(e)) => Some(WatchEventRef::Entry(self.held.insert(e).view())),
            Some(Next::Live(r)) => Some(WatchEventRef::Entry(self.live_entry(&r)?)),
            Some(Next::Ready) => Some(WatchEventRef::Ready),
            Some(Next::Lost(first_retained)) => Some(WatchEventRef::Lost { first_retained }),
        })
    }

    /// Moves the watch on to its next event, if one is available now.
    fn advance(&mut self) -> Result<Option<Next>> {
        self.held = None;
        if self.ended {
            return Err(Error::Closed);
        }
        if self.resumed_in_lost {
            return Ok(Some(self.lost()));
        }
        if let Some((key, rev)) = self.initial.pop_front() {
            self.initial_key_bytes -= key.capacity();
            let mut e = self
                .core
                .load_from(self.initial_segments.get(&rev.slot), &key, &rev)?;
            if self.counted {
                e.delta = self.initial.len() as u64;
            }
            if self.initial.is_empty() {
                // Its room goes too (a deque keeps what it grew to).
                self.initial = VecDeque::new();
                self.initial_segments.clear();
            }
            return Ok(Some(Next::Initial(self.shape(e))));
        }
        if self.ready_pending {
            self.ready_pending = false;
            return Ok(Some(Next::Ready));
        }
        if self.core.hub.is_closed() {
            self.ended = true;
            return Err(Error::Closed);
        }
        self.next_live()
    }

    /// The live entry `r` found by [`Watch::advance`], read in place from the
    /// segment under the cursor (where it was found).
    fn live_entry(&self, r: &LiveRecord) -> Result<EntryRef<'_>> {
        let Some(seg) = self.tail.as_deref() else {
            return Err(Error::Internal(
                "a watch lost the segment of the record it had just read".into(),
            ));
        };
        let h = &r.header;
        let key_end = r.key_at + u64::from(h.key_len);
        let key = std::str::from_utf8(seg.range(r.key_at, key_end)).unwrap_or("");
        let value = if self.opts.meta_only {
            &[][..]
        } else {
            seg.range(key_end, key_end + u64::from(h.value_len))
        };
        Ok(EntryRef {
            bucket: &self.bucket,
            key,
            value,
            revision: h.revision,
            created_ms: h.created_ms,
            op: h.op,
            delta: 0,
            expires_ms: r.expires_ms,
        })
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

    /// Ends the watch: records it had not read were compacted away.
    fn lost(&mut self) -> Next {
        self.ended = true;
        Next::Lost(self.core.first_retained_revision())
    }

    /// Reads the log from the cursor up to the published end.
    fn next_live(&mut self) -> Result<Option<Next>> {
        loop {
            let (end, published_rev) = self.core.hub.published();
            // The segment is moved out and back rather than cloned: an `Arc`
            // clone per record would make every watch hammer one shared count.
            let Some(seg) = self.tail.take() else {
                // The segment the watch started in is gone already: start at the first one.
                let Some(first) = self.core.log.segments().into_iter().next() else {
                    return Ok(None);
                };
                self.offset = first.data_start;
                self.tail = Some(first);
                continue;
            };
            let step = self.read_one(&seg, end, published_rev);
            match step {
                Step::Next => {
                    let Some(next) = self.core.log.segment_after(seg.id.seq) else {
                        self.tail = Some(seg);
                        return Ok(None);
                    };
                    self.offset = next.data_start;
                    self.tail = Some(next);
                }
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
                return Step::Done(Ok(Some(self.lost())));
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
        if h.is_tag() {
            // A replication tag, not an entry.
            self.offset += h.record_len() as u64;
            return Step::Skip;
        }
        let skipped_lost = h.revision > self.last_seen + 1
            && self.core.lost.covers_gap(self.last_seen, h.revision);
        if h.revision != self.last_seen + 1 && !skipped_lost {
            if h.revision <= self.last_seen {
                // Already seen (a compacted copy of records read before).
                self.offset += h.record_len() as u64;
                return Step::Skip;
            }
            return Step::Done(Ok(Some(self.lost())));
        }
        self.last_seen = h.revision;
        self.offset += h.record_len() as u64;
        let key = std::str::from_utf8(rec.key).unwrap_or("");
        if !self.subject.matches(key) || (self.opts.ignore_deletes && h.op != Op::Put) {
            return Step::Skip;
        }
        let expires_ms = effective_expiry(h.expires_ms, h.created_ms, self.core.config.ttl_ms());
        Step::Done(Ok(Some(Next::Live(LiveRecord {
            key_at: self.offset - h.record_len() as u64 + HEADER_LEN as u64,
            header: h,
            expires_ms,
        }))))
    }
}

/// Where a watch stands in its bucket's log once its initial data and `ready` are
/// delivered: the segment and offset its next read starts at, and the last revision it
/// has seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchMark {
    seq: u64,
    gen: u32,
    offset: u64,
    last_seen: u64,
}

/// The live events one watch read between two of its marks. Another watch of the same
/// bucket that stands at the first mark and reads the same way (the same pattern,
/// `meta_only` and `ignore_deletes`) would read the very same events, so it may take the
/// step instead ([`Watch::follow`]): a server that encoded the events once for the first
/// watch sends the same bytes for the second without reading or encoding them again.
#[derive(Clone)]
pub struct WatchStep {
    core: Arc<BucketCore>,
    from: WatchMark,
    to: WatchMark,
    /// The segment `to` lies in.
    tail: Arc<Segment>,
    pattern: String,
    meta_only: bool,
    ignore_deletes: bool,
}

impl std::fmt::Debug for WatchStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchStep")
            .field("bucket", &&*self.core.name)
            .field("from", &self.from)
            .field("to", &self.to)
            .field("pattern", &self.pattern)
            .finish_non_exhaustive()
    }
}

impl Watch {
    /// Where this watch stands in the log; `None` until its initial data and `ready` are
    /// delivered, and once it has ended.
    pub fn mark(&self) -> Option<WatchMark> {
        let tail = self.tail.as_deref()?;
        let live =
            !self.ended && !self.resumed_in_lost && !self.ready_pending && self.initial.is_empty();
        live.then_some(WatchMark {
            seq: tail.id.seq,
            gen: tail.id.gen,
            offset: self.offset,
            last_seen: self.last_seen,
        })
    }

    /// The step this watch took since it stood at `from` (taken with [`Watch::mark`]);
    /// `None` if it no longer stands in the live log or has not moved.
    pub fn step_since(&self, from: WatchMark) -> Option<WatchStep> {
        let to = self.mark()?;
        let tail = self.tail.as_ref()?;
        (to != from).then(|| WatchStep {
            core: Arc::clone(&self.core),
            from,
            to,
            tail: Arc::clone(tail),
            pattern: self.subject.as_str().to_string(),
            meta_only: self.opts.meta_only,
            ignore_deletes: self.opts.ignore_deletes,
        })
    }

    /// Takes `step` (another watch's) as if this watch had read its events itself, when
    /// this watch stands where the step starts and reads the same way; returns whether it
    /// did. The caller delivers the step's events (as the other watch's encoded frames).
    pub fn follow(&mut self, step: &WatchStep) -> bool {
        let same_reader = Arc::ptr_eq(&self.core, &step.core)
            && self.opts.meta_only == step.meta_only
            && self.opts.ignore_deletes == step.ignore_deletes
            && self.subject.as_str() == step.pattern;
        if !same_reader || self.mark() != Some(step.from) {
            return false;
        }
        let moved_segment = self
            .tail
            .as_ref()
            .is_none_or(|t| !Arc::ptr_eq(t, &step.tail));
        if moved_segment {
            self.tail = Some(Arc::clone(&step.tail));
        }
        self.offset = step.to.offset;
        self.last_seen = step.to.last_seen;
        self.held = None;
        true
    }
}

/// The next event of a watch, found by [`Watch::advance`] and not yet handed out.
enum Next {
    /// An initial entry (read from the index's record, owned).
    Initial(Entry),
    /// A live record, in the segment under the cursor.
    Live(LiveRecord),
    Ready,
    /// The watch has ended: records it had not read were compacted away.
    Lost(u64),
}

/// Where a live record found by a watch lies in the segment under its cursor.
struct LiveRecord {
    header: RecordHeader,
    /// The segment offset of its key (its value follows).
    key_at: u64,
    /// Its expiry, with the bucket's max age applied.
    expires_ms: u64,
}

/// What one read step of a watch found.
enum Step {
    /// The segment is used up: go to the next.
    Next,
    /// A record that is not for this watch: go on.
    Skip,
    /// An answer for the caller.
    Done(Result<Option<Next>>),
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

/// Where a watch that starts at the published end `end` reads from: the segment `end`
/// lies in, and `end`'s offset in it. `end` was published for a segment the writer
/// appended to; by the time it is looked up here, compaction may have replaced that
/// segment by an output of the same `seq` whose records lie at other offsets (an
/// output's `gen` is above every input's). A segment of `gen` 0 is one the writer made,
/// so `end`'s offset is its own; in any other the watch reads from the segment's first
/// record and skips what it has seen (revisions up to the published one). With no
/// segment of that `seq` left, it starts at the log's first segment the same way.
fn live_cursor(core: &BucketCore, end: LogPos) -> (Option<Arc<Segment>>, u64) {
    match core.log.segment_by_seq(end.seq()) {
        Some(seg) if seg.id.gen == 0 => (Some(seg), end.offset()),
        Some(seg) => {
            let start = seg.data_start;
            (Some(seg), start)
        }
        None => (None, 0),
    }
}

/// A hook the tests run between a watch's snapshot of the index and its lookup of
/// the segment it reads from next, to make the log change in between.
#[cfg(test)]
pub(super) mod tests {
    use std::cell::RefCell;

    type Hook = Box<dyn FnOnce()>;

    thread_local! {
        static BEFORE_CURSOR: RefCell<Option<Hook>> = RefCell::new(None);
    }

    /// Runs `f` in the next watch started on this thread, at that point.
    pub(in crate::bucket) fn set_before_cursor(f: impl FnOnce() + 'static) {
        BEFORE_CURSOR.with(|h| *h.borrow_mut() = Some(Box::new(f)));
    }

    pub(super) fn before_cursor() {
        if let Some(f) = BEFORE_CURSOR.with(|h| h.borrow_mut().take()) {
            f();
        }
    }
}
