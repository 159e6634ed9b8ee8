//! Files opened as needed: a [`FileRef`] names a file without holding it
//! open, and a store-wide cache of the most recently used open files keeps
//! the descriptors bounded whatever the number of buckets.
//!
//! A segment is read through its memory map, which stays valid once its
//! descriptor is closed (the kernel keeps the file referenced by the map), so
//! a segment needs a descriptor only to write around the map (pre-written
//! zeros, durability marks, a cut) and to sync. It asks its [`FileRef`] for
//! one when it does: the cache hands out the open file, or opens it again by
//! name and keeps it, closing the least recently used one once it holds
//! [`DEFAULT_OPEN_FILES`] (or the limit the [`Storage`] was given). A file
//! being used while it is evicted stays open until that use ends (the cache
//! hands out shared handles). An idle bucket therefore holds no descriptor
//! once others have pushed its files out; a busy one keeps its active
//! segment's open between writes.
//!
//! Durability does not depend on which descriptor syncs: an `fsync` flushes
//! the file's pages (those written through the map included), whatever
//! descriptor it is called on, and Linux reports a write-back error to a
//! descriptor opened after it happened as long as no one has seen it yet. A
//! failed sync poisons the log whichever descriptor reported it.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::{File, OpenMode, Storage};

/// Open files a [`Storage`] keeps by default (a few hundred: far below the
/// usual limit of 1,024 descriptors, and enough for the buckets written at once).
pub const DEFAULT_OPEN_FILES: usize = 256;

/// Keys of [`FileRef`]s, unique in the process.
static NEXT_KEY: AtomicU64 = AtomicU64::new(1);

/// The open files of a [`Storage`] and their last use.
#[derive(Debug)]
pub(crate) struct OpenFiles {
    limit: usize,
    state: Mutex<Lru>,
}

#[derive(Debug, Default)]
struct Lru {
    /// Open files by key, with the tick of their last use.
    files: HashMap<u64, (Arc<File>, u64)>,
    /// Keys by last use, oldest first.
    by_use: BTreeMap<u64, u64>,
    tick: u64,
}

impl Lru {
    /// The file of `key`, marked as just used.
    fn touch(&mut self, key: u64) -> Option<Arc<File>> {
        self.tick += 1;
        let tick = self.tick;
        let (file, used) = self.files.get_mut(&key)?;
        self.by_use.remove(used);
        *used = tick;
        self.by_use.insert(tick, key);
        Some(Arc::clone(file))
    }

    fn remove(&mut self, key: u64) {
        if let Some((_, used)) = self.files.remove(&key) {
            self.by_use.remove(&used);
        }
    }
}

impl OpenFiles {
    pub(crate) fn new(limit: usize) -> OpenFiles {
        OpenFiles {
            limit: limit.max(1),
            state: Mutex::new(Lru::default()),
        }
    }

    /// The open file of `key`, or `open()`'s (kept, evicting the least recently used).
    fn get_or_open(
        &self,
        key: u64,
        open: impl FnOnce() -> io::Result<File>,
    ) -> io::Result<Arc<File>> {
        if let Some(file) = self.state.lock().touch(key) {
            return Ok(file);
        }
        // Opened outside the lock: other buckets' syncs go on meanwhile.
        let file = Arc::new(open()?);
        Ok(self.keep(key, file))
    }

    /// Keeps `file` as the open file of `key` (or returns the one another
    /// thread kept first), evicting the least recently used beyond the limit.
    fn keep(&self, key: u64, file: Arc<File>) -> Arc<File> {
        let mut lru = self.state.lock();
        if let Some(kept) = lru.touch(key) {
            return kept;
        }
        let tick = lru.tick;
        lru.files.insert(key, (Arc::clone(&file), tick));
        lru.by_use.insert(tick, key);
        while lru.files.len() > self.limit {
            let Some((_, oldest)) = lru.by_use.pop_first() else {
                break;
            };
            lru.files.remove(&oldest);
        }
        file
    }

    /// Forgets `key`'s open file (closed once no one uses it).
    fn forget(&self, key: u64) {
        self.state.lock().remove(key);
    }

    /// Number of files held open.
    pub(crate) fn len(&self) -> usize {
        self.state.lock().files.len()
    }
}

/// A file the storage layer knows, held open only while it is used (see the
/// module documentation). Opened again by name: the file must keep its name
/// while the reference lives (segments do).
pub struct FileRef {
    path: PathBuf,
    /// The backend's number for the file (see `Backend::open`).
    id: u64,
    key: u64,
    storage: Storage,
}

impl std::fmt::Debug for FileRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileRef")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl FileRef {
    /// A reference to the open `file`, now named `path`, which is closed now
    /// unless `keep_open` (then it goes into the cache, as a file about to be used).
    pub(crate) fn new(storage: &Storage, path: &Path, file: File, keep_open: bool) -> FileRef {
        let r = FileRef {
            path: path.to_path_buf(),
            id: file.id,
            key: NEXT_KEY.fetch_add(1, Ordering::Relaxed),
            storage: storage.clone(),
        };
        if keep_open {
            storage.open_files.keep(r.key, Arc::new(file));
        }
        r
    }

    /// The path of the file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file, open: the cached descriptor, or a new one.
    pub(crate) fn open(&self) -> io::Result<Arc<File>> {
        self.storage.open_files.get_or_open(self.key, || {
            self.storage.open(&self.path, OpenMode::ReadWrite)
        })
    }

    /// Tells the storage layer that `len` bytes at `offset` are about to be
    /// written through a shared mapping of this file; an error means they must not be.
    pub(crate) fn note_mapped_write(&self, offset: u64, len: u64) -> io::Result<()> {
        self.storage.backend.note_mapped_write(self.id, offset, len)
    }
}

impl Drop for FileRef {
    fn drop(&mut self) {
        self.storage.open_files.forget(self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_keeps_the_most_recently_used_files_open() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::os().with_open_file_limit(2);
        let refs: Vec<FileRef> = (0..4)
            .map(|i| {
                let path = dir.path().join(format!("f{i}"));
                let f = storage.open(&path, OpenMode::Create).unwrap();
                FileRef::new(&storage, &path, f, false)
            })
            .collect();
        assert_eq!(storage.open_files.len(), 0, "nothing kept open until used");
        refs[0].open().unwrap().write_all_at(b"zero", 0).unwrap();
        refs[1].open().unwrap();
        refs[0].open().unwrap();
        refs[2].open().unwrap(); // evicts 1, the least recently used
        assert_eq!(storage.open_files.len(), 2);
        let lru = storage.open_files.state.lock();
        assert!(lru.files.contains_key(&refs[0].key));
        assert!(lru.files.contains_key(&refs[2].key));
        assert!(!lru.files.contains_key(&refs[1].key));
        drop(lru);
        let mut buf = [0u8; 4];
        refs[0].open().unwrap().read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"zero");
        let held = refs[3].open().unwrap(); // evicts 0, but stays open while held
        refs[1].open().unwrap(); // evicts 2
        held.write_all_at(b"3", 0).unwrap();
        assert_eq!(std::fs::read(dir.path().join("f3")).unwrap(), b"3");
        drop(refs);
        assert_eq!(
            storage.open_files.len(),
            0,
            "dropped references are forgotten"
        );
        drop(held);
    }
}
