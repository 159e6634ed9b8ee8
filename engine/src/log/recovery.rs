//! Recovery rules: how a bucket's log is read back on open. All of them live here.
//!
//! 1. Files named `*.tmp` are unfinished creations (a segment or a compaction
//!    output that was never renamed into place): they are removed.
//! 2. A segment whose header lists segments it supersedes is a finished
//!    compaction: the superseded files, if still present, are removed.
//! 3. Segments are read in `(seq, gen)` order; records are applied batch by
//!    batch, and a batch is applied only when its last record (no `BATCH_MORE`)
//!    has been read, so a batch torn by a crash is never applied in part.
//! 4. In the last segment, a batch that is not whole and valid at or past the
//!    segment's durability mark (see [`super::mark`]) is an unsynced tail: a
//!    power cut may lose, keep or tear what was written after the last fsync,
//!    in any order, so valid records may follow a hole. The file is cut at the
//!    start of that batch (the data below it synced, then the mark moved to
//!    the cut and synced), with a warning saying how many bytes and whole
//!    records went.
//! 5. Anything else that is not a valid record (in a sealed segment, which was
//!    durable whole before the next one was created, or below the last
//!    segment's mark) is corruption: open fails naming the file and offset,
//!    unless repair was asked for, in which case every valid record is kept and
//!    each skipped region is reported. Revisions rise in log order, so a
//!    record whose revision is not above the one before it (or, for the first
//!    record read after an index snapshot, above the snapshot's last revision)
//!    is valid bytes in the wrong place (a record copied over another), not a
//!    valid record there; so is a record that continues a batch without the
//!    next revision (a batch's records have consecutive revisions). A tag
//!    record (the replication tag ending a replicated batch) is outside these
//!    revision rules: its revision only says where the bucket stood.
//!    Nor may a segment's data end (zeros, or the end of the file) below its
//!    mark: records synced there were lost.
//!
//! What happens after the records are read — making what was read durable
//! after an unclean stop, and skipping revisions that may have been seen and
//! lost — is in `Log::open` and `bucket/open.rs`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::mark::{FLAG_EAGER, SKIPPED_MASK};
use super::record::{decode, find_next_valid, Decoded, Record};
use super::segment::{Segment, SegmentId, SEGMENT_EXT};
use crate::error::{Error, Result};
use crate::fsutil::sync_dir;
use crate::io::Storage;

/// A region recovery skipped or cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The segment file.
    pub path: PathBuf,
    /// Where the skipped region starts.
    pub offset: u64,
    /// How long it is.
    pub bytes: u64,
    /// What was wrong there.
    pub reason: String,
}

/// What recovery found and did.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    /// Segments read.
    pub segments: usize,
    /// Records applied (tag records included).
    pub records: u64,
    /// Bytes cut from the tail of the last segment (writes a crash left torn,
    /// missing or out of order past the last sync).
    pub truncated_bytes: u64,
    /// Whole records found past such a cut and dropped with it.
    pub dropped_records: u64,
    /// Regions skipped in repair mode.
    pub skipped: Vec<Skipped>,
    /// Files removed (unfinished creations, superseded segments).
    pub removed_files: Vec<PathBuf>,
}

pub(crate) struct Recovered {
    /// Segments in log order; the last is where appends continue.
    pub segments: Vec<Arc<Segment>>,
    /// Where the next record goes in the last segment.
    pub tail: u64,
    /// Highest revision watermark found in a segment header.
    pub watermark: u64,
    pub report: RecoveryReport,
}

/// Where to start reading, when an index snapshot already covers what lies
/// before it.
#[derive(Debug, Clone, Copy)]
pub struct Start {
    /// The index of the first segment to scan (those before it are taken as
    /// they are).
    pub segment: usize,
    /// Where in it to start.
    pub offset: u64,
    /// The last revision the snapshot covers: every record read from the start
    /// point on must be above it.
    pub revision: u64,
}

/// Where to start reading, once the segments are open. `None`: scan everything.
pub(crate) type StartAt<'a> = &'a mut dyn FnMut(&[Arc<Segment>]) -> Option<Start>;

/// Called with `(segment, offset, record)` for every record recovered.
pub type Apply<'a> = &'a mut dyn FnMut(&Arc<Segment>, u64, &Record<'_>) -> Result<()>;

/// Calls `apply(segment, offset, record)` for every record of every complete
/// batch from the start point on, in log order. The newest segment is mapped
/// `capacity` bytes long, ready to be appended to.
pub(crate) fn recover(
    storage: &Storage,
    dir: &Path,
    repair: bool,
    capacity: u64,
    next_slot: &dyn Fn() -> u32,
    start: StartAt<'_>,
    apply: Apply<'_>,
) -> Result<Recovered> {
    let mut report = RecoveryReport::default();
    let mut segments = open_segments(storage, dir, repair, capacity, next_slot, &mut report)?;
    let watermark = segments
        .iter()
        .map(|s| s.header.revision_watermark)
        .max()
        .unwrap_or(0);
    let Start {
        segment: first,
        offset,
        revision,
    } = start(&segments).unwrap_or(Start {
        segment: 0,
        offset: 0,
        revision: 0,
    });
    let mut tail = 0;
    // The revision of the last record applied (or covered by the snapshot
    // recovery starts from): revisions rise in log order.
    let mut last_revision = revision;
    let count = segments.len();
    for (i, seg) in segments.iter_mut().enumerate() {
        let is_last = i + 1 == count;
        if i < first {
            tail = seg.file_len()?;
        } else {
            let from = if i == first {
                offset.max(seg.data_start)
            } else {
                seg.data_start
            };
            let scan = Scan {
                from,
                is_last,
                repair,
            };
            if is_last {
                reread_unclean_tail(seg)?;
            }
            tail = scan_segment(seg, &scan, &mut last_revision, &mut report, apply)?;
            report.segments += 1;
            tracing::debug!(
                dir = %dir.display(),
                segments_done = i + 1,
                segments_total = count,
                records = report.records,
                "recovery progress"
            );
        }
        seg.set_data_end(tail);
    }
    Ok(Recovered {
        segments,
        tail,
        watermark,
        report,
    })
}

/// Lists, cleans up and opens the segments of a directory, in log order; the
/// newest is mapped `capacity` bytes long (the log's active segment).
fn open_segments(
    storage: &Storage,
    dir: &Path,
    repair: bool,
    capacity: u64,
    next_slot: &dyn Fn() -> u32,
    report: &mut RecoveryReport,
) -> Result<Vec<Arc<Segment>>> {
    let mut ids = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut removed_any = false;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(&format!(".{SEGMENT_EXT}.tmp")) {
            let path = entry.path();
            tracing::info!(file = %path.display(), "removing unfinished segment");
            storage
                .remove_file(&path)
                .map_err(|e| Error::io(&path, e))?;
            report.removed_files.push(path);
            removed_any = true;
        } else if let Some(id) = SegmentId::parse(name) {
            ids.push(id);
        }
    }
    ids.sort();
    let newest = ids.last().copied();
    let mut opened = Vec::with_capacity(ids.len());
    for id in ids {
        let path = dir.join(id.file_name());
        let map_len = (Some(id) == newest).then_some(capacity);
        match Segment::open(storage, &path, next_slot(), map_len) {
            Ok(seg) if seg.header.id == id => opened.push(seg),
            Ok(_) | Err(Error::Corrupt { .. }) if repair => {
                let aside = path.with_extension("seg.corrupt");
                tracing::warn!(file = %path.display(), "repair: segment header unreadable, moved aside");
                storage
                    .rename(&path, &aside)
                    .map_err(|e| Error::io(&path, e))?;
                report.skipped.push(Skipped {
                    path: path.clone(),
                    offset: 0,
                    bytes: std::fs::metadata(&aside).map_or(0, |m| m.len()),
                    reason: "unreadable segment header".into(),
                });
                removed_any = true;
            }
            Ok(seg) => {
                return Err(Error::Corrupt {
                    path,
                    offset: 0,
                    reason: format!("header names segment {:?}", seg.header.id),
                })
            }
            Err(e) => return Err(e),
        }
    }
    // Finish interrupted compactions: a complete output supersedes its inputs.
    let superseded: std::collections::HashSet<SegmentId> = opened
        .iter()
        .flat_map(|s| s.header.supersedes.iter().copied())
        .collect();
    let mut kept = Vec::with_capacity(opened.len());
    for seg in opened {
        if superseded.contains(&seg.id) {
            tracing::info!(file = %seg.path.display(), "removing segment superseded by compaction");
            storage
                .remove_file(&seg.path)
                .map_err(|e| Error::io(&seg.path, e))?;
            report.removed_files.push(seg.path.clone());
            removed_any = true;
        } else {
            kept.push(Arc::new(seg));
        }
    }
    if removed_any {
        sync_dir(storage, dir)?;
    }
    Ok(kept)
}

/// The page size the range read again from the disk starts on (the page that
/// holds the mark's end included).
const PAGE: u64 = 4096;

/// After an unclean stop, what lies past the last segment's mark was written
/// but never synced, or its sync failed: it is read from the disk again where
/// the page cache holds no unwritten change, so that pages a failed fsync left
/// cached (Linux keeps them, counted clean) are not taken for data the disk
/// has, and vouched for by the mark this open writes.
fn reread_unclean_tail(seg: &Segment) -> Result<()> {
    let mark = seg.mark();
    if mark.is_some_and(|m| m.clean()) {
        return Ok(());
    }
    let mark_end = mark.map_or(0, |m| m.end);
    seg.reread_from_disk(mark_end & !(PAGE - 1), seg.file_len()?);
    Ok(())
}

/// How to scan one segment.
struct Scan {
    /// Where to start.
    from: u64,
    /// The last segment of the log (its tail may be torn).
    is_last: bool,
    /// Keep every valid record of a damaged segment instead of failing.
    repair: bool,
}

/// Applies the complete batches of one segment; returns where valid data ends.
/// `last_revision` is the revision of the last record applied, updated.
fn scan_segment(
    seg: &mut Arc<Segment>,
    scan: &Scan,
    last_revision: &mut u64,
    report: &mut RecoveryReport,
    apply: Apply<'_>,
) -> Result<u64> {
    let &Scan {
        from,
        is_last,
        repair,
    } = scan;
    let file_len = seg.file_len()?;
    let segment = Arc::clone(seg);
    let buf = segment.range(0, file_len);
    let mut at = usize::try_from(from).map_or(buf.len(), |f| f.min(buf.len()));
    let mut batch_start = at;
    let mut pending: Vec<(usize, Record<'_>)> = Vec::new();
    let salt = seg.header.salt;
    // Below the durability mark everything was synced: the data cannot end
    // there. In the last segment, what lies at or past the mark may not have
    // been synced: a power cut may have lost, kept or torn it in any order.
    // (A sealed segment's mark is no more than its end: it was synced whole.
    // Its length is no guide: the cut to its end may not have been synced.)
    let durable = seg
        .mark()
        .map_or(seg.data_start, |m| m.end.max(seg.data_start));
    loop {
        let previous = pending
            .last()
            .map_or(*last_revision, |(_, r)| r.header.revision);
        // `at` never passes the end of `buf`: records are decoded from inside it.
        let problem = match decode(buf.get(at..).unwrap_or_default(), salt) {
            Decoded::Record(r) if r.header.revision <= previous && !r.header.is_tag() => {
                // Valid bytes in the wrong place (a record copied over another).
                format!("revision {} after revision {previous}", r.header.revision)
            }
            Decoded::Record(r) if r.header.batch_cont() == pending.is_empty() => {
                if pending.is_empty() {
                    "a batch continues without its first record".to_string()
                } else if repair {
                    // A new batch starts while one is open: drop the unfinished
                    // one and go on from this record.
                    tracing::warn!(file = %seg.path.display(), offset = batch_start, "repair: dropping an unfinished batch");
                    report.skipped.push(Skipped {
                        path: seg.path.clone(),
                        offset: batch_start as u64,
                        bytes: (at - batch_start) as u64,
                        reason: "a batch is not finished".into(),
                    });
                    pending.clear();
                    batch_start = at;
                    continue;
                } else {
                    "a batch is not finished".to_string()
                }
            }
            Decoded::Record(r) if !pending.is_empty() && !r.header.continues(previous) => {
                // A batch's records have consecutive revisions: this one was
                // copied here from another batch.
                format!(
                    "revision {} continues a batch at revision {previous}",
                    r.header.revision
                )
            }
            Decoded::Record(r) => {
                let len = r.header.record_len();
                pending.push((at, r));
                at += len;
                if !r.header.batch_more() {
                    for (off, rec) in pending.drain(..) {
                        apply(&segment, off as u64, &rec)?;
                        report.records += 1;
                        // A tag record's revision may lie below (see the module doc).
                        *last_revision = (*last_revision).max(rec.header.revision);
                    }
                    batch_start = at;
                }
                continue;
            }
            Decoded::End => match end_problem(buf, at, durable, !pending.is_empty()) {
                None => return Ok(at as u64),
                Some(problem) => problem,
            },
            Decoded::Invalid(why) => why.to_string(),
        };
        // `at` is not the start of a usable record (damaged, or a batch out of place).
        // Checksums are salted per segment, so bytes inside a damaged record's
        // value (even an encoded record) never pass as the next record.
        let next = find_next_valid(buf, at + 1, salt);
        if is_last && (batch_start as u64 >= durable || (repair && next.is_none())) {
            drop(pending);
            return cut_torn_tail(seg, buf, batch_start, &problem, report);
        }
        if !repair {
            return Err(Error::Corrupt {
                path: seg.path.clone(),
                offset: at as u64,
                reason: problem,
            });
        }
        let resume = next.unwrap_or(buf.len());
        tracing::warn!(
            file = %seg.path.display(),
            offset = batch_start,
            bytes = resume - batch_start,
            reason = %problem,
            "repair: skipping damaged region"
        );
        report.skipped.push(Skipped {
            path: seg.path.clone(),
            offset: batch_start as u64,
            bytes: (resume - batch_start) as u64,
            reason: problem,
        });
        pending.clear();
        at = resume;
        batch_start = resume;
        if next.is_none() {
            // Nothing valid follows in a sealed segment: it ends here.
            return Ok(at as u64);
        }
    }
}

/// What is wrong with the end of the data found at `at` of `buf`: `None`
/// if the data may end there (nothing but zeros follow, no batch is open,
/// and it is not below `durable`).
fn end_problem(buf: &[u8], at: usize, durable: u64, batch_open: bool) -> Option<String> {
    let rest = buf.get(at..).unwrap_or_default();
    match rest.iter().position(|&b| b != 0) {
        Some(nz) => Some(format!(
            "non-zero bytes after the end of data at offset {}",
            at + nz
        )),
        None if batch_open => Some("batch not finished".to_string()),
        None if (at as u64) < durable => Some(format!(
            "the data ends at {at}, below offset {durable}, up to which it was durable"
        )),
        None => None,
    }
}

/// Cuts the last segment at `batch_start`, where a batch torn by a crash
/// begins (`buf`: the segment's bytes); returns where valid data ends.
fn cut_torn_tail(
    seg: &Segment,
    buf: &[u8],
    batch_start: usize,
    problem: &str,
    report: &mut RecoveryReport,
) -> Result<u64> {
    let cut = (buf.len() - batch_start) as u64;
    let nonzero_end = buf
        .iter()
        .rposition(|&b| b != 0)
        .map_or(batch_start, |p| p + 1);
    let dropped = nonzero_end.saturating_sub(batch_start) as u64;
    // Whole records that survived past the cut: written after the last sync
    // and kept by the power cut while something before them was not.
    let mut records = 0u64;
    let mut at = batch_start + 1;
    while let Some(next) = find_next_valid(buf, at, seg.header.salt) {
        records += 1;
        at = match decode(buf.get(next..).unwrap_or_default(), seg.header.salt) {
            Decoded::Record(r) => next + r.header.record_len(),
            _ => next + 1,
        };
    }
    tracing::warn!(
        file = %seg.path.display(),
        offset = batch_start,
        bytes = dropped,
        whole_records_after = records,
        reason = %problem,
        "cutting the unsynced tail of the log (writes a crash or power loss cut short or left out of order)"
    );
    if cut > 0 {
        // The mark is moved to the cut and synced before the file is cut:
        // lowered, it must not claim more than what is left (data ending
        // below a mark is corruption); raised (the cut lies past it, over
        // records a killed process wrote and never synced), it may vouch only
        // for data already durable, so those are synced first. It keeps saying
        // whether writes were visible before durable (unknown without a mark:
        // assume they were), so that the revisions the cut took back are
        // skipped, and which revisions an earlier open gave up.
        let kept = seg
            .mark()
            .map_or(FLAG_EAGER, |m| m.flags & (FLAG_EAGER | SKIPPED_MASK));
        let file = seg.file()?;
        let io = |e| Error::io(&seg.path, e);
        file.sync_data().map_err(io)?;
        seg.write_mark(batch_start as u64, kept)?;
        file.sync_all().map_err(io)?;
        file.set_len(batch_start as u64).map_err(io)?;
        file.sync_all().map_err(io)?;
    }
    report.truncated_bytes += dropped;
    report.dropped_records += records;
    Ok(batch_start as u64)
}
