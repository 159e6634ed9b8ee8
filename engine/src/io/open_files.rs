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
//! failed sync poisons the log whichever descriptor reported it, and so does a
//! failure to open the file for a sync: when the process is out of
//! descriptors (many client connections), an open first closes the kept files
//! no one is using, so that it fails only when every descriptor is in use.

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
    /// When the process (or the system) is out of descriptors, the kept files
    /// no one is using are closed, least recently used first, until the open
    /// succeeds or none is left: a sync that needs its file opened again then
    /// fails only if every descriptor is really in use (a failed open before a
    /// sync fails the sync, and poisons the log).
    fn get_or_open(
        &self,
        key: u64,
        mut open: impl FnMut() -> io::Result<File>,
    ) -> io::Result<Arc<File>> {
        if let Some(file) = self.state.lock().touch(key) {
            return Ok(file);
        }
        loop {
            // Opened outside the lock: other buckets' syncs go on meanwhile.
            match open() {
                Ok(file) => return Ok(self.keep(key, Arc::new(file))),
                Err(e) if out_of_descriptors(&e) && self.close_one_idle() => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Closes the least recently used kept file that no one else holds;
    /// whether there was one.
    fn close_one_idle(&self) -> bool {
        let mut lru = self.state.lock();
        let idle = lru.by_use.values().copied().find(|k| {
            lru.files
                .get(k)
                .is_some_and(|(f, _)| Arc::strong_count(f) == 1)
        });
        let Some(key) = idle else {
            return false;
        };
        let closed = lru.files.remove(&key);
        if let Some((_, used)) = &closed {
            lru.by_use.remove(used);
        }
        drop(lru);
        // The descriptor is closed here, with the lock released.
        drop(closed);
        true
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

/// Whether `e` says no descriptor was left (`EMFILE`: the process's limit;
/// `ENFILE`: the system's).
pub fn out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
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

    #[test]
    fn out_of_descriptors_the_idle_kept_files_are_closed_to_open_one() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::os().with_open_file_limit(8);
        let files = &storage.open_files;
        let open = |i: usize| storage.open(&dir.path().join(format!("f{i}")), OpenMode::Create);
        for i in 0..3 {
            files.get_or_open(i as u64 + 1, || open(i)).unwrap();
        }
        let busy = files.get_or_open(1, || open(0)).unwrap(); // in use: never closed
        assert_eq!(files.len(), 3);
        // The process is out of descriptors until two are closed.
        let mut refusals = 2;
        let opened = files.get_or_open(4, || {
            if refusals > 0 {
                refusals -= 1;
                return Err(io::Error::from_raw_os_error(libc::EMFILE));
            }
            open(3)
        });
        assert!(opened.is_ok(), "{opened:?}");
        drop(opened);
        let lru = files.state.lock();
        assert!(lru.files.contains_key(&1), "the file in use stays kept");
        assert!(lru.files.contains_key(&4));
        assert_eq!(lru.files.len(), 2, "the two idle files were closed");
        drop(lru);
        // The file just opened is closed next; then nothing idle is left to
        // close, and the error is the caller's.
        let refused = files.get_or_open(5, || Err(io::Error::from_raw_os_error(libc::ENFILE)));
        assert_eq!(
            refused.err().and_then(|e| e.raw_os_error()),
            Some(libc::ENFILE)
        );
        assert_eq!(files.len(), 1, "only the file in use is left");
        // Another error closes nothing.
        drop(busy);
        let failed = files.get_or_open(6, || Err(io::Error::from_raw_os_error(libc::EIO)));
        assert!(failed.is_err());
        assert_eq!(files.len(), 1);
    }
}
