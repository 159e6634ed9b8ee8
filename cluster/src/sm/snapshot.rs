//! Snapshots on disk: a directory holding a checkpoint of the state (`data/`) and an `info`
//! file (what it is the result of, the leader time, and every file with its size and crc32).
//!
//! `<node>/snapshots/current` names the snapshot in force; building writes a `tmp-*`
//! directory and renames it into place, receiving writes an `incoming-*` directory whose
//! files are checked against their checksums before it is adopted. Older snapshots are
//! removed once a newer one is current.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use serde::{Deserialize, Serialize};

use super::applier::Applied;
use crate::descriptors;
use crate::fsutil::{invalid, read_checked, sync_dir, write_atomic};
use crate::types::SnapshotMeta;

const CURRENT_FILE: &str = "current";
const INFO_FILE: &str = "info";
/// The checkpoint inside a snapshot directory.
pub const DATA_DIR: &str = "data";

/// One file of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    /// Path relative to the snapshot's `data/`, `/`-separated.
    pub path: String,
    /// Bytes.
    pub size: u64,
    /// crc32 of the content.
    pub crc: u32,
}

/// What a snapshot is: its openraft meta, the leader time of its last entry, its files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    /// Last log id and membership covered.
    pub meta: SnapshotMeta,
    /// The leader time of the last entry covered.
    pub time_ms: u64,
    /// Every file of the checkpoint.
    pub files: Vec<FileInfo>,
}

impl SnapshotInfo {
    /// The applied state the snapshot is the result of.
    pub fn applied(&self) -> Applied {
        Applied {
            log_id: self.meta.last_log_id,
            membership: self.meta.last_membership.clone(),
            time_ms: self.time_ms,
        }
    }
}

/// A snapshot's directory: openraft's `SnapshotData` for this state machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotDir {
    /// The directory (holding `info` and `data/`).
    pub path: PathBuf,
}

impl SnapshotDir {
    /// Its `info`.
    pub fn info(&self) -> io::Result<SnapshotInfo> {
        let bytes = read_checked(&self.path.join(INFO_FILE))?
            .ok_or_else(|| invalid(format!("{}: no snapshot info", self.path.display())))?;
        postcard::from_bytes(&bytes).map_err(|e| invalid(format!("snapshot info: {e}")))
    }

    /// Its checkpoint directory.
    pub fn data(&self) -> PathBuf {
        self.path.join(DATA_DIR)
    }

    /// Writes its `info` (durably).
    pub fn write_info(&self, info: &SnapshotInfo) -> io::Result<()> {
        let bytes = postcard::to_stdvec(info).map_err(io::Error::other)?;
        write_atomic(&self.path.join(INFO_FILE), &bytes, true)
    }

    /// Checks every file against its size and checksum.
    pub fn verify(&self, info: &SnapshotInfo) -> io::Result<()> {
        for f in &info.files {
            let (size, crc) = checksum(&self.data().join(&f.path))?;
            if size != f.size || crc != f.crc {
                return Err(invalid(format!(
                    "snapshot file {} does not match its checksum",
                    f.path
                )));
            }
        }
        Ok(())
    }
}

/// Size and crc32 of a file.
pub fn checksum(path: &Path) -> io::Result<(u64, u32)> {
    let mut f = fs::File::open(path)?;
    let mut h = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        h.update(&buf[..n]);
    }
    Ok((size, h.finalize()))
}

/// Rejects a snapshot file path that could leave the snapshot directory.
pub fn check_relative(path: &str) -> io::Result<()> {
    let ok = !path.is_empty()
        && !path.starts_with('/')
        && path
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains('\\'));
    if ok {
        Ok(())
    } else {
        Err(invalid(format!("refusing snapshot file path {path:?}")))
    }
}

/// The snapshots of a node.
#[derive(Debug)]
pub struct SnapshotStore {
    dir: PathBuf,
    seq: AtomicU64,
    /// One adoption at a time: openraft builds snapshots in a task of their own, while an
    /// install may adopt one. Interleaved, `current` could end up naming a directory the
    /// other adoption had removed (and the node could not start again).
    adopting: Mutex<()>,
}

impl SnapshotStore {
    /// Opens `dir`, removing what an interrupted build or transfer left.
    pub fn open(dir: impl AsRef<Path>) -> io::Result<SnapshotStore> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir)?;
        let store = SnapshotStore {
            dir,
            seq: AtomicU64::new(0),
            adopting: Mutex::new(()),
        };
        let current = store.current_name()?;
        for entry in fs::read_dir(&store.dir)?.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if entry.path().is_dir() && Some(&name) != current.as_ref() {
                fs::remove_dir_all(entry.path())?;
            }
        }
        Ok(store)
    }

    fn current_name(&self) -> io::Result<Option<String>> {
        match read_checked(&self.dir.join(CURRENT_FILE))? {
            None => Ok(None),
            Some(b) => String::from_utf8(b)
                .map(Some)
                .map_err(|_| invalid("snapshot pointer is not UTF-8")),
        }
    }

    /// The snapshot in force, if any.
    pub fn current(&self) -> io::Result<Option<(SnapshotDir, SnapshotInfo)>> {
        let Some(name) = self.current_name()? else {
            return Ok(None);
        };
        let dir = SnapshotDir {
            path: self.dir.join(name),
        };
        let info = dir.info()?;
        Ok(Some((dir, info)))
    }

    /// A new, empty directory to build or receive a snapshot in.
    pub fn scratch(&self, prefix: &str) -> io::Result<SnapshotDir> {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let path = self
            .dir
            .join(format!("{prefix}-{}-{n}", std::process::id()));
        if path.exists() {
            fs::remove_dir_all(&path)?;
        }
        fs::create_dir_all(path.join(DATA_DIR))?;
        Ok(SnapshotDir { path })
    }

    /// Makes `dir` (complete, its info written) the snapshot in force, and removes the others:
    /// an installed snapshot is the state from now on, whatever was in force.
    pub fn adopt(&self, dir: &SnapshotDir, info: &SnapshotInfo) -> io::Result<SnapshotDir> {
        let _one = self.adopting.lock();
        self.adopt_locked(dir, info)
    }

    /// [`SnapshotStore::adopt`] for a snapshot this node built, unless the one in force is as
    /// new (installed, or built, while this one was being built): then `dir` is removed and
    /// the one in force is returned, with its info (it stands for this state as well).
    pub fn adopt_built(
        &self,
        dir: &SnapshotDir,
        info: &SnapshotInfo,
    ) -> io::Result<(SnapshotDir, SnapshotInfo)> {
        let _one = self.adopting.lock();
        if let Some((current, current_info)) = self.current()? {
            if current_info.meta.last_log_id >= info.meta.last_log_id {
                fs::remove_dir_all(&dir.path)?;
                return Ok((current, current_info));
            }
        }
        Ok((self.adopt_locked(dir, info)?, info.clone()))
    }

    fn adopt_locked(&self, dir: &SnapshotDir, info: &SnapshotInfo) -> io::Result<SnapshotDir> {
        let id = info.meta.last_log_id.map_or_else(
            || "empty".to_string(),
            |l| format!("{}-{}-{}", l.leader_id.term, l.leader_id.node_id, l.index),
        );
        let name = format!("snap-{id}-{}", self.seq.fetch_add(1, Ordering::Relaxed));
        let target = SnapshotDir {
            path: self.dir.join(&name),
        };
        if dir.path != target.path {
            fs::rename(&dir.path, &target.path)?;
        }
        // Each step again from the first, while descriptors are short: the rename is done
        // (a retry of the whole would not find `dir`), and openraft stops the node on a
        // failed build or install.
        descriptors::retry_io(&"making a snapshot the one in force", || {
            sync_dir(&self.dir)?;
            write_atomic(&self.dir.join(CURRENT_FILE), name.as_bytes(), true)?;
            for entry in fs::read_dir(&self.dir)?.flatten() {
                let n = entry.file_name().to_string_lossy().to_string();
                if n.starts_with("snap-") && n != name {
                    fs::remove_dir_all(entry.path())?;
                }
            }
            Ok(())
        })?;
        Ok(target)
    }
}

/// Syncs `root` and every directory under it (their entries: the files' names).
pub fn sync_dirs(root: &Path) -> io::Result<()> {
    for entry in fs::read_dir(root)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            sync_dirs(&entry.path())?;
        }
    }
    sync_dir(root)
}

/// Lists the files of a checkpoint in `data` with their sizes and checksums.
pub fn manifest(data: &Path) -> io::Result<Vec<FileInfo>> {
    let mut out = Vec::new();
    walk(data, "", &mut out)?;
    Ok(out)
}

fn walk(dir: &Path, prefix: &str, out: &mut Vec<FileInfo>) -> io::Result<()> {
    let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<io::Result<_>>()?;
    entries.sort_by_key(fs::DirEntry::file_name);
    for e in entries {
        let name = e
            .file_name()
            .to_str()
            .ok_or_else(|| invalid("a snapshot file name that is not UTF-8"))?
            .to_string();
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        if e.file_type()?.is_dir() {
            walk(&e.path(), &rel, out)?;
        } else {
            let (size, crc) = checksum(&e.path())?;
            out.push(FileInfo {
                path: rel,
                size,
                crc,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_that_escape_are_refused() {
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            "./a",
            "a\\b",
        ] {
            assert!(check_relative(bad).is_err(), "{bad:?}");
        }
        for good in ["a", "buckets/default/00000001.seg", "x.y"] {
            assert!(check_relative(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn manifests_and_verification() {
        let dir = tempfile::tempdir().unwrap();
        let snaps = SnapshotStore::open(dir.path()).unwrap();
        let s = snaps.scratch("tmp").unwrap();
        fs::create_dir_all(s.data().join("b")).unwrap();
        fs::write(s.data().join("b/f"), b"hello").unwrap();
        let files = manifest(&s.data()).unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].path, "b/f");
        assert_eq!(files[0].size, 5);
        let info = SnapshotInfo {
            meta: SnapshotMeta::default(),
            time_ms: 9,
            files,
        };
        s.write_info(&info).unwrap();
        s.verify(&info).unwrap();
        let adopted = snaps.adopt(&s, &info).unwrap();
        let (cur, got) = snaps.current().unwrap().unwrap();
        assert_eq!(cur, adopted);
        assert_eq!(got, info);
        fs::write(adopted.data().join("b/f"), b"hellx").unwrap();
        assert!(adopted.verify(&info).is_err());
        // Reopening keeps the current snapshot and drops scratch directories.
        let leftover = snaps.scratch("incoming").unwrap();
        drop(snaps);
        let snaps = SnapshotStore::open(dir.path()).unwrap();
        assert!(snaps.current().unwrap().is_some());
        assert!(!leftover.path.exists());
    }

    /// A snapshot built while a newer one was installed does not replace it (nor remove
    /// it): the one in force is returned for it. One newer than what is in force is adopted.
    #[test]
    fn a_built_snapshot_older_than_the_one_in_force_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let snaps = SnapshotStore::open(dir.path()).unwrap();
        let at = |index: u64| {
            let s = snaps.scratch("tmp").unwrap();
            fs::write(s.data().join("f"), index.to_string()).unwrap();
            let info = SnapshotInfo {
                meta: SnapshotMeta {
                    last_log_id: Some(crate::testing::log_id(1, index)),
                    ..SnapshotMeta::default()
                },
                time_ms: index,
                files: manifest(&s.data()).unwrap(),
            };
            s.write_info(&info).unwrap();
            (s, info)
        };
        let (installed, installed_info) = at(20);
        let in_force = snaps.adopt(&installed, &installed_info).unwrap();
        let (built, built_info) = at(10);
        let (got, got_info) = snaps.adopt_built(&built, &built_info).unwrap();
        assert_eq!((&got, &got_info), (&in_force, &installed_info));
        assert!(!built.path.exists(), "the older build is removed");
        assert_eq!(snaps.current().unwrap().unwrap().0, in_force);
        in_force.verify(&installed_info).unwrap();
        let (newer, newer_info) = at(30);
        let (got, got_info) = snaps.adopt_built(&newer, &newer_info).unwrap();
        assert_eq!(got_info, newer_info);
        assert_eq!(snaps.current().unwrap().unwrap().0, got);
        assert!(!in_force.path.exists(), "the older one in force is removed");
    }
}
