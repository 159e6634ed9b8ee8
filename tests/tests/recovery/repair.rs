//! Repair opens: nothing embedded in a damaged value is replayed, a damaged batch is never
//! applied in part, and writes made after a repair survive a crash.

use logkv::{Op, Store, WriteOp};

use crate::common::{copy_store_dir, opts, repair_opts};
use crate::fixtures::store_with_embedded_record;
use crate::oracle::{check_model, expect_corrupt, model_last_rev, report, Model};
use crate::segments::{bucket_dir, flip_byte, parse_segment, remove_snapshots, seg_files};
use crate::shared_gate;

/// Repair skips a damaged record; it must not replay the bytes of a record
/// that sit inside the damaged record's value as if they were a record.
#[test]
fn repair_does_not_replay_records_embedded_in_a_damaged_value() {
    let _gate = shared_gate();
    let tmp = tempfile::tempdir().unwrap();
    let (path, model, rec, _) = store_with_embedded_record(tmp.path(), true);
    let seg = seg_files(&bucket_dir(&path, "default")).pop().unwrap();
    // Damage the blob's checksum.
    flip_byte(&seg, rec.offset);
    let (p, offset, msg) = expect_corrupt(Store::open(&path, opts(1 << 16)), "damaged blob");
    assert_eq!((p, offset), (seg.clone(), rec.offset), "{msg}");
    let store = Store::open(&path, repair_opts(1 << 16)).unwrap();
    let r = report(&store, "default");
    check_model(
        &store.default_bucket().unwrap(),
        &model,
        model_last_rev(&model),
        &format!("repair: {r:?}"),
    );
}

/// A batch damaged before the tail of the log must still be applied whole or
/// not at all, in repair mode too: a repair must not make half a batch visible.
#[test]
fn repair_never_applies_part_of_a_damaged_batch() {
    let _gate = shared_gate();
    for damaged in 0..3usize {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("s");
        let mut model = Model::new();
        {
            let store = Store::open(&path, opts(1 << 16)).unwrap();
            let b = store.default_bucket().unwrap();
            for i in 0..5 {
                let k = format!("before.{i}");
                let r = b.put(&k, format!("v{i}")).unwrap();
                model.insert(k, (r, Op::Put, format!("v{i}").into_bytes()));
            }
            b.write(&[
                WriteOp::put("batch.0", "x0"),
                WriteOp::put("batch.1", "x1"),
                WriteOp::put("batch.2", "x2"),
            ])
            .unwrap();
            for i in 0..5 {
                let k = format!("after.{i}");
                let r = b.put(&k, format!("w{i}")).unwrap();
                model.insert(k, (r, Op::Put, format!("w{i}").into_bytes()));
            }
        }
        remove_snapshots(&path);
        let seg = seg_files(&bucket_dir(&path, "default")).pop().unwrap();
        let parsed = parse_segment(&seg);
        let rec = parsed
            .records
            .iter()
            .find(|r| r.key == format!("batch.{damaged}"))
            .unwrap()
            .clone();
        let at = rec.offset + rec.len - 1;
        flip_byte(&seg, at);
        let ctx = format!("record batch.{damaged} of a 3-record batch damaged");

        let (p, offset, msg) = expect_corrupt(Store::open(&path, opts(1 << 16)), &ctx);
        assert_eq!(p, seg, "{msg}");
        assert_eq!(offset, rec.offset, "{ctx}: {msg}");

        let store = Store::open(&path, repair_opts(1 << 16)).unwrap();
        let b = store.default_bucket().unwrap();
        let visible: Vec<String> = (0..3)
            .map(|j| format!("batch.{j}"))
            .filter(|k| b.get(k).unwrap().is_some())
            .collect();
        assert!(
            visible.is_empty(),
            "{ctx}: repair applied part of the batch: {visible:?} visible; report {:?}",
            report(&store, "default")
        );
        // Everything outside the batch is kept.
        for (k, (rev, _, v)) in &model {
            let e = b
                .entry(k)
                .unwrap()
                .unwrap_or_else(|| panic!("{ctx}: {k} lost"));
            assert_eq!((e.revision, &e.value[..]), (*rev, &v[..]), "{ctx}: {k}");
        }
    }
}

/// A record of one batch copied over a record of another (same length, valid
/// checksum, a higher revision, the flags of a batch's last record) must not
/// complete the batch it lands in: a batch's records have consecutive
/// revisions. Without repair, open fails there; repair drops that batch whole
/// and keeps the rest. Found by the `recovery` fuzz target (repair applied the
/// first record of a batch without its second).
#[test]
fn a_record_copied_into_another_batch_does_not_complete_it() {
    let _gate = shared_gate();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("s");
    let mut model = Model::new();
    {
        let store = Store::open(&path, opts(1 << 16)).unwrap();
        let b = store.default_bucket().unwrap();
        let r = b.put("before", "v").unwrap();
        model.insert("before".into(), (r, Op::Put, b"v".to_vec()));
        b.write(&[WriteOp::put("a.0", "x0"), WriteOp::put("a.1", "x1")])
            .unwrap();
        let batch = [("b.0", "y0"), ("b.1", "y1"), ("b.2", "y2")];
        let ops: Vec<WriteOp> = batch.iter().map(|(k, v)| WriteOp::put(*k, *v)).collect();
        for ((k, v), w) in batch.iter().zip(b.write(&ops).unwrap()) {
            model.insert(k.to_string(), (w.revision, Op::Put, v.as_bytes().to_vec()));
        }
        let r = b.put("after", "w").unwrap();
        model.insert("after".into(), (r, Op::Put, b"w".to_vec()));
    }
    remove_snapshots(&path);
    let seg = seg_files(&bucket_dir(&path, "default")).pop().unwrap();
    let records = parse_segment(&seg).records;
    let find = |key: &str| records.iter().find(|r| r.key == key).unwrap().clone();
    let (a1, b2) = (find("a.1"), find("b.2"));
    assert_eq!(a1.len, b2.len, "the copy must fit exactly");
    let bytes = std::fs::read(&seg).unwrap();
    let copy = bytes[b2.offset as usize..(b2.offset + b2.len) as usize].to_vec();
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &copy, a1.offset).unwrap();
    drop(f);

    let (p, offset, msg) = expect_corrupt(Store::open(&path, opts(1 << 16)), "b.2 over a.1");
    assert_eq!((p, offset), (seg.clone(), a1.offset), "{msg}");

    let store = Store::open(&path, repair_opts(1 << 16)).unwrap();
    let b = store.default_bucket().unwrap();
    let r = report(&store, "default");
    for key in ["a.0", "a.1"] {
        assert!(
            b.get(key).unwrap().is_none(),
            "repair applied {key} of the damaged batch; report {r:?}"
        );
    }
    check_model(
        &b,
        &model,
        model_last_rev(&model),
        &format!("repair: {r:?}"),
    );
}

/// After a repair open cut a damaged record off the end of the log, the
/// writes of that session land where the damaged record was. If the process
/// then crashes, the next (normal) open must still find every write the
/// repair session acknowledged. (The crash is simulated by copying the store
/// directory while the store is open, after a sync: a killed process leaves
/// exactly those file contents behind.)
#[test]
fn writes_acknowledged_after_a_repair_open_survive_a_crash() {
    let _gate = shared_gate();
    for new_value_len in [20usize, 300] {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("s");
        let mut model = Model::new();
        {
            let store = Store::open(&path, opts(1 << 16)).unwrap();
            let b = store.default_bucket().unwrap();
            for i in 0..10 {
                let k = format!("k.{i}");
                let v = format!("value-{i}-{}", "v".repeat(20)).into_bytes();
                let r = b.put(&k, v.clone()).unwrap();
                model.insert(k, (r, Op::Put, v));
            }
            b.put("x", vec![b'x'; 400]).unwrap();
        } // clean close
        let seg = seg_files(&bucket_dir(&path, "default")).pop().unwrap();
        let x = parse_segment(&seg).records.pop().unwrap();
        assert_eq!(x.key, "x");
        // Damage the last record (as a bad sector would).
        let at = x.offset + x.len - 1;
        flip_byte(&seg, at);

        let ctx = format!("new values of {new_value_len} bytes");
        let crashed = tmp.path().join("crashed");
        {
            let store = Store::open(&path, repair_opts(1 << 16)).unwrap();
            let b = store.default_bucket().unwrap();
            assert_eq!(
                b.get("x").unwrap(),
                None,
                "{ctx}: the damaged record is gone"
            );
            for i in 0..3u8 {
                let k = format!("y.{i}");
                let v = vec![b'a' + i; new_value_len];
                let r = b.put(&k, v.clone()).unwrap();
                model.insert(k, (r, Op::Put, v));
            }
            b.sync().unwrap();
            check_model(&b, &model, model_last_rev(&model), &ctx);
            copy_store_dir(&path, &crashed);
        }
        let store = Store::open(&crashed, opts(1 << 16))
            .unwrap_or_else(|e| panic!("{ctx}: open after the crash failed: {e}"));
        let b = store.default_bucket().unwrap();
        for (k, (rev, _, v)) in &model {
            let got = b.entry(k);
            assert!(
                matches!(&got, Ok(Some(e)) if e.revision == *rev && e.value[..] == v[..]),
                "{ctx}: acknowledged write {k} (revision {rev}) after the crash: {got:?}"
            );
        }
        check_model(&b, &model, model_last_rev(&model), &ctx);
    }
}
