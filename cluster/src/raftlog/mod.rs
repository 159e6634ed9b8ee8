//! The Raft log: a durable, checksummed, segmented log of openraft entries in the node's
//! `raft/` directory, with the vote, the committed log id and the purge point beside it.
//!
//! - **Append** writes the entries' records with one `pwrite` at the end of the active
//!   segment (pre-filled with zeros ahead of the writer, so fdatasync does not update the
//!   inode), returns at once (the entries are readable), and hands the `IOFlushed`
//!   callback to the [`flusher`] thread, which fdatasyncs and only then acknowledges: with
//!   `--fsync always` an entry is durable before openraft counts it. Appends that arrive
//!   during one fdatasync share the next (group commit).
//! - **No hole, ever**: an append whose first index is not the last index + 1 (or the purge
//!   point + 1) is refused with an I/O error, which stops the node (openraft checks this only
//!   in debug builds, see openraft#1795).
//! - **Truncate** cuts the segment file at the first removed record and makes the cut
//!   durable before returning (later segments are deleted), so stale records can never
//!   reappear after a crash behind new ones.
//! - **Purge** records the purge point durably first, then deletes the segments it covers.
//! - **Vote** and **purge point** are small files written atomically and durably
//!   (`fsutil::write_atomic`) before the call returns. The **committed** log id is written
//!   atomically without an fsync, in place (`fsutil::SlotFile`: no file created or renamed per
//!   commit): it is a hint that lets a restarted node re-apply its log
//!   before it hears from a leader; a stale one only delays that.
//! - **Open** scans the segments: a torn or damaged tail of the last segment is cut (and
//!   logged); damage anywhere else, an index out of sequence or a leader id going backwards
//!   is corruption and the log refuses to open, naming the file and offset.

pub mod flusher;
pub mod record;
pub mod segment;

use std::collections::VecDeque;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use flusher::Flusher;
pub use flusher::FsyncMode;
use record::{Framed, HEADER_LEN};
use segment::Segment;

use crate::fsutil::{invalid, read_checked, sync_dir, write_atomic, SlotFile};
use crate::types::{Entry, LogId, Vote, C};

const VOTE_FILE: &str = "vote";
const COMMITTED_FILE: &str = "committed";
const PURGED_FILE: &str = "purged";
/// Zeros written ahead of the writer at a time.
const ZERO_CHUNK: u64 = 1 << 20;

/// How the Raft log is kept.
#[derive(Debug, Clone, Copy)]
pub struct LogOptions {
    /// When appends are acknowledged.
    pub fsync: FsyncMode,
    /// Size at which a segment is sealed and a new one started.
    pub segment_size: u64,
}

impl Default for LogOptions {
    fn default() -> LogOptions {
        LogOptions {
            fsync: FsyncMode::Always,
            segment_size: 64 << 20,
        }
    }
}

/// Where an entry is.
#[derive(Debug, Clone)]
struct Loc {
    seg: Arc<Segment>,
    offset: u64,
    len: u32,
    log_id: LogId,
}

struct State {
    /// Segments, oldest first; the last one is written to.
    segs: Vec<Arc<Segment>>,
    /// End of the records in the last segment.
    end: u64,
    /// Bytes of the last segment known to be zero-filled or written.
    zeroed_to: u64,
    /// Every entry the log holds, in index order, without a gap.
    locs: VecDeque<Loc>,
    purged: Option<LogId>,
    vote: Option<Vote>,
    committed: Option<LogId>,
    /// A buffer reused for encoding.
    buf: Vec<u8>,
}

struct Shared {
    dir: PathBuf,
    opts: LogOptions,
    state: Mutex<State>,
    /// Where the committed log id goes, rewritten on every commit.
    committed_file: Mutex<SlotFile>,
    flusher: Flusher,
}

/// The Raft log store. Clones share the same log (a clone is also its reader).
#[derive(Clone)]
pub struct LogStore {
    shared: Arc<Shared>,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore")
            .field("dir", &self.shared.dir)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize, Deserialize)]
struct Saved<T>(T);

fn load<T: serde::de::DeserializeOwned>(path: &Path) -> io::Result<Option<T>> {
    match read_checked(path)? {
        None => Ok(None),
        Some(bytes) => postcard::from_bytes::<Saved<T>>(&bytes)
            .map(|s| Some(s.0))
            .map_err(|e| invalid(format!("{}: {e}", path.display()))),
    }
}

fn save<T: Serialize>(path: &Path, value: T, durable: bool) -> io::Result<()> {
    let bytes = postcard::to_stdvec(&Saved(value)).map_err(io::Error::other)?;
    write_atomic(path, &bytes, durable)
}

impl LogStore {
    /// Opens (or creates) the log in `dir`, recovering what a crash left.
    pub fn open(dir: impl AsRef<Path>, opts: LogOptions) -> io::Result<LogStore> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir)?;
        let vote: Option<Vote> = load(&dir.join(VOTE_FILE))?;
        // A damaged committed hint is only a hint: start without it.
        let (committed_file, saved) = SlotFile::open(&dir.join(COMMITTED_FILE))?;
        let committed: Option<LogId> = saved.and_then(|bytes| {
            postcard::from_bytes::<Saved<Option<LogId>>>(&bytes)
                .map_err(|e| tracing::warn!("ignoring the committed log id: {e}"))
                .ok()
                .and_then(|s| s.0)
        });
        let purged: Option<LogId> = load(&dir.join(PURGED_FILE))?;
        let mut state = State {
            segs: Vec::new(),
            end: 0,
            zeroed_to: 0,
            locs: VecDeque::new(),
            purged,
            vote,
            committed,
            buf: Vec::new(),
        };
        recover(&dir, &mut state)?;
        let flusher = Flusher::start(opts.fsync)?;
        Ok(LogStore {
            shared: Arc::new(Shared {
                dir,
                opts,
                state: Mutex::new(state),
                committed_file: Mutex::new(committed_file),
                flusher,
            }),
        })
    }

    /// fdatasync calls made by the group commit so far.
    pub fn fsyncs(&self) -> u64 {
        self.shared.flusher.syncs()
    }

    /// The directory of the log.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Syncs what is written and stops the flusher (at shutdown).
    pub fn close(&self) -> io::Result<()> {
        let r = self.shared.flusher.sync_now();
        self.shared.flusher.stop();
        r
    }

    /// Reads the entries with index in `[start, end)` that the log holds.
    fn read_range(&self, start: u64, end: u64) -> io::Result<Vec<Entry>> {
        let st = self.shared.state.lock();
        let Some(first) = st.locs.front().map(|l| l.log_id.index) else {
            return Ok(Vec::new());
        };
        let from = start.max(first);
        let last_plus_one = first + st.locs.len() as u64;
        let to = end.min(last_plus_one);
        if from >= to {
            return Ok(Vec::new());
        }
        let lo = usize::try_from(from - first).map_err(io::Error::other)?;
        let hi = usize::try_from(to - first).map_err(io::Error::other)?;
        let mut out = Vec::with_capacity(hi - lo);
        let mut i = lo;
        while i < hi {
            // One read for the run of entries that sit together in one segment.
            let head = &st.locs[i];
            let mut j = i + 1;
            let mut span_end = head.offset + u64::from(head.len);
            while j < hi && Arc::ptr_eq(&st.locs[j].seg, &head.seg) && st.locs[j].offset == span_end
            {
                span_end += u64::from(st.locs[j].len);
                j += 1;
            }
            let len = usize::try_from(span_end - head.offset).map_err(io::Error::other)?;
            let bytes = head.seg.read_at(head.offset, len)?;
            let mut at = 0usize;
            for loc in st.locs.range(i..j) {
                let Framed::Record(body, n) = record::frame(&bytes[at..]) else {
                    return Err(invalid(format!(
                        "{}: the record of entry {} at offset {} is damaged",
                        loc.seg.path.display(),
                        loc.log_id.index,
                        loc.offset
                    )));
                };
                out.push(record::decode_entry(body)?);
                at += n;
            }
            i = j;
        }
        Ok(out)
    }

    fn append_sync(&self, entries: &[Entry]) -> io::Result<Option<Arc<Segment>>> {
        if let Some(why) = self.shared.flusher.failure() {
            return Err(io::Error::other(why));
        }
        let mut guard = self.shared.state.lock();
        let st = &mut *guard;
        let mut buf = std::mem::take(&mut st.buf);
        buf.clear();
        let mut pending: Vec<(u64, u32, LogId)> = Vec::new();
        let mut last = st.locs.back().map(|l| l.log_id).or(st.purged);
        let mut nonempty = !st.locs.is_empty();
        for entry in entries {
            let id = entry.log_id;
            if let Some(prev) = last {
                if id.index != prev.index + 1 {
                    return Err(io::Error::other(format!(
                        "refusing a non-contiguous append: entry {id} after {prev}"
                    )));
                }
                if id.leader_id < prev.leader_id && nonempty {
                    return Err(io::Error::other(format!(
                        "refusing an append whose leader goes backwards: {id} after {prev}"
                    )));
                }
            }
            let holds_none = st.end == Segment::data_start() && buf.is_empty();
            let full = st.end + buf.len() as u64 >= self.shared.opts.segment_size && !holds_none;
            // An empty last segment named for another index (left by a crash) is replaced.
            let misnamed = holds_none && st.segs.last().is_some_and(|s| s.first_index != id.index);
            if st.segs.is_empty() || full || misnamed {
                write_out(st, &buf, &mut pending)?;
                buf.clear();
                if misnamed {
                    if let Some(s) = st.segs.pop() {
                        std::fs::remove_file(&s.path)?;
                    }
                } else if let Some(sealed) = st.segs.last() {
                    // The sealed segment is complete on disk before the next one exists, so
                    // after a crash only the last segment can have a torn tail.
                    sealed.sync()?;
                }
                let seg = Arc::new(Segment::create(&self.shared.dir, id.index)?);
                st.segs.push(seg);
                st.end = Segment::data_start();
                st.zeroed_to = HEADER_LEN as u64;
            }
            let offset = st.end + buf.len() as u64;
            let n = record::encode_entry(entry, &mut buf)?;
            pending.push((offset, u32::try_from(n).map_err(io::Error::other)?, id));
            last = Some(id);
            nonempty = true;
        }
        write_out(st, &buf, &mut pending)?;
        st.buf = buf;
        Ok(st.segs.last().cloned())
    }
}

/// Writes `buf` at the end of the last segment and indexes the `pending` entries in it.
fn write_out(st: &mut State, buf: &[u8], pending: &mut Vec<(u64, u32, LogId)>) -> io::Result<()> {
    if buf.is_empty() {
        return Ok(());
    }
    let seg = st
        .segs
        .last()
        .cloned()
        .ok_or_else(|| io::Error::other("no segment to write to"))?;
    let end = st.end + buf.len() as u64;
    if end > st.zeroed_to {
        let upto = end.max(st.zeroed_to + ZERO_CHUNK);
        let zeros = vec![0u8; usize::try_from(upto - st.zeroed_to).map_err(io::Error::other)?];
        seg.write_at(&zeros, st.zeroed_to)?;
        st.zeroed_to = upto;
    }
    seg.write_at(buf, st.end)?;
    st.end = end;
    for (offset, len, log_id) in pending.drain(..) {
        st.locs.push_back(Loc {
            seg: Arc::clone(&seg),
            offset,
            len,
            log_id,
        });
    }
    Ok(())
}

/// Rebuilds the state from the segment files.
fn recover(dir: &Path, st: &mut State) -> io::Result<()> {
    let mut found: Vec<(u64, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(first) = entry.file_name().to_str().and_then(segment::parse_name) {
            found.push((first, entry.path()));
        }
    }
    found.sort();
    let purged_index = st.purged.map(|p| p.index);
    let count = found.len();
    let mut prev: Option<LogId> = None;
    let mut removed_any = false;
    for (n, (first, path)) in found.into_iter().enumerate() {
        let is_last = n + 1 == count;
        let seg = Segment::open(&path, first)?;
        let bytes = seg.read_all()?;
        let header = record::decode_header(&bytes);
        let unfinished = is_last
            && header.is_err()
            && (bytes.len() < HEADER_LEN || bytes.iter().all(|b| *b == 0));
        if unfinished {
            tracing::warn!(path = %path.display(), "removing a segment whose creation never finished");
            std::fs::remove_file(&path)?;
            removed_any = true;
            continue;
        }
        match header {
            Ok(h) if h == first => {}
            Ok(h) => {
                return Err(invalid(format!(
                    "{}: header names first index {h}, not the one in the file name",
                    path.display()
                )))
            }
            Err(why) => return Err(invalid(format!("{}: {why}", path.display()))),
        }
        let seg = Arc::new(seg);
        let Scanned { kept, end, cut } = scan(&seg, &bytes, is_last, purged_index, &mut prev, st)?;
        let offset = end;
        if kept == 0 && !is_last {
            // Fully purged: finish the purge that was interrupted.
            std::fs::remove_file(&path)?;
            removed_any = true;
            continue;
        }
        st.end = offset as u64;
        st.zeroed_to = if cut { offset } else { bytes.len().max(offset) } as u64;
        st.segs.push(seg);
    }
    if removed_any {
        sync_dir(dir)?;
    }
    // A last segment that holds only purged entries: start afresh at the next append.
    if st.locs.is_empty() && st.purged.is_some() && !st.segs.is_empty() {
        for s in st.segs.drain(..) {
            std::fs::remove_file(&s.path)?;
        }
        sync_dir(dir)?;
    }
    Ok(())
}

/// What scanning a segment found.
struct Scanned {
    /// Entries indexed (past the purge point).
    kept: usize,
    /// End of the valid records.
    end: usize,
    /// Whether a torn tail was cut off.
    cut: bool,
}

/// Scans the records of one segment into `st.locs`; `prev` is the last entry seen before it.
fn scan(
    seg: &Arc<Segment>,
    bytes: &[u8],
    is_last: bool,
    purged_index: Option<u64>,
    prev: &mut Option<LogId>,
    st: &mut State,
) -> io::Result<Scanned> {
    let path = &seg.path;
    let first = seg.first_index;
    let mut offset = HEADER_LEN;
    let mut expected = first;
    let mut kept = 0usize;
    let mut cut = false;
    loop {
        let rest = bytes.get(offset..).unwrap_or_default();
        let framed = match record::frame(rest) {
            // Zeros where the next record would start but bytes after them: a record
            // torn by the page cache, whose first page never reached the disk.
            Framed::End if rest.iter().any(|b| *b != 0) => Framed::Bad("torn record after the end"),
            other => other,
        };
        match framed {
            Framed::End => break,
            Framed::Bad(why) => {
                if !is_last {
                    return Err(invalid(format!(
                        "corrupt Raft log {} at offset {offset}: {why}",
                        path.display()
                    )));
                }
                tracing::warn!(
                    path = %path.display(),
                    offset,
                    dropped_bytes = bytes.len() - offset,
                    "cutting a torn tail off the Raft log ({why})"
                );
                seg.truncate(offset as u64)?;
                cut = true;
                break;
            }
            Framed::Record(body, len) => {
                let id = record::body_log_id(body)?;
                if id.index != expected {
                    return Err(invalid(format!(
                        "corrupt Raft log {} at offset {offset}: entry {} where {expected} was due",
                        path.display(),
                        id.index
                    )));
                }
                if let Some(p) = prev.filter(|p| id.leader_id < p.leader_id) {
                    return Err(invalid(format!(
                        "corrupt Raft log {} at offset {offset}: entry {id} after {p} (leader goes backwards)",
                        path.display()
                    )));
                }
                if purged_index.is_none_or(|p| id.index > p) {
                    if st.locs.is_empty() {
                        if let Some(p) = purged_index.filter(|p| id.index != p + 1) {
                            return Err(invalid(format!(
                                "Raft log {}: the first entry kept is {} but the log is purged up to {p}",
                                path.display(),
                                id.index
                            )));
                        }
                    } else if st.locs.back().map(|l| l.log_id.index + 1) != Some(id.index) {
                        return Err(invalid(format!(
                            "Raft log {}: entry {} does not follow the previous segment",
                            path.display(),
                            id.index
                        )));
                    }
                    st.locs.push_back(Loc {
                        seg: Arc::clone(seg),
                        offset: offset as u64,
                        len: u32::try_from(len).map_err(io::Error::other)?,
                        log_id: id,
                    });
                    kept += 1;
                }
                *prev = Some(id);
                expected += 1;
                offset += len;
            }
        }
    }
    Ok(Scanned {
        kept,
        end: offset,
        cut,
    })
}

fn bounds(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(s) => *s,
        Bound::Excluded(s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(e) => e.saturating_add(1),
        Bound::Excluded(e) => *e,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl RaftLogReader<C> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let (start, end) = bounds(&range);
        self.read_range(start, end)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.shared.state.lock().vote)
    }
}

impl RaftLogStorage<C> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<C>, io::Error> {
        let st = self.shared.state.lock();
        Ok(LogState {
            last_purged_log_id: st.purged,
            last_log_id: st.locs.back().map(|l| l.log_id).or(st.purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        save(&self.shared.dir.join(VOTE_FILE), vote, true)?;
        self.shared.state.lock().vote = Some(*vote);
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        let bytes = postcard::to_stdvec(&Saved(committed)).map_err(io::Error::other)?;
        self.shared.committed_file.lock().write(&bytes, false)?;
        self.shared.state.lock().committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.shared.state.lock().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<C>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        match self.append_sync(&entries)? {
            Some(seg) => self.shared.flusher.submit(callback, &seg),
            None => callback.io_completed(Ok(())),
        }
        Ok(())
    }

    async fn truncate_after(&mut self, last: Option<LogId>) -> Result<(), io::Error> {
        let mut guard = self.shared.state.lock();
        let st = &mut *guard;
        let cut = last.map_or(0, |l| l.index + 1);
        let Some(first) = st.locs.front().map(|l| l.log_id.index) else {
            return Ok(());
        };
        let pos = usize::try_from(cut.saturating_sub(first)).map_err(io::Error::other)?;
        let Some(loc) = st.locs.get(pos).cloned() else {
            return Ok(());
        };
        // Later segments go first, then the cut in the segment of the first removed entry.
        let mut removed = false;
        while st.segs.last().is_some_and(|s| !Arc::ptr_eq(s, &loc.seg)) {
            if let Some(s) = st.segs.pop() {
                std::fs::remove_file(&s.path)?;
                removed = true;
            }
        }
        if removed {
            sync_dir(&self.shared.dir)?;
        }
        loc.seg.truncate(loc.offset)?;
        st.end = loc.offset;
        st.zeroed_to = loc.offset;
        st.locs.truncate(pos);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        save(&self.shared.dir.join(PURGED_FILE), log_id, true)?;
        let mut guard = self.shared.state.lock();
        let st = &mut *guard;
        st.purged = Some(log_id);
        while st
            .locs
            .front()
            .is_some_and(|l| l.log_id.index <= log_id.index)
        {
            st.locs.pop_front();
        }
        // Delete the segments every entry of which is purged; the last one only if the log
        // is now empty (the next append starts a new segment at its own index).
        let mut removed = false;
        loop {
            let covered = match st.segs.get(1) {
                Some(next) => next.first_index <= log_id.index + 1,
                None => st.locs.is_empty(),
            };
            if !covered || st.segs.is_empty() {
                break;
            }
            let s = st.segs.remove(0);
            std::fs::remove_file(&s.path)?;
            removed = true;
        }
        if removed {
            sync_dir(&self.shared.dir)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
