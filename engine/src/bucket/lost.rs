//! Revisions lost to an unclean stop, under `FsyncPolicy::Interval` or `Never`.
//!
//! With those policies a write is visible before it is durable, so a crash or
//! a power cut may take back revisions that clients have read or watched. So
//! that such a revision never comes back with other data, each active segment
//! reserves the revisions it may give out (`reserved_through` in its header),
//! and recovery from an unclean stop resumes the revision counter above the
//! reservation. The revisions skipped — from just past the last one recovered
//! up to the reservation — are recorded here, in the bucket's file
//! [`LOST_FILE`], so that a watch resumed with `FROM` from inside them gets
//! `lost` instead of a different history, and a watch reading across them
//! does not mistake them for compacted records.
//!
//! The file holds one range a line, `first-last` (inclusive), written
//! atomically.
//!
//! While a store opens its buckets after such a stop, the range a bucket skips
//! is recorded instead in its active segment's durability mark (the count of
//! revisions given up below the reservation: no file to create, thousands of
//! buckets at once), and the next open reads it back from there. The bucket
//! writes it here before its log can leave that segment: before its first
//! write of any kind (one with a revision starts a new segment, its revision
//! being past the reservation), and before compaction seals the segment.

use std::fmt::Write as _;
use std::path::Path;

use crate::error::{Error, Result};
use crate::fsutil::{sync_dir, write_atomic};
use crate::io::{OpenMode, Storage};

/// The file of lost revision ranges in a bucket directory.
pub(crate) const LOST_FILE: &str = "lost.revs";

/// Ranges of revisions lost to unclean stops, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LostRevisions {
    ranges: Vec<(u64, u64)>,
}

impl LostRevisions {
    /// Reads the file of a bucket directory (none: no lost revisions).
    pub(crate) fn load(dir: &Path) -> Result<LostRevisions> {
        let path = dir.join(LOST_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(Error::io(&path, e)),
        };
        let bad = |line: &str| Error::Corrupt {
            path: path.clone(),
            offset: 0,
            reason: format!("{line:?} is not a revision range"),
        };
        let mut ranges = Vec::new();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let (a, b) = line.split_once('-').ok_or_else(|| bad(line))?;
            let a: u64 = a.parse().map_err(|_| bad(line))?;
            let b: u64 = b.parse().map_err(|_| bad(line))?;
            if a > b {
                return Err(bad(line));
            }
            ranges.push((a, b));
        }
        Ok(LostRevisions { ranges })
    }

    /// Records that revisions `first..=last` were lost, durably.
    pub(crate) fn add(
        &mut self,
        storage: &Storage,
        dir: &Path,
        first: u64,
        last: u64,
    ) -> Result<()> {
        if self.merge(first, last) {
            write_atomic(storage, &dir.join(LOST_FILE), self.encode().as_bytes())?;
        }
        Ok(())
    }

    /// Records that revisions `first..=last` were lost, in memory only: they
    /// are durable elsewhere (a segment's mark) until [`LostRevisions::save`].
    pub(crate) fn note(&mut self, first: u64, last: u64) {
        self.merge(first, last);
    }

    /// Writes the file (atomically and durably) as the ranges stand.
    pub(crate) fn save(&self, storage: &Storage, dir: &Path) -> Result<()> {
        write_atomic(storage, &dir.join(LOST_FILE), self.encode().as_bytes())
    }

    /// Makes the bucket's file durable as it is, if it exists: after an
    /// unclean stop it may have been read back from the page cache, renamed
    /// into place by a process that died before syncing the rename.
    pub(crate) fn sync_file(storage: &Storage, dir: &Path) -> Result<()> {
        let path = dir.join(LOST_FILE);
        let file = match storage.open(&path, OpenMode::ReadWrite) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io(&path, e)),
        };
        file.sync_all().map_err(|e| Error::io(&path, e))?;
        drop(file);
        sync_dir(storage, dir)
    }

    /// Adds `first..=last` to the ranges, merging neighbours; false if empty.
    fn merge(&mut self, first: u64, last: u64) -> bool {
        if first > last {
            return false;
        }
        self.ranges.push((first, last));
        self.ranges.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(self.ranges.len());
        for &(a, b) in &self.ranges {
            match merged.last_mut() {
                Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        self.ranges = merged;
        true
    }

    /// The text of the file: one `first-last` line per range.
    pub(crate) fn encode(&self) -> String {
        let mut text = String::new();
        for (a, b) in &self.ranges {
            // Writing to a String cannot fail.
            let _ = writeln!(text, "{a}-{b}");
        }
        text
    }

    /// The ranges, oldest first.
    pub(crate) fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }

    /// The highest lost revision (0 when none): the counter never goes below it.
    pub(crate) fn highest(&self) -> u64 {
        self.ranges.last().map_or(0, |r| r.1)
    }

    /// Whether `revision` was lost.
    pub(crate) fn contains(&self, revision: u64) -> bool {
        self.ranges
            .iter()
            .any(|&(a, b)| (a..=b).contains(&revision))
    }

    /// Whether every revision strictly between `seen` and `next` was lost
    /// (so a reader going from `seen` to `next` missed nothing that exists).
    pub(crate) fn covers_gap(&self, seen: u64, next: u64) -> bool {
        let mut at = seen + 1;
        while at < next {
            match self.ranges.iter().find(|&&(a, b)| (a..=b).contains(&at)) {
                Some(&(_, b)) => at = b + 1,
                None => return false,
            }
        }
        true
    }
}

impl super::BucketCore {
    /// Before the log can leave its active segment (any write: one with a
    /// revision starts a new segment after a skip; compaction sealing it):
    /// writes `lost.revs` if the revisions the last open skipped are recorded
    /// only in that segment's mark, then lets the log's marks drop them.
    pub(super) fn file_lost_revisions(&self, w: &mut super::Writer) -> Result<()> {
        if w.lost_unfiled {
            self.lost.save(self.log.storage(), &self.dir)?;
            self.log.skip_recorded();
            w.lost_unfiled = false;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_persist_and_answer() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::os();
        let mut lost = LostRevisions::load(dir.path()).unwrap();
        assert_eq!(lost.highest(), 0);
        lost.add(&storage, dir.path(), 10, 20).unwrap();
        lost.add(&storage, dir.path(), 21, 30).unwrap();
        lost.add(&storage, dir.path(), 50, 60).unwrap();
        let again = LostRevisions::load(dir.path()).unwrap();
        assert_eq!(again, lost);
        assert_eq!(again.ranges, vec![(10, 30), (50, 60)]);
        assert!(again.contains(10) && again.contains(30) && !again.contains(31));
        assert!(again.covers_gap(9, 31), "10..=30 lost");
        assert!(!again.covers_gap(9, 32), "31 was not lost");
        assert!(again.covers_gap(5, 6), "no gap");
        assert_eq!(again.highest(), 60);
    }
}
