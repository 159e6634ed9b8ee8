//! The semantics contract, edge by edge: every error, TTL with a manual clock,
//! limits, revisions across reopen, patterns, paging under concurrent writes,
//! and concurrent writers. See docs/PROTOCOL.md.
#![allow(
    clippy::many_single_char_names,
    reason = "b, k, v, r, e (bucket, key, value, revision, entry) as throughout the tests"
)]

mod common;

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use logkv::{
    Bucket, BucketConfig, Error, FsyncPolicy, ManualClock, Op, Options, Store, Ttl, WriteOp,
    DEFAULT_BUCKET,
};
use logkv_server::error_code;

use common::{clock_opts, copy_store_dir, Rng, T0};

// Store and Bucket are shared between threads.
const _: fn() = || {
    fn send_sync<T: Send + Sync + 'static>() {}
    send_sync::<Store>();
    send_sync::<Bucket>();
};

struct Env {
    clock: ManualClock,
    dir: tempfile::TempDir,
    store: Store,
}

impl Env {
    fn new() -> Env {
        let clock = ManualClock::new(T0);
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), clock_opts(&clock)).unwrap();
        Env { clock, dir, store }
    }

    fn bucket(&self, name: &str, config: BucketConfig) -> Bucket {
        self.store.create_bucket(name, config).unwrap()
    }

    /// Closes the store (every handle must be gone) and opens it again.
    fn reopen(self) -> Env {
        let Env { clock, dir, store } = self;
        store.close().unwrap();
        let store = Store::open(dir.path(), clock_opts(&clock)).unwrap();
        Env { clock, dir, store }
    }

    /// A process crash: a copy of the directory as it is now (no sync, no close)
    /// is what the next open sees. Under `never` (these tests' policy) writes were visible
    /// before durable, so the revision counter then skips past its reservation
    /// (see [`counter_after_crash`]).
    fn crash(self) -> Env {
        let Env { clock, dir, store } = self;
        let copy = tempfile::tempdir().unwrap();
        copy_store_dir(dir.path(), copy.path());
        drop(store);
        drop(dir);
        let store = Store::open(copy.path(), clock_opts(&clock)).unwrap();
        Env {
            clock,
            dir: copy,
            store,
        }
    }
}

fn history(h: u8) -> BucketConfig {
    BucketConfig {
        history: h,
        ..Default::default()
    }
}

fn revs(entries: &[logkv::Entry]) -> Vec<u64> {
    entries.iter().map(|e| e.revision).collect()
}

fn val(b: &Bucket, key: &str) -> Option<String> {
    b.get(key)
        .unwrap()
        .map(|v| String::from_utf8(v.to_vec()).unwrap())
}

fn wrongrev(expected: u64, latest: u64) -> impl Fn(&Error) -> bool {
    move |e| matches!(e, Error::WrongRevision { expected: x, latest: l } if *x == expected && *l == latest)
}

#[track_caller]
fn assert_err<T: std::fmt::Debug>(r: logkv::Result<T>, want: impl Fn(&Error) -> bool, what: &str) {
    match r {
        Err(e) if want(&e) => {}
        other => panic!("{what}: unexpected {other:?}"),
    }
}

/// What a bucket looks like from outside, to show that a failed call changed nothing.
fn snapshot(b: &Bucket) -> (u64, u64, u64, Vec<logkv::Entry>) {
    let st = b.status().unwrap();
    (
        st.last_revision,
        st.values,
        st.bytes,
        b.history(">").unwrap(),
    )
}

// ---------------------------------------------------------------------------
// Keys and bucket names

fn bad_keys() -> Vec<String> {
    let mut v: Vec<String> = [
        "", " ", "a b", "a\tb", "a\nb", "a..b", ".a", "a.", ".", "..", "*", ">", "a.*", "a.>",
        "a*", "a>b", "?", "a?", "[", "a[b", "]", "a]", "é", "naïve", "a\u{7f}", "a\0b", "ключ",
    ]
    .iter()
    .map(std::string::ToString::to_string)
    .collect();
    v.push("x".repeat(1025));
    v.push(format!("{}.{}", "a".repeat(600), "b".repeat(600)));
    v
}

#[test]
fn bad_keys_are_rejected_and_change_nothing() {
    let env = Env::new();
    let b = env.bucket("b", history(5));
    let r1 = b.put("good", "1").unwrap();
    let before = snapshot(&b);
    let is_badkey = |e: &Error| matches!(e, Error::BadKey(_)) && error_code(e) == "BADKEY";
    for k in bad_keys() {
        let k = k.as_str();
        assert_err(b.put(k, "v"), is_badkey, k);
        assert_err(b.put_with_ttl(k, "v", Duration::from_secs(1)), is_badkey, k);
        assert_err(b.put_returning_previous(k, "v"), is_badkey, k);
        assert_err(b.create(k, "v"), is_badkey, k);
        assert_err(b.update(k, "v", 0), is_badkey, k);
        assert_err(b.update(k, "v", r1), is_badkey, k);
        assert_err(b.cas(k, "v", None), is_badkey, k);
        assert_err(b.cas(k, "v", Some(b"1")), is_badkey, k);
        assert_err(b.delete(k), is_badkey, k);
        assert_err(b.delete_at(k, r1), is_badkey, k);
        assert_err(b.delete_returning(k), is_badkey, k);
        assert_err(b.purge(k), is_badkey, k);
        assert_err(b.revert(k, r1), is_badkey, k);
        assert_err(b.get(k), is_badkey, k);
        assert_err(b.entry(k), is_badkey, k);
        assert_err(b.entry_at(k, r1), is_badkey, k);
        assert_err(b.ttl(k), is_badkey, k);
        // In a batch: the batch names the bad write, and nothing of it is applied.
        let batch = [
            WriteOp::put("good", "2"),
            WriteOp::put("other", "x"),
            WriteOp::put(k, "v"),
        ];
        match b.write(&batch) {
            Err(Error::Batch { index: 2, source }) if matches!(*source, Error::BadKey(_)) => {}
            other => panic!("batch with {k:?}: {other:?}"),
        }
        assert_eq!(snapshot(&b), before, "{k:?} changed something");
    }
    // A longest valid key works.
    let long = "x".repeat(logkv::MAX_KEY_LEN);
    assert!(b.put(&long, "ok").is_ok());
    assert_eq!(val(&b, "good").as_deref(), Some("1"));
}

#[test]
fn bad_patterns_are_rejected() {
    let env = Env::new();
    let b = env.default_bucket();
    b.put("a.b", "1").unwrap();
    for p in [
        "", "a..b", ".a", "a.", "a*", "a.>.b", ">.a", "a.b*", "é", "a b",
    ] {
        assert_err(b.keys(p), |e| matches!(e, Error::BadKey(_)), p);
        assert_err(b.history(p), |e| matches!(e, Error::BadKey(_)), p);
    }
    for g in ["", "a[b", "a\\"] {
        assert_err(b.search(g, 0), |e| matches!(e, Error::BadArgument(_)), g);
        assert_err(b.delete_glob(g), |e| matches!(e, Error::BadArgument(_)), g);
        assert_err(
            env.store.search(g, "*", 0),
            |e| matches!(e, Error::BadArgument(_)),
            g,
        );
        assert_err(
            env.store.search("*", g, 0),
            |e| matches!(e, Error::BadArgument(_)),
            g,
        );
    }
    assert_eq!(b.status().unwrap().last_revision, 1);
}

impl Env {
    fn default_bucket(&self) -> Bucket {
        self.store.default_bucket().unwrap()
    }
}

#[test]
fn bad_bucket_names_and_configs() {
    let env = Env::new();
    let long = "x".repeat(65);
    for name in ["", "a.b", "a b", "a/b", "..", "é", "a*", long.as_str()] {
        assert_err(
            env.store.create_bucket(name, history(1)),
            |e| matches!(e, Error::BadBucket(_)),
            name,
        );
        assert_err(
            env.store.drop_bucket(name),
            |e| matches!(e, Error::BadBucket(_)),
            name,
        );
        assert_err(
            env.store.bucket(name),
            |e| matches!(e, Error::NoBucket(_) | Error::BadBucket(_)),
            name,
        );
    }
    assert!(env.store.create_bucket(&"x".repeat(64), history(1)).is_ok());
    assert!(env.store.create_bucket("A-b_9", history(1)).is_ok());
    let bad_arg = |e: &Error| matches!(e, Error::BadArgument(_)) && error_code(e) == "BADARG";
    assert_err(
        env.store.create_bucket("h0", history(0)),
        bad_arg,
        "history 0",
    );
    assert_err(
        env.store.create_bucket("h65", history(65)),
        bad_arg,
        "history 65",
    );
    assert!(env.store.create_bucket("h64", history(64)).is_ok());
    let ttl0 = BucketConfig {
        ttl: Some(Duration::ZERO),
        ..Default::default()
    };
    assert_err(env.store.create_bucket("ttl0", ttl0), bad_arg, "ttl 0");
    // Nothing was created by the failures.
    let mut want = vec![
        "A-b_9".to_string(),
        DEFAULT_BUCKET.to_string(),
        "h64".to_string(),
        "x".repeat(64),
    ];
    want.sort();
    assert_eq!(env.store.bucket_names(), want);
    assert_err(
        env.store.bucket("missing"),
        |e| matches!(e, Error::NoBucket(_)),
        "missing",
    );
    assert_err(
        env.store.drop_bucket("missing"),
        |e| matches!(e, Error::NoBucket(_)),
        "drop missing",
    );
}

#[test]
fn create_bucket_twice_is_bucket_exists() {
    let env = Env::new();
    let b = env.bucket("twice", history(3));
    b.put("k", "v").unwrap();
    let exists = |e: &Error| matches!(e, Error::BucketExists(_)) && error_code(e) == "EXISTS";
    assert_err(
        env.store.create_bucket("twice", history(3)),
        exists,
        "twice",
    );
    assert_err(
        env.store.create_bucket("twice", history(7)),
        exists,
        "twice, other config",
    );
    assert_err(
        env.store.create_bucket(DEFAULT_BUCKET, history(1)),
        exists,
        "default",
    );
    // The existing bucket is untouched.
    assert_eq!(val(&b, "k").as_deref(), Some("v"));
    assert_eq!(env.store.bucket("twice").unwrap().config().history, 3);
    // Still there, with its config, after a reopen.
    drop(b);
    let env = env.reopen();
    assert_err(
        env.store.create_bucket("twice", history(1)),
        exists,
        "after reopen",
    );
    let b = env.store.bucket("twice").unwrap();
    assert_eq!(b.config().history, 3);
    assert_eq!(val(&b, "k").as_deref(), Some("v"));
}

#[test]
fn drop_bucket_removes_data_from_disk() {
    let env = Env::new();
    let b = env.bucket("gone", history(4));
    for i in 0..200 {
        b.put(&format!("k{i}"), vec![b'x'; 64]).unwrap();
    }
    let bucket_dir = env.dir.path().join("buckets").join("gone");
    assert!(bucket_dir.is_dir());
    env.store.drop_bucket("gone").unwrap();
    assert!(!bucket_dir.exists(), "bucket directory still on disk");
    let leftovers: Vec<_> = std::fs::read_dir(env.dir.path().join("buckets"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains("gone"))
        .collect();
    assert!(leftovers.is_empty(), "left on disk: {leftovers:?}");
    let nobucket = |e: &Error| matches!(e, Error::NoBucket(_)) && error_code(e) == "NOBUCKET";
    assert_err(env.store.bucket("gone"), nobucket, "bucket()");
    assert_err(env.store.drop_bucket("gone"), nobucket, "drop again");
    // An old handle fails instead of writing into the void.
    assert_err(b.put("k0", "v"), nobucket, "put on old handle");
    assert_err(b.get("k0"), nobucket, "get on old handle");
    assert_err(b.keys(">"), nobucket, "keys on old handle");
    assert_err(b.status(), nobucket, "status on old handle");
    assert!(!env.store.bucket_names().contains(&"gone".to_string()));
    // The default bucket cannot be dropped.
    let d = env.default_bucket();
    d.put("x", "1").unwrap();
    assert_err(
        env.store.drop_bucket(DEFAULT_BUCKET),
        |e| matches!(e, Error::BadArgument(_)),
        "drop default",
    );
    assert_eq!(val(&d, "x").as_deref(), Some("1"));
    drop((b, d));
    // Not back after a reopen, and a new bucket of that name starts empty, at revision 1.
    let env = env.reopen();
    assert_err(env.store.bucket("gone"), nobucket, "after reopen");
    assert_eq!(val(&env.default_bucket(), "x").as_deref(), Some("1"));
    let b = env.bucket("gone", history(1));
    assert_eq!(b.get("k0").unwrap(), None);
    assert_eq!(b.status().unwrap().values, 0);
    assert_eq!(b.put("k0", "new").unwrap(), 1);
}

// ---------------------------------------------------------------------------
// Revisions, markers, create/update/cas/delete/purge/revert

#[test]
fn revisions_are_per_bucket_and_raised_by_every_write() {
    let env = Env::new();
    let a = env.bucket("a", history(5));
    let b = env.bucket("b", history(5));
    assert_eq!(a.put("k", "1").unwrap(), 1);
    assert_eq!(a.delete("k").unwrap(), 2);
    assert_eq!(b.put("k", "1").unwrap(), 1);
    assert_eq!(a.purge("k").unwrap(), 3);
    assert_eq!(a.delete("never-written").unwrap(), 4);
    assert_eq!(a.purge("never-written-either").unwrap(), 5);
    assert_eq!(b.put("k", "2").unwrap(), 2);
    assert_eq!(a.status().unwrap().last_revision, 5);
    assert_eq!(b.status().unwrap().last_revision, 2);
    // Failed writes use no revision.
    assert!(a.create("x", "1").is_ok());
    assert!(a.create("x", "2").is_err());
    assert!(a.update("x", "2", 99).is_err());
    assert_eq!(a.put("y", "1").unwrap(), 7);
}

#[test]
fn delete_markers() {
    let env = Env::new();
    let b = env.bucket("b", history(10));
    // A missing key gets a marker too.
    let d0 = b.delete("missing").unwrap();
    let e = b.entry_at("missing", d0).unwrap().unwrap();
    assert_eq!(
        (e.op, e.revision, e.value.len(), e.key.as_str()),
        (Op::Del, d0, 0, "missing")
    );
    assert_eq!(b.get("missing").unwrap(), None);
    assert_eq!(b.entry("missing").unwrap(), None);
    assert_eq!(b.keys(">").unwrap(), Vec::<String>::new());
    assert_eq!(revs(&b.history("missing").unwrap()), vec![d0]);

    let r1 = b.put("k", "1").unwrap();
    let r2 = b.put("k", "2").unwrap();
    let (d1, prev) = b.delete_returning("k").unwrap();
    assert_eq!(prev.unwrap().revision, r2);
    assert_eq!(b.get("k").unwrap(), None);
    assert_eq!(b.ttl("k").unwrap(), Ttl::Missing);
    let h = b.history("k").unwrap();
    assert_eq!(revs(&h), vec![r1, r2, d1]);
    assert_eq!(
        h.iter().map(|e| e.op).collect::<Vec<_>>(),
        vec![Op::Put, Op::Put, Op::Del]
    );
    // Deleting a deleted key writes another marker, with nothing to return.
    let (d2, prev) = b.delete_returning("k").unwrap();
    assert_eq!((d2, prev), (d1 + 1, None));
    // delete_at needs the latest revision, markers included.
    assert_err(b.delete_at("k", d1), wrongrev(d1, d2), "stale marker rev");
    assert_err(b.delete_at("k", 0), wrongrev(0, d2), "rev 0");
    assert_err(b.delete_at("nothing", 5), wrongrev(5, 0), "missing key");
    // Revision 0 is the latest of a key with no retained entry, as for UPDATE: the
    // marker is written (it said "expected 0, latest 0").
    assert_eq!(b.delete_at("nothing", 0).unwrap(), d2 + 1);
    let d3 = b.delete_at("k", d2).unwrap();
    assert_eq!(d3, d2 + 2);
    // Old values stay readable by revision.
    assert_eq!(b.entry_at("k", r1).unwrap().unwrap().value, "1");
    assert_eq!(b.entry_at("k", d2).unwrap().unwrap().op, Op::Del);
    assert_eq!(b.entry_at("k", 9999).unwrap(), None);
    assert_eq!(
        b.entry_at("other", r1).unwrap(),
        None,
        "a revision of another key"
    );
    // PURGE drops every earlier revision and is itself retained.
    let p = b.purge("k").unwrap();
    let h = b.history("k").unwrap();
    assert_eq!(revs(&h), vec![p]);
    assert_eq!(h[0].op, Op::Purge);
    assert_eq!(b.entry_at("k", r1).unwrap(), None);
    assert_eq!(b.entry_at("k", p).unwrap().unwrap().op, Op::Purge);
    // The markers of "missing" and "nothing", and the purge marker.
    assert_eq!(b.status().unwrap().values, 3);
}

#[test]
fn history_window_counts_markers() {
    let env = Env::new();
    let b = env.bucket("b", history(3));
    let r: Vec<u64> = (0..5)
        .map(|i| b.put("k", format!("{i}")).unwrap())
        .collect();
    assert_eq!(revs(&b.history("k").unwrap()), r[2..].to_vec());
    let d = b.delete("k").unwrap();
    assert_eq!(revs(&b.history("k").unwrap()), vec![r[3], r[4], d]);
    assert_eq!(b.entry_at("k", r[2]).unwrap(), None);
    let h1 = env.bucket("h1", history(1));
    h1.put("k", "1").unwrap();
    let d = h1.delete("k").unwrap();
    assert_eq!(revs(&h1.history("k").unwrap()), vec![d]);
    assert_eq!(h1.status().unwrap().values, 1);
}

#[test]
fn create_semantics() {
    let env = Env::new();
    let b = env.bucket("b", history(5));
    let r1 = b.create("k", "1").unwrap();
    let exists = |e: &Error| matches!(e, Error::Exists) && error_code(e) == "EXISTS";
    assert_err(b.create("k", "2"), exists, "live value");
    assert_eq!(val(&b, "k").as_deref(), Some("1"));
    b.delete("k").unwrap();
    let r3 = b.create("k", "3").unwrap();
    assert_eq!(r3, r1 + 2);
    b.purge("k").unwrap();
    assert!(b.create("k", "4").is_ok());
    assert_eq!(val(&b, "k").as_deref(), Some("4"));
    // An expired value does not block create.
    b.put_with_ttl("t", "x", Duration::from_millis(10)).unwrap();
    assert_err(b.create("t", "y"), exists, "before expiry");
    env.clock.advance(10);
    assert!(b.create("t", "y").is_ok());
    assert_eq!(val(&b, "t").as_deref(), Some("y"));
}

/// A TTL so long that its expiry passes what a record stores (2^48 - 1 ms, some 8,900
/// years) expires at that time, as the record says: ENTRY, TTL and a watch agree, and a
/// replay of the log finds the same (the index kept the unclamped time before).
#[test]
fn a_ttl_past_what_a_record_stores_is_the_same_through_every_read_and_a_reopen() {
    const MAX_TIME_MS: u64 = (1 << 48) - 1;
    let env = Env::new();
    let b = env.bucket("t", BucketConfig::default());
    let mut w = b
        .watch(
            ">",
            logkv::WatchOptions {
                updates_only: true,
                ..Default::default()
            },
        )
        .unwrap();
    b.put_with_ttl("k", "v", Duration::from_millis(u64::MAX))
        .unwrap();
    let e = b.entry("k").unwrap().unwrap();
    assert_eq!(e.expires_ms, MAX_TIME_MS);
    assert_eq!(b.ttl("k").unwrap(), Ttl::Remaining(MAX_TIME_MS - T0));
    let live = std::iter::from_fn(|| w.try_next().unwrap())
        .find_map(|ev| match ev {
            logkv::WatchEvent::Entry(e) => Some(e),
            _ => None,
        })
        .unwrap();
    assert_eq!(live.expires_ms, MAX_TIME_MS);
    drop((w, b));
    let env = env.crash();
    let b = env.store.bucket("t").unwrap();
    assert_eq!(b.entry("k").unwrap().unwrap().expires_ms, MAX_TIME_MS);
}

#[test]
fn update_semantics() {
    let env = Env::new();
    let b = env.bucket("b", history(5));
    // 0: only when the key has no entry at all.
    let r1 = b.update("k", "1", 0).unwrap();
    assert_err(b.update("k", "x", 0), wrongrev(0, r1), "0 on a live key");
    assert_err(
        b.update("k", "x", r1 + 1),
        wrongrev(r1 + 1, r1),
        "future rev",
    );
    assert_err(b.update("missing", "x", 7), wrongrev(7, 0), "missing key");
    let r2 = b.update("k", "2", r1).unwrap();
    assert_err(b.update("k", "x", r1), wrongrev(r1, r2), "stale rev");
    // A DEL marker is an entry: 0 fails, its revision undeletes.
    let d = b.delete("k").unwrap();
    assert_err(b.update("k", "x", 0), wrongrev(0, d), "0 after delete");
    assert_err(
        b.update("k", "x", r2),
        wrongrev(r2, d),
        "value rev after delete",
    );
    let r4 = b.update("k", "4", d).unwrap();
    assert_eq!(val(&b, "k").as_deref(), Some("4"));
    // So is a PURGE marker.
    let p = b.purge("k").unwrap();
    assert_err(b.update("k", "x", 0), wrongrev(0, p), "0 after purge");
    assert_err(b.update("k", "x", r4), wrongrev(r4, p), "purged rev");
    b.update("k", "6", p).unwrap();
    assert_eq!(val(&b, "k").as_deref(), Some("6"));
    // A marker written for a never-seen key counts as an entry too.
    let m = b.delete("fresh").unwrap();
    assert_err(b.update("fresh", "x", 0), wrongrev(0, m), "0 after marker");
    assert!(b.update("fresh", "x", m).is_ok());
}

#[test]
fn cas_semantics() {
    let env = Env::new();
    let b = env.bucket("b", history(5));
    let mismatch = |e: &Error| matches!(e, Error::Mismatch) && error_code(e) == "MISMATCH";
    assert_err(b.cas("k", "1", Some(b"")), mismatch, "old on a missing key");
    let r1 = b.cas("k", "1", None).unwrap();
    assert_err(b.cas("k", "x", None), mismatch, "None on a live key");
    assert_err(b.cas("k", "x", Some(b"2")), mismatch, "wrong old");
    assert_err(b.cas("k", "x", Some(b"")), mismatch, "empty old");
    let r2 = b.cas("k", "2", Some(b"1")).unwrap();
    assert_eq!(r2, r1 + 1);
    // The empty value is a value.
    b.put("e", "").unwrap();
    assert_err(b.cas("e", "x", None), mismatch, "empty value is live");
    assert!(b.cas("e", "x", Some(b"")).is_ok());
    // Deleted: no live value.
    b.delete("k").unwrap();
    assert_err(b.cas("k", "x", Some(b"2")), mismatch, "deleted");
    assert!(b.cas("k", "3", None).is_ok());
    // Expired: no live value.
    b.put_with_ttl("t", "v", Duration::from_millis(5)).unwrap();
    env.clock.advance(5);
    assert_err(b.cas("t", "x", Some(b"v")), mismatch, "expired");
    assert!(b.cas("t", "w", None).is_ok());
}

#[test]
fn revert_semantics() {
    let env = Env::new();
    let b = env.bucket("b", history(4));
    let r1 = b.put("k", "one").unwrap();
    let r2 = b.put("k", "two").unwrap();
    let r3 = b.revert("k", r1).unwrap();
    assert_eq!(r3, r2 + 1);
    let e = b.entry("k").unwrap().unwrap();
    assert_eq!((e.revision, e.op, &e.value[..]), (r3, Op::Put, &b"one"[..]));
    let notfound = |e: &Error| matches!(e, Error::NotFound) && error_code(e) == "NOTFOUND";
    // A marker is not a value to revert to; neither is a revision of another key or one never written.
    let d = b.delete("k").unwrap();
    assert_err(b.revert("k", d), notfound, "marker");
    let o = b.put("other", "o").unwrap();
    assert_err(b.revert("k", o), notfound, "another key's revision");
    assert_err(b.revert("k", 999), notfound, "never written");
    assert_err(b.revert("missing", r1), notfound, "missing key");
    // Revert works from a deleted state (it is a PUT).
    assert_eq!(b.revert("k", r2).unwrap(), o + 1);
    assert_eq!(val(&b, "k").as_deref(), Some("two"));
    // A revision that left the history window is gone.
    for i in 0..4 {
        b.put("k", format!("{i}")).unwrap();
    }
    assert_err(b.revert("k", r2), notfound, "out of the window");
    // So is a purged one.
    let keep = b.put("k", "keep").unwrap();
    b.purge("k").unwrap();
    assert_err(b.revert("k", keep), notfound, "purged");
    // And an expired one.
    let t = b
        .put_with_ttl("t", "tv", Duration::from_millis(10))
        .unwrap();
    b.put("t", "later").unwrap();
    env.clock.advance(10);
    assert_err(b.revert("t", t), notfound, "expired");
}

// ---------------------------------------------------------------------------
// Batches

/// 40 puts: `k` at positions 0, 15, 16, 31 and 32 (the edges of the index's
/// rounds of 16), a distinct filler key everywhere else.
fn across_rounds(tag: &str) -> Vec<WriteOp> {
    (0..40)
        .map(|i| {
            if [0, 15, 16, 31, 32].contains(&i) {
                WriteOp::put("k", format!("{tag}{i}"))
            } else {
                WriteOp::put(format!("f{i}"), "x")
            }
        })
        .collect()
}

#[test]
fn writes_longer_than_an_index_round_keep_every_revision_in_order() {
    // The index takes a call's records 16 at a time (every entry of a round
    // asked for before any is updated): a key written on both sides of a
    // round's edge keeps its last `history` revisions, in order.
    let env = Env::new();
    let b = env.bucket("b", history(3));
    let w = b.write(&across_rounds("a")).unwrap();
    let revs: Vec<u64> = b.history("k").unwrap().iter().map(|e| e.revision).collect();
    assert_eq!(revs, [w[16].revision, w[31].revision, w[32].revision]);
    assert_eq!(val(&b, "k").as_deref(), Some("a32"));
    let s = b.stats();
    assert_eq!(
        (s.keys, s.values),
        (36, 38),
        "35 fillers and k's 3 revisions"
    );

    // Under `always`, calls wait (not visible) until an fsync covers them, and
    // then enter the index together, their records in one sequence of rounds.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), common::durable_opts(1 << 20)).unwrap();
    let b = store.create_bucket("b", history(3)).unwrap();
    let mut revisions = Vec::new();
    let mut ticket = None;
    for chunk in across_rounds("b").chunks(7) {
        let (results, t) = b.write_each(chunk).unwrap();
        revisions.extend(results.into_iter().map(|r| r.unwrap().revision));
        ticket = Some(t);
    }
    b.wait_durable(ticket.unwrap()).unwrap();
    let revs: Vec<u64> = b.history("k").unwrap().iter().map(|e| e.revision).collect();
    assert_eq!(revs, [revisions[16], revisions[31], revisions[32]]);
    assert_eq!(val(&b, "k").as_deref(), Some("b32"));
    let s = b.stats();
    assert_eq!((s.keys, s.values), (36, 38));
    drop(b);
    store.close().unwrap();
}

#[test]
fn batch_is_all_or_none_with_consecutive_revisions() {
    let env = Env::new();
    let b = env.bucket("b", history(5));
    b.put("x", "0").unwrap();
    let w = b
        .write(&[
            WriteOp::put("a", "1"),
            WriteOp::delete("x"),
            WriteOp::create("c", "3"),
            WriteOp::purge("z"),
        ])
        .unwrap();
    assert_eq!(
        w.iter().map(|w| w.revision).collect::<Vec<_>>(),
        vec![2, 3, 4, 5]
    );
    // One failing precondition: nothing applied, the error names it.
    let before = snapshot(&b);
    let r = b.write(&[
        WriteOp::put("a", "2"),
        WriteOp::put("new", "n"),
        WriteOp::create("c", "x"),
        WriteOp::delete("a"),
    ]);
    match r {
        Err(Error::Batch { index: 2, source }) if matches!(*source, Error::Exists) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(
        r_code(&b.write(&[WriteOp::put("a", "2"), WriteOp::update("a", "x", 1)])),
        "WRONGREV"
    );
    assert_eq!(snapshot(&b), before);
    assert_eq!(b.get("new").unwrap(), None);
    assert_eq!(val(&b, "a").as_deref(), Some("1"));
    // An empty batch writes nothing.
    assert!(b.write(&[]).unwrap().is_empty());
    assert_eq!(snapshot(&b), before);
    // A single write's error is not wrapped.
    assert!(matches!(
        b.write(&[WriteOp::create("c", "x")]),
        Err(Error::Exists)
    ));
    // The next write continues right after the last successful one.
    assert_eq!(b.put("a", "3").unwrap(), 6);
}

fn r_code<T>(r: &logkv::Result<T>) -> &'static str {
    match r {
        Ok(_) => "OK",
        Err(e) => error_code(e),
    }
}

/// What a test compares of a write's result: the revision and the previous entry, or the
/// error (the bucket's name left out: the twin buckets differ there).
fn outcome(r: &logkv::Result<logkv::Written>) -> String {
    match r {
        Ok(w) => format!(
            "ok {} {:?}",
            w.revision,
            w.previous
                .as_ref()
                .map(|e| (&e.key, &e.value, e.revision, e.op, e.created_ms))
        ),
        Err(e) => format!("err {e}"),
    }
}

/// `write_each` is its writes one after another. Calls of up to 8 writes of every kind on
/// four keys, some keys coming back within a call (a later write sees what the earlier ones
/// left, which the call keeps only for keys it writes twice) and others not, give each
/// write the result it gets alone on a twin bucket, and leave the same history.
#[test]
fn a_call_of_writes_answers_as_its_writes_one_by_one() {
    let env = Env::new();
    let together = env.bucket("together", history(3));
    let alone = env.bucket("alone", history(3));
    let mut rng = Rng::new(11);
    let pick = |rng: &mut Rng, of: &[&'static str]| {
        of[usize::try_from(rng.below(of.len() as u64)).unwrap()]
    };
    for call in 0..400 {
        let last = together.status().unwrap().last_revision;
        assert_eq!(last, alone.status().unwrap().last_revision, "call {call}");
        let n = 1 + rng.below(8);
        let ops: Vec<WriteOp> = (0..n)
            .map(|_| {
                let k = pick(&mut rng, &["a", "b", "c", "d"]);
                let v = pick(&mut rng, &["x", "y", "z"]);
                // The key's revision now, one before it, 0, or one an earlier write of
                // this call gets if every write before it succeeds.
                let rev = match rng.below(4) {
                    0 => 0,
                    1 => last.saturating_sub(rng.below(3)),
                    _ => last + 1 + rng.below(n),
                };
                match rng.below(10) {
                    0 => WriteOp::put(k, v),
                    1 => WriteOp::create(k, v),
                    2 => WriteOp::update(k, v, rev),
                    3 => WriteOp::cas(
                        k,
                        v,
                        (rng.below(3) > 0).then(|| pick(&mut rng, &["x", "y"]).into()),
                    ),
                    4 => WriteOp::delete(k),
                    5 => WriteOp::delete_at(k, rev),
                    6 => WriteOp::purge(k),
                    7 => WriteOp::revert(k, rev),
                    8 => WriteOp::put(k, v).returning_previous(),
                    _ => WriteOp::delete(k).returning_previous(),
                }
            })
            .collect();
        let (results, _) = together.write_each(&ops).unwrap();
        for (i, (op, got)) in ops.iter().zip(&results).enumerate() {
            let (one, _) = alone.write_each(std::slice::from_ref(op)).unwrap();
            assert_eq!(
                outcome(got),
                outcome(&one[0]),
                "call {call}, write {i}: {op:?}"
            );
        }
        if call % 50 == 49 {
            env.clock.advance(7);
        }
    }
    let strip = |b: &Bucket| -> Vec<(String, u64, Op, Vec<u8>)> {
        b.history(">")
            .unwrap()
            .into_iter()
            .map(|e| (e.key, e.revision, e.op, e.value.to_vec()))
            .collect()
    };
    assert_eq!(strip(&together), strip(&alone));
}

#[test]
fn batch_preconditions_see_earlier_writes_of_the_batch() {
    let env = Env::new();
    let b = env.bucket("b", history(5));
    let w = b
        .write(&[
            WriteOp::create("k", "1"),
            WriteOp::update("k", "2", 1),
            WriteOp::cas("k", "3", Some("2".into())),
            WriteOp::delete_at("k", 3),
            WriteOp::create("k", "5"),
            WriteOp::update("n", "x", 0),
            WriteOp::cas("m", "y", None),
        ])
        .unwrap();
    assert_eq!(w.len(), 7);
    assert_eq!(val(&b, "k").as_deref(), Some("5"));
    // A create after a put of the same key in the batch fails, and takes the batch down.
    let r = b.write(&[
        WriteOp::delete("k"),
        WriteOp::create("k", "6"),
        WriteOp::create("k", "7"),
    ]);
    assert!(
        matches!(r, Err(Error::Batch { index: 2, ref source }) if matches!(**source, Error::Exists)),
        "{r:?}"
    );
    assert_eq!(val(&b, "k").as_deref(), Some("5"));
    // update with 0 after an earlier write in the batch fails.
    let r = b.write(&[WriteOp::put("q", "1"), WriteOp::update("q", "2", 0)]);
    assert!(matches!(r, Err(Error::Batch { index: 1, .. })), "{r:?}");
    // returning_previous sees the batch's own earlier write.
    let w = b
        .write(&[
            WriteOp::put("p", "first"),
            WriteOp::put("p", "second").returning_previous(),
        ])
        .unwrap();
    assert_eq!(w[1].previous.as_ref().unwrap().value, "first");
}

#[test]
fn batch_revert_to_a_revision_written_earlier_in_the_batch() {
    let env = Env::new();
    let b = env.bucket("b", history(5));
    let r0 = b.status().unwrap().last_revision;
    // Revision r0+1 is a retained PUT of "k" once the batch's first two writes are applied.
    let w = b.write(&[
        WriteOp::put("k", "one"),
        WriteOp::put("k", "two"),
        WriteOp::revert("k", r0 + 1),
    ]);
    let w = w.expect("revert to a revision the batch itself wrote (and history 5 retains)");
    assert_eq!(w[2].revision, r0 + 3);
    assert_eq!(val(&b, "k").as_deref(), Some("one"));
}

#[test]
fn batch_revert_after_purge_in_the_same_batch() {
    let env = Env::new();
    let b = env.bucket("b", history(5));
    let old = b.put("k", "old").unwrap();
    let before = snapshot(&b);
    // The purge earlier in the batch drops revision `old`: the revert must fail.
    let r = b.write(&[WriteOp::purge("k"), WriteOp::revert("k", old)]);
    assert!(
        matches!(r, Err(Error::Batch { index: 1, ref source }) if matches!(**source, Error::NotFound)),
        "{r:?}"
    );
    assert_eq!(snapshot(&b), before);
    assert_eq!(val(&b, "k").as_deref(), Some("old"));
}

#[test]
fn batch_revert_after_history_drops_the_revision() {
    let env = Env::new();
    let b = env.bucket("b", history(1));
    let old = b.put("k", "old").unwrap();
    // With history 1 the put drops revision `old`: the revert must fail.
    let r = b.write(&[WriteOp::put("k", "new"), WriteOp::revert("k", old)]);
    assert!(
        matches!(r, Err(Error::Batch { index: 1, ref source }) if matches!(**source, Error::NotFound)),
        "{r:?}"
    );
    assert_eq!(val(&b, "k").as_deref(), Some("old"));
}

// ---------------------------------------------------------------------------
// TTL

#[test]
fn per_key_ttl() {
    let env = Env::new();
    let b = env.bucket("b", history(5));
    let r0 = b.put("forever", "f").unwrap();
    assert_eq!(b.ttl("forever").unwrap(), Ttl::Forever);
    assert_eq!(b.ttl("missing").unwrap(), Ttl::Missing);
    let r1 = b.put("k", "old").unwrap();
    let r2 = b.put_with_ttl("k", "v", Duration::from_secs(1)).unwrap();
    let e = b.entry("k").unwrap().unwrap();
    assert_eq!((e.created_ms, e.expires_ms), (T0, T0 + 1000));
    assert_eq!(b.ttl("k").unwrap(), Ttl::Remaining(1000));
    env.clock.advance(999);
    assert_eq!(b.ttl("k").unwrap(), Ttl::Remaining(1));
    assert_eq!(val(&b, "k").as_deref(), Some("v"));
    env.clock.advance(1);
    // Invisible at once, everywhere; the older value does not come back.
    assert_eq!(b.get("k").unwrap(), None);
    assert_eq!(b.ttl("k").unwrap(), Ttl::Missing);
    assert_eq!(b.keys(">").unwrap(), vec!["forever"]);
    assert_eq!(revs(&b.history(">").unwrap()), vec![r0, r1]);
    assert_eq!(b.entry_at("k", r2).unwrap(), None);
    assert_eq!(b.entry_at("k", r1).unwrap().unwrap().value, "old");
    assert!(b.search("*", 0).unwrap().iter().all(|e| e.key != "k"));
    assert!(b
        .scan(None, None, 10)
        .unwrap()
        .entries
        .iter()
        .all(|e| e.key != "k"));
    assert_eq!(b.status().unwrap().keys, 1);
    // A zero TTL is an argument error.
    let bad = |e: &Error| matches!(e, Error::BadArgument(_));
    assert_err(b.put_with_ttl("z", "v", Duration::ZERO), bad, "ttl 0");
    assert_err(
        b.write(&[WriteOp::create("z", "v").with_ttl(Duration::ZERO)]),
        bad,
        "ttl 0",
    );
    // A new put without TTL lives forever.
    b.put("k", "again").unwrap();
    assert_eq!(b.ttl("k").unwrap(), Ttl::Forever);
    // TTL through every writing verb.
    b.write(&[WriteOp::create("c", "1").with_ttl(Duration::from_millis(50))])
        .unwrap();
    let rc = b.entry("c").unwrap().unwrap().revision;
    b.write(&[WriteOp::update("c", "2", rc).with_ttl(Duration::from_millis(70))])
        .unwrap();
    assert_eq!(b.ttl("c").unwrap(), Ttl::Remaining(70));
    b.write(&[WriteOp::cas("c", "3", Some("2".into())).with_ttl(Duration::from_millis(20))])
        .unwrap();
    assert_eq!(b.ttl("c").unwrap(), Ttl::Remaining(20));
}

#[test]
fn sweep_writes_del_markers_for_expired_values() {
    let env = Env::new();
    let b = env.bucket("b", history(3));
    b.put_with_ttl("b.2", "x", Duration::from_millis(100))
        .unwrap();
    b.put_with_ttl("a.1", "x", Duration::from_millis(100))
        .unwrap();
    b.put_with_ttl("c.3", "x", Duration::from_millis(500))
        .unwrap();
    b.put("d.4", "x").unwrap();
    b.delete("e.5").unwrap();
    assert_eq!(b.sweep_expired().unwrap(), 0);
    assert_eq!(b.status().unwrap().last_revision, 5);
    env.clock.advance(100);
    assert_eq!(b.sweep_expired().unwrap(), 2);
    // Markers in key order, with the next revisions.
    let a = b.history("a.1").unwrap();
    let bb = b.history("b.2").unwrap();
    assert_eq!((a.len(), a[0].op, a[0].revision), (1, Op::Del, 6));
    assert_eq!((bb.len(), bb[0].op, bb[0].revision), (1, Op::Del, 7));
    assert_eq!(a[0].expires_ms, 0);
    // The expired values stay hidden (not resurrected as history).
    assert!(b
        .history(">")
        .unwrap()
        .iter()
        .all(|e| e.op != Op::Put || e.key == "c.3" || e.key == "d.4"));
    assert_eq!(
        b.sweep_expired().unwrap(),
        0,
        "a second sweep writes nothing"
    );
    env.clock.advance(400);
    assert_eq!(b.sweep_expired().unwrap(), 1);
    assert_eq!(b.entry_at("c.3", 8).unwrap().unwrap().op, Op::Del);
    assert_eq!(b.keys(">").unwrap(), vec!["d.4"]);
    // A key rewritten after expiry is not swept.
    b.put_with_ttl("f", "x", Duration::from_millis(10)).unwrap();
    env.clock.advance(10);
    b.put("f", "fresh").unwrap();
    assert_eq!(b.sweep_expired().unwrap(), 0);
    assert_eq!(val(&b, "f").as_deref(), Some("fresh"));
}

#[test]
fn bucket_ttl_ages_history_one_by_one() {
    let env = Env::new();
    let cfg = BucketConfig {
        history: 10,
        ttl: Some(Duration::from_secs(1)),
        ..Default::default()
    };
    let b = env.bucket("aged", cfg);
    let mut r = Vec::new();
    for i in 0..4 {
        r.push(b.put("k", format!("v{i}")).unwrap());
        env.clock.advance(100);
    }
    // t = T0 + 400. Every value has the bucket's max age as its expiry.
    assert_eq!(b.ttl("k").unwrap(), Ttl::Remaining(900));
    assert_eq!(b.entry("k").unwrap().unwrap().expires_ms, T0 + 300 + 1000);
    // A per-key TTL shorter than the bucket's wins; a longer one does not.
    b.put_with_ttl("short", "s", Duration::from_millis(50))
        .unwrap();
    b.put_with_ttl("long", "l", Duration::from_secs(5)).unwrap();
    assert_eq!(b.ttl("short").unwrap(), Ttl::Remaining(50));
    assert_eq!(b.ttl("long").unwrap(), Ttl::Remaining(1000));
    env.clock.set(T0 + 1000);
    assert_eq!(revs(&b.history("k").unwrap()), r[1..].to_vec());
    env.clock.set(T0 + 1100);
    assert_eq!(revs(&b.history("k").unwrap()), r[2..].to_vec());
    assert_eq!(val(&b, "k").as_deref(), Some("v3"));
    assert_eq!(b.ttl("k").unwrap(), Ttl::Remaining(200));
    // Aged entries are invisible before any sweep, dropped by the sweep.
    let st = b.status().unwrap();
    assert_eq!(st.values, 6, "nothing dropped before a sweep");
    assert_eq!(b.sweep_expired().unwrap(), 1, "'short' expired");
    let st = b.status().unwrap();
    assert_eq!(
        st.values,
        2 + 1 + 1,
        "k: 2 left; short: its marker (the expired value left when it was written); long"
    );
    assert_eq!(b.entry_at("k", r[0]).unwrap(), None);
    env.clock.set(T0 + 1300);
    assert_eq!(b.get("k").unwrap(), None);
    assert_eq!(b.ttl("k").unwrap(), Ttl::Missing);
    assert_eq!(b.history("k").unwrap(), vec![]);
    assert_eq!(b.sweep_expired().unwrap(), 1);
    let h = b.history("k").unwrap();
    assert_eq!(h.len(), 1);
    assert_eq!(
        (h[0].op, h[0].created_ms, h[0].expires_ms),
        (Op::Del, T0 + 1300, T0 + 2300)
    );
    // The marker itself ages out, then the key is gone entirely.
    env.clock.set(T0 + 2300);
    assert_eq!(b.history("k").unwrap(), vec![]);
    assert_eq!(b.sweep_expired().unwrap(), 1, "'long' expired at T0 + 1400");
    let h = b.history(">").unwrap();
    assert_eq!(
        h.iter().map(|e| (e.key.as_str(), e.op)).collect::<Vec<_>>(),
        vec![("long", Op::Del)]
    );
    assert_eq!(b.status().unwrap().values, 1);
    // With no entry retained, update 0 works again; the revision counter never goes back.
    let last = b.status().unwrap().last_revision;
    assert_eq!(b.update("k", "new", 0).unwrap(), last + 1);
}

/// The max-age sweep walks the index in pieces (4,096 entry slots at a
/// time): every piece's aged entries leave, not only the first's.
#[test]
fn the_max_age_sweep_reaches_every_key() {
    let env = Env::new();
    let cfg = BucketConfig {
        history: 3,
        ttl: Some(Duration::from_secs(1)),
        ..Default::default()
    };
    let b = env.bucket("aged", cfg);
    let n = 10_000;
    for i in 0..n {
        b.put(&format!("k.{i}"), "old").unwrap();
    }
    env.clock.advance(600);
    for i in 0..n {
        b.put(&format!("k.{i}"), "new").unwrap();
    }
    env.clock.advance(600);
    // Every "old" is past the max age; every "new" is live, with 400 ms left.
    assert_eq!(b.status().unwrap().values, 2 * n);
    assert_eq!(b.sweep_expired().unwrap(), 0, "no value expired");
    let st = b.status().unwrap();
    assert_eq!((st.values, st.keys), (n, n), "every old revision left");
    assert_eq!(b.history("k.9999").unwrap().len(), 1);
    assert_eq!(val(&b, "k.0").as_deref(), Some("new"));
}

#[test]
fn bucket_ttl_aging_survives_reopen() {
    let env = Env::new();
    let cfg = BucketConfig {
        history: 5,
        ttl: Some(Duration::from_secs(1)),
        ..Default::default()
    };
    let b = env.bucket("aged", cfg);
    let r1 = b.put("k", "1").unwrap();
    env.clock.advance(600);
    let r2 = b.put("k", "2").unwrap();
    env.clock.advance(600);
    // r1 aged (not swept); r2 live.
    assert_eq!(revs(&b.history("k").unwrap()), vec![r2]);
    drop(b);
    let env = env.reopen();
    let b = env.store.bucket("aged").unwrap();
    assert_eq!(revs(&b.history("k").unwrap()), vec![r2]);
    assert_eq!(b.status().unwrap().values, 1, "aged entries leave at open");
    assert_eq!(b.entry_at("k", r1).unwrap(), None);
    assert_eq!(b.put("k", "3").unwrap(), r2 + 1);
    env.clock.advance(10_000);
    drop(b);
    let env = env.crash();
    let b = env.store.bucket("aged").unwrap();
    assert!(b.history(">").unwrap().is_empty());
    let counter = counter_after_crash(&b, r2 + 1);
    assert_eq!(b.status().unwrap().last_revision, counter);
    assert_eq!(
        b.put("k", "4").unwrap(),
        counter + 1,
        "revision not reused after everything aged out"
    );
}

// ---------------------------------------------------------------------------
// Limits

#[test]
fn max_value_size_is_too_large() {
    let env = Env::new();
    let b = env.bucket(
        "b",
        BucketConfig {
            max_value_size: 10,
            history: 3,
            ..Default::default()
        },
    );
    assert!(b.put("k", vec![b'x'; 10]).is_ok());
    let before = snapshot(&b);
    let too_large = |e: &Error| {
        matches!(e, Error::TooLarge { size: 11, max: 10 }) && error_code(e) == "TOOLARGE"
    };
    assert_err(b.put("k", vec![b'x'; 11]), too_large, "put");
    assert_err(b.create("n", vec![b'x'; 11]), too_large, "create");
    assert_err(b.update("k", vec![b'x'; 11], 1), too_large, "update");
    assert_err(b.cas("k", vec![b'x'; 11], None), too_large, "cas");
    assert_err(
        b.put_with_ttl("k", vec![b'x'; 11], Duration::from_secs(1)),
        too_large,
        "put ttl",
    );
    match b.write(&[
        WriteOp::put("a", "small"),
        WriteOp::put("b", vec![b'y'; 11]),
    ]) {
        Err(Error::Batch { index: 1, source }) if too_large(&source) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(snapshot(&b), before);
    // Only the value counts, not the key.
    assert!(b.put(&"k".repeat(200), vec![b'x'; 10]).is_ok());
    // Markers always fit.
    assert!(b.delete("k").is_ok());
}

/// The size of a record in the log: a header, the key, the value. `max_bytes`
/// counts these.
const H: u64 = logkv::log::record::HEADER_LEN as u64;

fn rec(key: &str, value_len: u64) -> u64 {
    H + key.len() as u64 + value_len
}

#[test]
fn max_bytes_is_full_and_deletes_are_accepted() {
    let env = Env::new();
    let p = rec("k1", 10); // a PUT of a 2-byte key and a 10-byte value
                           // Room for three such PUTs and one small record, with 2 bytes to spare.
    let max = 3 * p + rec("s", 1) + 2;
    let b = env.bucket(
        "b",
        BucketConfig {
            max_bytes: max,
            history: 1,
            ..Default::default()
        },
    );
    let v = vec![b'v'; 10];
    for k in ["k1", "k2", "k3"] {
        b.put(k, v.clone()).unwrap();
    }
    assert_eq!(b.status().unwrap().bytes, 3 * p);
    let before = snapshot(&b);
    let full = |used: u64, adding: u64| {
        move |e: &Error| {
            matches!(e, Error::Full { used: u, adding: a, max: m } if *u == used && *a == adding && *m == max)
                && error_code(e) == "FULL"
        }
    };
    assert_err(b.put("k4", v.clone()), full(3 * p, p), "4th put");
    assert_err(b.create("k4", v.clone()), full(3 * p, p), "create");
    // Two small PUTs that do not fit together. Which write of the batch the
    // error names is the engine's choice; what it adds up to is not.
    match b.write(&[WriteOp::put("x", ""), WriteOp::put("y", "")]) {
        Err(Error::Batch { source, .. })
            if matches!(*source, Error::Full { used, adding, max: m }
                if used >= 3 * p && used + adding == 3 * p + 2 * rec("x", 0) && m == max) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(snapshot(&b), before, "a rejected write changes nothing");
    // A small put still fits.
    b.put("s", "x").unwrap();
    let mut bytes = 3 * p + rec("s", 1);
    assert_eq!(b.status().unwrap().bytes, bytes);
    // DEL and PURGE are always accepted; with history 1 a marker replaces the value.
    let d = b.delete("k1").unwrap();
    assert_eq!(b.entry_at("k1", d).unwrap().unwrap().op, Op::Del);
    bytes = bytes - p + rec("k1", 0);
    assert_eq!(b.status().unwrap().bytes, bytes);
    b.purge("k2").unwrap();
    b.delete("never").unwrap(); // a marker for a missing key
    bytes = bytes - p + rec("k2", 0) + rec("never", 0);
    assert_eq!(b.status().unwrap().bytes, bytes);
    // A PUT of k1 replaces its marker: what counts is what the bucket would hold.
    assert!(bytes - rec("k1", 0) + rec("k1", 1) > max);
    assert_err(
        b.put("k1", "1"),
        full(bytes - rec("k1", 0), rec("k1", 1)),
        "full of markers",
    );
    // Markers are never refused, even past the limit.
    for k in ["k1", "k2", "k3", "s", "never"] {
        b.purge(k).unwrap();
    }
    bytes = rec("k1", 0) * 3 + rec("s", 0) + rec("never", 0);
    assert_eq!(b.status().unwrap().bytes, bytes);
    assert_err(
        b.put("k1", "1"),
        full(bytes - rec("k1", 0), rec("k1", 1)),
        "still full",
    );
    // Space counting survives a reopen and a compaction.
    b.compact().unwrap();
    assert_eq!(b.status().unwrap().bytes, bytes);
    drop(b);
    let env = env.reopen();
    let b = env.store.bucket("b").unwrap();
    assert_eq!(b.status().unwrap().bytes, bytes);
    // A bucket emptied by aging gives all its space back (see `max_bytes_space_returns_after_aging`).
}

#[test]
fn max_bytes_counts_history() {
    let env = Env::new();
    let r = rec("k", 0);
    let cfg = BucketConfig {
        max_bytes: 3 * r + r / 2,
        history: 3,
        ..Default::default()
    };
    let b = env.bucket("b", cfg);
    // Three fit, all retained as history.
    for _ in 0..3 {
        b.put("k", "").unwrap();
    }
    assert_eq!(b.status().unwrap().bytes, 3 * r);
    assert_err(
        b.put("j", ""),
        |e| matches!(e, Error::Full { used, adding, .. } if *used == 3 * r && *adding == r),
        "history counts",
    );
    // A fourth of k drops the oldest from the history: it fits.
    b.put("k", "").unwrap();
    assert_eq!(b.status().unwrap().bytes, 3 * r);
    // A PURGE drops the history: only its marker is left.
    b.purge("k").unwrap();
    assert_eq!(b.status().unwrap().bytes, r);
    assert!(b.put("k", "").is_ok());
}

/// A value whose TTL has passed leaves its key's retained entries when the key's next
/// entry is written (the sweep's DEL marker, or any write), wherever it is in the key's
/// history: with a history longer than one it stayed among them, unseen (HISTORY and
/// `GET ... REV` skip it), took a history slot from an older visible entry, and counted
/// against MAXBYTES until later writes pushed it out. The same after a reopen (the log
/// replayed with each entry's creation time) and after a crash.
#[test]
fn an_expired_value_leaves_when_its_key_is_written_again() {
    let env = Env::new();
    let (r1, r0) = (rec("k", 1), rec("k", 0));
    let cfg = BucketConfig {
        history: 3,
        max_bytes: 3 * r1,
        ..Default::default()
    };
    let b = env.bucket("b", cfg);
    b.put("k", "a").unwrap(); // 1: no TTL
    b.put_with_ttl("k", "b", Duration::from_millis(100))
        .unwrap(); // 2
    env.clock.advance(100);
    assert_eq!(val(&b, "k"), None);
    assert_eq!(b.sweep_expired().unwrap(), 1); // 3: the marker
    assert_eq!(revs(&b.history("k").unwrap()), [1, 3]);
    let st = b.status().unwrap();
    assert_eq!(
        (st.values, st.bytes),
        (2, r1 + r0),
        "the expired value left"
    );
    // Room for another value: before, the unseen one made this FULL.
    b.put("j", "c").unwrap(); // 4
    assert_eq!(b.status().unwrap().bytes, 2 * r1 + r0);
    // In the middle of a history: 2 expires between 3 and 4; at 4 it leaves, and 1
    // keeps its slot (before, 1 was pushed out by an entry nobody could see).
    let b2 = env.bucket("h", history(3));
    b2.put("m", "p").unwrap(); // 1
    b2.put_with_ttl("m", "e", Duration::from_millis(50))
        .unwrap(); // 2
    b2.put("m", "x").unwrap(); // 3
    env.clock.advance(50);
    b2.put("m", "y").unwrap(); // 4: 2 has expired and leaves; 1 stays
    assert_eq!(revs(&b2.history("m").unwrap()), [1, 3, 4]);
    assert_eq!(b2.status().unwrap().values, 3);
    // The write that drops an expired value counts it as freed: it fits (no sweep ran).
    let full = env.bucket(
        "f",
        BucketConfig {
            history: 3,
            max_bytes: 2 * r1,
            ..Default::default()
        },
    );
    full.put("k", "a").unwrap(); // 1
    full.put_with_ttl("k", "b", Duration::from_millis(10))
        .unwrap(); // 2
    assert_err(
        full.put("k", "c"),
        |e| matches!(e, Error::Full { .. }),
        "before 2 expires",
    );
    env.clock.advance(10);
    assert_eq!(full.put("k", "c").unwrap(), 3, "2 has expired: it leaves");
    assert_eq!(revs(&full.history("k").unwrap()), [1, 3]);
    assert_eq!(full.status().unwrap().bytes, 2 * r1);
    drop(full);
    let expect = |env: &Env, when: &str| {
        let b = env.store.bucket("b").unwrap();
        assert_eq!(revs(&b.history("k").unwrap()), [1, 3], "{when}");
        let st = b.status().unwrap();
        assert_eq!((st.values, st.bytes), (3, 2 * r1 + r0), "{when}");
        let h = env.store.bucket("h").unwrap();
        assert_eq!(revs(&h.history("m").unwrap()), [1, 3, 4], "{when}");
        assert_eq!(h.status().unwrap().values, 3, "{when}");
    };
    expect(&env, "before a reopen");
    drop((b, b2));
    let env = env.reopen();
    expect(&env, "after a reopen");
    let env = env.crash();
    expect(&env, "after a crash");
    // Without the index snapshots: the whole log replayed, each entry at its own time.
    let Env { clock, dir, store } = env;
    store.close().unwrap();
    for bucket in ["b", "h"] {
        let snap = dir.path().join("buckets").join(bucket).join("index.snap");
        std::fs::remove_file(&snap).unwrap();
    }
    let store = Store::open(dir.path(), clock_opts(&clock)).unwrap();
    expect(&Env { clock, dir, store }, "after a scan of the log");
}

/// MAXBYTES counts what the bucket would hold after the write: a value replaced (or a
/// history entry it pushes out) makes room for it. A bucket over half full refused
/// every update of its largest key, and a call (a RESP pipeline, an EXEC) did not
/// count what its own DEL freed, so `DEL k` then `PUT j` was refused in one call and
/// accepted in two. Under `always` the pending writes count the same way. From a
/// review of the semantics.
#[test]
fn max_bytes_counts_what_a_write_replaces() {
    for fsync in [FsyncPolicy::Never, FsyncPolicy::Always] {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options {
            background: false,
            fsync,
            ..Options::default()
        };
        let store = Store::open(dir.path(), opts).unwrap();
        let p = rec("k", 600);
        let cfg = BucketConfig {
            max_bytes: p + p / 2,
            history: 1,
            ..Default::default()
        };
        let b = store.create_bucket("b", cfg).unwrap();
        let v = vec![b'v'; 600];
        b.put("k", v.clone()).unwrap();
        b.put("k", v.clone()).unwrap();
        assert_eq!(b.status().unwrap().bytes, p, "{fsync:?}");
        // In one call, not waited for (under `always`, pending when the next comes).
        let (results, _) = b
            .write_each(&[WriteOp::delete("k"), WriteOp::put("j", v.clone())])
            .unwrap();
        assert!(results.iter().all(Result::is_ok), "{fsync:?}: {results:?}");
        let (results, _) = b.write_each(&[WriteOp::put("j", v.clone())]).unwrap();
        assert!(results[0].is_ok(), "{fsync:?}: {results:?}");
        b.write(&[WriteOp::delete("j"), WriteOp::put("k", v.clone())])
            .unwrap();
        // What does not fit is still refused, pending writes counted.
        let (results, _) = b.write_each(&[WriteOp::put("z", v.clone())]).unwrap();
        assert!(
            matches!(&results[0], Err(Error::Full { used, adding, .. })
                if *used == p + rec("j", 0) && *adding == rec("z", 600)),
            "{fsync:?}: {results:?}"
        );
        b.sync().unwrap();
        assert_eq!(b.status().unwrap().bytes, p + rec("j", 0), "{fsync:?}");
        // A key written twice by blind writes of one call: the second replaces what the
        // first wrote, not the value before the call again (from a review of this fix).
        let cfg = BucketConfig {
            max_bytes: 2 * p,
            history: 1,
            ..Default::default()
        };
        let c = store.create_bucket("c", cfg).unwrap();
        c.put("a", v.clone()).unwrap();
        c.put("o", v.clone()).unwrap();
        let (results, _) = c
            .write_each(&[
                WriteOp::put("a", "x"),
                WriteOp::put("a", "x"),
                WriteOp::put("j", v.clone()),
            ])
            .unwrap();
        assert!(
            matches!(&results[2], Err(Error::Full { used, .. })
                if *used == rec("o", 600) + rec("a", 1)),
            "{fsync:?}: {results:?}"
        );
    }
}

/// Under `always`, a write still pending (appended, not yet durable) that pushes an
/// aged entry out of its key's history has counted it as freed; the sweep's age-out
/// dropped that entry from the index too, so the bucket's bytes were counted short
/// and a PUT past max bytes was accepted (on a replica, an answer that depended on
/// when the fsync ran). The age-out now waits for the pending writes. From a review.
#[test]
fn an_age_out_does_not_free_what_a_pending_write_frees() {
    let clock = ManualClock::new(T0);
    let opts = Options {
        fsync: FsyncPolicy::Always,
        ..clock_opts(&clock)
    };
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), opts).unwrap();
    let v = vec![b'v'; 100];
    let (p, j) = (rec("k", 100), rec("j", 100));
    let cfg = BucketConfig {
        history: 2,
        ttl: Some(Duration::from_secs(1)),
        max_bytes: 2 * p + j - 1,
        ..Default::default()
    };
    let b = store.create_bucket("b", cfg).unwrap();
    b.put("k", v.clone()).unwrap();
    clock.advance(600);
    b.put("k", v.clone()).unwrap();
    clock.advance(500); // the first is past the max age, not swept yet
    let (results, _) = b.write_each(&[WriteOp::put("k", v.clone())]).unwrap();
    assert!(results[0].is_ok(), "{results:?}");
    assert_eq!(b.sweep_expired().unwrap(), 0);
    let (results, _) = b.write_each(&[WriteOp::put("j", v.clone())]).unwrap();
    assert!(
        matches!(&results[0], Err(Error::Full { used, .. }) if *used == 2 * p),
        "{results:?}"
    );
    b.sync().unwrap();
    assert_eq!(b.status().unwrap().bytes, 2 * p);
}

#[test]
fn max_bytes_space_returns_after_aging() {
    let env = Env::new();
    let r = rec("k", 4);
    let cfg = BucketConfig {
        max_bytes: 2 * r,
        history: 5,
        ttl: Some(Duration::from_millis(100)),
        ..Default::default()
    };
    let b = env.bucket("b", cfg);
    b.put("k", "1234").unwrap();
    b.put("k", "1234").unwrap();
    assert_err(
        b.put("k", "1234"),
        |e| matches!(e, Error::Full { .. }),
        "full",
    );
    env.clock.advance(100);
    // Expired but not yet swept: still retained, still counted by another key's PUT...
    assert_err(
        b.put("j", "1234"),
        |e| matches!(e, Error::Full { .. }),
        "not swept yet",
    );
    // ...while a PUT of k drops them (values expired by the time of a key's next
    // entry leave): it fits.
    b.put("k", "1234").unwrap();
    assert_eq!(b.status().unwrap().bytes, r);
    env.clock.advance(100);
    assert_eq!(b.sweep_expired().unwrap(), 1);
    // Only the sweep's DEL marker is left.
    assert_eq!(b.status().unwrap().bytes, rec("k", 0));
    assert!(b.put("k", "1234").is_ok());
}

// ---------------------------------------------------------------------------
// Revisions across reopen and crash

#[test]
fn revisions_never_reused_after_reopen() {
    let env = Env::new();
    let b = env.bucket("b", history(2));
    let mut last = 0;
    for i in 0..300 {
        last = b.put(&format!("k{}", i % 7), vec![b'x'; 40]).unwrap();
    }
    assert!(
        b.status().unwrap().segments > 1,
        "the log should have rotated"
    );
    // Purge every key: only markers are left.
    for i in 0..7 {
        last = b.purge(&format!("k{i}")).unwrap();
    }
    drop(b);
    let env = env.reopen();
    let b = env.store.bucket("b").unwrap();
    assert_eq!(b.status().unwrap().last_revision, last);
    assert_eq!(b.status().unwrap().values, 7);
    assert_eq!(b.put("k0", "after").unwrap(), last + 1);
    // Twice more, the second time as a crash.
    drop(b);
    let env = env.reopen();
    let b = env.store.bucket("b").unwrap();
    assert_eq!(b.put("k0", "again").unwrap(), last + 2);
    drop(b);
    let env = env.crash();
    let b = env.store.bucket("b").unwrap();
    let counter = counter_after_crash(&b, last + 2);
    assert_eq!(b.status().unwrap().last_revision, counter);
    assert_eq!(val(&b, "k0").as_deref(), Some("again"));
    assert_eq!(b.delete("k0").unwrap(), counter + 1);
    // The default bucket is recreated only if missing; its counter survives too.
    let d = env.default_bucket();
    d.put("x", "1").unwrap();
    d.put("x", "2").unwrap();
    drop((b, d));
    let env = env.reopen();
    assert_eq!(env.default_bucket().put("x", "3").unwrap(), 3);
}

#[test]
fn revisions_never_reused_after_everything_is_compacted_away() {
    let env = Env::new();
    let cfg = BucketConfig {
        history: 2,
        ttl: Some(Duration::from_secs(1)),
        ..Default::default()
    };
    let b = env.bucket("aged", cfg);
    for i in 0..200 {
        b.put(&format!("k{}", i % 9), vec![b'x'; 30]).unwrap();
    }
    b.purge("k0").unwrap();
    let last = b.delete("k1").unwrap();
    // Everything ages out; the sweep's own markers age out in turn.
    env.clock.advance(1000);
    let markers = b.sweep_expired().unwrap() as u64;
    env.clock.advance(1000);
    b.sweep_expired().unwrap();
    let last = last + markers;
    assert_eq!(b.status().unwrap().values, 0);
    assert_eq!(b.status().unwrap().last_revision, last);
    b.compact().unwrap();
    b.compact().unwrap();
    assert_eq!(b.status().unwrap().last_revision, last);
    drop(b);
    // As a crash (no snapshot of this state), then as a clean reopen.
    let env = env.crash();
    let b = env.store.bucket("aged").unwrap();
    let last = counter_after_crash(&b, last);
    assert_eq!(b.status().unwrap().last_revision, last);
    assert!(b.history(">").unwrap().is_empty());
    assert_eq!(b.put("k0", "new").unwrap(), last + 1);
    drop(b);
    let env = env.reopen();
    let b = env.store.bucket("aged").unwrap();
    assert_eq!(b.put("k0", "newer").unwrap(), last + 2);
    assert_eq!(revs(&b.history(">").unwrap()), vec![last + 1, last + 2]);
}

#[test]
fn compaction_keeps_what_is_retained() {
    let env = Env::new();
    let b = env.bucket("b", history(3));
    let mut rng = Rng::new(7);
    for i in 0..2000 {
        let k = format!("k.{}", rng.below(50));
        match rng.below(10) {
            0 => b.delete(&k).unwrap(),
            1 => b.purge(&k).unwrap(),
            _ => b.put(&k, format!("{k}={i}")).unwrap(),
        };
    }
    let before = b.history(">").unwrap();
    let status = b.status().unwrap();
    assert!(status.dead_bytes > 0);
    b.compact().unwrap();
    let after = b.status().unwrap();
    assert!(
        after.segments < status.segments,
        "{} -> {}",
        status.segments,
        after.segments
    );
    assert_eq!(b.history(">").unwrap(), before);
    assert_eq!(
        (after.values, after.bytes, after.last_revision),
        (status.values, status.bytes, status.last_revision)
    );
    drop(b);
    let env = env.crash();
    let b = env.store.bucket("b").unwrap();
    assert_eq!(b.history(">").unwrap(), before);
    let counter = counter_after_crash(&b, status.last_revision);
    assert_eq!(b.put("k.0", "x").unwrap(), counter + 1);
    let before = b.history(">").unwrap();
    drop(b);
    let env = env.reopen();
    let b = env.store.bucket("b").unwrap();
    assert_eq!(b.history(">").unwrap(), before);
}

#[test]
fn compaction_concurrent_with_writers_and_readers() {
    let env = Env::new();
    let b = env.bucket("b", history(2));
    let stop = Arc::new(AtomicBool::new(false));
    // Writers wait for a compaction pass and a full read every 300 writes, so
    // the three kinds of work interleave (no sleeping).
    let passes = Arc::new(AtomicU64::new(0));
    let reads = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..2u64)
        .map(|t| {
            let (b, passes, reads) = (b.clone(), Arc::clone(&passes), Arc::clone(&reads));
            std::thread::spawn(move || {
                let mut rng = Rng::new(100 + t);
                let (mut p, mut r) = (0, 0);
                for i in 0..3000 {
                    if i % 300 == 0 {
                        while passes.load(Ordering::Acquire) <= p
                            || reads.load(Ordering::Acquire) <= r
                        {
                            std::thread::yield_now();
                        }
                        p = passes.load(Ordering::Acquire);
                        r = reads.load(Ordering::Acquire);
                    }
                    let k = format!("w{t}.{}", rng.below(40));
                    if rng.below(8) == 0 {
                        b.delete(&k).unwrap();
                    } else {
                        b.put(&k, format!("{k}={i}")).unwrap();
                    }
                }
            })
        })
        .collect();
    let reader = {
        let (b, stop, reads) = (b.clone(), Arc::clone(&stop), Arc::clone(&reads));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Acquire) {
                // Every value read names its own key: a read never lands on another record.
                for e in b.history(">").unwrap() {
                    if e.op == Op::Put {
                        assert!(
                            e.value.starts_with(format!("{}=", e.key).as_bytes()),
                            "{e:?}"
                        );
                    }
                }
                for e in b.scan(None, None, 1000).unwrap().entries {
                    assert!(
                        e.value.starts_with(format!("{}=", e.key).as_bytes()),
                        "{e:?}"
                    );
                }
                reads.fetch_add(1, Ordering::AcqRel);
            }
        })
    };
    let compactor = {
        let (b, stop, passes) = (b.clone(), Arc::clone(&stop), Arc::clone(&passes));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Acquire) {
                b.compact().unwrap();
                passes.fetch_add(1, Ordering::AcqRel);
            }
        })
    };
    for w in writers {
        w.join().unwrap();
    }
    stop.store(true, Ordering::Release);
    reader.join().unwrap();
    compactor.join().unwrap();
    assert!(passes.load(Ordering::Acquire) >= 10);
    let before = b.history(">").unwrap();
    let last = b.status().unwrap().last_revision;
    assert_eq!(last, 6000);
    drop(b);
    let env = env.crash();
    let b = env.store.bucket("b").unwrap();
    assert_eq!(b.history(">").unwrap(), before);
    assert_eq!(
        b.status().unwrap().last_revision,
        counter_after_crash(&b, last)
    );
}

#[test]
fn crash_keeps_every_acknowledged_write() {
    let env = Env::new();
    let b = env.bucket("b", history(3));
    for i in 0..150u32 {
        let k = format!("k{}", i % 10);
        if i % 11 == 0 {
            b.delete(&k).unwrap();
        } else {
            b.put(&k, format!("v{i}")).unwrap();
        }
    }
    let h = b.history(">").unwrap();
    // No sync, no close.
    drop(b);
    let env = env.crash();
    let b = env.store.bucket("b").unwrap();
    assert_eq!(b.history(">").unwrap(), h);
    assert_eq!(
        b.status().unwrap().last_revision,
        counter_after_crash(&b, 150)
    );
}

/// Where the revision counter stands after a crash whose last revision was
/// `last`: past `last`, at the end of the revisions it skipped (writes under
/// `never` were visible before durable, and a crash may have taken back some
/// that were seen; none of them is given again), or at `last` if none.
fn counter_after_crash(b: &Bucket, last: u64) -> u64 {
    let skipped = b.lost_revisions();
    match skipped.last() {
        Some(&(first, end)) => {
            assert_eq!(
                first,
                last + 1,
                "the skip starts just past the last revision"
            );
            end
        }
        None => last,
    }
}

// ---------------------------------------------------------------------------
// Reading: history order, keys and patterns, search, delete_glob, scan

#[test]
fn history_is_in_revision_order_across_keys() {
    let env = Env::new();
    let b = env.bucket("b", history(5));
    let mut all = Vec::new();
    for i in 0..4 {
        for k in ["z", "a.b", "m", "a.c", "a.b.c"] {
            let r = if (i + k.len()) % 3 == 0 {
                b.delete(k).unwrap()
            } else {
                b.put(k, format!("{i}")).unwrap()
            };
            all.push((k, r));
        }
    }
    let h = b.history(">").unwrap();
    assert_eq!(revs(&h), (1..=20).collect::<Vec<_>>());
    for e in &h {
        assert_eq!(all[usize::try_from(e.revision).unwrap() - 1].0, e.key);
    }
    let h = b.history("a.*").unwrap();
    assert!(h.windows(2).all(|w| w[0].revision < w[1].revision));
    assert!(h.iter().all(|e| e.key == "a.b" || e.key == "a.c"));
    assert_eq!(h.len(), 8);
    assert_eq!(b.history("a.>").unwrap().len(), 12);
    assert_eq!(b.history("nothing").unwrap(), vec![]);
}

#[test]
fn keys_order_and_patterns() {
    let env = Env::new();
    let b = env.bucket("b", history(1));
    for k in ["b", "a.b.c", "ab", "a", "a.c", "a.b", "c.x.y", "a-b", "A"] {
        b.put(k, "v").unwrap();
    }
    b.put("gone", "v").unwrap();
    b.delete("gone").unwrap();
    assert_eq!(
        b.keys(">").unwrap(),
        vec!["A", "a", "a-b", "a.b", "a.b.c", "a.c", "ab", "b", "c.x.y"]
    );
    assert_eq!(
        b.keys("a.*").unwrap(),
        vec!["a.b", "a.c"],
        "a.* is one token: not a.b.c, not a"
    );
    assert_eq!(
        b.keys("a.>").unwrap(),
        vec!["a.b", "a.b.c", "a.c"],
        "a.> does not match a"
    );
    assert_eq!(b.keys("a").unwrap(), vec!["a"]);
    assert_eq!(b.keys("a.b").unwrap(), vec!["a.b"]);
    assert_eq!(b.keys("*").unwrap(), vec!["A", "a", "a-b", "ab", "b"]);
    assert_eq!(b.keys("*.b").unwrap(), vec!["a.b"]);
    assert_eq!(b.keys("*.*.*").unwrap(), vec!["a.b.c", "c.x.y"]);
    assert_eq!(b.keys("*.x.>").unwrap(), vec!["c.x.y"]);
    assert_eq!(b.keys("a.b.>").unwrap(), vec!["a.b.c"]);
    assert_eq!(b.keys("gone").unwrap(), Vec::<String>::new());
    assert_eq!(b.keys("zzz.>").unwrap(), Vec::<String>::new());
}

/// Longer than the 22 bytes the index keeps inline: compared through the slab.
const LONG_KEY: &str = "a.key-longer-than-inline-keys";

/// A bucket's max age ends a key's entries, and a DEL marker with them, though they stay in
/// the index until a sweep or an open: a HISTORY or KEYS of the one key leaves them out as
/// the walk does.
#[test]
fn one_key_history_leaves_out_entries_past_the_max_age_as_the_walk_does() {
    let env = Env::new();
    let b = env.bucket(
        "aged",
        BucketConfig {
            history: 4,
            ttl: Some(Duration::from_millis(5)),
            ..Default::default()
        },
    );
    for k in ["m", LONG_KEY] {
        b.put(k, "1").unwrap();
        b.delete(k).unwrap();
    }
    let walked = |key: &str| -> Vec<logkv::Entry> {
        let all = b.history(">").unwrap();
        all.into_iter().filter(|e| e.key == key).collect()
    };
    for key in ["m", LONG_KEY] {
        assert_eq!(b.history(key).unwrap(), walked(key));
        let ops: Vec<Op> = b.history(key).unwrap().iter().map(|e| e.op).collect();
        assert_eq!(ops, [Op::Put, Op::Del], "{key}: within the max age");
    }
    env.clock.advance(6);
    for key in ["m", LONG_KEY] {
        assert_eq!(b.history(key).unwrap(), walked(key));
        assert_eq!(b.history(key).unwrap(), vec![], "{key}: past the max age");
        assert_eq!(b.keys(key).unwrap(), Vec::<String>::new());
    }
}

/// A pattern without wildcards names one key: HISTORY and KEYS look it up in the hash
/// table rather than walking the key order. Their answers must be the walk's: markers in
/// the history, expired entries out, neighbours sharing a prefix out, and the same after a
/// reopen (when nothing has needed the key order yet).
#[test]
fn one_key_history_and_keys_answer_as_the_walk_does() {
    let mut env = Env::new();
    let b = env.bucket("b", history(4));
    for k in ["a", "a.b", "ab", "a-b", "b", LONG_KEY] {
        b.put(k, "1").unwrap();
    }
    b.put(LONG_KEY, "2").unwrap();
    b.put("a", "2").unwrap();
    b.delete("a").unwrap();
    b.put_with_ttl("a", "3", Duration::from_millis(10)).unwrap();
    b.put_with_ttl("b", "2", Duration::from_millis(10)).unwrap();
    drop(b);
    for round in 0..2 {
        let b = env.store.bucket("b").unwrap();
        let walked = |key: &str| -> Vec<logkv::Entry> {
            let all = b.history(">").unwrap();
            all.into_iter().filter(|e| e.key == key).collect()
        };
        for key in ["a", "a.b", "ab", "b", LONG_KEY, "missing"] {
            assert_eq!(
                b.history(key).unwrap(),
                walked(key),
                "HISTORY {key}, round {round}"
            );
        }
        let ops: Vec<Op> = b.history("a").unwrap().iter().map(|e| e.op).collect();
        if round == 0 {
            assert_eq!(
                ops,
                [Op::Put, Op::Put, Op::Del, Op::Put],
                "the marker is history"
            );
            assert_eq!(b.keys("a").unwrap(), ["a"]);
            assert_eq!(b.keys("b").unwrap(), ["b"]);
        } else {
            // The TTL puts have expired: they leave the history and the live keys.
            assert_eq!(ops, [Op::Put, Op::Put, Op::Del]);
            assert_eq!(b.keys("a").unwrap(), Vec::<String>::new());
            assert_eq!(b.keys("b").unwrap(), Vec::<String>::new());
        }
        assert_eq!(b.keys("a.b").unwrap(), ["a.b"]);
        assert_eq!(b.keys(LONG_KEY).unwrap(), [LONG_KEY]);
        assert_eq!(b.history(LONG_KEY).unwrap().len(), 2);
        assert_eq!(b.keys("missing").unwrap(), Vec::<String>::new());
        drop(b);
        env.clock.advance(10);
        env = env.reopen();
    }
}

#[test]
fn search_in_one_bucket_and_across_buckets() {
    let env = Env::new();
    let users = env.bucket("users", history(1));
    let users2 = env.bucket("users2", history(1));
    let orders = env.bucket("orders", history(1));
    for (b, keys) in [
        (&users, &["u.1", "u.2", "x"][..]),
        (&users2, &["u.3", "u.10"][..]),
        (&orders, &["u.9", "o.1"][..]),
    ] {
        for k in keys {
            b.put(k, format!("{}:{k}", b.name())).unwrap();
        }
    }
    users.delete("u.2").unwrap();
    let keys = |v: Vec<logkv::Entry>| {
        v.into_iter()
            .map(|e| format!("{}/{}", e.bucket, e.key))
            .collect::<Vec<_>>()
    };
    assert_eq!(keys(users.search("u.*", 0).unwrap()), vec!["users/u.1"]);
    assert_eq!(keys(users2.search("u.?", 0).unwrap()), vec!["users2/u.3"]);
    assert_eq!(
        keys(users2.search("u.[0-9]*", 1).unwrap()),
        vec!["users2/u.10"]
    );
    // Across buckets: bucket by bucket in name order, keys in key order.
    assert_eq!(
        keys(env.store.search("u.*", "users*", 0).unwrap()),
        vec!["users/u.1", "users2/u.10", "users2/u.3"]
    );
    assert_eq!(
        keys(env.store.search("u.*", "*", 0).unwrap()),
        vec!["orders/u.9", "users/u.1", "users2/u.10", "users2/u.3"]
    );
    assert_eq!(
        keys(env.store.search("u.*", "*", 2).unwrap()),
        vec!["orders/u.9", "users/u.1"]
    );
    assert_eq!(
        keys(env.store.search("*", "orders", 0).unwrap()),
        vec!["orders/o.1", "orders/u.9"]
    );
    assert_eq!(
        keys(env.store.search("*", "nomatch*", 0).unwrap()),
        Vec::<String>::new()
    );
    let e = &env.store.search("o.1", "ord?rs", 0).unwrap()[0];
    assert_eq!((&e.value[..], e.op), (&b"orders:o.1"[..], Op::Put));
}

#[test]
fn delete_glob_counts_live_keys() {
    let env = Env::new();
    let b = env.bucket("b", history(3));
    for k in ["s.1", "s.2", "s.3", "s.10", "t.1", "s"] {
        b.put(k, "v").unwrap();
    }
    b.delete("s.3").unwrap();
    let last = b.status().unwrap().last_revision;
    assert_eq!(b.delete_glob("s.?").unwrap(), 2);
    assert_eq!(b.status().unwrap().last_revision, last + 2);
    assert_eq!(b.keys(">").unwrap(), vec!["s", "s.10", "t.1"]);
    assert_eq!(
        b.entry_at("s.1", last + 1).unwrap().unwrap().op,
        Op::Del,
        "each deleted as by DEL"
    );
    assert_eq!(
        b.delete_glob("s.?").unwrap(),
        0,
        "already deleted: not counted again"
    );
    assert_eq!(b.delete_glob("nomatch*").unwrap(), 0);
    assert_eq!(b.delete_glob("*").unwrap(), 3);
    assert!(b.keys(">").unwrap().is_empty());
    // History is kept.
    assert_eq!(b.history("s.1").unwrap().len(), 2);
}

#[test]
fn delete_glob_over_many_keys() {
    let env = Env::new();
    let b = env.bucket("b", history(1));
    let ops: Vec<WriteOp> = (0..3000)
        .map(|i| WriteOp::put(format!("g.{i:05}"), "v"))
        .collect();
    b.write(&ops).unwrap();
    b.put("h", "v").unwrap();
    assert_eq!(b.delete_glob("g.*").unwrap(), 3000);
    assert_eq!(b.keys(">").unwrap(), vec!["h"]);
}

#[test]
fn scan_bounds_and_cursor() {
    let env = Env::new();
    let b = env.bucket("b", history(1));
    for k in ["a", "b", "c", "d", "e"] {
        b.put(k, k).unwrap();
    }
    b.delete("c").unwrap();
    let keys = |p: &logkv::Page| p.entries.iter().map(|e| e.key.clone()).collect::<Vec<_>>();
    let p = b.scan(None, None, 2).unwrap();
    assert_eq!(
        (keys(&p), p.next.as_deref()),
        (vec!["a".to_string(), "b".to_string()], Some("d"))
    );
    let p = b.scan(p.next.as_deref(), None, 2).unwrap();
    assert_eq!(
        (keys(&p), p.next.as_deref()),
        (vec!["d".to_string(), "e".to_string()], None)
    );
    let p = b.scan(Some("b"), Some("e"), 10).unwrap();
    assert_eq!(
        (keys(&p), p.next),
        (vec!["b".to_string(), "d".to_string()], None),
        "from <= key < to"
    );
    let p = b.scan(Some("b"), Some("d"), 1).unwrap();
    assert_eq!(
        (keys(&p), p.next),
        (vec!["b".to_string()], None),
        "the next key is past TO"
    );
    assert_eq!(b.scan(Some("d"), Some("d"), 10).unwrap().entries, vec![]);
    assert_eq!(b.scan(Some("e"), Some("a"), 10).unwrap().entries, vec![]);
    assert_eq!(b.scan(Some("bb"), None, 1).unwrap().entries[0].key, "d");
    assert_err(
        b.scan(None, None, 0),
        |e| matches!(e, Error::BadArgument(_)),
        "limit 0",
    );
}

#[test]
fn scan_paging_under_concurrent_writes() {
    const N: usize = 20_000;
    // The writer may run up to QUOTA writes ahead of the pages the walker has
    // read, and the walker waits for it to use its quota before each page: so
    // writes land between (and during) every two pages, with bounded work.
    const QUOTA: u64 = 8;
    let env = Env::new();
    let b = env.bucket("scan", history(1));
    // Stable keys `k.NNNNN.a` stay for the whole walk; churned keys
    // `k.NNNNN.b` sit between them in key order and come and go.
    let stable = |i: usize| format!("k.{i:05}.a");
    let churn = |i: usize| format!("k.{i:05}.b");
    for chunk in (0..N).collect::<Vec<_>>().chunks(1000) {
        let ops: Vec<WriteOp> = chunk
            .iter()
            .flat_map(|&i| [WriteOp::put(stable(i), "s"), WriteOp::put(churn(i), "c")])
            .collect();
        b.write(&ops).unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(AtomicU64::new(0));
    let pages_read = Arc::new(AtomicU64::new(0));
    let writer = {
        let (b, stop, progress, pages_read) = (
            b.clone(),
            Arc::clone(&stop),
            Arc::clone(&progress),
            Arc::clone(&pages_read),
        );
        std::thread::spawn(move || {
            let mut rng = Rng::new(42);
            let mut n = 0u64;
            while !stop.load(Ordering::Acquire) {
                if n >= (pages_read.load(Ordering::Acquire) + 1) * QUOTA {
                    std::thread::yield_now();
                    continue;
                }
                let k = churn(rng.range_usize(0, N));
                match rng.below(3) {
                    0 => b.delete(&k).unwrap(),
                    1 => b.purge(&k).unwrap(),
                    _ => b.put(&k, "again").unwrap(),
                };
                n += 1;
                // Now and then the log is compacted under the walk too.
                if n.is_multiple_of(400) {
                    b.compact().unwrap();
                }
                progress.store(n, Ordering::Release);
            }
            n
        })
    };
    let mut seen = Vec::new();
    let mut from: Option<String> = None;
    let mut pages = 0u64;
    loop {
        while progress.load(Ordering::Acquire) < pages * QUOTA {
            std::thread::yield_now();
        }
        let page = b.scan(from.as_deref(), None, 100).unwrap();
        assert!(page.entries.len() <= 100);
        pages += 1;
        pages_read.store(pages, Ordering::Release);
        seen.extend(page.entries.into_iter().map(|e| e.key));
        match page.next {
            Some(n) => from = Some(n),
            None => break,
        }
    }
    stop.store(true, Ordering::Release);
    let written = writer.join().unwrap();
    assert!(written >= (pages - 1) * QUOTA);
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "keys strictly increasing: none twice, in order"
    );
    #[allow(
        clippy::case_sensitive_file_extension_comparisons,
        reason = "keys, not file names"
    )]
    let got: BTreeSet<&str> = seen
        .iter()
        .map(String::as_str)
        .filter(|k| k.ends_with(".a"))
        .collect();
    assert_eq!(got.len(), N, "every stable key exactly once");
    #[allow(
        clippy::case_sensitive_file_extension_comparisons,
        reason = "keys, not file names"
    )]
    let stable_or_churned = seen.iter().all(|k| k.ends_with(".a") || k.ends_with(".b"));
    assert!(stable_or_churned);
}

#[test]
fn the_key_order_built_while_keys_are_added_lists_every_key() {
    const N: u32 = 30_000;
    let env = Env::new();
    let b = env.bucket("order", history(1));
    // Loaded out of key order, so that building the order sorts.
    for chunk in (0..N).collect::<Vec<_>>().chunks(1000) {
        let ops: Vec<WriteOp> = chunk
            .iter()
            .map(|&i| WriteOp::put(format!("k.{:06}", i * 7919 % N), "v"))
            .collect();
        b.write(&ops).unwrap();
    }
    assert!(!b.key_order_built(), "point writes never build it");
    let stop = AtomicBool::new(false);
    let added = std::thread::scope(|sc| {
        let writer = sc.spawn(|| {
            // New keys, each landing among the old ones in key order, and
            // deletes of old keys, while the order is built.
            let mut n = 0u32;
            while !stop.load(Ordering::Acquire) {
                b.put(&format!("k.{:06}.new", n * 13 % N), "n").unwrap();
                b.delete(&format!("k.{n:06}")).unwrap();
                n += 1;
            }
            n
        });
        // Let the writer start, then build (on this thread, as a server's
        // blocking pool would).
        while b.stats().last_revision < u64::from(N) + 10 {
            std::thread::yield_now();
        }
        b.build_key_order();
        stop.store(true, Ordering::Release);
        writer.join().unwrap()
    });
    assert!(b.key_order_built());
    let mut want = BTreeSet::new();
    for i in added..N {
        want.insert(format!("k.{i:06}"));
    }
    for n in 0..added {
        want.insert(format!("k.{:06}.new", n * 13 % N));
    }
    let got = b.keys(">").unwrap();
    assert_eq!(got.len(), want.len());
    assert_eq!(got, want.into_iter().collect::<Vec<_>>());
    let page = b.scan(Some("k.000100"), None, 3).unwrap();
    assert!(page.entries.windows(2).all(|w| w[0].key < w[1].key));
}

#[test]
fn reads_of_many_keys_are_refused_past_the_read_limit_before_reading_values() {
    let clock = ManualClock::new(T0);
    let dir = tempfile::tempdir().unwrap();
    let opts = logkv::Options {
        max_read_bytes: 20_000,
        ..clock_opts(&clock)
    };
    let store = Store::open(dir.path(), opts).unwrap();
    let b = store.default_bucket().unwrap();
    let other = store
        .create_bucket("other", BucketConfig::default())
        .unwrap();
    // 100 values of 300 bytes: 30 KB of records in each bucket, 60 in both.
    for i in 0..100 {
        b.put(&format!("k.{i:03}"), "v".repeat(300)).unwrap();
        other.put(&format!("k.{i:03}"), "v".repeat(300)).unwrap();
    }
    let too_large = |r: logkv::Result<Vec<logkv::Entry>>| match r {
        Err(Error::ReadTooLarge { bytes, max }) => bytes > max && max == 20_000,
        _ => false,
    };
    assert!(too_large(b.search("*", 0)));
    assert!(too_large(b.history(">")));
    assert!(b.scan(None, None, 1000).is_err());
    // Narrowed, the same reads are served.
    assert_eq!(b.search("*", 10).unwrap().len(), 10);
    assert_eq!(b.history("k.001").unwrap().len(), 1);
    assert_eq!(b.scan(None, None, 50).unwrap().entries.len(), 50);
    // KEYS counts the keys alone: 500 bytes.
    assert_eq!(b.keys(">").unwrap().len(), 100);
    // A search over many buckets shares one limit: 50 records (about 17 KB) of each
    // bucket fit alone, not those of both.
    assert_eq!(store.search("k.0[0-4]*", "default", 0).unwrap().len(), 50);
    assert_eq!(other.search("k.0[0-4]*", 0).unwrap().len(), 50);
    assert!(too_large(store.search("k.0[0-4]*", "*", 0)));
    assert_eq!(store.search("k.0[0-4]*", "*", 55).unwrap().len(), 55);
}

// ---------------------------------------------------------------------------
// Concurrency

#[test]
fn concurrent_writers_get_unique_consecutive_revisions() {
    const THREADS: usize = 8;
    const PER: usize = 400;
    let env = Env::new();
    let b = env.bucket("conc", history(3));
    let start = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (b, start) = (b.clone(), Arc::clone(&start));
            std::thread::spawn(move || {
                start.wait();
                let mut revs = Vec::new();
                for i in 0..PER {
                    let k = format!("k{}", (t * 7 + i) % 13);
                    match i % 5 {
                        0 => {
                            let w = b
                                .write(&[
                                    WriteOp::put(k.clone(), "x"),
                                    WriteOp::delete(format!("t{t}")),
                                ])
                                .unwrap();
                            assert_eq!(
                                w[1].revision,
                                w[0].revision + 1,
                                "batch revisions consecutive"
                            );
                            revs.extend(w.iter().map(|w| w.revision));
                        }
                        1 => revs.push(b.delete(&k).unwrap()),
                        _ => revs.push(b.put(&k, format!("{t}:{i}")).unwrap()),
                    }
                }
                revs
            })
        })
        .collect();
    let mut all: Vec<u64> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let n = all.len();
    all.sort_unstable();
    let unique: HashSet<u64> = all.iter().copied().collect();
    assert_eq!(unique.len(), n, "a revision was handed out twice");
    assert_eq!(
        all,
        (1..=n as u64).collect::<Vec<_>>(),
        "revisions are 1..=n with no gap"
    );
    assert_eq!(b.status().unwrap().last_revision, n as u64);
    // The history agrees with what the writers were told.
    let h = b.history(">").unwrap();
    assert!(h.windows(2).all(|w| w[0].revision < w[1].revision));
}

#[test]
fn errors_have_protocol_codes() {
    let env = Env::new();
    let b = env.default_bucket();
    b.put("k", "v").unwrap();
    assert_eq!(r_code(&b.create("k", "v")), "EXISTS");
    assert_eq!(r_code(&b.update("k", "v", 9)), "WRONGREV");
    assert_eq!(
        b.update("k", "v", 9).unwrap_err().to_string(),
        "expected 9, latest 1"
    );
    assert_eq!(
        b.update("nokey", "v", 9).unwrap_err().to_string(),
        "expected 9, latest 0"
    );
    assert_eq!(r_code(&b.cas("k", "v", Some(b"x"))), "MISMATCH");
    assert_eq!(r_code(&b.revert("k", 99)), "NOTFOUND");
    assert_eq!(r_code(&b.put("a b", "v")), "BADKEY");
    assert_eq!(r_code(&env.store.bucket("nope")), "NOBUCKET");
    assert_eq!(
        r_code(&b.write(&[WriteOp::put("x", "1"), WriteOp::create("k", "2")])),
        "EXISTS"
    );
}
