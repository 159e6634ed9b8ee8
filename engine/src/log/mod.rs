//! The segment log of one bucket: appends, rotation, reads and durability.
//!
//! The on-disk format is in [`record`] (records) and [`segment`] (files); the
//! rules for reading it back after a crash are in [`recovery`].
//!
//! A [`Log`] is not tied to a bucket: any durable, append-only sequence of
//! records can use it (the cluster crate keeps its Raft log in one). Such a
//! user gives its records rising revisions (recovery refuses a revision that
//! does not rise), passes `|_| None` as the start of [`Log::open`] and ignores
//! the revision watermark and reservation it returns: a reservation only
//! decides when [`Log::reserve`] rotates early. [`Log::truncate`] cuts the log
//! back, and [`Log::delete_segments`] removes sealed segments from its start.
//!
//! After an unclean stop (see [`Opened::unclean`]) a caller that records the
//! revisions it skips (the bucket, in `lost.revs`) calls
//! [`Log::recovery_recorded`] once they are durable; until then every mark
//! written after a sync keeps saying writes were visible before durable if
//! they were before the stop. A caller that skips nothing need not call it:
//! its marks then keep that flag, which only makes a later open more careful.
//!
//! A caller may instead have the skip recorded in the active segment's mark
//! ([`Log::skip_in_mark`]: the last `n` revisions of its reservation were
//! given up), which costs no file of its own while a store opens thousands of
//! buckets. Every mark of that segment then says so ([`Opened::skipped_in_mark`]
//! gives the range back to the next open), and the log refuses to leave the
//! segment until the caller has recorded the range elsewhere and called
//! [`Log::skip_recorded`].

mod group_commit;
pub mod mark;
mod position;
pub mod record;
pub mod recovery;
pub mod segment;
#[cfg(test)]
mod skip_tests;
mod truncate;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::error::{Error, Result};
use crate::fsync::FsyncPolicy;
use crate::io::Storage;
use group_commit::GroupCommit;
use mark::{skipped_flags, FLAG_CLEAN, FLAG_EAGER, SKIPPED_MASK};
pub use position::LogPos;
use recovery::RecoveryReport;
use segment::{Segment, SegmentHeader, SegmentId};

/// Largest segment size accepted (record offsets are 32-bit).
pub const MAX_SEGMENT_SIZE: u64 = 2 << 30;
/// Revisions an active segment reserves beyond the bucket's last one when it
/// is created (see [`SegmentHeader::reserved_through`]); a write that would
/// pass the reservation rotates the log.
pub const REVISION_RESERVE: u64 = 1 << 24;

/// The default shortest time between two durability marks written after
/// fsyncs ([`LogConfig::mark_every`]).
pub const DEFAULT_MARK_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

/// Smallest segment size accepted.
pub const MIN_SEGMENT_SIZE: u64 = 4096;

/// Log settings.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Rotate to a new segment when the active one would pass this size.
    pub segment_size: u64,
    /// When appends become durable.
    pub fsync: FsyncPolicy,
    /// Keep every valid record of a damaged log instead of failing to open.
    pub repair: bool,
    /// The shortest time between two durability marks written after fsyncs
    /// (see [`mark`]); [`Options::durability_mark_interval`](crate::Options).
    pub mark_every: std::time::Duration,
    /// Where the files live (the operating system, or a simulation in tests).
    pub storage: Storage,
    /// Who makes durable what recovery read after an unclean stop.
    pub after_unclean: AfterUnclean,
}

/// Who makes durable, after an unclean stop, what recovery read (bytes a
/// crashed process wrote and never synced, still in the page cache), before
/// anything of the log is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AfterUnclean {
    /// The open: it fdatasyncs the active segment, writes the mark that says
    /// so, and fdatasyncs again.
    #[default]
    OpenSyncs,
    /// The caller, for many logs at once (a store opening its buckets): it
    /// syncs the file system (`syncfs`, once for all its buckets), then
    /// calls [`Log::synced_by_caller`], then syncs the file system again,
    /// all before it serves the log ([`Opened::awaiting_sync`]).
    CallerSyncs,
}

/// The smallest pre-write: a new bucket's first segment, and the first growth
/// of a segment that has seen little data. Pre-writing follows the write rate
/// (see [`LogConfig::growth`]), so an idle bucket costs a few KiB of disk.
const MIN_PREALLOC: u64 = 4096;

impl LogConfig {
    /// The largest pre-write step: 1/16 of the segment size, 4 KiB to 1 MiB.
    fn prealloc_chunk(&self) -> u64 {
        (self.segment_size / 16).clamp(MIN_PREALLOC, 1 << 20)
    }

    /// How far to pre-write a segment of `file_len` bytes that needs room:
    /// as much again as it holds (it doubles while it is written to), from
    /// [`MIN_PREALLOC`] up to the largest step.
    fn growth(&self, file_len: u64) -> u64 {
        file_len.clamp(MIN_PREALLOC, self.prealloc_chunk())
    }
}

/// The writer's view of the active segment; lives under the bucket's writer lock.
pub struct Appender {
    active: Arc<Segment>,
    /// Offset of the next record in the active segment.
    pos: u64,
    /// Bytes of the active segment that exist on disk (pre-written zeros included).
    file_len: u64,
    /// Bytes past `pos` that a failed write may have left behind; zeroed before the next write.
    dirty_tail: u64,
}

impl Appender {
    /// Offset of the next record in the active segment.
    pub fn pos(&self) -> u64 {
        self.pos
    }

    /// Slot of the segment being appended to.
    pub fn active_slot(&self) -> u32 {
        self.active.slot
    }

    /// The current end of the log.
    pub fn end(&self) -> LogPos {
        LogPos::new(self.active.id.seq, self.pos)
    }

    /// The segment being appended to.
    pub fn active(&self) -> &Arc<Segment> {
        &self.active
    }

    /// Whether the active segment takes a batch of `len` bytes whose last
    /// revision is `last_revision` (else [`Log::reserve`] rotates).
    pub fn has_room(&self, len: u64, last_revision: u64) -> bool {
        self.pos + len <= self.active.capacity()
            && last_revision <= self.active.header.reserved_through
    }
}

/// Where an appended batch landed.
#[derive(Debug, Clone, Copy)]
pub struct Appended {
    /// Slot of the segment written.
    pub slot: u32,
    /// Offset of the batch's first record in that segment.
    pub offset: u64,
    /// The log position just past the batch (for durability waits).
    pub end: LogPos,
}

/// The live segments: by slot for reads, by id for log order.
#[derive(Default)]
struct Table {
    by_slot: HashMap<u32, Arc<Segment>>,
    order: BTreeMap<SegmentId, u32>,
}

impl Table {
    fn insert(&mut self, seg: Arc<Segment>) {
        self.order.insert(seg.id, seg.slot);
        self.by_slot.insert(seg.slot, seg);
    }

    fn remove(&mut self, id: SegmentId) -> Option<Arc<Segment>> {
        let slot = self.order.remove(&id)?;
        self.by_slot.remove(&slot)
    }

    fn in_order(&self) -> impl Iterator<Item = &Arc<Segment>> + '_ {
        self.order
            .values()
            .filter_map(|slot| self.by_slot.get(slot))
    }
}

/// The durability marks' flag for writes visible before durable, under `policy`.
fn eager_flag(policy: FsyncPolicy) -> u64 {
    if policy == FsyncPolicy::Always {
        0
    } else {
        FLAG_EAGER
    }
}

/// The first segment of a log that has none (a new one),
/// reserving revisions past `watermark`.
fn first_segment(dir: &Path, cfg: &LogConfig, slot: u32, watermark: u64) -> Result<Arc<Segment>> {
    let header = SegmentHeader::active(
        SegmentId { seq: 1, gen: 0 },
        watermark,
        watermark + REVISION_RESERVE,
    );
    let segment = Segment::create(
        &cfg.storage,
        dir,
        slot,
        header,
        cfg.segment_size,
        MIN_PREALLOC,
        eager_flag(cfg.fsync),
    )?;
    crate::fsutil::sync_dir(&cfg.storage, dir)?;
    Ok(Arc::new(segment))
}

/// The revisions an earlier open gave up, as `mark` (the newest of `active`)
/// says: the last `n` of its reservation.
fn skipped_in_mark(mark: Option<mark::Mark>, active: &Segment) -> Result<Option<(u64, u64)>> {
    let reserved_through = active.header.reserved_through;
    Ok(match mark.map_or(0, |m| m.skipped()) {
        0 => None,
        n => Some((
            reserved_through
                .checked_sub(u64::from(n) - 1)
                .filter(|&first| first > 0)
                .ok_or_else(|| Error::Corrupt {
                    path: active.path.clone(),
                    offset: 0,
                    reason: format!(
                        "its mark gives up {n} revisions, more than it reserved ({reserved_through})"
                    ),
                })?,
            reserved_through,
        )),
    })
}

/// One bucket's log.
pub struct Log {
    dir: PathBuf,
    cfg: LogConfig,
    segments: RwLock<Table>,
    next_slot: AtomicU32,
    commit: GroupCommit,
    /// The durability mark on disk says the log was closed cleanly (cleared,
    /// with an fsync, before the first write that is visible before durable).
    clean_mark: AtomicBool,
    /// After an unclean stop under [`AfterUnclean::CallerSyncs`], until
    /// [`Log::synced_by_caller`]: the flags of the mark it writes.
    awaiting_caller_sync: parking_lot::Mutex<Option<u64>>,
    /// The revisions given up at the end of the active segment's reservation,
    /// as mark flags ([`skipped_flags`]; 0: none), kept in every mark of that
    /// segment until [`Log::skip_recorded`].
    skipped: AtomicU64,
}

/// Result of opening a log.
pub struct Opened {
    /// The log.
    pub log: Log,
    /// Where appends continue.
    pub appender: Appender,
    /// The highest revision watermark in any segment header.
    pub watermark: u64,
    /// What recovery found.
    pub report: RecoveryReport,
    /// The log was not closed cleanly (a crash, a kill, a power cut): what
    /// recovery read is made durable before anything is served (by the open,
    /// or by the caller: see `awaiting_sync`).
    pub unclean: bool,
    /// The writes before that unclean stop may have been visible before they
    /// were durable (policy `interval` or `never`, or unknown).
    pub eager_before: bool,
    /// No revision above this was given out by the process that wrote the log
    /// (the reservation of its active segment).
    pub reserved_through: u64,
    /// The revisions an earlier open gave up, as the active segment's newest
    /// mark says ([`Log::skip_in_mark`]): `(first, last)`, `last` being
    /// `reserved_through`.
    pub skipped_in_mark: Option<(u64, u64)>,
    /// The stop was unclean and the caller makes what recovery read durable
    /// ([`AfterUnclean::CallerSyncs`]): nothing of the log may be served before.
    pub awaiting_sync: bool,
}

impl Log {
    /// Opens (or creates) the log in `dir`, calling `apply` for every recovered record.
    pub fn open(
        dir: &Path,
        cfg: LogConfig,
        start: recovery::StartAt<'_>,
        apply: recovery::Apply<'_>,
    ) -> Result<Opened> {
        if !(MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&cfg.segment_size) {
            return Err(Error::Config(format!(
                "segment size {} outside {MIN_SEGMENT_SIZE}..={MAX_SEGMENT_SIZE}",
                cfg.segment_size
            )));
        }
        let next_slot = AtomicU32::new(1);
        let alloc = || next_slot.fetch_add(1, Ordering::Relaxed);
        let rec = recovery::recover(
            &cfg.storage,
            dir,
            cfg.repair,
            cfg.segment_size,
            &alloc,
            start,
            apply,
        )?;
        let mut segments = Table::default();
        rec.segments
            .iter()
            .for_each(|s| segments.insert(Arc::clone(s)));
        let (active, pos) = if let Some(last) = rec.segments.last() {
            let active = full_capacity(last, &cfg)?;
            let pos = rec.tail.max(last.data_start);
            active.set_data_end(pos);
            segments.insert(Arc::clone(&active));
            (active, pos)
        } else {
            let active = first_segment(dir, &cfg, alloc(), rec.watermark)?;
            segments.insert(Arc::clone(&active));
            let pos = active.data_start;
            (active, pos)
        };
        let file_len = active.file_len()?;
        let end = LogPos::new(active.id.seq, pos);
        let fresh = rec.segments.is_empty();
        let mark = active.mark();
        let clean = fresh || mark.is_some_and(|m| m.clean() && m.end == pos);
        // What is known durable: all of a sealed segment, the active one up to its mark.
        let durable = LogPos::new(
            active.id.seq,
            if clean {
                pos
            } else {
                mark.map_or(active.data_start, |m| m.end.min(pos))
            },
        );
        let eager_flag = eager_flag(cfg.fsync);
        let eager_before = mark.is_none_or(|m| m.eager());
        let reserved_through = active.header.reserved_through;
        // Revisions an earlier open gave up, recorded in this segment's marks
        // (kept in every mark until `Log::skip_recorded`).
        let skipped = mark.map_or(0, |m| m.flags & SKIPPED_MASK);
        let skipped_in_mark = skipped_in_mark(mark, &active)?;
        // After an unclean stop every mark keeps saying that writes were
        // visible before durable if they were, whatever the policy now, until
        // the revisions the open skips are recorded durably (in `lost.revs`,
        // written after the first mark, see `Log::recovery_recorded`, or in
        // the mark itself, see `Log::skip_in_mark`): an open after another
        // stop must find them from the mark and skip them again.
        let recovery_flags = eager_flag | skipped | if eager_before { FLAG_EAGER } else { 0 };
        let log = Log {
            dir: dir.to_path_buf(),
            commit: GroupCommit::new(
                Arc::clone(&active),
                end,
                durable,
                if clean {
                    eager_flag | skipped
                } else {
                    recovery_flags
                },
                cfg.mark_every,
            ),
            segments: RwLock::new(segments),
            next_slot: AtomicU32::new(next_slot.load(Ordering::Relaxed)),
            clean_mark: AtomicBool::new(mark.is_some_and(|m| m.clean())),
            awaiting_caller_sync: parking_lot::Mutex::new(None),
            skipped: AtomicU64::new(skipped),
            cfg,
        };
        // A process crash leaves written but unsynced bytes in the page
        // cache, and recovery read them: they are made durable before they are
        // served, or a power cut then could take back what readers saw.
        let awaiting_sync = !clean && log.cfg.after_unclean == AfterUnclean::CallerSyncs;
        if awaiting_sync {
            *log.awaiting_caller_sync.lock() = Some(recovery_flags);
        } else if !clean {
            log.commit.sync_with_mark(recovery_flags)?;
        }
        let appender = Appender {
            active,
            pos,
            file_len,
            dirty_tail: 0,
        };
        Ok(Opened {
            log,
            appender,
            watermark: rec.watermark,
            report: rec.report,
            unclean: !clean,
            eager_before,
            reserved_through,
            skipped_in_mark,
            awaiting_sync,
        })
    }

    /// After an unclean stop under [`AfterUnclean::CallerSyncs`], once the
    /// caller has synced the file system: what recovery read is durable.
    /// Records it, and writes the active segment's mark that says so (with
    /// the flags the open would have used), which the caller's next
    /// sync of the file system makes durable. The mark comes after the data
    /// are durable: one that reached the disk before them would vouch for
    /// bytes a power cut took back.
    ///
    /// Fails (and changes nothing) on a log that does not await it: its open
    /// found a clean stop, or synced what it read itself, or this was called
    /// already.
    pub fn synced_by_caller(&self) -> Result<()> {
        let Some(flags) = self.awaiting_caller_sync.lock().take() else {
            return Err(Error::Internal(format!(
                "the log in {} awaits no sync by its opener",
                self.dir.display()
            )));
        };
        self.commit.synced_elsewhere(flags)
    }

    /// After an unclean stop, the revisions its open skipped are recorded
    /// durably (in `lost.revs`, or in the active segment's mark: see
    /// [`Log::skip_in_mark`]), or it skipped none: marks from now on carry
    /// this log's own policy's flags, and the count of skipped revisions while
    /// that mark is their only record. Until then they keep the flag saying
    /// that writes were visible before durable, if they were before the stop.
    pub fn recovery_recorded(&self) {
        self.commit.set_mark_flags(self.active_flags());
    }

    /// After an unclean stop under [`AfterUnclean::CallerSyncs`], before
    /// [`Log::synced_by_caller`]: the mark that call writes (and every later
    /// mark of the active segment) says that the last `count` revisions of the
    /// active segment's reservation were given up. The caller's next sync of
    /// the file system makes that durable with the mark. The log then refuses
    /// to rotate until [`Log::skip_recorded`].
    ///
    /// Fails (and changes nothing) on a log that does not await its opener's
    /// sync, or for a count of 0.
    pub fn skip_in_mark(&self, count: u32) -> Result<()> {
        let mut awaiting = self.awaiting_caller_sync.lock();
        let (Some(flags), true) = (awaiting.as_mut(), count > 0) else {
            return Err(Error::Internal(format!(
                "the log in {} cannot record {count} skipped revisions in its mark",
                self.dir.display()
            )));
        };
        let skipped = skipped_flags(count);
        *flags = (*flags & !SKIPPED_MASK) | skipped;
        self.skipped.store(skipped, Ordering::Release);
        Ok(())
    }

    /// The revisions the active segment's mark says were given up are
    /// recorded durably elsewhere (the bucket's `lost.revs`): marks from now
    /// on carry this log's own policy's flags only, and the log may rotate.
    pub fn skip_recorded(&self) {
        self.skipped.store(0, Ordering::Release);
        self.commit.set_mark_flags(self.eager_flag());
    }

    /// The directory of this log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the files live.
    pub fn storage(&self) -> &Storage {
        &self.cfg.storage
    }

    /// The fsync policy.
    pub fn fsync_policy(&self) -> FsyncPolicy {
        self.cfg.fsync
    }

    /// A new slot number for a segment about to be opened.
    pub fn alloc_slot(&self) -> u32 {
        self.next_slot.fetch_add(1, Ordering::Relaxed)
    }

    /// The live segment in `slot`.
    #[inline]
    pub fn segment(&self, slot: u32) -> Option<Arc<Segment>> {
        self.segments.read().by_slot.get(&slot).cloned()
    }

    /// Starts loading into the CPU cache the first `max` bytes of each record
    /// of `records` (segment slot, offset, length) that lies in a live
    /// segment: one hold of the segment table for them all. Only a hint.
    pub fn prefetch_records(
        &self,
        records: impl IntoIterator<Item = (u32, u64, usize)>,
        max: usize,
    ) {
        let t = self.segments.read();
        for (slot, offset, len) in records {
            if let Some(seg) = t.by_slot.get(&slot) {
                seg.prefetch(offset, len, max);
            }
        }
    }

    /// The live segment with this `seq` (the newest generation).
    pub fn segment_by_seq(&self, seq: u64) -> Option<Arc<Segment>> {
        let t = self.segments.read();
        let lo = SegmentId { seq, gen: 0 };
        let hi = SegmentId { seq, gen: u32::MAX };
        t.order
            .range(lo..=hi)
            .next_back()
            .and_then(|(_, slot)| t.by_slot.get(slot).cloned())
    }

    /// The first live segment whose `seq` is greater than `seq`.
    pub fn segment_after(&self, seq: u64) -> Option<Arc<Segment>> {
        let t = self.segments.read();
        let from = SegmentId {
            seq: seq + 1,
            gen: 0,
        };
        t.order
            .range(from..)
            .next()
            .and_then(|(_, slot)| t.by_slot.get(slot).cloned())
    }

    /// All live segments in log order.
    pub fn segments(&self) -> Vec<Arc<Segment>> {
        self.segments.read().in_order().cloned().collect()
    }

    /// Number of live segments.
    pub fn segment_count(&self) -> usize {
        self.segments.read().order.len()
    }

    /// Makes room for a batch of `len` bytes whose last revision is
    /// `last_revision`, rotating to a new segment if the active one cannot hold
    /// it or has not reserved that revision, and returns the salt its records
    /// must be encoded with. `watermark` is the bucket's last revision before
    /// the batch, written into the header of a new segment.
    pub fn reserve(
        &self,
        app: &mut Appender,
        len: u64,
        watermark: u64,
        last_revision: u64,
    ) -> Result<u32> {
        self.commit.check()?;
        if !app.has_room(len, last_revision) {
            self.rotate(app, watermark, len, last_revision)?;
        }
        Ok(app.active.header.salt)
    }

    /// Appends a batch encoded for the salt [`Log::reserve`] returned.
    pub fn append(&self, app: &mut Appender, batch: &[u8]) -> Result<Appended> {
        self.commit.check()?;
        let len = batch.len() as u64;
        if app.pos + len > app.active.capacity() {
            return Err(Error::Internal(format!(
                "a batch of {len} bytes was appended without reserving room"
            )));
        }
        if app.dirty_tail > 0 {
            let to = (app.pos + app.dirty_tail).min(app.file_len);
            app.active
                .file()?
                .write_zeros(app.pos, to)
                .map_err(|e| Error::io(&app.active.path, e))?;
            app.dirty_tail = 0;
        }
        if app.pos + len > app.file_len {
            let grow_to = (app.pos + len)
                .max(app.file_len + self.cfg.growth(app.file_len))
                .min(app.active.capacity());
            let grown = app.active.file().and_then(|f| {
                f.write_zeros(app.file_len, grow_to)
                    .map_err(|e| Error::io(&app.active.path, e))
            });
            if let Err(e) = grown {
                app.dirty_tail = grow_to - app.pos;
                return Err(e);
            }
            app.file_len = grow_to;
        }
        if self.cfg.fsync == FsyncPolicy::Always {
            // Opened first: an open that fails (no descriptor) has written nothing.
            let file = app.active.file()?;
            if let Err(e) = app.active.write_through_file(&file, batch, app.pos) {
                // Part of the batch may be in the file (a short write): zeroed at
                // once, so that no later sync (a clean close's) makes whole records
                // of a failed write durable for an open to apply. Another thread's
                // group-commit fsync may have run in between: the write is in doubt
                // either way. If the zeroing fails, the next append zeroes first.
                let to = (app.pos + len).min(app.file_len);
                if file.write_zeros(app.pos, to).is_err() {
                    app.dirty_tail = len;
                }
                return Err(Error::in_doubt(Error::io(&app.active.path, e)));
            }
        } else if let Err(e) = app.active.write_at(batch, app.pos) {
            // A copy into the mapping is refused before anything is copied.
            return Err(Error::io(&app.active.path, e));
        }
        let offset = app.pos;
        app.pos += len;
        app.active.set_data_end(app.pos);
        let end = app.end();
        self.commit.note_written(end);
        Ok(Appended {
            slot: app.active.slot,
            offset,
            end,
        })
    }

    /// Seals the active segment (cut to its data, then fsynced through group
    /// commit so that a failure poisons the log) and starts a new one. A
    /// sealed segment is durable whole, its length included, before the next
    /// one exists.
    fn rotate(
        &self,
        app: &mut Appender,
        watermark: u64,
        need: u64,
        last_revision: u64,
    ) -> Result<()> {
        self.refuse_while_skip_unrecorded("rotate")?;
        let old = Arc::clone(&app.active);
        // Held until the seal's fsync: opened once, so that the fsync cannot
        // fail for want of a descriptor, which would poison the log.
        let old_file = old.file()?;
        old_file
            .set_len(app.pos)
            .map_err(|e| Error::io(&old.path, e))?;
        app.file_len = app.pos;
        // A sync of its own, not only a wait for the data's: data already
        // durable (as under `always` they often are) get no sync at
        // all, and the cut would stay in the page cache. An fsync: Linux's
        // fdatasync carries a new length too, but POSIX promises only what
        // reading the data back needs. A cut undone by a power cut loses
        // nothing (zeros follow the data), but the index snapshot, which
        // names each sealed segment's length, would no longer match.
        self.commit
            .sync_all_then(|| old_file.sync_all().map_err(|e| Error::io(&old.path, e)))?;
        drop(old_file);
        let header = SegmentHeader::active(
            SegmentId {
                seq: old.id.seq + 1,
                gen: 0,
            },
            watermark,
            watermark.max(last_revision) + REVISION_RESERVE,
        );
        let capacity = self.cfg.segment_size.max(header.data_start() + need);
        if capacity > u64::from(u32::MAX) {
            return Err(Error::BadArgument(format!(
                "a batch of {need} bytes is too large for one segment"
            )));
        }
        // Pre-written as the old segment would have grown next: the largest
        // step for a segment that filled up, a few KiB for one that held little
        // (a rotation for revisions, after an unclean stop).
        let seg = Arc::new(Segment::create(
            &self.cfg.storage,
            &self.dir,
            self.alloc_slot(),
            header,
            capacity,
            self.cfg.growth(app.pos),
            self.eager_flag(),
        )?);
        // From its rename on, the new segment is where the log ends on disk:
        // the old one must never be written again (a record torn there by a
        // power cut would be corruption in a sealed segment, not a torn tail).
        // So a directory sync that fails poisons the log, as a failed fsync does.
        // Its length is asked before the new segment is published (once group
        // commit syncs it, the old one must no longer be written), and within
        // the held sync: a failure to read it poisons too.
        let mut file_len = 0;
        self.commit.sync_all_then(|| {
            crate::fsutil::sync_dir(&self.cfg.storage, &self.dir)?;
            file_len = seg.file_len()?;
            Ok(())
        })?;
        self.segments.write().insert(Arc::clone(&seg));
        self.commit
            .rotated(LogPos::new(seg.id.seq, seg.data_start), Arc::clone(&seg));
        tracing::debug!(segment = %seg.path.display(), "rotated to a new segment");
        app.file_len = file_len;
        app.pos = seg.data_start;
        app.active = seg;
        Ok(())
    }

    /// Waits until everything below `pos` is durable (group commit).
    pub fn wait_durable(&self, pos: LogPos) -> Result<()> {
        self.commit.wait_durable(pos)
    }

    /// Everything below this position is durable.
    pub fn durable_end(&self) -> LogPos {
        self.commit.durable_end()
    }

    /// Makes everything durable and marks the log closed cleanly (two fsyncs),
    /// unless the segment's newest mark already says so: a log opened clean and
    /// closed without a write in between costs no write and no fsync (a store
    /// of ten thousand idle buckets would spend seconds closing otherwise).
    pub fn close_clean(&self) -> Result<()> {
        let flags = FLAG_CLEAN | self.active_flags();
        self.commit.check()?;
        if self.marked_clean_at_end(flags) {
            return Ok(());
        }
        self.commit.sync_with_mark(flags)?;
        self.clean_mark.store(true, Ordering::Release);
        Ok(())
    }

    /// Whether nothing is waiting for a sync and the newest mark of the segment
    /// where the log ends says `flags` at that end: what a clean close would
    /// write is there already. (That mark is durable, or was read back from the
    /// page cache after a process died between writing it and its fsync; losing
    /// it to a power cut only makes the next open treat the stop as unclean.)
    fn marked_clean_at_end(&self, flags: u64) -> bool {
        if self.commit.dirty() {
            return false;
        }
        let end = self.commit.durable_end();
        self.segment_by_seq(end.seq()).is_some_and(|active| {
            active
                .mark()
                .is_some_and(|m| m.flags == flags && m.end == end.offset())
        })
    }

    /// Before the first write that is visible before it is durable: clears a
    /// clean mark on disk (with an fsync), so that a crash before the next
    /// sync is seen as unclean and the revisions it may take back are never
    /// given again. Nothing to do under `Always`, or once done.
    pub fn clear_clean_mark(&self) -> Result<()> {
        if self.eager_flag() != 0 && self.clean_mark.load(Ordering::Acquire) {
            self.commit.sync_with_mark(self.active_flags())?;
            self.clean_mark.store(false, Ordering::Release);
        }
        Ok(())
    }

    fn eager_flag(&self) -> u64 {
        eager_flag(self.cfg.fsync)
    }

    /// Fails while the active segment's mark is the only record of revisions
    /// an open gave up ([`Log::skip_in_mark`]): leaving that segment
    /// (`rotate`) or rewriting its mark (`truncate`) would lose them.
    fn refuse_while_skip_unrecorded(&self, what: &str) -> Result<()> {
        if self.skipped.load(Ordering::Acquire) == 0 {
            return Ok(());
        }
        Err(Error::Internal(format!(
            "the log in {} cannot {what}: its active segment's mark is the only record of revisions an open skipped",
            self.dir.display()
        )))
    }

    /// The flags of this log's marks once recovery is recorded: its policy's,
    /// and the revisions given up at the end of the active segment's
    /// reservation until they are recorded elsewhere.
    fn active_flags(&self) -> u64 {
        self.eager_flag() | self.skipped.load(Ordering::Acquire)
    }

    /// Fails if a sync of this log has failed (the log is poisoned).
    pub fn check(&self) -> Result<()> {
        self.commit.check()
    }

    /// Makes everything appended so far durable.
    pub fn sync(&self) -> Result<()> {
        self.commit.sync_all()
    }

    /// How long this log's fsyncs took since open.
    pub fn fsync_latencies(&self) -> crate::latency::Latencies {
        self.commit.latencies()
    }

    /// fdatasync calls for this log since open.
    pub fn fsyncs(&self) -> u64 {
        self.commit.fsyncs()
    }

    /// Whether there are appended bytes not yet synced.
    pub fn dirty(&self) -> bool {
        self.commit.dirty()
    }

    /// Adds a compaction output to the table (beside the segments it replaces).
    pub fn add_segment(&self, seg: Arc<Segment>) {
        self.segments.write().insert(seg);
    }

    /// Removes segments from the table (after compaction moved their records).
    pub fn remove_segments(&self, ids: &[SegmentId]) -> Vec<Arc<Segment>> {
        let mut t = self.segments.write();
        ids.iter().filter_map(|id| t.remove(*id)).collect()
    }

    /// Deletes sealed segments (from the start of a log that no longer needs
    /// them), in the order given: out of the table, their files removed, then
    /// the directory synced. The active segment is refused.
    pub fn delete_segments(&self, app: &Appender, ids: &[SegmentId]) -> Result<()> {
        if ids.contains(&app.active.id) {
            return Err(Error::BadArgument(
                "the active segment cannot be deleted".into(),
            ));
        }
        if ids.is_empty() {
            return Ok(());
        }
        for seg in self.remove_segments(ids) {
            crate::fsutil::remove_if_exists(&self.cfg.storage, &seg.path)?;
        }
        crate::fsutil::sync_dir(&self.cfg.storage, &self.dir)
    }

    /// The sealed segments (every live one but the active), in log order.
    pub fn sealed_segments(&self) -> Vec<Arc<Segment>> {
        let t = self.segments.read();
        let mut all: Vec<Arc<Segment>> = t.in_order().cloned().collect();
        all.pop();
        all
    }

    /// Seals the active segment now (if it holds any record) so compaction can take it.
    pub fn seal_active(&self, app: &mut Appender, watermark: u64) -> Result<()> {
        if app.pos > app.active.data_start {
            self.rotate(app, watermark, 0, watermark)?;
        }
        Ok(())
    }
}

/// The last segment of a recovered log, mapped at full capacity so that appends
/// can grow into it. Recovery mapped it so, unless the segment it meant to (the
/// newest file) was superseded or moved aside; then it is re-mapped here (same
/// slot: the index already points at it). Such a segment was sealed, and may be
/// a hard link a checkpoint shares with its source (see `checkpoint.rs`):
/// neither may write into a shared file, so it gets a file of its own first.
fn full_capacity(last: &Arc<Segment>, cfg: &LogConfig) -> Result<Arc<Segment>> {
    if last.capacity() >= cfg.segment_size {
        return Ok(Arc::clone(last));
    }
    let bytes = std::fs::read(&last.path).map_err(|e| Error::io(&last.path, e))?;
    crate::fsutil::write_atomic(&cfg.storage, &last.path, &bytes)?;
    let segment = Segment::open(&cfg.storage, &last.path, last.slot, Some(cfg.segment_size))?;
    Ok(Arc::new(segment))
}
