//! The calls a server uses for pipelines: independent writes under one
//! append, zero-copy reads, cheap counters.

use logkv::{BucketConfig, Error, FsyncPolicy, Options, Store, WriteOp};

fn opts() -> Options {
    Options {
        background: false,
        fsync: FsyncPolicy::Always,
        segment_size: 8192,
        ..Default::default()
    }
}

#[test]
fn write_each_applies_each_write_on_its_own_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), opts()).unwrap();
    let b = store
        .create_bucket(
            "p",
            BucketConfig {
                history: 3,
                max_value_size: 10,
                ..Default::default()
            },
        )
        .unwrap();
    let ops = vec![
        WriteOp::put("a", "1"),
        WriteOp::create("a", "2"), // fails: a has a live value (from op 0)
        WriteOp::update("a", "3", 1), // sees op 0's revision
        WriteOp::put("bad key", "x"), // fails validation
        WriteOp::put("big", "x".repeat(11)), // fails: over max value
        WriteOp::delete_at("a", 99), // fails: wrong revision
        WriteOp::put("b", "4"),
    ];
    let (results, ticket) = b.write_each(&ops).unwrap();
    b.wait_durable(ticket).unwrap();
    let revs: Vec<Option<u64>> = results
        .iter()
        .map(|r| r.as_ref().ok().map(|w| w.revision))
        .collect();
    assert_eq!(
        revs,
        vec![Some(1), None, Some(2), None, None, None, Some(3)]
    );
    assert!(matches!(results[1], Err(Error::Exists)));
    assert!(matches!(results[3], Err(Error::BadKey(_))));
    assert!(matches!(results[4], Err(Error::TooLarge { .. })));
    assert!(matches!(
        results[5],
        Err(Error::WrongRevision {
            expected: 99,
            latest: 2
        })
    ));
    assert_eq!(b.get("a").unwrap().unwrap(), "3");
    assert_eq!(b.get("b").unwrap().unwrap(), "4");
    // Each write is a batch of its own in the log: all survive a reopen.
    drop((b, store));
    let store = Store::open(dir.path(), opts()).unwrap();
    let b = store.bucket("p").unwrap();
    assert_eq!(
        b.history(">")
            .unwrap()
            .iter()
            .map(|e| e.revision)
            .collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    // Only failures: nothing written, revisions unchanged.
    let (results, _) = b.write_each(&[WriteOp::create("a", "x")]).unwrap();
    assert!(results[0].is_err());
    assert_eq!(b.status().unwrap().last_revision, 3);
}

#[test]
fn get_with_reads_in_place_and_stats_count_without_walking() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), opts()).unwrap();
    let b = store.default_bucket().unwrap();
    b.put("k", "value").unwrap();
    b.put("j", "x").unwrap();
    b.delete("j").unwrap();
    assert_eq!(b.get_with("k", <[u8]>::len).unwrap(), Some(5));
    assert_eq!(b.get_with("j", <[u8]>::len).unwrap(), None);
    assert_eq!(b.get_with("nope", <[u8]>::len).unwrap(), None);
    assert!(matches!(
        b.get_with("a..b", <[u8]>::len),
        Err(Error::BadKey(_))
    ));
    let st = b.stats();
    assert_eq!((st.keys, st.values, st.last_revision), (1, 2, 3));
    assert!(st.bytes > 0 && st.segments >= 1 && st.fsyncs >= 1);
    assert_eq!(st.keys, b.status().unwrap().keys);
    assert!(b.is_open());
    let other = store
        .create_bucket("gone", BucketConfig::default())
        .unwrap();
    store.drop_bucket("gone").unwrap();
    assert!(!other.is_open());
}

#[test]
fn delete_glob_waits_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), opts()).unwrap();
    let b = store.default_bucket().unwrap();
    for i in 0..3000 {
        b.put(&format!("user:{i}"), "v").unwrap();
    }
    b.put("other", "v").unwrap();
    let before = b.stats().fsyncs;
    assert_eq!(b.delete_glob("user:*").unwrap(), 3000);
    assert!(b.stats().fsyncs - before <= 3, "one wait, not one per key");
    assert_eq!(b.keys(">").unwrap(), vec!["other"]);
}
