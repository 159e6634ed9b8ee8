//! A process out of file descriptors (a server with many client connections) keeps its
//! logs writable: a sync whose segment file was closed by the store's open-file cache
//! opens it again after closing the cached files no one is using, instead of failing the
//! sync, which poisons the log until the store is reopened.
//!
//! Its own test binary: it lowers the process's descriptor limit.

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

#[test]
fn a_sync_out_of_descriptors_closes_idle_files_instead_of_failing() {
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
