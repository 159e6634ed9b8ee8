//! File descriptors follow use, not the bucket count: an idle bucket holds
//! none, and a store keeps at most its storage's limit of files open however
//! many buckets are written. (A test binary of its own: other tests' files
//! would blur the count.)

use logkv::io::Storage;
use logkv::{BucketConfig, FsyncPolicy, Options, Store};

const BUCKETS: usize = 300;
/// Files the store may keep open for reuse.
const LIMIT: usize = 32;
/// Descriptors a store holds besides its segments: the directory lock.
const FIXED: usize = 1;

/// Descriptors this process has open now.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn open(dir: &std::path::Path) -> Store {
    let opts = Options {
        background: false,
        fsync: FsyncPolicy::Always,
        storage: Storage::os().with_open_file_limit(LIMIT),
        ..Default::default()
    };
    Store::open(dir, opts).unwrap()
}

/// Writes `round` into every bucket (each write synced) and checks it reads back.
fn write_all(store: &Store, round: u32) {
    for i in 0..BUCKETS {
        let b = store.bucket(&format!("b{i}")).unwrap();
        b.put("k", format!("r{round}.{i}")).unwrap();
        assert_eq!(
            b.get("k").unwrap().as_deref(),
            Some(format!("r{round}.{i}").as_bytes())
        );
    }
}

#[test]
fn idle_buckets_hold_no_file_descriptor() {
    let dir = tempfile::tempdir().unwrap();
    let before = open_fds();
    {
        let store = open(dir.path());
        for i in 0..BUCKETS {
            store
                .create_bucket(&format!("b{i}"), BucketConfig::default())
                .unwrap();
        }
        write_all(&store, 1);
        let held = open_fds() - before;
        assert!(
            held <= LIMIT + FIXED,
            "{held} descriptors after writing {BUCKETS} buckets (limit {LIMIT})"
        );
        assert!(store.options().storage.open_file_count() <= LIMIT);
    }
    assert_eq!(open_fds(), before, "a closed store holds nothing");

    let store = open(dir.path());
    let reopened = open_fds() - before;
    assert!(
        reopened <= FIXED,
        "{reopened} descriptors for {BUCKETS} idle buckets after a clean reopen"
    );
    for i in 0..BUCKETS {
        let b = store.bucket(&format!("b{i}")).unwrap();
        assert_eq!(
            b.get("k").unwrap().as_deref(),
            Some(format!("r1.{i}").as_bytes())
        );
    }
    assert!(open_fds() - before <= FIXED, "reads open no file");

    // Writes (and their syncs) open the files again, never more than the limit.
    write_all(&store, 2);
    let held = open_fds() - before;
    assert!(held <= LIMIT + FIXED, "{held} descriptors (limit {LIMIT})");
    drop(store);

    // What those files synced is there after a reopen.
    let store = open(dir.path());
    for i in 0..BUCKETS {
        let b = store.bucket(&format!("b{i}")).unwrap();
        assert_eq!(
            b.get("k").unwrap().as_deref(),
            Some(format!("r2.{i}").as_bytes())
        );
    }
}
