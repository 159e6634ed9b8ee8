//! Small file-system helpers shared by the log, the bucket catalogue and the
//! snapshot. Every change goes through the storage seam ([`crate::io`]).

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::error::{Error, Result};
use crate::io::{OpenMode, Storage};

/// Fsyncs a directory, making creations, renames and removals in it durable.
pub fn sync_dir(storage: &Storage, dir: &Path) -> Result<()> {
    storage.sync_dir(dir).map_err(|e| Error::io(dir, e))
}

/// Removes a file; one that is not there is not an error.
pub fn remove_if_exists(storage: &Storage, path: &Path) -> Result<()> {
    match storage.remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Creates `dir` and its missing parents, and makes each creation durable by
/// syncing the directory that holds it.
pub fn create_dir_all_durable(storage: &Storage, dir: &Path) -> Result<()> {
    let created = storage.create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    for made in &created {
        // A relative path's first directory is held by the current one.
        match made.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => sync_dir(storage, parent)?,
            _ => sync_dir(storage, Path::new("."))?,
        }
    }
    Ok(())
}

/// Replaces `path` with `contents` atomically: temp file (`<name>.tmp` beside
/// it), fsync, rename, fsync of the directory.
pub fn write_atomic(storage: &Storage, path: &Path, contents: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp_name = path
        .file_name()
        .map(std::ffi::OsStr::to_os_string)
        .unwrap_or_default();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let io = |e| Error::io(&tmp, e);
    let f = storage.open(&tmp, OpenMode::Create).map_err(io)?;
    f.write_all_at(contents, 0).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    storage.rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    sync_dir(storage, dir)
}

/// Makes durable everything written so far to the file systems holding
/// `dirs` (each file system synced once, however many of `dirs` it holds):
/// on a store of many buckets, one call in place of a sync per file.
pub(crate) fn sync_file_systems<'a>(
    storage: &Storage,
    dirs: impl IntoIterator<Item = &'a Path>,
) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for dir in dirs {
        let device = std::fs::metadata(dir).map_err(|e| Error::io(dir, e))?.dev();
        if seen.insert(device) {
            storage.sync_file_system(dir).map_err(|e| {
                let why = format!("syncing the whole file system that holds it: {e}");
                Error::io(dir, std::io::Error::new(e.kind(), why))
            })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{CutStyle, SimFs};

    /// Every directory it made survives a power cut that undoes every unsynced directory
    /// change; one made without the syncs does not.
    #[test]
    fn directories_made_durably_survive_a_power_cut() {
        let root = tempfile::tempdir().unwrap();
        let sim = SimFs::new(root.path(), 1).unwrap();
        let storage = Storage::simulated(&sim);
        let base = sim.root();
        create_dir_all_durable(&storage, &base.join("a/b/c")).unwrap();
        storage.create_dir_all(&base.join("x/y")).unwrap();
        // Already there: nothing to do, no error.
        create_dir_all_durable(&storage, &base.join("a/b")).unwrap();
        sim.restart_with(CutStyle::LoseAll).unwrap();
        assert!(base.join("a/b/c").is_dir());
        assert!(!base.join("x").exists());
    }
}
