//! Compaction: rewriting sealed segments to keep only what the index retains.
//!
//! The index is the single source of truth for what is retained (the last
//! `history` entries per key, nothing before a PURGE, nothing aged out); a
//! record is copied only if the index still points at it. Copies keep their
//! revision and creation time. A pass over a run of consecutive sealed
//! segments:
//!
//! 1. scans them, checking each record against the index, and copies the
//!    retained ones into a new segment (`seq` of the first input, next
//!    generation) whose header lists the inputs it supersedes, under a
//!    temporary name, through a buffer of [`SPILL_BYTES`]. The check is a
//!    lookup of the record's key in short read-lock holds; for a run that is
//!    large next to the index, a list of the retained revisions in the run,
//!    made by one scan of the index's entries in chunks, walked beside the
//!    records (no lookup);
//! 2. makes the log durable up to what the copy looked at, then fsyncs the
//!    output, renames it into place and fsyncs the directory;
//! 3. adds it to the segment table beside the inputs and moves index entries
//!    to it in chunks, each by its entry slot, not by a lookup (readers holding
//!    old locations still read valid bytes: the inputs stay mapped while
//!    anyone holds them);
//! 4. removes the inputs from the table and deletes their files.
//!
//! A crash at any point leaves either the inputs (the output never got its
//! final name) or a complete output that recovery finishes the job with (it
//! deletes whatever the output supersedes). Nothing is duplicated or
//! resurrected: an input survives only while its output does not exist.
//! Writers never wait on this I/O; they only meet the short index lock holds.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::BucketCore;
use crate::error::{Error, Result};
use crate::fsutil::{remove_if_exists, sync_dir};
use crate::index::Placed;
use crate::io::Storage;
use crate::log::record::{self, decode, Decoded};
use crate::log::segment::{Segment, SegmentHeader, SegmentId, TmpSegment};

/// A retained record copied into the output, to be relocated in the index.
struct Copied {
    /// Its revision, where it was (segment slot and offset), and its key's
    /// entry in the index.
    placed: Placed,
    /// Its offset in the output segment.
    to_offset: u32,
    /// Its length.
    len: u64,
}

/// Records an output buffers before it writes to its file. Builds for tests
/// (feature `failpoints`) write 4 KiB pieces, so that the small segments of
/// the power-cut and crash tests have outputs written in several pieces, as a
/// server's are.
///
/// Each write but the last ends at a multiple of this size in the file (the
/// rest stays buffered), so every whole 2 MiB of the output reaches the file
/// in one aligned write. A file system with large folios (ext4 and XFS on
/// recent Linux) then caches each such piece as one 2 MiB folio, which the
/// kernel maps with one huge page where the segment is read through its
/// mapping: a random read misses the TLB far less (GET on a million compacted
/// keys: the record read took a fifth less of the server's time). Nothing
/// changes where the file system declines.
const SPILL_BYTES: usize = if cfg!(any(test, feature = "failpoints")) {
    4 << 10
} else {
    2 << 20
};

/// The output segment of a pass, as it is being filled. Its records go to a
/// temporary file [`SPILL_BYTES`] at a time: a buffer as large as the segment
/// would be fresh memory for every pass, which the kernel must zero.
struct Output<'a> {
    storage: &'a Storage,
    dir: &'a Path,
    header: &'a SegmentHeader,
    /// The file, from the first records written.
    file: Option<TmpSegment>,
    /// Bytes of records in the file.
    written: u64,
    /// Records not yet in the file.
    body: Vec<u8>,
    /// Each copied record, in order.
    copies: Vec<Copied>,
    /// The last tag record of the inputs (see [`Output::keep_newest_tag`]).
    last_tag: Option<Vec<u8>>,
}

impl<'a> Output<'a> {
    fn new(storage: &'a Storage, dir: &'a Path, header: &'a SegmentHeader) -> Output<'a> {
        Output {
            storage,
            dir,
            header,
            file: None,
            written: 0,
            body: Vec::new(),
            copies: Vec::new(),
            last_tag: None,
        }
    }

    /// Bytes of records in the output.
    fn len(&self) -> u64 {
        self.written + self.body.len() as u64
    }

    /// Copies the record `bytes` (the revision `placed` names, at its place in
    /// an input) as a batch of its own: batches were applied long ago.
    fn add(&mut self, placed: Placed, bytes: &[u8]) -> Result<()> {
        let to_offset = segment_offset(self.header.data_start() + self.len())?;
        self.push_standalone(bytes);
        self.copies.push(Copied {
            placed,
            to_offset,
            len: bytes.len() as u64,
        });
        if self.body.len() >= SPILL_BYTES {
            self.spill(false)?;
        }
        Ok(())
    }

    /// Appends a record rewritten as a batch of its own under the output's salt.
    fn push_standalone(&mut self, bytes: &[u8]) {
        let start = self.body.len();
        self.body.extend_from_slice(bytes);
        if let Some(copy) = self.body.get_mut(start..) {
            record::make_standalone(copy, self.header.salt);
        }
    }

    /// Writes the buffered records that end at the last multiple of
    /// [`SPILL_BYTES`] in the file (all of them if `all`), creating the file
    /// first.
    fn spill(&mut self, all: bool) -> Result<()> {
        let take = if all {
            self.body.len()
        } else {
            let start = self.header.data_start() + self.written;
            let end = start + self.body.len() as u64;
            let aligned = end - end % SPILL_BYTES as u64;
            usize::try_from(aligned.saturating_sub(start)).map_or(0, |n| n.min(self.body.len()))
        };
        if take == 0 {
            return Ok(());
        }
        let file = match &mut self.file {
            Some(file) => file,
            None => self
                .file
                .insert(TmpSegment::create(self.storage, self.dir, self.header)?),
        };
        file.append(self.body.get(..take).unwrap_or_default())?;
        self.written += take as u64;
        self.body.drain(..take);
        Ok(())
    }

    /// Writes what is left and syncs the file; returns its temporary path.
    fn finish(&mut self) -> Result<PathBuf> {
        self.spill(true)?;
        match self.file.take() {
            Some(file) => file.finish(),
            None => TmpSegment::create(self.storage, self.dir, self.header)?.finish(),
        }
    }
}

impl Output<'_> {
    /// Ends the output with the last tag record of its inputs if that is the
    /// bucket's newest replication tag (`newest`): the newest tag must outlive
    /// the pass, an older one is superseded by a later tag record. Returns
    /// the bytes added. Tag records are outside the rising-revision rule, so
    /// it may follow records with higher revisions.
    fn keep_newest_tag(&mut self, newest: Option<&[u8]>) -> u64 {
        let Some(bytes) = self.last_tag.take() else {
            return 0;
        };
        let tag = bytes.get(record::HEADER_LEN..).unwrap_or_default();
        if newest != Some(tag) {
            return 0;
        }
        self.push_standalone(&bytes);
        bytes.len() as u64
    }
}

/// A byte offset in a segment as the index holds it (32 bits: a segment is
/// at most 4 GiB, see `Log::rotate`).
fn segment_offset(at: u64) -> Result<u32> {
    u32::try_from(at).map_err(|_| Error::Internal(format!("segment offset {at} over 32 bits")))
}

/// How many records or relocations one lock hold covers.
const CHUNK: usize = 4096;

/// How many index entries one lock hold of the liveness scan covers.
const SCAN_CHUNK: u32 = 1 << 16;

/// A pass scans the whole index for what is retained in its run (instead of
/// a hash lookup per record) when the run holds at least this many bytes per
/// index entry. A scan reads each entry once, in order (a few ns each); a
/// lookup is a cache miss or more per record: from a run of a sixteenth of
/// the index's size in records up, the scan is the cheaper, and it never
/// costs more than reading the run itself.
const SCAN_BYTES_PER_ENTRY: u64 = 16;

/// How a pass tells whether a record is retained.
enum Liveness {
    /// A lookup of its key in the index.
    Lookup,
    /// A list of every retained revision in the run, by segment slot and
    /// offset, from one scan of the index.
    Listed(Vec<Placed>),
}

impl Liveness {
    /// The listed revisions in segment `slot`, to walk in offset order
    /// (nothing for [`Liveness::Lookup`]).
    fn in_segment(&self, slot: u32) -> Listed<'_> {
        let list: &[Placed] = match self {
            Liveness::Lookup => &[],
            Liveness::Listed(all) => {
                let lo = all.partition_point(|p| p.slot < slot);
                let hi = all.partition_point(|p| p.slot <= slot);
                all.get(lo..hi).unwrap_or_default()
            }
        };
        Listed { list, next: 0 }
    }
}

/// A cursor over one segment's listed revisions, met in offset order.
struct Listed<'a> {
    list: &'a [Placed],
    next: usize,
}

impl Listed<'_> {
    /// The listed revision at `at`, if any; records are asked for in offset
    /// order, so the cursor only moves forward.
    fn take(&mut self, at: (u32, u32)) -> Option<Placed> {
        while let Some(p) = self.list.get(self.next) {
            if p.at() >= at {
                break;
            }
            self.next += 1;
        }
        let p = self.list.get(self.next).filter(|p| p.at() == at).copied();
        if p.is_some() {
            self.next += 1;
        }
        p
    }
}

/// Stops a compaction pass at `$point` as if the process had crashed there,
/// when a test asked for it (feature `failpoints`); nothing otherwise.
macro_rules! crash_point {
    ($core:expr, $point:ident) => {
        #[cfg(any(test, feature = "failpoints"))]
        $core.crash_if(CrashPoint::$point)?;
    };
}

/// What a compaction pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactionReport {
    /// Segments rewritten.
    pub segments_in: usize,
    /// Segments written.
    pub segments_out: usize,
    /// Records copied.
    pub records_kept: u64,
    /// Records dropped.
    pub records_dropped: u64,
    /// Bytes of the inputs' files.
    pub bytes_before: u64,
    /// Bytes of the outputs' files.
    pub bytes_after: u64,
    /// Runs of segments whose retained records were found by one scan of
    /// the index (the others looked each record's key up).
    pub runs_listed: usize,
}

impl CompactionReport {
    /// Bytes of disk given back.
    pub fn reclaimed(&self) -> u64 {
        self.bytes_before.saturating_sub(self.bytes_after)
    }
}

/// Steps of a compaction pass at which a test can make it stop as if the
/// process had crashed there (feature `failpoints`; see
/// [`crate::Bucket::set_compaction_crash_point`]).
#[cfg(any(test, feature = "failpoints"))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CrashPoint {
    /// Never stop.
    None = 0,
    /// The output is written under its temporary name.
    AfterTmpWritten = 1,
    /// The output has its final name; the inputs are still there.
    AfterInstall = 2,
    /// The index points at the output; the input files are still there.
    AfterRelocate = 3,
    /// The first input file is deleted, the others not.
    AfterFirstDelete = 4,
}

#[cfg(any(test, feature = "failpoints"))]
impl BucketCore {
    /// Makes the next compaction passes stop at `point` as if crashed.
    pub(crate) fn set_crash_point(&self, point: CrashPoint) {
        self.crash_point.store(point as u8, Ordering::Relaxed);
    }

    /// Fails with [`Error::InjectedCrash`] if the passes are to stop at `point`.
    fn crash_if(&self, point: CrashPoint) -> Result<()> {
        if self.crash_point.load(Ordering::Relaxed) == point as u8 {
            return Err(Error::InjectedCrash(format!("{point:?}")));
        }
        Ok(())
    }
}

impl BucketCore {
    /// Whether some sealed segment has passed the dead-bytes threshold.
    pub(crate) fn needs_compaction(&self) -> bool {
        if self.compaction_halted.lock().is_some() {
            return false;
        }
        let sealed = self.log.sealed_segments();
        let ix = self.index.read();
        sealed
            .iter()
            .any(|s| self.qualifies(s, ix.dead_bytes().get(&s.slot).copied().unwrap_or(0), false))
    }

    fn qualifies(&self, seg: &Segment, dead: u64, force: bool) -> bool {
        let size = seg.data_end().saturating_sub(seg.data_start);
        dead > 0 && (force || size == 0 || dead as f64 >= self.compact_dead_ratio * size as f64)
    }

    /// Runs a compaction pass. With `force`, the active segment is sealed first
    /// (if it has dead records) and every sealed segment with any dead record
    /// is rewritten; otherwise only those past the dead-bytes threshold.
    pub(crate) fn compact(&self, force: bool) -> Result<CompactionReport> {
        let _pass = self.compacting.lock();
        // Under the pass's lock: a drop waits for it, and a pass after the drop
        // must not write into a directory of the same name.
        self.check_open()?;
        self.log.check()?;
        if let Some(why) = self.compaction_halted.lock().clone() {
            return Err(Error::Internal(format!(
                "compaction of bucket {} is halted until the store is reopened: {why}",
                self.name
            )));
        }
        if force {
            let active_dead = {
                let w = self.writer.lock();
                let slot = w.app.active_slot();
                drop(w);
                self.index
                    .read()
                    .dead_bytes()
                    .get(&slot)
                    .copied()
                    .unwrap_or(0)
            };
            if active_dead > 0 {
                let mut w = self.writer.lock();
                let watermark = w.next_rev - 1;
                self.file_lost_revisions(&mut w)?;
                self.log.seal_active(&mut w.app, watermark)?;
            }
        }
        let sealed = self.log.sealed_segments();
        // Every record of a sealed segment is durable; those not visible yet
        // must be in the index before the pass decides what is retained.
        self.publish_durable();
        let runs: Vec<Vec<Arc<Segment>>> = {
            let ix = self.index.read();
            let mut runs: Vec<Vec<Arc<Segment>>> = Vec::new();
            let mut current: Vec<Arc<Segment>> = Vec::new();
            let mut kept = 0u64;
            for seg in sealed {
                let dead = ix.dead_bytes().get(&seg.slot).copied().unwrap_or(0);
                let live = (seg.data_end() - seg.data_start).saturating_sub(dead);
                let qualifies = self.qualifies(&seg, dead, force);
                // A run ends at a segment that stays, or when its output would outgrow a segment.
                let ends_run = !qualifies || kept + live > self.segment_size;
                if ends_run && !current.is_empty() {
                    runs.push(std::mem::take(&mut current));
                    kept = 0;
                }
                if qualifies {
                    kept += live;
                    current.push(seg);
                }
            }
            if !current.is_empty() {
                runs.push(current);
            }
            runs
        };
        let mut report = CompactionReport::default();
        let total = runs.iter().map(Vec::len).sum::<usize>();
        for run in runs {
            self.compact_run(&run, &mut report)?;
            tracing::info!(
                bucket = %self.name,
                segments_done = report.segments_in,
                segments_total = total,
                bytes_reclaimed = report.reclaimed(),
                "compaction progress"
            );
        }
        if report.segments_in > 0 {
            self.compaction_stats.passes.fetch_add(1, Ordering::Relaxed);
            self.compaction_stats
                .reclaimed
                .fetch_add(report.reclaimed(), Ordering::Relaxed);
            // The old snapshot names segments that are gone (open would find it
            // stale and scan the whole log): replace it, at most every
            // SNAPSHOT_REFRESH (the background thread writes a deferred one).
            self.snapshot_after_compaction()?;
        }
        Ok(report)
    }

    /// Compacts one run of consecutive sealed segments into one output.
    fn compact_run(&self, run: &[Arc<Segment>], report: &mut CompactionReport) -> Result<()> {
        let ids: Vec<SegmentId> = run.iter().map(|s| s.id).collect();
        let Some(first) = ids.first() else {
            return Ok(());
        };
        // The output supersedes its inputs, whatever they superseded that is
        // still on disk (a deletion that failed), and the orphans of passes
        // with nothing to keep: otherwise, once an input is gone, such a file
        // would be replayed as live after newer revisions.
        let mut supersedes = ids.clone();
        let orphans = self.orphans.lock().clone();
        for old in run
            .iter()
            .flat_map(|seg| &seg.header.supersedes)
            .chain(&orphans)
        {
            if !supersedes.contains(old) && self.dir.join(old.file_name()).exists() {
                supersedes.push(*old);
            }
        }
        let header = SegmentHeader::new(
            SegmentId {
                seq: first.seq,
                gen: ids.iter().map(|i| i.gen).max().unwrap_or(0) + 1,
            },
            self.last_rev.load(Ordering::Acquire),
            supersedes,
        );
        // 1. Copy what the index still points at.
        let mut output = Output::new(self.log.storage(), &self.dir, &header);
        let liveness = self.liveness(run);
        report.runs_listed += usize::from(matches!(liveness, Liveness::Listed(_)));
        for seg in run {
            report.bytes_before += seg.file_len()?;
            self.copy_retained(seg, &liveness, &mut output, report)?;
        }
        let newest = self.replica_tag.lock().clone();
        let tag_bytes = output.keep_newest_tag(newest.as_deref());
        report.segments_in += run.len();
        // A record was left out because the index has a newer write of its key.
        // That write may not be durable yet (`interval`, `never`): if the pass
        // replaced or deleted the inputs first, a power cut could lose both the
        // old record and the new one. So the log must be durable up to
        // everything the copy looked at before anything is installed or deleted;
        // a log whose fsync failed refuses here, and the pass stops.
        self.log.sync()?;

        let out_bytes = output.len();
        if out_bytes == 0 {
            // Nothing retained: the inputs can go as they are. Deleting them one
            // by one is safe: every record in them is dead.
            crash_point!(self, AfterTmpWritten);
            crash_point!(self, AfterInstall);
            crash_point!(self, AfterRelocate);
            let retired = self.retire_inputs(run, &ids, None, 0);
            // No output supersedes an input whose deletion failed, nor what
            // the inputs superseded: later outputs will.
            self.note_orphans(
                run.iter()
                    .flat_map(|seg| seg.header.supersedes.iter().copied())
                    .chain(ids.iter().copied()),
            );
            return retired;
        }

        // 2. Write the output and give it its final name.
        let tmp = output.finish()?;
        crash_point!(self, AfterTmpWritten);
        let out = match self.install_output(&tmp, header.id, report) {
            Ok(out) => out,
            Err(e) => {
                let stray = self.dir.join(header.id.file_name());
                if stray.exists() {
                    // In place but not in the log: the next open settles it
                    // (it supersedes its inputs, which it copies), but a later
                    // pass here over another run would leave two outputs
                    // holding the same records. No pass runs until a reopen.
                    tracing::error!(
                        bucket = %self.name,
                        output = %stray.display(),
                        error = %e,
                        "a compaction output was put in place but not installed; compaction halts until the store is reopened"
                    );
                    *self.compaction_halted.lock() = Some(format!(
                        "{} was put in place but not installed: {e}",
                        stray.display()
                    ));
                }
                return Err(e);
            }
        };
        // In place and durable: it supersedes them now (and passes them on).
        self.orphans
            .lock()
            .retain(|id| !header.supersedes.contains(id));

        // 3. Point the index at the copies.
        self.log.add_segment(Arc::clone(&out));
        let mut moved = 0u64;
        for chunk in output.copies.chunks(CHUNK) {
            let mut ix = self.index.write();
            for c in chunk {
                let p = c.placed;
                if ix.relocate_at(p.entry, p.revision, p.at(), (out.slot, c.to_offset)) {
                    moved += c.len;
                }
            }
        }
        crash_point!(self, AfterRelocate);
        self.retire_inputs(run, &ids, Some(&out), out_bytes - moved - tag_bytes)
    }

    /// Renames the pass's output into place and opens it.
    fn install_output(
        &self,
        tmp: &Path,
        id: SegmentId,
        report: &mut CompactionReport,
    ) -> Result<Arc<Segment>> {
        let out = Arc::new(Segment::install(
            self.log.storage(),
            &self.dir,
            self.log.alloc_slot(),
            tmp,
            id,
        )?);
        report.segments_out += 1;
        report.bytes_after += out.capacity();
        crash_point!(self, AfterInstall);
        Ok(out)
    }

    /// How the pass will tell retained records from dead ones: a list from one
    /// scan of the index when the run is large next to the index, else a
    /// lookup per record.
    fn liveness(&self, run: &[Arc<Segment>]) -> Liveness {
        let run_bytes: u64 = run
            .iter()
            .map(|s| s.data_end().saturating_sub(s.data_start))
            .sum();
        let entries = self.index.read().entry_slots();
        if u64::from(entries) * SCAN_BYTES_PER_ENTRY > run_bytes {
            return Liveness::Lookup;
        }
        let slots: Vec<u32> = run.iter().map(|s| s.slot).collect();
        let mut placed = Vec::new();
        let mut from = 0u32;
        while from < entries {
            let to = from.saturating_add(SCAN_CHUNK).min(entries);
            self.index
                .read()
                .placed_in(from..to, |slot| slots.contains(&slot), &mut placed);
            from = to;
        }
        placed.sort_unstable();
        Liveness::Listed(placed)
    }

    /// Copies the records of `seg` that the index still points at into
    /// `output`, checking them against `liveness` (a lookup in short
    /// read-lock holds, or the list).
    fn copy_retained(
        &self,
        seg: &Segment,
        liveness: &Liveness,
        output: &mut Output,
        report: &mut CompactionReport,
    ) -> Result<()> {
        let data = seg.range(0, seg.data_end());
        let corrupt = |at: usize, reason: String| Error::Corrupt {
            path: seg.path.clone(),
            offset: at as u64,
            reason,
        };
        let mut at = usize::try_from(seg.data_start)
            .map_err(|_| corrupt(0, "header longer than memory".into()))?;
        let mut listed = liveness.in_segment(seg.slot);
        while at < data.len() {
            let ix = matches!(liveness, Liveness::Lookup).then(|| self.index.read());
            for _ in 0..CHUNK {
                let Some(rest) = data.get(at..).filter(|rest| !rest.is_empty()) else {
                    break;
                };
                let r = match decode(rest, seg.header.salt) {
                    Decoded::Record(r) => r,
                    Decoded::End => {
                        at = data.len();
                        break;
                    }
                    Decoded::Invalid(why) => return Err(corrupt(at, why.to_string())),
                };
                let len = r.header.record_len();
                if r.header.is_tag() {
                    output.last_tag = Some(rest.get(..len).unwrap_or_default().to_vec());
                    at += len;
                    continue;
                }
                let here = (seg.slot, segment_offset(at as u64)?);
                let placed = match &ix {
                    Some(ix) => ix.find_placed(r.key, r.header.revision),
                    None => listed.take(here),
                };
                if let Some(placed) =
                    placed.filter(|p| p.at() == here && p.revision == r.header.revision)
                {
                    // `decode` found the whole record in `rest`.
                    let bytes = rest.get(..len).unwrap_or_default();
                    output.add(placed, bytes)?;
                    report.records_kept += 1;
                } else {
                    report.records_dropped += 1;
                }
                at += len;
            }
        }
        Ok(())
    }

    /// Records as orphans those of `ids` whose files are still on disk.
    fn note_orphans(&self, ids: impl Iterator<Item = SegmentId>) {
        let mut orphans = self.orphans.lock();
        for id in ids {
            if !orphans.contains(&id) && self.dir.join(id.file_name()).exists() {
                tracing::warn!(bucket = %self.name, segment = %id.file_name(),
                    "a compacted segment is still on disk; the next compaction output supersedes it");
                orphans.push(id);
            }
        }
    }

    /// Takes compacted inputs out of the table and deletes their files.
    fn retire_inputs(
        &self,
        run: &[Arc<Segment>],
        ids: &[SegmentId],
        out: Option<&Arc<Segment>>,
        out_dead: u64,
    ) -> Result<()> {
        {
            let mut ix = self.index.write();
            for seg in run {
                ix.forget_segment(seg.slot);
            }
            if let Some(out) = out {
                // Copies retired while the pass ran are dead in the output.
                ix.add_dead(out.slot, out_dead);
            }
            self.log.remove_segments(ids);
        }
        for (i, seg) in run.iter().enumerate() {
            remove_if_exists(self.log.storage(), &seg.path)?;
            if i == 0 {
                crash_point!(self, AfterFirstDelete);
            }
        }
        sync_dir(self.log.storage(), &self.dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every write but the last ends at a multiple of [`SPILL_BYTES`] in the
    /// file, and the file ends up holding every byte, in order.
    #[test]
    fn spills_end_on_spill_boundaries_and_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::os();
        let id = SegmentId { seq: 1, gen: 1 };
        let header = SegmentHeader::new(id, 0, Vec::new());
        let start = header.data_start();
        let mut out = Output::new(&storage, dir.path(), &header);
        let mut expected = Vec::new();
        // Pieces of odd sizes, so that the buffer never ends on a boundary by itself.
        for (i, size) in [1000usize, 3001, 77, 5000, 4096, 9999, 1]
            .into_iter()
            .enumerate()
        {
            let piece: Vec<u8> = (0..size)
                .map(|b| u8::try_from((b + i) % 251).unwrap())
                .collect();
            out.body.extend_from_slice(&piece);
            expected.extend_from_slice(&piece);
            out.spill(false).unwrap();
            let in_file = start + out.written;
            if out.written > 0 {
                assert_eq!(in_file % SPILL_BYTES as u64, 0, "after piece {i}");
            }
            assert!(out.body.len() < SPILL_BYTES, "after piece {i}");
            assert_eq!(out.len(), expected.len() as u64);
        }
        assert!(out.written > 0, "the pieces cross several boundaries");
        assert!(!out.body.is_empty(), "the last piece stays buffered");
        let path = out.finish().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let from = usize::try_from(start).unwrap();
        assert_eq!(bytes.get(from..), Some(&expected[..]));
    }
}
