//! Cutting a log back: everything from a position on is removed, durably.
//!
//! The steps, each safe to be cut short by a crash:
//!
//! 1. Everything written is made durable (group commit), and no sync runs
//!    until the cut is done.
//! 2. The durability mark of the segment holding the cut is lowered to it and
//!    synced: from then on, recovery takes whatever lies past the cut in that
//!    segment, once it is the last one, for an unsynced tail.
//! 3. The later segments are deleted, newest first, and the directory synced:
//!    a crash leaves a prefix of them.
//! 4. Zeros are written over the cut bytes and synced: the segment reads as
//!    ending at the cut, and it becomes the active one again.
//!
//! A crash before the end may bring back a prefix of what was cut (records
//! past a mark that are still whole are read as an unsynced tail), never
//! anything in another order, and never once `truncate` has returned.

use std::sync::Arc;

use super::segment::Segment;
use super::{Appender, Log, LogPos};
use crate::error::{Error, Result};
use crate::fsutil::sync_dir;

impl Log {
    /// Cuts the log at `at` (a record boundary, at most the end): the
    /// segments after the one holding `at` are deleted, that segment becomes
    /// the active one again if it was sealed, the bytes past `at` are zeroed
    /// and its durability mark moved back to `at`, all durable before this
    /// returns. Appends continue at `at`.
    ///
    /// The caller holds the writer (`app`) and guarantees that no reader is
    /// looking at the bytes removed (reads stop at a segment's data end,
    /// which moves back to `at` first). A failure poisons the log: the files
    /// may be half cut until it is reopened.
    pub fn truncate(&self, app: &mut Appender, at: LogPos) -> Result<()> {
        self.commit.check()?;
        self.refuse_while_skip_unrecorded("truncate")?;
        let end = app.end();
        if at == end {
            return Ok(());
        }
        let target = self
            .segment_by_seq(at.seq())
            .filter(|s| at < end && (s.data_start..=s.data_end()).contains(&at.offset()))
            .ok_or_else(|| {
                Error::BadArgument(format!(
                    "cannot truncate at {at:?}: not a position of the log (its end is {end:?})"
                ))
            })?;
        let later: Vec<Arc<Segment>> = self
            .segments()
            .into_iter()
            .filter(|s| s.id.seq > at.seq())
            .collect();
        let active = if Arc::ptr_eq(&target, &app.active) {
            Arc::clone(&target)
        } else {
            // A sealed segment is mapped at its length: map it again at full
            // capacity, in the same slot, so appends can grow into it.
            let reopened = Arc::new(Segment::open(
                &self.cfg.storage,
                &target.path,
                target.slot,
                Some(self.cfg.segment_size),
            )?);
            reopened.set_data_end(at.offset());
            reopened
        };
        // Only once nothing can fail before the cut: a failed open above leaves
        // the log as it was, and a later truncate inside this segment possible.
        target.set_data_end(at.offset());
        let flags = self.eager_flag();
        let mut file_len = 0;
        self.commit.truncate(at, Arc::clone(&active), || {
            active.write_mark(at.offset(), flags)?;
            active.sync_data()?;
            for seg in later.iter().rev() {
                seg.set_data_end(seg.data_start);
                self.cfg
                    .storage
                    .remove_file(&seg.path)
                    .map_err(|e| Error::io(&seg.path, e))?;
            }
            if !later.is_empty() {
                sync_dir(&self.cfg.storage, &self.dir)?;
            }
            file_len = active.file_len()?;
            active
                .file()?
                .write_zeros(at.offset(), file_len)
                .map_err(|e| Error::io(&active.path, e))?;
            active.sync_data()
        })?;
        {
            let mut table = self.segments.write();
            for seg in &later {
                table.remove(seg.id);
            }
            table.insert(Arc::clone(&active));
        }
        self.clean_mark
            .store(false, std::sync::atomic::Ordering::Release);
        app.active = active;
        app.pos = at.offset();
        app.file_len = file_len;
        app.dirty_tail = 0;
        Ok(())
    }
}

#[cfg(test)]
#[allow(
    clippy::cast_possible_truncation,
    reason = "test revisions, seeds and offsets are small"
)]
mod tests {
    use std::path::Path;

    use super::super::record::{self, Decoded, Op, Record};
    use super::super::{LogConfig, Opened};
    use super::*;
    use crate::fsync::FsyncPolicy;
    use crate::io::{SimFs, Storage};

    fn config(storage: Storage) -> LogConfig {
        LogConfig {
            segment_size: 4096,
            fsync: FsyncPolicy::Always,
            repair: false,
            storage,
            mark_every: super::super::DEFAULT_MARK_EVERY,
            after_unclean: super::super::AfterUnclean::OpenSyncs,
        }
    }

    /// Opens the log in `dir`; returns it and the revisions recovered.
    fn open(dir: &Path, storage: &Storage) -> Result<(Opened, Vec<u64>)> {
        let mut revisions = Vec::new();
        let opened = Log::open(
            dir,
            config(storage.clone()),
            &mut |_| None,
            &mut |_, _, rec: &Record<'_>| {
                revisions.push(rec.header.revision);
                Ok(())
            },
        )?;
        Ok((opened, revisions))
    }

    /// Opens a new log in `dir`.
    fn open_empty(dir: &Path, storage: &Storage) -> (Log, Appender) {
        let (opened, revisions) = open(dir, storage).unwrap();
        assert!(revisions.is_empty());
        (opened.log, opened.appender)
    }

    /// Appends one record of revision `rev` (100 bytes of value); returns where it starts.
    fn put(log: &Log, app: &mut Appender, rev: u64) -> Result<LogPos> {
        let value = [rev as u8; 100];
        let len = record::encoded_len(8, value.len()) as u64;
        let salt = log.reserve(app, len, rev - 1, rev)?;
        let mut buf = Vec::new();
        record::encode(
            &mut buf,
            salt,
            Op::Put,
            0,
            rev,
            0,
            0,
            &rev.to_be_bytes(),
            &value,
        );
        let done = log.append(app, &buf)?;
        log.wait_durable(done.end)?;
        Ok(LogPos::new(done.end.seq(), done.offset))
    }

    #[test]
    fn truncate_across_segments_then_append_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::os();
        let (log, mut appender) = open_empty(dir.path(), &storage);
        let starts: Vec<LogPos> = (1..=120)
            .map(|rev| put(&log, &mut appender, rev).unwrap())
            .collect();
        assert!(log.segment_count() > 3, "the log rotated");
        // Cut in the middle of an early segment: the later ones go.
        let at = starts[40];
        assert!(at.seq() < appender.end().seq());
        log.truncate(&mut appender, at).unwrap();
        assert_eq!(appender.end(), at);
        assert_eq!(log.durable_end(), at);
        assert_eq!(log.segment_count() as u64, at.seq());
        let segment_files = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(
            segment_files as u64,
            at.seq(),
            "later segment files deleted"
        );
        // Appends go on from the cut, with revisions rising from there.
        for rev in 41..=60 {
            put(&log, &mut appender, rev + 1000).unwrap();
        }
        drop((log, appender));
        let (
            Opened {
                log, mut appender, ..
            },
            revisions,
        ) = open(dir.path(), &storage).unwrap();
        let want: Vec<u64> = (1..=40).chain(1041..=1060).collect();
        assert_eq!(revisions, want);
        // Truncating at the end does nothing; past it or before a segment's data is refused.
        let end = appender.end();
        log.truncate(&mut appender, end).unwrap();
        let past = LogPos::new(end.seq(), end.offset() + 1);
        assert!(log.truncate(&mut appender, past).is_err());
        assert!(log.truncate(&mut appender, LogPos::new(1, 3)).is_err());
        // Truncating everything leaves one empty segment to append to.
        let first = LogPos::new(1, log.segments()[0].data_start);
        log.truncate(&mut appender, first).unwrap();
        put(&log, &mut appender, 7).unwrap();
        drop((log, appender));
        let (_, revisions) = open(dir.path(), &storage).unwrap();
        assert_eq!(revisions, [7]);
    }

    #[test]
    fn deleted_segments_leave_the_rest_and_the_active_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::os();
        let (log, mut appender) = open_empty(dir.path(), &storage);
        for rev in 1..=100 {
            put(&log, &mut appender, rev).unwrap();
        }
        let sealed: Vec<_> = log.sealed_segments().iter().map(|s| s.id).collect();
        assert!(sealed.len() >= 2);
        assert!(log
            .delete_segments(&appender, &[appender.active().id])
            .is_err());
        log.delete_segments(&appender, &sealed[..2]).unwrap();
        assert_eq!(log.segment_count(), sealed.len() + 1 - 2);
        drop((log, appender));
        let (_, revisions) = open(dir.path(), &storage).unwrap();
        assert_eq!(revisions.last(), Some(&100));
        assert!(revisions.windows(2).all(|w| w[1] == w[0] + 1));
        assert!(revisions[0] > 1, "the first segments' records are gone");
    }

    /// Power cuts right after a truncate and after appends (a simulated page
    /// cache that loses, keeps or tears every unsynced write): what was
    /// durable is there, nothing cut comes back.
    #[test]
    fn power_cuts_after_truncate_and_appends() {
        for seed in 0..24u64 {
            let root = tempfile::tempdir().unwrap();
            let sim = SimFs::new(root.path(), seed).unwrap();
            let storage = Storage::simulated(&sim);
            let dir = sim.root();
            let (log, mut appender) = open_empty(&dir, &storage);
            let starts: Vec<LogPos> = (1..=90)
                .map(|rev| put(&log, &mut appender, rev).unwrap())
                .collect();
            let keep = 10 + (seed as usize * 7) % 70;
            log.truncate(&mut appender, starts[keep]).unwrap();
            if seed % 2 == 0 {
                sim.crash_now();
                drop((log, appender));
                sim.restart().unwrap();
                let (_, revisions) = open(&dir, &storage).unwrap();
                let want: Vec<u64> = (1..=keep as u64).collect();
                assert_eq!(revisions, want, "seed {seed}: cut right after the truncate");
                continue;
            }
            // Durable appends, then one more written but not waited for.
            for rev in 0..5 {
                put(&log, &mut appender, 500 + rev).unwrap();
            }
            let salt = log.reserve(&mut appender, 200, 504, 505).unwrap();
            let mut buf = Vec::new();
            record::encode(&mut buf, salt, Op::Put, 0, 505, 0, 0, b"k", &[9; 100]);
            log.append(&mut appender, &buf).unwrap();
            sim.crash_now();
            drop((log, appender));
            sim.restart().unwrap();
            let (_, revisions) = open(&dir, &storage).unwrap();
            let mut want: Vec<u64> = (1..=keep as u64).chain(500..505).collect();
            if revisions.last() == Some(&505) {
                want.push(505);
            }
            assert_eq!(revisions, want, "seed {seed}: cut after appends");
        }
    }

    #[test]
    fn records_past_a_cut_read_as_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::os();
        let (log, mut appender) = open_empty(dir.path(), &storage);
        let a = put(&log, &mut appender, 1).unwrap();
        let b = put(&log, &mut appender, 2).unwrap();
        log.truncate(&mut appender, b).unwrap();
        let seg = appender.active();
        let bytes = std::fs::read(&seg.path).unwrap();
        let tail = &bytes[b.offset() as usize..];
        assert!(tail.iter().all(|&x| x == 0), "the cut bytes are zeros");
        assert!(matches!(
            record::decode(&bytes[a.offset() as usize..], seg.header.salt),
            Decoded::Record(r) if r.header.revision == 1
        ));
        assert_eq!(seg.mark().map(|m| m.end), Some(b.offset()));
    }
}
