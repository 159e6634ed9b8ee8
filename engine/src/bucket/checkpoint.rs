//! Capturing one bucket for a checkpoint: which files make a copy of it as of
//! one revision, taken in a short hold of the writer lock.
//!
//! Under the writer lock the capture reads the segment table, the active
//! segment, the end of what was appended to it and the revision counter, and
//! opens the files it will read (by name they are this bucket's only while
//! the lock keeps a drop away); no
//! write is in progress then, so every record below that end is whole and
//! every revision up to the counter is in it (or was compacted away, or lost
//! to an unclean stop and listed in `lost.revs`). What the copy is made of:
//!
//! - every sealed segment, whole: sealed segments never change (compaction
//!   only deletes them), so they can be hard-linked;
//! - the active segment up to that end, with a mark area of one clean mark at
//!   the end: the copy opens as a log closed cleanly there;
//! - `bucket.conf` and `lost.revs` as the bucket holds them in memory;
//! - the index snapshot, if there is one: opening checks it against the
//!   segments (FORMAT.md) and scans the log instead when it does not match.
//!
//! Under `FsyncPolicy::Always` the appended writes may not be durable (nor
//! visible) yet: the capture waits for group commit to cover them — outside
//! the lock — so that a checkpoint never holds a write that might fail.

use std::path::PathBuf;
use std::sync::Arc;

use super::lost::LOST_FILE;
use super::BucketCore;
use crate::checkpoint::{CheckpointFile, Content, PinnedSegment};
use crate::config::CONFIG_FILE;
use crate::error::{Error, Result};
use crate::log::mark::{Mark, FLAG_CLEAN, MARK_AREA_LEN};
use crate::log::LogPos;
use crate::snapshot::SNAPSHOT_FILE;

/// One bucket's part of a checkpoint.
pub(crate) struct BucketCapture {
    /// The bucket's last revision in the copy.
    pub(crate) last_revision: u64,
    /// Its files, paths relative to the bucket's directory.
    pub(crate) files: Vec<CheckpointFile>,
}

impl BucketCore {
    /// The files of a copy of this bucket as of its current revision; `None`
    /// when the bucket has been dropped.
    pub(crate) fn capture(&self) -> Result<Option<BucketCapture>> {
        // The segments' files are opened under the lock, while the bucket's
        // directory is surely its own: once the lock is let go, a drop and a
        // new bucket of the same name could put other files under the same
        // names (a segment's file is opened by name when the store's open
        // files do not hold it). Opened, a file stays this bucket's.
        let (sealed, active, active_pinned, end, last_revision, snapshot) = {
            let w = self.writer.lock();
            if self.check_open().is_err() {
                return Ok(None);
            }
            let active = Arc::clone(w.app.active());
            let mut sealed = Vec::new();
            for seg in self.log.segments() {
                if seg.slot == active.slot {
                    continue;
                }
                if seg.id.seq >= active.id.seq {
                    return Err(Error::Internal(format!(
                        "segment {} is not older than the active segment {}",
                        seg.path.display(),
                        active.path.display()
                    )));
                }
                let name = PathBuf::from(seg.id.file_name());
                let (seg, len) = PinnedSegment::new(seg)?;
                sealed.push(CheckpointFile::sized(name, len, Content::Sealed(seg)));
            }
            let pinned = PinnedSegment::new(Arc::clone(&active))?.0;
            let snapshot = self.open_snapshot()?;
            let (end, last_revision) = (w.app.pos(), w.next_rev - 1);
            (sealed, active, pinned, end, last_revision, snapshot)
        };
        if self.visible_when_durable {
            self.log.wait_durable(LogPos::new(active.id.seq, end))?;
            self.publish_durable();
        }
        let mut files = vec![CheckpointFile::new(
            PathBuf::from(CONFIG_FILE),
            Content::Bytes(self.config.encode().into_bytes()),
        )];
        if !self.lost.ranges().is_empty() {
            files.push(CheckpointFile::new(
                PathBuf::from(LOST_FILE),
                Content::Bytes(self.lost.encode().into_bytes()),
            ));
        }
        files.extend(sealed);
        let mut mark = [0u8; MARK_AREA_LEN];
        let clean = Mark {
            counter: 1,
            end,
            flags: FLAG_CLEAN,
        };
        let slot = usize::try_from(Mark::slot_offset(0, clean.counter)).unwrap_or(0);
        if let Some(area) = mark.get_mut(slot..) {
            area.iter_mut()
                .zip(clean.encode(active.header.salt))
                .for_each(|(to, from)| *to = from);
        }
        files.push(CheckpointFile::sized(
            PathBuf::from(active.id.file_name()),
            end,
            Content::Active {
                seg: active_pinned,
                mark,
            },
        ));
        files.extend(snapshot);
        Ok(Some(BucketCapture {
            last_revision,
            files,
        }))
    }

    /// The index snapshot, opened, if there is one.
    fn open_snapshot(&self) -> Result<Option<CheckpointFile>> {
        let snap = self.dir.join(SNAPSHOT_FILE);
        match std::fs::File::open(&snap) {
            Ok(file) => {
                let len = file.metadata().map_err(|e| Error::io(&snap, e))?.len();
                Ok(Some(CheckpointFile::sized(
                    PathBuf::from(SNAPSHOT_FILE),
                    len,
                    Content::Opened { file, source: snap },
                )))
            }
            // None: recovery scans the log.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(&snap, e)),
        }
    }
}
