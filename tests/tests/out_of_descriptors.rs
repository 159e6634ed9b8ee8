//! A process out of file descriptors (a server with many client connections) keeps its
//! logs writable: a sync whose segment file was closed by the store's open-file cache
//! opens it again after closing the cached files no one is using, instead of failing the
//! sync, which poisons the log until the store is reopened. With every descriptor in
//! use, the sync fails without poisoning the log: it ran no fsync.
//!
//! Its own test binary: it lowers the process's descriptor limit (the tests take turns).

use logkv::io::Storage;
use logkv::{BucketConfig, FsyncPolicy, Options, Store};

/// The soft limit on open descriptors, and setting it.
fn descriptor_limit() -> libc::rlimit {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the limit into `lim`, which lives across the call.
    let ret = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) };
    assert_eq!(ret, 0, "getrlimit");
    lim
}

fn set_descriptor_limit(lim: &libc::rlimit) {
    // SAFETY: setrlimit reads `lim`, which lives across the call.
    let ret = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, lim) };
    assert_eq!(ret, 0, "setrlimit");
}

/// The tests change the process's limit: one at a time.
static LIMIT: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Lowers the limit to a few more than are open and opens files until none is left;
/// returns them with the limit to restore.
fn take_every_descriptor() -> (Vec<std::fs::File>, libc::rlimit) {
    let saved = descriptor_limit();
    let open_now = std::fs::read_dir("/proc/self/fd").expect("fds").count() as u64;
    set_descriptor_limit(&libc::rlimit {
        rlim_cur: (open_now + 16).min(saved.rlim_max),
        rlim_max: saved.rlim_max,
    });
    let mut taken = Vec::new();
    let exhausted = loop {
        match std::fs::File::open("/dev/null") {
            Ok(f) => taken.push(f),
            Err(e) => break e,
        }
    };
    assert_eq!(exhausted.raw_os_error(), Some(libc::EMFILE), "{exhausted}");
    (taken, saved)
}

/// Runs `f` with every descriptor taken; it must fail for want of one, without
/// poisoning anything (checked by the caller's next write).
fn refused_with_every_descriptor_taken<T: std::fmt::Debug>(f: impl FnOnce() -> logkv::Result<T>) {
    let (taken, saved) = take_every_descriptor();
    let refused = f();
    drop(taken);
    set_descriptor_limit(&saved);
    let refused = refused.expect_err("no descriptor left");
    assert!(
        refused.to_string().contains("Too many open files"),
        "{refused}"
    );
}

/// Reopens the store and checks bucket `c`'s key `k` and last revision.
fn assert_reopened(dir: &std::path::Path, opts: Options, value: &[u8], last_revision: u64) {
    let store = Store::open(dir, opts).expect("reopen");
    let c = store.bucket("c").expect("c");
    assert_eq!(
        c.get("k").expect("get").map(|v| v.to_vec()),
        Some(value.to_vec())
    );
    assert_eq!(c.status().expect("status").last_revision, last_revision);
}

#[test]
fn a_sync_with_every_descriptor_in_use_fails_without_poisoning_the_log() {
    let _turn = LIMIT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = Options {
        // Writes go through the map: only a sync needs the file.
        fsync: FsyncPolicy::Never,
        background: false,
        storage: Storage::os().with_open_file_limit(1),
        ..Options::default()
    };
    let store = Store::open(dir.path(), opts.clone()).expect("open");
    let c = store
        .create_bucket("c", BucketConfig::default())
        .expect("create c");
    store
        .default_bucket()
        .expect("default")
        .put("d", "1")
        .expect("put");
    store.sync().expect("sync");
    // The capture holds every segment file open, the one file the cache keeps included:
    // none is idle, and c's is not the one kept (the default bucket's was opened last).
    let pinned = store.checkpoint_source().expect("capture");
    c.put("k", "1")
        .expect("a write through the map needs no descriptor");
    // No descriptor to sync with.
    refused_with_every_descriptor_taken(|| c.sync());
    drop(pinned);
    c.put("k", "2").expect("the log was not poisoned");
    c.sync().expect("the next sync runs");
    drop(c);
    store.close().expect("close");

    assert_reopened(dir.path(), opts, b"2", 2);
}

/// The first write after a clean open under a policy that makes writes visible before
/// they are durable first clears the clean mark (a mark written and synced): with no
/// descriptor to write it, that write fails and the log is not poisoned.
#[test]
fn clearing_the_clean_mark_with_every_descriptor_in_use_fails_without_poisoning_the_log() {
    let _turn = LIMIT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = Options {
        fsync: FsyncPolicy::Never,
        background: false,
        storage: Storage::os().with_open_file_limit(1),
        ..Options::default()
    };
    let store = Store::open(dir.path(), opts.clone()).expect("open");
    store
        .create_bucket("c", BucketConfig::default())
        .expect("create c")
        .put("k", "1")
        .expect("put");
    store.close().expect("close: c's log is marked clean");

    let store = Store::open(dir.path(), opts.clone()).expect("reopen");
    let c = store.bucket("c").expect("c");
    // The default bucket's file is the one the cache keeps, and the capture pins it.
    store
        .default_bucket()
        .expect("default")
        .put("d", "1")
        .expect("put");
    let pinned = store.checkpoint_source().expect("capture");
    // No descriptor to clear the clean mark with.
    refused_with_every_descriptor_taken(|| c.put("k", "2"));
    drop(pinned);
    c.put("k", "3").expect("the log was not poisoned");
    drop(c);
    store.close().expect("close");

    assert_reopened(dir.path(), opts, b"3", 2);
}

/// A write that fills the active segment seals it (a cut and an fsync) and starts the
/// next: with no descriptor to open the old or the new file, that write fails before
/// anything changed and the log is not poisoned.
#[test]
fn a_rotation_with_every_descriptor_in_use_fails_without_poisoning_the_log() {
    let _turn = LIMIT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = Options {
        fsync: FsyncPolicy::Never,
        background: false,
        segment_size: 16 << 10,
        storage: Storage::os().with_open_file_limit(1),
        ..Options::default()
    };
    let value = vec![b'v'; 6 << 10];
    let store = Store::open(dir.path(), opts.clone()).expect("open");
    let c = store
        .create_bucket("c", BucketConfig::default())
        .expect("create c");
    c.put("k", value.clone()).expect("put");
    c.put("k", value.clone()).expect("put");
    store
        .default_bucket()
        .expect("default")
        .put("d", "1")
        .expect("put");
    let pinned = store.checkpoint_source().expect("capture");
    // The third value does not fit: the segment rotates.
    refused_with_every_descriptor_taken(|| c.put("k", value.clone()));
    drop(pinned);
    c.put("k", "last").expect("the log was not poisoned");
    c.sync().expect("sync");
    drop(c);
    store.close().expect("close");

    assert_reopened(dir.path(), opts, b"last", 3);
}

#[test]
fn a_sync_out_of_descriptors_closes_idle_files_instead_of_failing() {
    let _turn = LIMIT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = Options {
        fsync: FsyncPolicy::Always,
        // One file kept open: a write to one bucket closes the other's.
        storage: Storage::os().with_open_file_limit(1),
        ..Options::default()
    };
    let store = Store::open(dir.path(), opts.clone()).expect("open");
    let a = store
        .create_bucket("a", BucketConfig::default())
        .expect("create a");
    let b = store
        .create_bucket("b", BucketConfig::default())
        .expect("create b");
    a.put("k", "1").expect("put a");
    b.put("k", "1").expect("put b: a's file is closed");

    // Every descriptor taken: the limit lowered, then filled.
    let (taken, saved) = take_every_descriptor();

    // a's sync opens its file again: b's idle one is closed for it.
    let written = a.put("k", "2");
    drop(taken);
    set_descriptor_limit(&saved);
    written.expect("the write is made durable with the descriptor b's file gave back");
    a.put("k", "3").expect("the log was not poisoned");
    b.put("k", "2").expect("b's file opens again");
    drop((a, b));
    store.close().expect("close");

    let store = Store::open(dir.path(), opts).expect("reopen");
    let get = |bucket: &str| {
        store
            .bucket(bucket)
            .expect("bucket")
            .get("k")
            .expect("get")
            .map(|v| v.to_vec())
    };
    assert_eq!(get("a"), Some(b"3".to_vec()));
    assert_eq!(get("b"), Some(b"2".to_vec()));
}
