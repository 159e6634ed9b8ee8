//! Checkpoints: a consistent copy of a store, as of one revision per bucket,
//! taken while readers and writers go on.
//!
//! [`crate::Store::checkpoint_source`] captures every bucket (see
//! `bucket/checkpoint.rs`: a short hold of each writer lock) and returns a
//! [`CheckpointSource`]: the list of files that make the copy, each readable
//! from what the capture pinned (open segments, an open snapshot file, bytes
//! in memory), so that nothing the store does afterwards — writes, rotation,
//! compaction deleting segments, a bucket dropped — changes what it reads.
//! [`crate::Store::checkpoint`] writes such a source into a new directory
//! ([`write_checkpoint`]); a server can also stream it to a remote machine.
//!
//! Writing a checkpoint directory:
//!
//! 1. everything is written under a temporary name beside the target
//!    (`.<name>.<pid>.<n>.partial`): sealed segments and the index snapshot
//!    are hard-linked (a copy when the link fails with `EXDEV`, another file
//!    system, or the file has gone: it is then read from what the capture
//!    holds open), the rest copied;
//! 2. every copied file is fsynced, then every directory, deepest first;
//! 3. the temporary directory is renamed to the target — never over anything
//!    that exists there (`renameat2(RENAME_NOREPLACE)`) — and the parent
//!    directory is fsynced.
//!
//! A crash or a power cut before step 3 leaves only the temporary directory
//! (delete it); after it, the target is whole. The target is a data
//! directory: `Store::open` opens it to exactly the captured state, and it
//! names nothing outside itself, so it can be moved, or swapped with a
//! store's directory while that store is closed.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::bucket::KeepStoreOpen;
use crate::error::{Error, Result};
use crate::fsutil::{create_dir_all_durable, sync_dir};
use crate::io::{File, OpenMode, Storage};
use crate::log::mark::MARK_AREA_LEN;
use crate::log::segment::Segment;

/// Bytes copied per read and write.
const COPY_CHUNK: usize = 1 << 20;

/// What a checkpoint written to a directory holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The checkpoint directory (a data directory).
    pub path: PathBuf,
    /// Number of buckets in it.
    pub buckets: usize,
    /// Bytes of all its files.
    pub bytes: u64,
    /// Of those, bytes hard-linked to the store's own files (no copy made).
    pub linked_bytes: u64,
    /// Each bucket's last revision in the copy: the copy holds exactly the
    /// bucket's writes up to it.
    pub revisions: BTreeMap<String, u64>,
}

/// A segment as a checkpoint reads it: its file, held open from the
/// capture on (segments open their files only as needed, and compaction may
/// remove the name meanwhile); or, when compaction removed the name before the
/// capture could open it, the segment's map, which still holds its records.
pub(crate) struct PinnedSegment {
    seg: Arc<Segment>,
    file: Option<Arc<File>>,
}

impl PinnedSegment {
    /// Opens the segment's file (or takes it from the store's open files);
    /// returns it with the file's length (the map's records when it is gone).
    pub(crate) fn new(seg: Arc<Segment>) -> Result<(PinnedSegment, u64)> {
        match seg.file() {
            Ok(file) => {
                let len = file.len().map_err(|e| Error::io(&seg.path, e))?;
                Ok((
                    PinnedSegment {
                        seg,
                        file: Some(file),
                    },
                    len,
                ))
            }
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                // Compacted away since the capture listed it: a sealed
                // segment's file ends with its records, all of them in the map.
                let len = seg.data_end();
                Ok((PinnedSegment { seg, file: None }, len))
            }
            Err(e) => Err(e),
        }
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let path = &self.seg.path;
        if let Some(file) = &self.file {
            return file
                .read_exact_at(buf, offset)
                .map_err(|e| Error::io(path, e));
        }
        let end = offset.checked_add(buf.len() as u64);
        let bytes = end
            .filter(|&e| e <= self.seg.data_end())
            .and_then(|_| self.seg.bytes(offset, buf.len()))
            .ok_or_else(|| {
                Error::Internal(format!("a read past the records of {}", path.display()))
            })?;
        buf.copy_from_slice(bytes);
        Ok(())
    }
}

/// Where a file of a checkpoint reads its bytes from.
pub(crate) enum Content {
    /// A sealed segment: the whole file, which never changes again.
    Sealed(PinnedSegment),
    /// The active segment up to the file's length, with `mark` in place of
    /// its durability mark area.
    Active {
        seg: PinnedSegment,
        mark: [u8; MARK_AREA_LEN],
    },
    /// A small file made in memory (`bucket.conf`, `lost.revs`).
    Bytes(Vec<u8>),
    /// A file opened at capture time (the index snapshot), and where it was.
    Opened {
        file: std::fs::File,
        source: PathBuf,
    },
}

/// One file of a checkpoint.
pub struct CheckpointFile {
    path: PathBuf,
    len: u64,
    content: Content,
}

impl std::fmt::Debug for CheckpointFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointFile")
            .field("path", &self.path)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl CheckpointFile {
    /// A file whose length is that of `content`'s bytes.
    pub(crate) fn new(path: PathBuf, content: Content) -> CheckpointFile {
        let len = match &content {
            Content::Bytes(b) => b.len() as u64,
            _ => 0,
        };
        CheckpointFile { path, len, content }
    }

    /// A file of `len` bytes read from `content`.
    pub(crate) fn sized(path: PathBuf, len: u64, content: Content) -> CheckpointFile {
        CheckpointFile { path, len, content }
    }

    /// The same file under `dir`.
    pub(crate) fn under(self, dir: &Path) -> CheckpointFile {
        CheckpointFile {
            path: dir.join(self.path),
            ..self
        }
    }

    /// Its path relative to the checkpoint directory, e.g.
    /// `buckets/default/0000000000000001-00000000.seg`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Reads exactly `buf.len()` bytes at `offset` (which must lie within the file).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.len)
            .ok_or_else(|| {
                Error::BadArgument(format!(
                    "read of {} bytes at {offset} past the end of {} ({} bytes)",
                    buf.len(),
                    self.path.display(),
                    self.len
                ))
            })?;
        match &self.content {
            Content::Sealed(seg) => seg.read(offset, buf),
            Content::Active { seg, mark } => {
                // The bytes of the file, but the mark area's from `mark`.
                seg.read(offset, buf)?;
                let area = seg.seg.header.encoded_len() as u64;
                let area_end = area + MARK_AREA_LEN as u64;
                let from = offset.max(area);
                let to = end.min(area_end);
                if from < to {
                    let (a, b) = (to_usize(from - offset)?, to_usize(to - offset)?);
                    let (m, n) = (to_usize(from - area)?, to_usize(to - area)?);
                    if let (Some(dst), Some(src)) = (buf.get_mut(a..b), mark.get(m..n)) {
                        dst.copy_from_slice(src);
                    }
                }
                Ok(())
            }
            Content::Bytes(bytes) => {
                let start = to_usize(offset)?;
                let src = bytes
                    .get(start..start + buf.len())
                    .ok_or_else(|| Error::Internal("checkpoint bytes shorter than said".into()))?;
                buf.copy_from_slice(src);
                Ok(())
            }
            Content::Opened { file, source } => {
                std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
                    .map_err(|e| Error::io(source, e))
            }
        }
    }

    /// The store's own file this one may be a hard link of, and its open
    /// handle (to check that the name still leads to the same file).
    fn link_source(&self) -> Option<(&Path, &std::fs::File)> {
        match &self.content {
            Content::Sealed(seg) => seg.file.as_ref().map(|f| (seg.seg.path.as_path(), f.std())),
            Content::Opened { file, source } => Some((source, file)),
            Content::Active { .. } | Content::Bytes(_) => None,
        }
    }
}

fn to_usize(n: u64) -> Result<usize> {
    usize::try_from(n).map_err(|_| Error::Internal(format!("{n} does not fit in memory")))
}

/// A checkpoint captured but not written yet: the files that make a
/// consistent copy of the store (see the module documentation).
///
/// It keeps the store open (and the files it reads from pinned) while it lives.
pub struct CheckpointSource {
    files: Vec<CheckpointFile>,
    revisions: BTreeMap<String, u64>,
    _keep: KeepStoreOpen,
}

impl std::fmt::Debug for CheckpointSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointSource")
            .field("files", &self.files.len())
            .field("revisions", &self.revisions)
            .finish_non_exhaustive()
    }
}

impl CheckpointSource {
    pub(crate) fn new(
        files: Vec<CheckpointFile>,
        revisions: BTreeMap<String, u64>,
        keep: KeepStoreOpen,
    ) -> CheckpointSource {
        CheckpointSource {
            files,
            revisions,
            _keep: keep,
        }
    }

    /// The files, bucket by bucket; a file's directories are the prefixes
    /// of its path (`buckets/`, `buckets/<bucket>/`).
    pub fn files(&self) -> &[CheckpointFile] {
        &self.files
    }

    /// Each bucket's last revision in the copy.
    pub fn revisions(&self) -> &BTreeMap<String, u64> {
        &self.revisions
    }

    /// Bytes of all the files.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.len).sum()
    }
}

/// Gives each temporary directory of this process its own name.
static NEXT_TMP: AtomicU64 = AtomicU64::new(0);

/// Writes `source` into the new directory `dir` (see the module documentation).
/// Fails with [`Error::PathExists`] if `dir` exists in any form.
pub(crate) fn write_checkpoint(
    storage: &Storage,
    source: &CheckpointSource,
    dir: &Path,
) -> Result<Checkpoint> {
    if dir.symlink_metadata().is_ok() {
        return Err(Error::PathExists(dir.to_path_buf()));
    }
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            Error::BadArgument(format!(
                "{} does not end in a directory name",
                dir.display()
            ))
        })?;
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    create_dir_all_durable(storage, parent)?;
    let tmp = parent.join(format!(
        ".{name}.{}.{}.partial",
        std::process::id(),
        NEXT_TMP.fetch_add(1, Ordering::Relaxed)
    ));
    storage.create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let filled = fill(storage, source, &tmp).and_then(|linked_bytes| {
        storage.rename_noreplace(&tmp, dir).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                Error::PathExists(dir.to_path_buf())
            } else {
                Error::io(dir, e)
            }
        })?;
        Ok(linked_bytes)
    });
    let linked_bytes = match filled {
        Ok(n) => n,
        Err(e) => {
            if let Err(left) = storage.remove_dir_all(&tmp) {
                tracing::warn!(dir = %tmp.display(), error = %left, "could not remove an unfinished checkpoint");
            }
            return Err(e);
        }
    };
    sync_dir(storage, parent)?;
    Ok(Checkpoint {
        path: dir.to_path_buf(),
        buckets: source.revisions.len(),
        bytes: source.bytes(),
        linked_bytes,
        revisions: source.revisions.clone(),
    })
}

/// Writes every file of `source` under `root`, durably; returns the bytes hard-linked.
fn fill(storage: &Storage, source: &CheckpointSource, root: &Path) -> Result<u64> {
    let mut dirs: Vec<PathBuf> = vec![root.to_path_buf()];
    let mut linked = 0;
    let mut links_work = true;
    let mut buf = Vec::new();
    for file in &source.files {
        let dst = root.join(&file.path);
        let parents: Vec<&Path> = file
            .path
            .ancestors()
            .skip(1)
            .filter(|p| !p.as_os_str().is_empty())
            .collect();
        for dir in parents.into_iter().rev() {
            let at = root.join(dir);
            if !dirs.contains(&at) {
                storage.create_dir(&at).map_err(|e| Error::io(&at, e))?;
                dirs.push(at);
            }
        }
        if links_work {
            if let Some((from, open)) = file.link_source() {
                match link(storage, from, open, &dst) {
                    Linked::Yes => {
                        linked += file.len;
                        continue;
                    }
                    Linked::OtherFileSystem => links_work = false,
                    Linked::No => {}
                    Linked::Failed(e) => return Err(e),
                }
            }
        }
        copy(storage, file, &dst, &mut buf)?;
    }
    // Deepest first: a directory's entry in its parent is synced after its own entries.
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for dir in &dirs {
        sync_dir(storage, dir)?;
    }
    Ok(linked)
}

/// What became of a hard link.
enum Linked {
    /// `to` is a second name of the open file.
    Yes,
    /// Another file system (`EXDEV`): no link will work, copy everything.
    OtherFileSystem,
    /// The name is gone (compaction, a drop) or leads elsewhere now: copy this file.
    No,
    /// Anything else.
    Failed(Error),
}

const EXDEV: i32 = 18;
const EPERM: i32 = 1;
const EMLINK: i32 = 31;

/// Links `to` to `from`, and checks that it is the file the capture holds open.
fn link(storage: &Storage, from: &Path, open: &std::fs::File, to: &Path) -> Linked {
    match storage.hard_link(from, to) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(EXDEV) => {
            tracing::info!(from = %from.display(), to = %to.display(), "checkpoint on another file system: copying instead of hard links");
            return Linked::OtherFileSystem;
        }
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                || matches!(e.raw_os_error(), Some(EPERM | EMLINK)) =>
        {
            return Linked::No;
        }
        Err(e) => return Linked::Failed(Error::io(to, e)),
    }
    let same = match (to.metadata(), open.metadata()) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    };
    if same {
        return Linked::Yes;
    }
    // The name was reused (a bucket dropped and created again): undo, copy.
    match storage.remove_file(to) {
        Ok(()) => Linked::No,
        Err(e) => Linked::Failed(Error::io(to, e)),
    }
}

/// Copies `file` into the new file `to` and fsyncs it.
fn copy(storage: &Storage, file: &CheckpointFile, to: &Path, buf: &mut Vec<u8>) -> Result<()> {
    let io = |e| Error::io(to, e);
    let out = storage.open(to, OpenMode::Create).map_err(io)?;
    let mut at = 0;
    while at < file.len {
        let n = usize::try_from(file.len - at).map_or(COPY_CHUNK, |n| n.min(COPY_CHUNK));
        buf.resize(n, 0);
        file.read_at(at, buf)?;
        out.write_all_at(buf, at).map_err(io)?;
        at += n as u64;
    }
    out.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::segment::{SegmentHeader, SegmentId};

    #[test]
    fn a_segment_removed_before_the_capture_opened_it_is_read_from_its_map() {
        let dir = tempfile::tempdir().unwrap();
        // One open file at most: the next segment's pushes this one's out.
        let storage = Storage::os().with_open_file_limit(1);
        let h = SegmentHeader::new(SegmentId { seq: 1, gen: 0 }, 0, vec![]);
        let seg = Segment::create(&storage, dir.path(), 1, h, 1 << 16, 8192, 0).unwrap();
        let body = b"records of a sealed segment";
        seg.write_at(body, seg.data_start).unwrap();
        let end = seg.data_start + body.len() as u64;
        seg.set_data_end(end);
        seg.file().unwrap().set_len(end).unwrap();
        let seg = Arc::new(seg);
        let whole = std::fs::read(&seg.path).unwrap();

        // Compaction removes the name, and no descriptor is open any more.
        storage.remove_file(&seg.path).unwrap();
        let h = SegmentHeader::new(SegmentId { seq: 2, gen: 0 }, 0, vec![]);
        let _next = Segment::create(&storage, dir.path(), 2, h, 1 << 16, 8192, 0).unwrap();
        assert!(seg.file().is_err(), "the name is gone");
        let (pinned, len) = PinnedSegment::new(Arc::clone(&seg)).unwrap();
        assert!(pinned.file.is_none(), "the file is gone: read from the map");
        assert_eq!(len, end);
        let mut buf = vec![0u8; whole.len()];
        pinned.read(0, &mut buf).unwrap();
        assert_eq!(buf, whole);
        let mut past = [0u8; 2];
        assert!(
            pinned.read(end - 1, &mut past).is_err(),
            "nothing past the records"
        );
    }
}
