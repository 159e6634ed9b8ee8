//! Round trips: everything written reads back the same after a clean close and from the
//! log alone, across rotations and after compaction.

use std::collections::BTreeSet;
use std::fs;
use std::time::Duration;

use logkv::{Bucket, BucketConfig, Op, Store, WriteOp};

use crate::common::{copy_store_dir, opts, Rng};
use crate::oracle::{assert_clean, assert_same_state, ops, report, state_of};
use crate::segments::{bucket_dir, parse_segment, remove_snapshots, seg_files, SEG};
use crate::shared_gate;

#[test]
fn round_trip_every_record_kind_through_reopen() {
    let _gate = shared_gate();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let cfg = BucketConfig {
        history: 10,
        ..Default::default()
    };
    let mut written = 0u64; // records in bucket "rt"
    let long_key = format!("long.{}", "x".repeat(1000));
    let big: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    let rt_keys: Vec<String> = [
        "a", "b", "c", "d", "e", "f", "gone", "batch.1", "batch.2", "batch.3", "ttl", "empty",
        "bin",
    ]
    .iter()
    .map(std::string::ToString::to_string)
    .chain([long_key.clone()])
    .collect();
    let (before_rt, before_default, last_rt) = {
        let store = Store::open(&path, opts(1 << 20)).unwrap();
        let rt = store.create_bucket("rt", cfg).unwrap();
        let r_a1 = rt.put("a", "one").unwrap();
        let r_a2 = rt.update("a", "two", r_a1).unwrap();
        rt.create("b", "bee").unwrap();
        rt.put("c", "sea").unwrap();
        let r_c_del = rt.delete("c").unwrap();
        rt.put("d", "dee-1").unwrap();
        rt.put("d", "dee-2").unwrap();
        let r_d_purge = rt.purge("d").unwrap();
        rt.put("e", "e-1").unwrap();
        rt.purge("e").unwrap();
        rt.put("e", "e-after-purge").unwrap();
        rt.delete("gone").unwrap(); // a marker for a key that never had a value
        rt.put("f", "f-1").unwrap();
        written += 13;
        let w = rt
            .write(&[
                WriteOp::put("batch.1", "b1"),
                WriteOp::put("batch.2", "b2"),
                WriteOp::delete("f"),
                WriteOp::purge("b"),
                WriteOp::put("batch.3", "b3"),
            ])
            .unwrap();
        written += 5;
        let revs: Vec<u64> = w.iter().map(|w| w.revision).collect();
        assert!(
            revs.windows(2).all(|p| p[1] == p[0] + 1),
            "batch revisions not consecutive: {revs:?}"
        );
        rt.put_with_ttl("ttl", "lives an hour", Duration::from_secs(3600))
            .unwrap();
        rt.put("empty", "").unwrap();
        rt.put("bin", big.clone()).unwrap();
        rt.put(&long_key, "long").unwrap();
        rt.revert("a", r_a1).unwrap();
        written += 5;
        let last = rt.status().unwrap().last_revision;
        assert_eq!(last, written);
        let def = store.default_bucket().unwrap();
        def.put("x", "in default").unwrap();
        def.delete("y").unwrap();
        let before_rt = state_of(&rt, &rt_keys);
        let before_default = state_of(&def, &["x".into(), "y".into()]);
        // Sanity of the state being round-tripped.
        assert_eq!(rt.history("a").unwrap().len(), 3, "two puts and a revert");
        assert_eq!(rt.entry_at("a", r_a2).unwrap().unwrap().value, "two");
        assert_eq!(rt.entry_at("c", r_c_del).unwrap().unwrap().op, Op::Del);
        let hd = rt.history("d").unwrap();
        assert_eq!(hd.len(), 1);
        assert_eq!((hd[0].op, hd[0].revision), (Op::Purge, r_d_purge));
        drop((rt, def));
        store.close().unwrap();
        (before_rt, before_default, last)
    };

    // Reopen after the clean close (index snapshot), and from the log alone
    // (as after a crash: no snapshot covers the writes).
    let replay = dir.path().join("replay");
    copy_store_dir(&path, &replay);
    remove_snapshots(&replay);
    for (path, snapshot_kept) in [(&path, true), (&replay, false)] {
        let variant = if snapshot_kept {
            "reopen with the snapshot"
        } else {
            "reopen from the log alone"
        };
        let store = Store::open(path, opts(1 << 20)).unwrap();
        assert_clean(&store, "first reopen");
        assert_eq!(
            store.bucket_names(),
            vec!["default".to_string(), "rt".to_string()]
        );
        if !snapshot_kept {
            assert_eq!(
                report(&store, "rt").records,
                written,
                "every record replayed"
            );
        }
        let rt = store.bucket("rt").unwrap();
        let def = store.default_bucket().unwrap();
        assert_eq!(rt.config(), cfg, "bucket.conf round trip");
        let after_rt = state_of(&rt, &rt_keys);
        assert_same_state(&after_rt, &before_rt, variant);
        assert_same_state(
            &state_of(&def, &["x".into(), "y".into()]),
            &before_default,
            variant,
        );

        // Explicit expectations, independent of the pre-close snapshot.
        assert_eq!(
            rt.get("a").unwrap().as_deref(),
            Some(&b"one"[..]),
            "revert survives"
        );
        assert_eq!(rt.history("a").unwrap().len(), 3);
        assert_eq!(rt.get("b").unwrap(), None, "purged in the batch");
        assert_eq!(ops(&rt, "b"), vec![Op::Purge]);
        assert_eq!(ops(&rt, "c"), vec![Op::Put, Op::Del]);
        assert_eq!(ops(&rt, "d"), vec![Op::Purge]);
        assert_eq!(ops(&rt, "e"), vec![Op::Purge, Op::Put]);
        assert_eq!(rt.get("e").unwrap().as_deref(), Some(&b"e-after-purge"[..]));
        assert_eq!(ops(&rt, "gone"), vec![Op::Del]);
        assert_eq!(rt.get("f").unwrap(), None, "deleted in the batch");
        for k in ["batch.1", "batch.2", "batch.3"] {
            assert!(rt.get(k).unwrap().is_some(), "{k}");
        }
        let ttl = rt.entry("ttl").unwrap().unwrap();
        assert!(ttl.expires_ms > 0, "per-key expiry survives: {ttl:?}");
        assert!(matches!(rt.ttl("ttl").unwrap(), logkv::Ttl::Remaining(ms) if ms > 3_000_000));
        assert_eq!(rt.get("empty").unwrap().as_deref(), Some(&b""[..]));
        assert_eq!(rt.get("bin").unwrap().as_deref(), Some(&big[..]));
        assert_eq!(rt.get(&long_key).unwrap().as_deref(), Some(&b"long"[..]));
        assert_eq!(after_rt.status.last_revision, last_rt);

        // Writing after the reopen continues the revisions, and survives another reopen.
        let r = rt.put("a", "three").unwrap();
        assert!(r > last_rt, "revision {r} reused (last was {last_rt})");
        let before2 = state_of(&rt, &rt_keys);
        drop((rt, def));
        drop(store);
        if !snapshot_kept {
            remove_snapshots(path);
        }
        let store = Store::open(path, opts(1 << 20)).unwrap();
        assert_clean(&store, "second reopen");
        if !snapshot_kept {
            assert_eq!(report(&store, "rt").records, written + 1);
        }
        assert_same_state(
            &state_of(&store.bucket("rt").unwrap(), &rt_keys),
            &before2,
            variant,
        );
    }
}

/// Random puts, deletes, purges and batches over `keys`; returns the number of records written.
fn random_writes(b: &Bucket, rng: &mut Rng, keys: &[String], n: usize) -> u64 {
    let mut records = 0;
    let pick = |rng: &mut Rng| keys[rng.range_usize(0, keys.len())].clone();
    for _ in 0..n {
        let k = pick(rng);
        let len = rng.range_usize(0, 300);
        match rng.range(0, 100) {
            0..=69 => {
                b.put(&k, rng.bytes(len)).unwrap();
                records += 1;
            }
            70..=79 => {
                b.delete(&k).unwrap();
                records += 1;
            }
            80..=84 => {
                b.purge(&k).unwrap();
                records += 1;
            }
            _ => {
                let n = rng.range_usize(2, 5);
                let mut batch_keys = BTreeSet::new();
                while batch_keys.len() < n {
                    batch_keys.insert(pick(rng));
                }
                let ops: Vec<WriteOp> = batch_keys
                    .iter()
                    .map(|k| {
                        if rng.range(0, 4) == 0 {
                            WriteOp::delete(k.as_str())
                        } else {
                            WriteOp::put(k.as_str(), rng.bytes(len))
                        }
                    })
                    .collect();
                let w = b.write(&ops).unwrap();
                assert!(w.windows(2).all(|p| p[1].revision == p[0].revision + 1));
                records += n as u64;
            }
        }
    }
    records
}

#[test]
fn rotation_across_many_segments_round_trips() {
    let _gate = shared_gate();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let mut rng = Rng::new(1);
    let cfg = BucketConfig {
        history: 3,
        ..Default::default()
    };
    let all_keys: Vec<String> = (0..200).map(|i| format!("key.{i}")).collect();
    let mut records = 0u64;
    let before = {
        let store = Store::open(&path, opts(SEG)).unwrap();
        let b = store.create_bucket("rot", cfg).unwrap();
        records += random_writes(&b, &mut rng, &all_keys, 3000);
        let snap = state_of(&b, &all_keys);
        drop(b);
        drop(store);
        snap
    };
    let segs = seg_files(&bucket_dir(&path, "rot"));
    assert!(
        segs.len() >= 20,
        "expected many segments, found {}",
        segs.len()
    );
    for s in &segs[..segs.len() - 1] {
        let len = fs::metadata(s).unwrap().len();
        assert!(
            len <= SEG,
            "{} is {len} bytes, more than the segment size",
            s.display()
        );
        assert_eq!(
            parse_segment(s).data_end,
            len,
            "a sealed segment is cut to its data"
        );
    }

    // Reopen with the index snapshot of the clean close, then from the log alone
    // (as after a crash), with the same and with a different segment size.
    for (round, size, snapshot_kept) in [(1, SEG, true), (2, SEG, false), (3, 1 << 16, false)] {
        if !snapshot_kept {
            remove_snapshots(&path);
        }
        let store = Store::open(&path, opts(size)).unwrap();
        assert_clean(&store, "reopen");
        if !snapshot_kept {
            let r = report(&store, "rot");
            assert_eq!(
                r.segments,
                seg_files(&bucket_dir(&path, "rot")).len(),
                "round {round}"
            );
            assert_eq!(r.records, records, "round {round}: records replayed");
        }
        let b = store.bucket("rot").unwrap();
        assert_same_state(&state_of(&b, &all_keys), &before, &format!("round {round}"));
    }

    // Keep writing across more rotations, then reopen again.
    let before = {
        let store = Store::open(&path, opts(SEG)).unwrap();
        let b = store.bucket("rot").unwrap();
        let last = b.status().unwrap().last_revision;
        let r = b.put("key.0", "after reopen").unwrap();
        records += 1;
        assert_eq!(r, last + 1, "revisions continue after reopen");
        records += random_writes(&b, &mut rng, &all_keys, 1000);
        state_of(&b, &all_keys)
    };
    for snapshot_kept in [true, false] {
        if !snapshot_kept {
            remove_snapshots(&path);
        }
        let store = Store::open(&path, opts(SEG)).unwrap();
        assert_clean(&store, "final reopen");
        if !snapshot_kept {
            assert_eq!(report(&store, "rot").records, records);
        }
        assert_same_state(
            &state_of(&store.bucket("rot").unwrap(), &all_keys),
            &before,
            &format!("final, snapshot kept: {snapshot_kept}"),
        );
    }
}

/// A log rewritten by compaction reads back the same, with the snapshot the
/// compaction left and from the log alone, and keeps taking writes.
#[test]
fn compacted_log_round_trips() {
    let _gate = shared_gate();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let mut rng = Rng::new(2);
    let cfg = BucketConfig {
        history: 2,
        ..Default::default()
    };
    let all_keys: Vec<String> = (0..50).map(|i| format!("key.{i}")).collect();
    let before = {
        let store = Store::open(&path, opts(SEG)).unwrap();
        let b = store.create_bucket("c", cfg).unwrap();
        random_writes(&b, &mut rng, &all_keys, 2000);
        let segs_before = seg_files(&bucket_dir(&path, "c")).len();
        let before = state_of(&b, &all_keys);
        let report = b.compact().unwrap();
        assert!(report.records_dropped > 0, "{report:?}");
        let segs_after = seg_files(&bucket_dir(&path, "c")).len();
        assert!(
            segs_after < segs_before,
            "{segs_before} segments before compaction, {segs_after} after"
        );
        let mut after = state_of(&b, &all_keys);
        // Compaction changes where records are, not what they are.
        assert!(after.status.segments < before.status.segments);
        after.status.segments = before.status.segments;
        after.status.dead_bytes = before.status.dead_bytes;
        assert_same_state(&after, &before, "compaction changed the bucket's contents");
        // Another write after the compaction, then a clean close.
        b.put("key.0", "after compaction").unwrap();
        state_of(&b, &all_keys)
    };
    let replay = dir.path().join("replay");
    copy_store_dir(&path, &replay);
    remove_snapshots(&replay);
    for (p, snapshot_kept) in [(&path, true), (&replay, false)] {
        let store = Store::open(p, opts(SEG)).unwrap();
        assert_clean(&store, "reopen after compaction");
        let b = store.bucket("c").unwrap();
        let got = state_of(&b, &all_keys);
        assert_same_state(
            &got,
            &before,
            &format!("reopen after compaction, snapshot kept: {snapshot_kept}"),
        );
        let last = b.status().unwrap().last_revision;
        assert_eq!(b.put("key.1", "more").unwrap(), last + 1);
    }
}
