//! One bucket: its log, its index, its revision counter, and every read and
//! write on it. [`crate::Bucket`] is the public handle over a [`BucketCore`].

use std::collections::{HashMap, HashSet};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};

use crate::clock::Clock;
use crate::config::{BucketConfig, Options};
use crate::entry::{
    BucketStats, BucketStatus, DurabilityTicket, Entry, Kind, Op, Page, Ttl, WriteOp, Written,
};
use crate::error::{Error, Result};
use crate::fsync::FsyncPolicy;
use crate::index::{IKey, Index, RecordRef};
use crate::key::{validate_key, Glob, Subject};
use crate::log::record::{self, decode, Decoded, FLAG_BATCH_CONT, FLAG_BATCH_MORE};
use crate::log::recovery::RecoveryReport;
use crate::log::segment::Segment;
use crate::log::{Appender, Log, LogConfig};
use crate::snapshot;
use crate::watch::WatchHub;

/// File holding a bucket's configuration.
pub const CONFIG_FILE: &str = "bucket.conf";

/// How many keys a background sweep looks at per index lock hold.
const SWEEP_CHUNK: usize = 4096;

/// The writer's state, under one lock: appends and revision numbers are serial.
pub(crate) struct Writer {
    pub(crate) app: Appender,
    /// The revision the next write gets.
    pub(crate) next_rev: u64,
    buf: Vec<u8>,
    removed: Vec<RecordRef>,
}

/// Counters kept since open.
#[derive(Default)]
pub(crate) struct Stats {
    pub compactions: AtomicU64,
    pub reclaimed: AtomicU64,
}

/// A bucket's shared state.
pub(crate) struct BucketCore {
    pub name: Arc<str>,
    pub config: BucketConfig,
    pub dir: PathBuf,
    pub log: Log,
    pub index: RwLock<Index>,
    pub writer: Mutex<Writer>,
    pub clock: Arc<dyn Clock>,
    pub dropped: AtomicBool,
    /// The last revision whose write is visible.
    pub last_rev: AtomicU64,
    pub stats: Stats,
    pub hub: WatchHub,
    /// Serialises compaction passes.
    pub compacting: Mutex<()>,
    pub compact_dead_ratio: f64,
    pub segment_size: u64,
    /// A test hook: the compaction step at which to stop as if crashed.
    pub crash_point: std::sync::atomic::AtomicU8,
}

/// The current state of a key while a batch is checked.
#[derive(Clone)]
enum Cur {
    Stored(RecordRef),
    Batch {
        revision: u64,
        op: Op,
        expires_ms: u64,
        created_ms: u64,
        value: Bytes,
    },
}

impl Cur {
    fn revision(&self) -> u64 {
        match self {
            Cur::Stored(r) => r.revision,
            Cur::Batch { revision, .. } => *revision,
        }
    }
    fn live(&self, now: u64) -> bool {
        match self {
            Cur::Stored(r) => r.live(now),
            Cur::Batch { op, expires_ms, .. } => {
                *op == Op::Put && (*expires_ms == 0 || *expires_ms > now)
            }
        }
    }
}

/// Effective expiry: the earlier of a per-key expiry and the bucket's max age.
pub(crate) fn effective_expiry(key_expires: u64, created: u64, bucket_ttl_ms: u64) -> u64 {
    match (key_expires, bucket_ttl_ms) {
        (k, 0) => k,
        (0, t) => created.saturating_add(t),
        (k, t) => k.min(created.saturating_add(t)),
    }
}

impl BucketCore {
    /// Opens a bucket directory, replaying its log into a fresh index.
    pub fn open(
        dir: &Path,
        name: &str,
        config: BucketConfig,
        opts: &Options,
    ) -> Result<(BucketCore, RecoveryReport)> {
        let index = std::cell::RefCell::new(Index::default());
        let mut max_rev = 0;
        let mut removed = Vec::new();
        let history = config.history as usize;
        let ttl = config.ttl_ms();
        let log_cfg = LogConfig {
            segment_size: opts.segment_size,
            fsync: opts.fsync,
            repair: opts.repair,
        };
        let mut snap = match opts.repair {
            // Repair may cut the log below a snapshot's end: never trust one after it.
            true => {
                snapshot::remove(dir)?;
                None
            }
            false => match snapshot::load(dir) {
                Ok(s) => s,
                Err(why) => {
                    tracing::warn!(bucket = name, reason = %why, "index snapshot unusable; scanning the whole log");
                    snapshot::remove(dir)?;
                    None
                }
            },
        };
        let mut snap_rev = 0;
        let mut stale = false;
        let mut start = |segs: &[Arc<Segment>]| {
            let s = snap.take()?;
            let last = s.last_revision;
            let applied = s.apply(segs, history, &mut index.borrow_mut());
            match applied {
                Ok(at) => {
                    snap_rev = last;
                    Some(at)
                }
                Err(why) => {
                    tracing::warn!(bucket = name, reason = %why, "index snapshot is stale; scanning the whole log");
                    *index.borrow_mut() = Index::default();
                    stale = true;
                    None
                }
            }
        };
        let opened = Log::open(
            dir,
            log_cfg,
            &mut start,
            &mut |seg: &Arc<Segment>, offset, rec| {
                let h = &rec.header;
                let expires = effective_expiry(h.expires_ms, h.created_ms, ttl);
                let rev =
                    RecordRef::new(h.revision, expires, seg.slot, offset, h.record_len(), h.op);
                index
                    .borrow_mut()
                    .apply(rec.key, rev, history, &mut removed);
                removed.clear();
                max_rev = max_rev.max(h.revision);
                Ok(())
            },
        )?;
        if stale {
            snapshot::remove(dir)?;
        }
        let mut index = index.into_inner();
        let sizes = opened
            .log
            .segments()
            .iter()
            .map(|s| (s.slot, s.data_end().saturating_sub(s.data_start)))
            .collect();
        index.recompute_dead(&sizes);
        let last = max_rev.max(opened.watermark).max(snap_rev);
        let end = opened.appender.end();
        let core = BucketCore {
            name: Arc::from(name),
            config,
            dir: dir.to_path_buf(),
            log: opened.log,
            index: RwLock::new(index),
            writer: Mutex::new(Writer {
                app: opened.appender,
                next_rev: last + 1,
                buf: Vec::new(),
                removed: Vec::new(),
            }),
            clock: Arc::clone(&opts.clock),
            dropped: AtomicBool::new(false),
            last_rev: AtomicU64::new(last),
            stats: Stats::default(),
            hub: WatchHub::new(end, last),
            compacting: Mutex::new(()),
            compact_dead_ratio: opts.compact_dead_ratio,
            segment_size: opts.segment_size,
            crash_point: std::sync::atomic::AtomicU8::new(0),
        };
        // Entries past the bucket's max age leave the index now, as they would have
        // had the store stayed open (the same rule the sweeper applies).
        core.age_out(core.clock.now_ms())?;
        Ok((core, opened.report))
    }

    pub fn check_open(&self) -> Result<()> {
        if self.dropped.load(Ordering::Acquire) {
            return Err(Error::NoBucket(self.name.to_string()));
        }
        Ok(())
    }

    pub fn now(&self) -> u64 {
        self.clock.now_ms()
    }

    /// The segments the index may point into, for reading outside the index lock.
    fn segments_of(&self, revs: impl Iterator<Item = u32>) -> HashMap<u32, Arc<Segment>> {
        let mut out = HashMap::new();
        for slot in revs {
            if let std::collections::hash_map::Entry::Vacant(v) = out.entry(slot) {
                if let Some(s) = self.log.segment(slot) {
                    v.insert(s);
                }
            }
        }
        out
    }

    /// Decodes the record of `rev` from `seg` into an entry.
    pub fn load_from(
        &self,
        seg: Option<&Arc<Segment>>,
        key: &str,
        rev: &RecordRef,
    ) -> Result<Entry> {
        let corrupt = |path: PathBuf, why: &str| Error::Corrupt {
            path,
            offset: rev.offset as u64,
            reason: why.to_string(),
        };
        let seg = seg.ok_or_else(|| {
            corrupt(
                self.dir.clone(),
                &format!("segment slot {} missing", rev.slot),
            )
        })?;
        let bytes = seg
            .bytes(rev.offset as u64, rev.len())
            .ok_or_else(|| corrupt(seg.path.clone(), "record outside segment"))?;
        match decode(bytes, seg.header.salt) {
            Decoded::Record(r) if r.header.revision == rev.revision && r.key == key.as_bytes() => {
                Ok(Entry {
                    bucket: Arc::clone(&self.name),
                    key: key.to_string(),
                    value: Bytes::copy_from_slice(r.value),
                    revision: rev.revision,
                    created_ms: r.header.created_ms,
                    op: r.header.op,
                    delta: 0,
                    expires_ms: rev.expires_ms,
                })
            }
            Decoded::Record(_) => Err(corrupt(seg.path.clone(), "index points at another record")),
            Decoded::End => Err(corrupt(
                seg.path.clone(),
                "index points past the end of data",
            )),
            Decoded::Invalid(why) => Err(corrupt(seg.path.clone(), &why.to_string())),
        }
    }

    /// Looks up a revision of `key` chosen by `pick` and loads it.
    fn read_one(
        &self,
        key: &str,
        pick: impl FnOnce(&Index) -> Option<RecordRef>,
    ) -> Result<Option<Entry>> {
        let found = {
            let ix = self.index.read();
            pick(&ix).map(|rev| (rev, self.log.segment(rev.slot)))
        };
        match found {
            Some((rev, seg)) => self.load_from(seg.as_ref(), key, &rev).map(Some),
            None => Ok(None),
        }
    }

    /// The latest entry of `key` if it is a live value.
    pub fn get(&self, key: &str) -> Result<Option<Entry>> {
        self.check_open()?;
        let found = self.read_one(key, |ix| ix.latest(key.as_bytes()).filter(|r| self.live(r)))?;
        self.missing_key_checked(key, found)
    }

    /// Whether `r` is a live value now; reads the clock only for entries that expire.
    #[inline]
    fn live(&self, r: &RecordRef) -> bool {
        r.op() == Op::Put && (r.expires_ms == 0 || !r.expired(self.now()))
    }

    /// A read that found nothing still has to tell an invalid key (`BadKey`)
    /// from a missing one. Found keys are valid: only valid keys are stored.
    fn missing_key_checked<T>(&self, key: &str, found: Option<T>) -> Result<Option<T>> {
        if found.is_none() {
            validate_key(key)?;
        }
        Ok(found)
    }

    /// Calls `f` with the live value of `key`, read in place from the log
    /// (no copy); returns `None` if the key has no live value.
    pub fn get_with<T>(&self, key: &str, f: impl FnOnce(&[u8]) -> T) -> Result<Option<T>> {
        self.check_open()?;
        let found = {
            let ix = self.index.read();
            ix.latest(key.as_bytes())
                .filter(|r| self.live(r))
                .map(|rev| (rev, self.log.segment(rev.slot)))
        };
        let Some((rev, seg)) = found else {
            validate_key(key)?;
            return Ok(None);
        };
        let seg = seg.ok_or_else(|| Error::Corrupt {
            path: self.dir.clone(),
            offset: rev.offset as u64,
            reason: format!("segment slot {} missing", rev.slot),
        })?;
        let bytes = seg.bytes(rev.offset as u64, rev.len()).unwrap_or(&[]);
        match decode(bytes, seg.header.salt) {
            Decoded::Record(r) if r.header.revision == rev.revision && r.key == key.as_bytes() => {
                Ok(Some(f(r.value)))
            }
            _ => Err(Error::Corrupt {
                path: seg.path.clone(),
                offset: rev.offset as u64,
                reason: "the index points at a record that does not check out".into(),
            }),
        }
    }

    /// Retained revision `revision` of `key` (markers included), unless expired.
    pub fn get_revision(&self, key: &str, revision: u64) -> Result<Option<Entry>> {
        self.check_open()?;
        let found = self.read_one(key, |ix| {
            ix.find(key.as_bytes(), revision)
                .filter(|r| r.expires_ms == 0 || !r.expired(self.now()))
        })?;
        self.missing_key_checked(key, found)
    }

    /// Applies writes atomically: all or none, consecutive revisions, durable together.
    pub fn write(&self, ops: &[WriteOp]) -> Result<Vec<Written>> {
        let (written, ticket) = self.write_nowait(ops)?;
        self.wait_durable(ticket)?;
        Ok(written)
    }

    /// Waits until the writes of `ticket` are durable, if the fsync policy is `Always`.
    pub fn wait_durable(&self, ticket: DurabilityTicket) -> Result<()> {
        if self.log.fsync_policy() == FsyncPolicy::Always {
            self.log.wait_durable(ticket.log_end())?;
        }
        Ok(())
    }

    /// Applies writes atomically and makes them visible without waiting for
    /// durability; returns the ticket to pass to [`BucketCore::wait_durable`].
    pub fn write_nowait(&self, ops: &[WriteOp]) -> Result<(Vec<Written>, DurabilityTicket)> {
        let (results, ticket) = self.write_inner(ops, true)?;
        // In atomic mode every result is Ok (the first failure returned above).
        let written = results.into_iter().collect::<Result<Vec<_>>>()?;
        Ok((written, ticket))
    }

    /// Applies independent writes (not a batch: each succeeds or fails on its
    /// own, in order, each a batch of one in the log) under one writer lock hold
    /// and one append, without waiting for durability. A server uses this for a
    /// pipeline of writes. Returns each write's result and the ticket to wait
    /// for.
    pub fn write_each(&self, ops: &[WriteOp]) -> Result<(Vec<Result<Written>>, DurabilityTicket)> {
        self.write_inner(ops, false)
    }

    /// Checks a write's key, value size and TTL, before any lock.
    fn validate_op(&self, op: &WriteOp) -> Result<()> {
        validate_key(&op.key)?;
        let max_value = self.config.max_value_size;
        let size = op.value.len();
        if size > record::MAX_VALUE_LEN || (max_value > 0 && size as u64 > max_value) {
            let max = if max_value > 0 {
                max_value as usize
            } else {
                record::MAX_VALUE_LEN
            };
            return Err(Error::TooLarge { size, max });
        }
        if op.ttl.is_some_and(|t| t.is_zero()) {
            return Err(Error::BadArgument("TTL must be positive".into()));
        }
        Ok(())
    }

    /// The write path. `atomic`: all or none (the first failure is returned
    /// as the error, wrapped in [`Error::Batch`] for more than one write);
    /// otherwise each write's failure is its own result.
    fn write_inner(
        &self,
        ops: &[WriteOp],
        atomic: bool,
    ) -> Result<(Vec<Result<Written>>, DurabilityTicket)> {
        self.check_open()?;
        if ops.is_empty() {
            return Ok((Vec::new(), DurabilityTicket::default()));
        }
        let several = ops.len() > 1;
        let wrap = |i: usize, e: Error| {
            if several {
                Error::Batch {
                    index: i,
                    source: Box::new(e),
                }
            } else {
                e
            }
        };
        let mut results: Vec<Result<Written>> = Vec::with_capacity(ops.len());
        let mut invalid: Vec<Option<Error>> = Vec::with_capacity(ops.len());
        for (i, op) in ops.iter().enumerate() {
            match self.validate_op(op) {
                Ok(()) => invalid.push(None),
                Err(e) if atomic => return Err(wrap(i, e)),
                Err(e) => invalid.push(Some(e)),
            }
        }

        let mut w = self.writer.lock();
        let now = self.now();
        // For keys written earlier in this call: their retained entries as the
        // call has left them (the index's, then each write with the same
        // retention rule as `Index::apply`), latest last.
        let mut overlay: HashMap<&str, Vec<Cur>> = HashMap::new();
        let history = self.config.history as usize;
        // (index into ops, record op, value, per-key expiry)
        let mut planned: Vec<(usize, Op, Bytes, u64)> = Vec::with_capacity(ops.len());
        let mut adding = 0u64;
        let used = if self.config.max_bytes > 0 {
            self.index.read().bytes()
        } else {
            0
        };
        for (i, op) in ops.iter().enumerate() {
            if let Some(e) = invalid[i].take() {
                results.push(Err(e));
                continue;
            }
            let revision = w.next_rev + planned.len() as u64;
            let retained = overlay.get(op.key.as_str()).map(Vec::as_slice);
            // A blind write (PUT, DEL, PURGE with no precondition, nothing to
            // return) alone needs no look at the key: one index search, not two.
            let blind = !several
                && !op.return_previous
                && matches!(op.kind, Kind::Put | Kind::Delete(None) | Kind::Purge);
            let cur = match retained {
                Some(list) => list.last().cloned(),
                None if blind => None,
                None => self.index.read().latest(op.key.as_bytes()).map(Cur::Stored),
            };
            let checked = self
                .check_precondition(op, cur.as_ref(), retained, now)
                .and_then(|value| {
                    let rop = op.record_op();
                    let len = record::encoded_len(op.key.len(), value.len()) as u64;
                    let max = self.config.max_bytes;
                    if rop == Op::Put && max > 0 && used + adding + len > max {
                        return Err(Error::Full {
                            used: used + adding,
                            adding: len,
                            max,
                        });
                    }
                    Ok((rop, value, len))
                });
            let (rop, value, len) = match checked {
                Ok(v) => v,
                Err(e) if atomic => return Err(wrap(i, e)),
                Err(e) => {
                    results.push(Err(e));
                    continue;
                }
            };
            let previous = match (&cur, op.return_previous) {
                (Some(c), true) if c.live(now) => Some(self.current_entry(&op.key, c)?),
                _ => None,
            };
            let key_expires = match (rop, op.ttl) {
                (Op::Put, Some(ttl)) => now.saturating_add(ttl.as_millis() as u64),
                _ => 0,
            };
            if rop == Op::Put {
                adding += len;
            }
            if several {
                let expires_ms = effective_expiry(key_expires, now, self.config.ttl_ms());
                let list = overlay.entry(&op.key).or_insert_with(|| {
                    let ix = self.index.read();
                    ix.revisions(op.key.as_bytes())
                        .into_iter()
                        .map(Cur::Stored)
                        .collect()
                });
                if rop == Op::Purge {
                    list.clear();
                }
                list.push(Cur::Batch {
                    revision,
                    op: rop,
                    expires_ms,
                    created_ms: now,
                    value: value.clone(),
                });
                let excess = list.len().saturating_sub(history);
                list.drain(..excess);
            }
            planned.push((i, rop, value, key_expires));
            results.push(Ok(Written { revision, previous }));
        }
        if planned.is_empty() {
            let end = w.app.end();
            return Ok((results, DurabilityTicket::new(end)));
        }

        let first_rev = w.next_rev;
        let Writer {
            app,
            buf,
            removed,
            next_rev,
        } = &mut *w;
        buf.clear();
        let n = planned.len();
        let total: usize = planned
            .iter()
            .map(|(i, _, value, _)| record::encoded_len(ops[*i].key.len(), value.len()))
            .sum();
        let salt = self.log.reserve(app, total as u64, first_rev - 1)?;
        for (j, (i, rop, value, key_expires)) in planned.iter().enumerate() {
            let flags = match atomic {
                true => {
                    let more = if j + 1 < n { FLAG_BATCH_MORE } else { 0 };
                    more | if j > 0 { FLAG_BATCH_CONT } else { 0 }
                }
                false => 0,
            };
            record::encode(
                buf,
                salt,
                *rop,
                flags,
                first_rev + j as u64,
                now,
                *key_expires,
                ops[*i].key.as_bytes(),
                value,
            );
        }
        let appended = self.log.append(app, buf)?;
        {
            let mut ix = self.index.write();
            let mut offset = appended.offset;
            let ttl = self.config.ttl_ms();
            for (j, (i, rop, value, key_expires)) in planned.iter().enumerate() {
                let key = ops[*i].key.as_bytes();
                let len = record::encoded_len(key.len(), value.len());
                let expires = effective_expiry(*key_expires, now, ttl);
                let rev = RecordRef::new(
                    first_rev + j as u64,
                    expires,
                    appended.slot,
                    offset,
                    len,
                    *rop,
                );
                ix.apply(key, rev, self.config.history as usize, removed);
                offset += len as u64;
            }
            removed.clear();
            *next_rev += n as u64;
            self.last_rev.store(*next_rev - 1, Ordering::Release);
            self.hub.publish(appended.end, *next_rev - 1);
        }
        drop(w);
        self.hub.wake();
        Ok((results, DurabilityTicket::new(appended.end)))
    }

    /// Checks `op`'s precondition against the key's current state; returns the value to write.
    /// `retained`: the key's retained entries as earlier writes of the same
    /// call left them, if there were any (else the index is the truth).
    fn check_precondition(
        &self,
        op: &WriteOp,
        cur: Option<&Cur>,
        retained: Option<&[Cur]>,
        now: u64,
    ) -> Result<Bytes> {
        let live = cur.is_some_and(|c| c.live(now));
        let latest = cur.map_or(0, Cur::revision);
        match &op.kind {
            Kind::Put | Kind::Delete(None) | Kind::Purge => {}
            Kind::Create => {
                if live {
                    return Err(Error::Exists);
                }
            }
            Kind::Update(expected) | Kind::Delete(Some(expected)) => {
                let ok = match (expected, cur) {
                    (0, None) => matches!(op.kind, Kind::Update(_)),
                    (0, Some(_)) => false,
                    (e, Some(_)) => *e == latest,
                    (_, None) => false,
                };
                if !ok {
                    return Err(Error::WrongRevision {
                        expected: *expected,
                        latest,
                    });
                }
            }
            Kind::Cas(expected) => {
                let matches = match (expected, cur) {
                    (None, _) => !live,
                    (Some(_), None) => false,
                    (Some(want), Some(c)) => live && self.current_entry(&op.key, c)?.value == *want,
                };
                if !matches {
                    return Err(Error::Mismatch);
                }
            }
            Kind::Revert(revision) => {
                let found = match retained {
                    Some(list) => match list.iter().find(|c| c.revision() == *revision) {
                        Some(c) if c.live(now) => Some(self.current_entry(&op.key, c)?.value),
                        _ => None,
                    },
                    None => match self.get_revision(&op.key, *revision)? {
                        Some(e) if e.op == Op::Put => Some(e.value),
                        _ => None,
                    },
                };
                return found.ok_or(Error::NotFound);
            }
        }
        Ok(op.value.clone())
    }

    /// The entry a key's current state stands for.
    fn current_entry(&self, key: &str, cur: &Cur) -> Result<Entry> {
        match cur {
            Cur::Stored(rev) => {
                let seg = self.log.segment(rev.slot);
                self.load_from(seg.as_ref(), key, rev)
            }
            Cur::Batch {
                revision,
                op,
                expires_ms,
                created_ms,
                value,
            } => Ok(Entry {
                bucket: Arc::clone(&self.name),
                key: key.to_string(),
                value: value.clone(),
                revision: *revision,
                created_ms: *created_ms,
                op: *op,
                delta: 0,
                expires_ms: *expires_ms,
            }),
        }
    }

    /// Loads many `(key, rev)` pairs chosen under one index lock hold.
    fn load_many(
        &self,
        collect: impl FnOnce(&Index) -> Vec<(String, RecordRef)>,
    ) -> Result<Vec<Entry>> {
        let (picked, segs) = {
            let ix = self.index.read();
            let picked = collect(&ix);
            let segs = self.segments_of(picked.iter().map(|(_, r)| r.slot));
            (picked, segs)
        };
        picked
            .iter()
            .map(|(k, r)| self.load_from(segs.get(&r.slot), k, r))
            .collect()
    }

    /// Live keys matching a subject pattern, in key order.
    pub fn keys(&self, pattern: &str) -> Result<Vec<String>> {
        self.check_open()?;
        let subject = Subject::new(pattern)?;
        let now = self.now();
        let ix = self.index.read();
        Ok(ix
            .prefixed(subject.literal_prefix().as_bytes())
            .filter(|(k, r)| r.live(now) && subject.matches(k.as_str()))
            .map(|(k, _)| k.as_str().to_string())
            .collect())
    }

    /// Retained entries (markers included, expired excluded) of keys matching a
    /// subject pattern, oldest first.
    pub fn history(&self, pattern: &str) -> Result<Vec<Entry>> {
        self.check_open()?;
        let subject = Subject::new(pattern)?;
        let now = self.now();
        let mut out = self.load_many(|ix| {
            let mut picked = Vec::new();
            for (k, latest) in ix.prefixed(subject.literal_prefix().as_bytes()) {
                if subject.matches(k.as_str()) {
                    ix.for_each_rev(latest, |r| {
                        if !r.expired(now) {
                            picked.push((k.as_str().to_string(), *r));
                        }
                    });
                }
            }
            picked
        })?;
        out.sort_by_key(|e| e.revision);
        Ok(out)
    }

    /// Latest live entries of keys matching a glob, in key order, at most `limit` (0: no limit).
    pub fn search(&self, glob: &Glob, limit: usize) -> Result<Vec<Entry>> {
        self.check_open()?;
        let now = self.now();
        let limit = if limit == 0 { usize::MAX } else { limit };
        let prefix = glob.literal_prefix();
        self.load_many(|ix| {
            ix.prefixed(prefix.as_bytes())
                .filter(|(k, r)| r.live(now) && glob.matches(k.as_str()))
                .take(limit)
                .map(|(k, r)| (k.as_str().to_string(), *r))
                .collect()
        })
    }

    /// Deletes (DEL markers) every live key matching a glob without waiting
    /// for durability; returns how many, and the ticket to wait for.
    pub fn delete_glob_nowait(&self, glob: &Glob) -> Result<(usize, DurabilityTicket)> {
        self.check_open()?;
        let (mut deleted, mut ticket) = (0, DurabilityTicket::default());
        let prefix = glob.literal_prefix();
        self.walk_in_chunks(
            prefix.as_bytes(),
            |_, k, r, picked| {
                if self.live(r) && glob.matches(k.as_str()) {
                    picked.push(WriteOp::delete_at(k.as_str(), r.revision));
                }
            },
            |ops| {
                let (n, t) = self.delete_unchanged(&ops)?;
                deleted += n;
                ticket = ticket.max(t);
                Ok(())
            },
        )?;
        Ok((deleted, ticket))
    }

    /// Walks the keys starting with `prefix` in order, [`SWEEP_CHUNK`] keys per
    /// index read-lock hold: `pick` sees each key and its latest revision under
    /// the lock, `act` gets each chunk's picks once the lock is released. Long
    /// walks (DELGLOB, the TTL sweep) never hold the lock for long.
    fn walk_in_chunks<T>(
        &self,
        prefix: &[u8],
        mut pick: impl FnMut(&Index, &IKey, &RecordRef, &mut Vec<T>),
        mut act: impl FnMut(Vec<T>) -> Result<()>,
    ) -> Result<()> {
        let mut cursor: Option<Vec<u8>> = None;
        loop {
            let (picked, last) = {
                let ix = self.index.read();
                let from = match &cursor {
                    Some(c) => Bound::Excluded(c.as_slice()),
                    None => Bound::Included(prefix),
                };
                let mut picked = Vec::new();
                let mut last = None;
                for (k, r) in ix
                    .range(from, Bound::Unbounded)
                    .take_while(|(k, _)| k.as_bytes().starts_with(prefix))
                    .take(SWEEP_CHUNK)
                {
                    pick(&ix, k, r, &mut picked);
                    last = Some(k.as_bytes().to_vec());
                }
                (picked, last)
            };
            let Some(last) = last else { return Ok(()) };
            if !picked.is_empty() {
                act(picked)?;
            }
            cursor = Some(last);
        }
    }

    /// Writes DEL markers for keys still at the revisions given (a key written
    /// meanwhile is left alone); returns how many and the durability ticket.
    fn delete_unchanged(&self, ops: &[WriteOp]) -> Result<(usize, DurabilityTicket)> {
        let (results, ticket) = self.write_each(ops)?;
        let mut deleted = 0;
        for r in results {
            match r {
                Ok(_) => deleted += 1,
                Err(Error::WrongRevision { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok((deleted, ticket))
    }

    /// Deletes (DEL markers) every live key matching a glob; returns how many.
    pub fn delete_glob(&self, glob: &Glob) -> Result<usize> {
        let (deleted, ticket) = self.delete_glob_nowait(glob)?;
        self.wait_durable(ticket)?;
        Ok(deleted)
    }

    /// Live entries with `from <= key < to`, at most `limit`, and the cursor of the next page.
    pub fn scan(&self, from: Option<&str>, to: Option<&str>, limit: usize) -> Result<Page> {
        self.check_open()?;
        if limit == 0 {
            return Err(Error::BadArgument("LIMIT must be at least 1".into()));
        }
        let now = self.now();
        let mut next = None;
        let entries = self.load_many(|ix| {
            let lo = from.map_or(Bound::Unbounded, |f| Bound::Included(f.as_bytes()));
            let hi = to.map_or(Bound::Unbounded, |t| Bound::Excluded(t.as_bytes()));
            if let (Some(f), Some(t)) = (from, to) {
                if f >= t {
                    return Vec::new();
                }
            }
            let mut picked = Vec::new();
            for (k, r) in ix.range(lo, hi).filter(|(_, r)| r.live(now)) {
                if picked.len() == limit {
                    next = Some(k.as_str().to_string());
                    break;
                }
                picked.push((k.as_str().to_string(), *r));
            }
            picked
        })?;
        Ok(Page { next, entries })
    }

    /// The lowest revision still retained (0 when the bucket is empty).
    pub fn first_retained_revision(&self) -> u64 {
        let ix = self.index.read();
        ix.all_revs().map(|r| r.revision).min().unwrap_or(0)
    }

    /// Time left on `key`'s value.
    pub fn ttl(&self, key: &str) -> Result<Ttl> {
        self.check_open()?;
        validate_key(key)?;
        let now = self.now();
        Ok(match self.index.read().latest(key.as_bytes()) {
            Some(r) if r.live(now) && r.expires_ms == 0 => Ttl::Forever,
            Some(r) if r.live(now) => Ttl::Remaining(r.expires_ms - now),
            _ => Ttl::Missing,
        })
    }

    /// Counters that cost nothing to read (no walk of the index): keys whose
    /// latest entry is a value (expired ones not yet swept included), values,
    /// bytes, segments, fsyncs, compactions, dead bytes.
    pub fn stats(&self) -> BucketStats {
        let ix = self.index.read();
        BucketStats {
            keys: ix.put_keys(),
            values: ix.values(),
            bytes: ix.bytes(),
            dead_bytes: ix.dead_bytes().values().sum(),
            segments: self.log.segment_count() as u64,
            fsyncs: self.log.fsyncs(),
            compactions: self.stats.compactions.load(Ordering::Relaxed),
            last_revision: self.last_rev.load(Ordering::Acquire),
        }
    }

    /// A description of the bucket.
    pub fn status(&self) -> Result<BucketStatus> {
        self.check_open()?;
        let now = self.now();
        let ix = self.index.read();
        let mut keys = 0;
        let mut first = u64::MAX;
        for (_, latest) in ix.range(Bound::Unbounded, Bound::Unbounded) {
            if latest.live(now) {
                keys += 1;
            }
            ix.for_each_rev(latest, |r| first = first.min(r.revision));
        }
        Ok(BucketStatus {
            bucket: self.name.to_string(),
            values: ix.values(),
            keys,
            bytes: ix.bytes(),
            history: self.config.history,
            ttl_ms: self.config.ttl_ms(),
            max_bytes: self.config.max_bytes,
            max_value_size: self.config.max_value_size,
            first_revision: if first == u64::MAX { 0 } else { first },
            last_revision: self.last_rev.load(Ordering::Acquire),
            segments: self.log.segment_count() as u64,
            fsyncs: self.log.fsyncs(),
            dead_bytes: ix.dead_bytes().values().sum(),
            compactions: self.stats.compactions.load(Ordering::Relaxed),
            reclaimed_bytes: self.stats.reclaimed.load(Ordering::Relaxed),
        })
    }

    /// Writes DEL markers for live values whose TTL has passed (so watchers see
    /// the expiry), and drops entries past the bucket's max age from the index.
    /// Returns the number of markers written.
    pub fn sweep_expired(&self) -> Result<usize> {
        self.check_open()?;
        let now = self.now();
        let mut markers = 0;
        if self.index.read().expiring() > 0 {
            self.walk_in_chunks(
                b"",
                |_, k, r, picked| {
                    if r.op() == Op::Put && r.expired(now) {
                        picked.push(WriteOp::delete_at(k.as_str(), r.revision));
                    }
                },
                |ops| {
                    let (n, ticket) = self.delete_unchanged(&ops)?;
                    markers += n;
                    self.wait_durable(ticket)
                },
            )?;
        }
        self.age_out(now)?;
        Ok(markers)
    }

    /// Writes an index snapshot of the bucket as it is now. The index is
    /// encoded under its read lock together with the published log end (the
    /// writer publishes under the write lock, so the two agree); the log is
    /// made durable up to that end before the snapshot is saved, so it never
    /// names records a crash could lose. Writers wait only for the encoding,
    /// never for the fsync or the file write.
    pub fn write_snapshot(&self) -> Result<()> {
        self.check_open()?;
        let (bytes, end) = {
            let ix = self.index.read();
            let (end, last_rev) = self.hub.published();
            let all = self.log.segments();
            let active = all.last().map(|s| s.slot);
            // Segments up to the one the published end is in; a newer, empty
            // one (a rotation not yet written to) is left for recovery to scan.
            let segs: Vec<(Arc<Segment>, u64)> = all
                .into_iter()
                .filter(|s| s.id.seq <= end.seq())
                .map(|s| {
                    let covered = if Some(s.slot) == active {
                        end.offset()
                    } else {
                        s.data_end()
                    };
                    (s, covered)
                })
                .collect();
            if segs.is_empty() {
                // Compaction removed every record up to the published end:
                // there is nothing a snapshot would spare recovery from reading.
                drop(ix);
                return snapshot::remove(&self.dir);
            }
            (snapshot::encode(&ix, last_rev, &segs)?, end)
        };
        self.log.wait_durable(end)?;
        snapshot::save(&self.dir, &bytes)
    }

    /// Drops from the index the oldest entries of each key that are past the
    /// bucket's max age. Older entries are always older, so this only ever cuts
    /// a prefix of a key's history — the same cut recovery makes.
    pub fn age_out(&self, now: u64) -> Result<()> {
        let ttl = self.config.ttl_ms();
        if ttl == 0 {
            return Ok(());
        }
        self.walk_in_chunks(
            b"",
            |ix, k, latest, picked| {
                ix.for_each_rev(latest, |r| {
                    if r.expired(now) {
                        picked.push((k.as_str().to_string(), *r, self.log.segment(r.slot)));
                    }
                })
            },
            |candidates| {
                // The index keeps only the earlier of the two expiries; the record
                // tells whether max age (rather than a per-key TTL) was the cause.
                let mut aged: HashMap<String, HashSet<u64>> = HashMap::new();
                for (k, r, seg) in &candidates {
                    let e = self.load_from(seg.as_ref(), k, r)?;
                    if e.created_ms.saturating_add(ttl) <= now {
                        aged.entry(k.clone()).or_default().insert(r.revision);
                    }
                }
                if !aged.is_empty() {
                    let mut ix = self.index.write();
                    let mut removed = Vec::new();
                    for (k, revs) in &aged {
                        ix.drop_oldest_while(
                            k.as_bytes(),
                            |r| revs.contains(&r.revision),
                            &mut removed,
                        );
                    }
                }
                Ok(())
            },
        )
    }
}
