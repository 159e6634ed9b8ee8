//! The Raft log: openraft's entries in the engine's segment log (`logkv::log::Log`) in the
//! node's `raft/` directory, with the vote, the committed log id and the purge point beside
//! it. It is not a second storage engine: records, segments, recovery and group commit are
//! the engine's.
//!
//! - **Append** encodes each entry as one engine record ([`codec`]: key and revision from its
//!   index, the entry as the value), copies them into the active segment (a shared mapping:
//!   no system call; zeros are pre-written ahead of the writer so fdatasync does not update
//!   the inode), returns at once (the entries are readable), and hands the `IOFlushed`
//!   callback to the [`ack`] thread, which waits on the engine's group commit and only then
//!   acknowledges: with `--fsync always` an entry is durable before openraft counts it.
//!   Appends that arrive during one fdatasync share the next.
//! - **No hole, ever**: an append whose first index is not the last index + 1 (or the purge
//!   point + 1) is refused with an I/O error, which stops the node (openraft checks this only
//!   in debug builds, see openraft#1795).
//! - **Truncate** is `Log::truncate` at the first removed record: later segments deleted,
//!   the bytes zeroed and the durability mark moved back, durable before it returns, so
//!   stale records can never reappear after a crash behind new ones.
//! - **Purge** records the purge point durably first, then deletes the sealed segments that
//!   hold no entry past it.
//! - **Vote** and **purge point** are small files written atomically and durably (through
//!   the log's `Storage`) before the call returns. The **committed** log id is written
//!   atomically without an fsync, in place (`fsutil::SlotFile`: no file created or renamed per
//!   commit): it is a hint that lets a restarted node re-apply its log
//!   before it hears from a leader; a stale one only delays that, and one past the log's
//!   end (the entries it names were lost in a power cut) is cut back to the log's end at
//!   open.
//! - **No descriptor left** (`EMFILE`, `ENFILE`): saving the vote or the purge point, and
//!   starting a segment, wait for one (up to [`crate::descriptors::PATIENCE`]) rather than
//!   fail, which would stop the node for good; so does the [`ack`] thread's sync.
//! - **Open** is the engine's recovery: a torn tail of the last segment past its durability
//!   mark is cut (and logged); damage anywhere else, an index out of sequence or a leader id
//!   going backwards is corruption and the log refuses to open, naming the file and offset.

pub mod ack;
pub mod codec;
mod recent;
mod replay;

use std::collections::VecDeque;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use logkv::io::Storage;
use logkv::log::record::{self, Decoded, Op};
use logkv::log::segment::{Segment, SegmentId};
use logkv::log::{Appender, Log, LogConfig, LogPos, Opened};
use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use ack::Acks;
pub use ack::FsyncMode;
use recent::Recent;
use replay::Replay;

use crate::descriptors::{retry_async, retry_engine};
use crate::fsutil::{checked, invalid, read_checked, SlotFile};
use crate::types::{Entry, LogId, Vote, C};

const VOTE_FILE: &str = "vote";
const COMMITTED_FILE: &str = "committed";
const PURGED_FILE: &str = "purged";

/// How the Raft log is kept.
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// When appends are acknowledged.
    pub fsync: FsyncMode,
    /// Size at which a segment is sealed and a new one started.
    pub segment_size: u64,
    /// Where the files live (the operating system; a simulated page cache in tests).
    pub storage: Storage,
}

impl Default for LogOptions {
    fn default() -> LogOptions {
        LogOptions {
            fsync: FsyncMode::Always,
            segment_size: 64 << 20,
            storage: Storage::os(),
        }
    }
}

/// Where an entry is.
#[derive(Debug, Clone, Copy)]
struct Loc {
    /// The engine's slot of its segment.
    slot: u32,
    /// Offset of its record in the segment.
    offset: u64,
    /// Length of its record.
    len: u32,
    log_id: LogId,
}

struct State {
    /// The writer's end of the engine log.
    app: Appender,
    /// Every entry the log holds, in index order, without a gap.
    locs: VecDeque<Loc>,
    /// The newest entries appended, in memory: a suffix of `locs`.
    recent: Recent,
    purged: Option<LogId>,
    vote: Option<Vote>,
    committed: Option<LogId>,
    /// Buffers reused for encoding: records, one entry.
    buf: Vec<u8>,
    value: Vec<u8>,
}

struct Shared {
    dir: PathBuf,
    storage: Storage,
    log: Arc<Log>,
    state: Mutex<State>,
    /// Where the committed log id goes, rewritten on every commit.
    committed_file: Mutex<SlotFile>,
    acks: Acks,
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

/// Writes `value` to `path` atomically and durably.
fn save<T: Serialize>(storage: &Storage, path: &Path, value: T) -> io::Result<()> {
    let bytes = postcard::to_stdvec(&Saved(value)).map_err(io::Error::other)?;
    logkv::fsutil::write_atomic(storage, path, &checked(&bytes)).map_err(to_io)
}

/// A failed call on a file of the Raft log. It keeps the operating system's error, and so
/// its code ([`crate::descriptors::out_of_descriptors`] looks for it), in its message
/// rather than as its source (openraft prints the source again after the message).
#[derive(Debug, thiserror::Error)]
#[error("Raft log {}: {os}", path.display())]
pub(crate) struct LogIoError {
    path: PathBuf,
    os: io::Error,
}

impl LogIoError {
    /// The operating system's error.
    pub(crate) fn os_error(&self) -> &io::Error {
        &self.os
    }
}

/// An engine error as an I/O error; corruption names the file and offset.
fn to_io(e: logkv::Error) -> io::Error {
    match e {
        logkv::Error::Corrupt {
            path,
            offset,
            reason,
        } => invalid(format!(
            "corrupt Raft log {} at offset {offset}: {reason}",
            path.display()
        )),
        logkv::Error::Io { path, source } => {
            io::Error::new(source.kind(), LogIoError { path, os: source })
        }
        other => io::Error::other(format!("Raft log: {other}")),
    }
}

/// Refuses a Raft log written by an earlier build (segments named
/// `<first index>.log`): opening it as empty would forget its entries and vote.
fn refuse_old_format(dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(stem) = name.strip_suffix(".log") {
            if !stem.is_empty() && stem.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid(format!(
                    "{}: a Raft log segment of an earlier, unsupported format; \
                     this node's Raft log must be rebuilt (remove the node, clear its \
                     data directory and add it again)",
                    dir.join(&*name).display()
                )));
            }
        }
    }
    Ok(())
}

impl LogStore {
    /// Opens (or creates) the log in `dir`, recovering what a crash left.
    pub fn open(dir: impl AsRef<Path>, opts: LogOptions) -> io::Result<LogStore> {
        let dir = dir.as_ref().to_path_buf();
        let LogOptions {
            fsync,
            segment_size,
            storage,
        } = opts;
        logkv::fsutil::create_dir_all_durable(&storage, &dir).map_err(to_io)?;
        refuse_old_format(&dir)?;
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
        let mut replay = Replay {
            purged_index: purged.map(|p| p.index),
            locs: VecDeque::new(),
        };
        let cfg = LogConfig {
            segment_size,
            fsync: fsync.into(),
            repair: false,
            storage: storage.clone(),
            mark_every: logkv::log::DEFAULT_MARK_EVERY,
            after_unclean: logkv::log::AfterUnclean::OpenSyncs,
        };
        let Opened {
            log,
            appender,
            report,
            ..
        } = Log::open(&dir, cfg, &mut |_| None, &mut |seg, offset, rec| {
            replay.record(seg, offset, rec)
        })
        .map_err(to_io)?;
        if report.truncated_bytes > 0 {
            tracing::warn!(
                dir = %dir.display(),
                bytes = report.truncated_bytes,
                "cut a torn tail off the Raft log"
            );
        }
        // The hint is written without an fsync and openraft may commit entries it has
        // submitted but not yet flushed: after a power cut the hint can name an index past
        // the log's durable end. Every entry the log kept up to the hint was committed (a
        // committed entry is never truncated), so the hint is cut back to the last of them;
        // left ahead, the re-apply at start would ask for entries that are not there and the
        // node could not start.
        let last = replay.locs.back().map(|l| l.log_id).or(purged);
        let committed = match (committed, last) {
            (Some(c), Some(last)) if c.index > last.index => {
                tracing::warn!(
                    hint = c.index,
                    last = last.index,
                    "the committed hint is past the Raft log's end (lost in a crash): cut back"
                );
                Some(last)
            }
            (Some(c), None) => {
                tracing::warn!(hint = c.index, "the committed hint names an empty Raft log");
                None
            }
            (c, _) => c,
        };
        // Before the first write that is acknowledged before it is durable.
        log.clear_clean_mark().map_err(to_io)?;
        let log = Arc::new(log);
        let mut state = State {
            app: appender,
            locs: replay.locs,
            recent: Recent::default(),
            purged,
            vote,
            committed,
            buf: Vec::new(),
            value: Vec::new(),
        };
        // Finish a purge a crash interrupted.
        drop_purged_segments(&log, &mut state)?;
        let acks = Acks::start(Arc::clone(&log), fsync)?;
        Ok(LogStore {
            shared: Arc::new(Shared {
                dir,
                storage,
                log,
                state: Mutex::new(state),
                committed_file: Mutex::new(committed_file),
                acks,
            }),
        })
    }

    /// fdatasync calls made by the group commit so far.
    pub fn fsyncs(&self) -> u64 {
        self.shared.log.fsyncs()
    }

    /// The directory of the log.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Acknowledges what is queued, makes everything durable and marks the log closed
    /// cleanly (at shutdown).
    pub fn close(&self) -> io::Result<()> {
        self.shared.acks.stop();
        self.shared.log.close_clean().map_err(to_io)
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
        // The newest are in memory (what replication and apply read, right after the append).
        let cached_from = st.locs.len().saturating_sub(st.recent.len());
        let split = cached_from.clamp(lo, hi);
        let mut seg: Option<Arc<Segment>> = None;
        for loc in st.locs.range(lo..split) {
            if seg.as_ref().is_none_or(|s| s.slot != loc.slot) {
                seg = self.shared.log.segment(loc.slot);
            }
            let Some(s) = &seg else {
                return Err(io::Error::other(format!(
                    "entry {} is in a segment the log no longer has",
                    loc.log_id
                )));
            };
            let bytes = s.bytes(loc.offset, loc.len as usize).unwrap_or_default();
            let Decoded::Record(rec) = record::decode(bytes, s.header.salt) else {
                return Err(invalid(format!(
                    "{}: the record of entry {} at offset {} is damaged",
                    s.path.display(),
                    loc.log_id.index,
                    loc.offset
                )));
            };
            out.push(codec::decode_entry(rec.value)?);
        }
        if hi > split {
            out.extend(st.recent.range(split - cached_from..hi - cached_from));
        }
        Ok(out)
    }

    /// Removes the entries after `last`. A failed reopen of a sealed segment (the cut is
    /// inside it) changes nothing; the caller may call again.
    fn truncate_sync(&self, last: Option<LogId>) -> io::Result<()> {
        let mut guard = self.shared.state.lock();
        let st = &mut *guard;
        let cut = last.map_or(0, |l| l.index + 1);
        let Some(first) = st.locs.front().map(|l| l.log_id.index) else {
            return Ok(());
        };
        let pos = usize::try_from(cut.saturating_sub(first)).map_err(io::Error::other)?;
        let Some(loc) = st.locs.get(pos).copied() else {
            return Ok(());
        };
        let log = &self.shared.log;
        let seq = log
            .segment(loc.slot)
            .map(|s| s.id.seq)
            .ok_or_else(|| io::Error::other("the segment of the cut is gone"))?;
        log.truncate(&mut st.app, LogPos::new(seq, loc.offset))
            .map_err(to_io)?;
        st.locs.truncate(pos);
        st.recent.keep_below(cut);
        Ok(())
    }

    /// Writes the records of `entries`; returns the log position just past them.
    /// A segment that cannot be started for want of descriptors before anything is
    /// written fails the call, which changed nothing (the caller waits without holding
    /// the log, off the thread, and calls again); once records are written, the thread
    /// waits here, holding the log (see `descriptors.rs`).
    fn append_sync(&self, entries: &[Entry]) -> io::Result<Option<LogPos>> {
        let log = &self.shared.log;
        log.check().map_err(to_io)?;
        let mut guard = self.shared.state.lock();
        let st = &mut *guard;
        check_contiguous(st, entries)?;
        let mut buf = std::mem::take(&mut st.buf);
        let mut value = std::mem::take(&mut st.value);
        buf.clear();
        // Records in `buf`: offset in it, length, log id.
        let mut pending: Vec<(u64, u32, LogId)> = Vec::new();
        let mut salt = 0;
        let mut end = None;
        // The entries of `buf` start at `entries[chunk]`.
        let mut chunk = 0;
        for (i, entry) in entries.iter().enumerate() {
            let id = entry.log_id;
            value.clear();
            codec::encode_entry(entry, &mut value)?;
            if value.len() > record::MAX_VALUE_LEN {
                return Err(io::Error::other(format!(
                    "log entry {id} of {} bytes is too large",
                    value.len()
                )));
            }
            let rev = codec::revision(id.index);
            let len = record::encoded_len(8, value.len()) as u64;
            if !buf.is_empty() && !st.app.has_room(buf.len() as u64 + len, rev) {
                end = Some(write_out(log, st, &buf, &mut pending)?);
                st.recent.push(entries.get(chunk..i).unwrap_or_default());
                chunk = i;
                buf.clear();
            }
            if buf.is_empty() {
                // A new segment may start here: records carry its salt. Starting one needs
                // descriptors (its file, the directory); a rotation that found none changed
                // nothing. Before anything is written the call fails (its caller waits and
                // calls again); after, the thread waits here, holding the log.
                let app = &mut st.app;
                salt = if end.is_none() {
                    log.reserve(app, len, rev - 1, rev)
                } else {
                    retry_engine(&"starting a Raft log segment", || {
                        log.reserve(app, len, rev - 1, rev)
                    })
                }
                .map_err(to_io)?;
            }
            pending.push((
                buf.len() as u64,
                u32::try_from(len).map_err(io::Error::other)?,
                id,
            ));
            record::encode(
                &mut buf,
                salt,
                Op::Put,
                0,
                rev,
                0,
                0,
                &codec::key(id.index),
                &value,
            );
        }
        if !buf.is_empty() {
            end = Some(write_out(log, st, &buf, &mut pending)?);
            st.recent.push(entries.get(chunk..).unwrap_or_default());
        }
        st.buf = buf;
        st.value = value;
        Ok(end)
    }
}

/// Refuses entries that do not follow the log (or each other) without a hole, or whose leader
/// goes backwards.
fn check_contiguous(st: &State, entries: &[Entry]) -> io::Result<()> {
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
        last = Some(id);
        nonempty = true;
    }
    Ok(())
}

/// Appends `buf` to the log and indexes the `pending` entries in it; returns the log
/// position just past it.
fn write_out(
    log: &Log,
    st: &mut State,
    buf: &[u8],
    pending: &mut Vec<(u64, u32, LogId)>,
) -> io::Result<LogPos> {
    let appended = log.append(&mut st.app, buf).map_err(to_io)?;
    for (at, len, log_id) in pending.drain(..) {
        st.locs.push_back(Loc {
            slot: appended.slot,
            offset: appended.offset + at,
            len,
            log_id,
        });
    }
    Ok(appended.end)
}

/// Deletes the sealed segments before the one holding the first entry kept (all of them if
/// the log holds none): every entry in them is purged.
fn drop_purged_segments(log: &Log, st: &mut State) -> io::Result<()> {
    let first_kept = match st.locs.front() {
        Some(loc) => Some(
            log.segment(loc.slot)
                .map(|s| s.id.seq)
                .ok_or_else(|| io::Error::other("the first entry's segment is gone"))?,
        ),
        None => None,
    };
    let doomed: Vec<SegmentId> = log
        .sealed_segments()
        .iter()
        .map(|s| s.id)
        .filter(|id| first_kept.is_none_or(|k| id.seq < k))
        .collect();
    log.delete_segments(&st.app, &doomed).map_err(to_io)
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
        // Saving the same vote again is harmless: a save that found no descriptor (for the
        // temp file, or the directory's sync after the rename) waits for one.
        let path = self.shared.dir.join(VOTE_FILE);
        retry_async("saving the vote", || async {
            save(&self.shared.storage, &path, vote)
        })
        .await?;
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
        // Out of descriptors before anything was written: the task waits and tries again,
        // neither the thread (a runtime worker) nor the log held meanwhile.
        let this = &*self;
        let end = retry_async("starting a Raft log segment", || {
            std::future::ready(this.append_sync(&entries))
        })
        .await?;
        match end {
            Some(end) => self.shared.acks.submit(callback, end),
            None => callback.io_completed(Ok(())),
        }
        Ok(())
    }

    async fn truncate_after(&mut self, last: Option<LogId>) -> Result<(), io::Error> {
        // A cut inside a sealed segment opens its file again: out of descriptors, that
        // fails having changed nothing, and the task waits and tries again, the log's
        // state not held meanwhile (as an append's).
        let this = &*self;
        retry_async("truncating the Raft log", || {
            std::future::ready(this.truncate_sync(last))
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        // As the vote: saved again until a descriptor is found (or the patience is spent).
        let path = self.shared.dir.join(PURGED_FILE);
        retry_async("saving the purge point", || async {
            save(&self.shared.storage, &path, log_id)
        })
        .await?;
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
        st.recent.drop_through(log_id.index);
        match drop_purged_segments(&self.shared.log, st) {
            // The files are unlinked and the purge point is durable: only the directory's
            // sync found no descriptor. A power cut may bring the files back, which the
            // open skips (entries up to the purge point) and the next purge deletes.
            Err(e) if crate::descriptors::out_of_descriptors(&e) => {
                tracing::warn!(
                    "purge: the Raft log directory could not be synced after the purged \
                     segments were removed ({e}); they may come back after a power cut"
                );
                Ok(())
            }
            done => done,
        }
    }
}

#[cfg(test)]
mod tests;
