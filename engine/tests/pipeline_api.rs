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
fn prefetch_changes_nothing_reads_return() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), opts()).unwrap();
    let b = store.default_bucket().unwrap();
    // Several segments (8 KiB each), inline and heap-held keys, a deleted one.
    let key = |i: usize| {
        if i.is_multiple_of(3) {
            format!("a.key.long.enough.to.live.on.the.heap.{i}")
        } else {
            format!("k{i}")
        }
    };
    let mut live = std::collections::HashMap::new();
    for i in 0..100 {
        let value = format!("value-{i}-{}", "x".repeat(i * 3));
        b.put(&key(i), value.clone()).unwrap();
        live.insert(key(i), value.into_bytes());
    }
    b.delete(&key(7)).unwrap();
    live.remove(&key(7));
    // Rounds of every size around the 16 keys looked up at once, with missing and
    // invalid keys among them.
    for n in [0, 1, 15, 16, 17, 33, 120] {
        let mut keys: Vec<String> = (0..n).map(|i| key((i * 7) % 110)).collect();
        keys.extend(["nope".to_string(), "a..b".to_string(), String::new()]);
        b.prefetch(&keys);
        for k in &keys {
            let got = b.get_with(k, <[u8]>::to_vec);
            if logkv::validate_key(k).is_err() {
                assert!(matches!(got, Err(Error::BadKey(_))), "{k}");
            } else {
                assert_eq!(got.unwrap().as_ref(), live.get(k), "{k}");
            }
        }
    }
    assert_eq!(live.len(), 99);
    // Keys as bytes (not text), and a dropped bucket: a hint, never an error.
    b.prefetch([&b"k1"[..], b"\xff\xfe"]);
    assert_eq!(b.get("k1").unwrap().unwrap(), live["k1"]);
    let other = store
        .create_bucket("gone", BucketConfig::default())
        .unwrap();
    other.put("k", "v").unwrap();
    store.drop_bucket("gone").unwrap();
    other.prefetch(["k"]);
    assert!(matches!(other.get("k"), Err(Error::NoBucket(_))));
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
