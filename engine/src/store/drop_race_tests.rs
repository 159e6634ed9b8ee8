//! A bucket dropped and created again under the same name while a compaction pass of
//! the dropped one is under way. The pass writes its output, installs it and deletes
//! its inputs by their names in the bucket's directory: run across the drop, it did so
//! in the new bucket's directory, which lost its acknowledged writes and got the
//! dropped bucket's back. A drop now waits for the pass.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::io::{Backend, OpenMode, Os, Storage};
use crate::{BucketConfig, FsyncPolicy, Options, Store};

/// The operating system's file system, except that the first compaction output
/// created stops until the test lets it go on.
#[derive(Debug)]
struct PauseFirstOutput {
    paused: AtomicBool,
    reached: Mutex<Sender<()>>,
    go: Mutex<Receiver<()>>,
}

impl Backend for PauseFirstOutput {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<(File, u64)> {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        // A compaction output: generation 1, under its temporary name.
        if mode == OpenMode::Create
            && name.ends_with("-00000001.seg.tmp")
            && !self.paused.swap(true, Ordering::SeqCst)
        {
            let _ = self.reached.lock().map(|tx| tx.send(()));
            let _ = self.go.lock().map(|rx| rx.recv());
        }
        Os.open(path, mode)
    }
    fn write_at(&self, f: &File, id: u64, buf: &[u8], offset: u64) -> io::Result<()> {
        Os.write_at(f, id, buf, offset)
    }
    fn note_mapped_write(&self, id: u64, offset: u64, len: u64) -> io::Result<()> {
        Os.note_mapped_write(id, offset, len)
    }
    fn set_len(&self, f: &File, id: u64, len: u64) -> io::Result<()> {
        Os.set_len(f, id, len)
    }
    fn sync(&self, f: &File, id: u64, data_only: bool) -> io::Result<()> {
        Os.sync(f, id, data_only)
    }
    fn drop_cached(&self, f: &File, id: u64, from: u64, to: u64) -> io::Result<()> {
        Os.drop_cached(f, id, from, to)
    }
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        Os.create_dir(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        Os.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        Os.remove_file(path)
    }
    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        Os.remove_dir_all(path)
    }
    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        Os.hard_link(from, to)
    }
    fn rename_noreplace(&self, from: &Path, to: &Path) -> io::Result<()> {
        Os.rename_noreplace(from, to)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        Os.sync_dir(path)
    }
    fn can_sync_file_system(&self, path: &Path) -> bool {
        Os.can_sync_file_system(path)
    }
    fn sync_file_system(&self, path: &Path) -> io::Result<()> {
        Os.sync_file_system(path)
    }
}

#[test]
fn a_drop_and_a_new_bucket_of_the_same_name_wait_for_a_compaction_pass() {
    let dir = tempfile::tempdir().unwrap();
    let (reached_tx, reached_rx) = channel();
    let (go_tx, go_rx) = channel();
    let storage = Storage::over(Arc::new(PauseFirstOutput {
        paused: AtomicBool::new(false),
        reached: Mutex::new(reached_tx),
        go: Mutex::new(go_rx),
    }));
    let opts = Options {
        storage,
        background: false,
        segment_size: 4096,
        fsync: FsyncPolicy::Always,
        ..Options::default()
    };
    let store = Arc::new(Store::open(dir.path(), opts.clone()).unwrap());
    let old = store.create_bucket("x", BucketConfig::default()).unwrap();
    old.put("only-old", "1").unwrap();
    for i in 0..300 {
        old.put("k", format!("old{i}")).unwrap();
    }
    let pass = std::thread::spawn(move || old.compact().map(|_| ()));
    reached_rx.recv().unwrap();
    // Drop and create again, then write, while the pass is stopped. Before the fix
    // all of it ended within the wait below; now the drop waits for the pass, so
    // the wait ends empty and the pass goes on first (either way, the result below
    // must hold: this wait only gives the old order its chance).
    let (done_tx, done_rx) = channel();
    let s = Arc::clone(&store);
    let recreate = std::thread::spawn(move || {
        s.drop_bucket("x").unwrap();
        let new = s.create_bucket("x", BucketConfig::default()).unwrap();
        new.put("fresh", "new").unwrap();
        let _ = done_tx.send(());
        new
    });
    let _ = done_rx.recv_timeout(Duration::from_millis(500));
    go_tx.send(()).unwrap();
    let passed = pass.join().unwrap();
    assert!(
        passed.is_ok() || matches!(passed, Err(crate::Error::NoBucket(_))),
        "{passed:?}"
    );
    let new = recreate.join().unwrap();
    new.put("fresh2", "new2").unwrap();
    drop(new);
    drop(Arc::into_inner(store).unwrap());

    let store = Store::open(dir.path(), opts).unwrap();
    let b = store.bucket("x").unwrap();
    assert_eq!(
        b.get("only-old").unwrap(),
        None,
        "the dropped bucket's data came back"
    );
    assert_eq!(
        b.get("k").unwrap(),
        None,
        "the dropped bucket's data came back"
    );
    assert_eq!(b.get("fresh").unwrap().as_deref(), Some(&b"new"[..]));
    assert_eq!(b.get("fresh2").unwrap().as_deref(), Some(&b"new2"[..]));
}
