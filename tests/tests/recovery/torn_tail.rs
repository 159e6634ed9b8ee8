//! Torn tails: the last write cut or zeroed at every byte offset is cut off, and nothing
//! else is lost or invented.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use logkv::log::record::HEADER_LEN;
use logkv::{Op, Store, WriteOp};

use crate::common::{copy_store_dir, opts, repair_opts, Rng};
use crate::fixtures::{crash, nonzero_value, store_with_embedded_record};
use crate::oracle::{assert_clean, check_model, model_last_rev, report, Model};
use crate::segments::{
    bucket_dir, last_seg_name, parse_segment, remove_snapshots, seg_files, snap_path, SEG,
};
use crate::shared_gate;

/// A store as a crash right after its last write (one record or a batch)
/// leaves it: that write is the one to tear.
struct TornSetup {
    _tmp: tempfile::TempDir,
    pristine: PathBuf,
    /// State with the last write absent.
    model: Model,
    /// Keys of the last write.
    torn_keys: Vec<String>,
    last_seg_name: std::ffi::OsString,
    /// Byte range of the last write in the last segment.
    start: u64,
    end: u64,
}

/// The index snapshot a crash finds next to the log.
#[derive(Clone, Copy, Debug)]
enum SnapState {
    /// None: the store was never closed cleanly.
    Absent,
    /// One from a clean close before the last write (the store was then reopened).
    Older,
}

#[derive(Clone, Copy, Debug)]
enum LastWrite {
    /// Overwrites an existing key.
    Single,
    /// A put over an existing key, a delete of an existing key, and a new key.
    Batch,
    /// A single record that is the first one of a freshly rotated segment.
    FirstInSegment,
}

fn torn_setup(kind: LastWrite, snap: SnapState) -> TornSetup {
    let tmp = tempfile::tempdir().unwrap();
    let pristine = tmp.path().join("pristine");
    let mut rng = Rng::new(kind as u64 + 10);
    let mut model = Model::new();
    let store = Store::open(&pristine, opts(SEG)).unwrap();
    let b = store.default_bucket().unwrap();
    let bdir = bucket_dir(&pristine, "default");
    let mut i = 0;
    while seg_files(&bdir).len() < 3 || i < 60 {
        let k = format!("k.{:03}", i % 80);
        let len = rng.range_usize(1, 60);
        let v = nonzero_value(&mut rng, len);
        if i % 13 == 12 {
            let r = b.delete(&k).unwrap();
            model.insert(k, (r, Op::Del, Vec::new()));
        } else {
            let r = b.put(&k, v.clone()).unwrap();
            model.insert(k, (r, Op::Put, v));
        }
        i += 1;
    }
    // Make sure the keys the last write touches hold values.
    for k in ["k.005", "k.010"] {
        let v = nonzero_value(&mut rng, 20);
        let r = b.put(k, v.clone()).unwrap();
        model.insert(k.to_string(), (r, Op::Put, v));
    }
    // A clean close (it writes an index snapshot), then a reopen for the last write.
    drop(b);
    drop(store);
    let old_snap = fs::read(snap_path(&pristine, "default")).unwrap();
    let store = Store::open(&pristine, opts(SEG)).unwrap();
    let b = store.default_bucket().unwrap();
    let torn_keys: Vec<String> = match kind {
        LastWrite::Single => {
            b.put("k.007", nonzero_value(&mut rng, 33)).unwrap();
            vec!["k.007".into()]
        }
        LastWrite::Batch => {
            b.write(&[
                WriteOp::put("k.005", nonzero_value(&mut rng, 25)),
                WriteOp::delete("k.010"),
                WriteOp::put("new.key", nonzero_value(&mut rng, 31)),
            ])
            .unwrap();
            vec!["k.005".into(), "k.010".into(), "new.key".into()]
        }
        LastWrite::FirstInSegment => {
            // Fill the last segment with small records (at most 60 bytes each)
            // until 60..120 bytes are left, then write one record a byte longer
            // than what is left: it rotates and starts a fresh segment.
            let free = |bdir: &Path| SEG - parse_segment(&seg_files(bdir).pop().unwrap()).data_end;
            let mut j = 0;
            while free(&bdir) >= 120 {
                let k = format!("fill.{j:03}");
                let v = nonzero_value(&mut rng, 10);
                let r = b.put(&k, v.clone()).unwrap();
                model.insert(k, (r, Op::Put, v));
                j += 1;
            }
            let left = free(&bdir);
            assert!((60..120).contains(&left), "{left} bytes left");
            b.put(
                "k.007",
                nonzero_value(&mut rng, (left + 1) as usize - HEADER_LEN - 5),
            )
            .unwrap();
            vec!["k.007".into()]
        }
    };
    drop(b);
    // A crash: no snapshot covering the last write, no clean-close mark.
    crash(store, &pristine);
    match snap {
        SnapState::Absent => remove_snapshots(&pristine),
        SnapState::Older => {
            assert_eq!(fs::read(snap_path(&pristine, "default")).unwrap(), old_snap);
        }
    }

    let last = seg_files(&bdir).pop().unwrap();
    let parsed = parse_segment(&last);
    let n = torn_keys.len();
    let tail = &parsed.records[parsed.records.len() - n..];
    assert_eq!(
        tail.iter().map(|r| r.key.clone()).collect::<Vec<_>>(),
        torn_keys
    );
    let last_rev = model_last_rev(&model);
    for (j, r) in tail.iter().enumerate() {
        assert_eq!(r.revision, last_rev + 1 + j as u64);
        assert_eq!(
            r.batch_more,
            j + 1 < n,
            "BATCH_MORE on all but the last record of a batch"
        );
    }
    if let LastWrite::FirstInSegment = kind {
        assert_eq!(
            tail[0].offset, parsed.data_start,
            "the last write should start a fresh segment"
        );
    }
    TornSetup {
        pristine,
        model,
        torn_keys,
        last_seg_name: last.file_name().unwrap().to_os_string(),
        start: tail[0].offset,
        end: parsed.data_end,
        _tmp: tmp,
    }
}

#[derive(Clone, Copy, Debug)]
enum Damage {
    /// The file ends at the cut.
    SetLen,
    /// Bytes from the cut to the end of the write are zeros (the file keeps its length).
    Zeros,
}

fn torn_every_offset(kind: LastWrite) {
    for snap in [SnapState::Absent, SnapState::Older] {
        torn_every_offset_with(kind, snap);
    }
}

fn torn_every_offset_with(kind: LastWrite, snap: SnapState) {
    let setup = torn_setup(kind, snap);
    let pristine_seg =
        fs::read(bucket_dir(&setup.pristine, "default").join(&setup.last_seg_name)).unwrap();
    let last_rev = model_last_rev(&setup.model);
    let mut cases = 0;
    for cut in setup.start..setup.end {
        for damage in [Damage::SetLen, Damage::Zeros] {
            let ctx = format!(
                "{kind:?}, snapshot {snap:?}, {damage:?} at {cut} (write spans {}..{})",
                setup.start, setup.end
            );
            let work = tempfile::tempdir().unwrap();
            let dir = work.path().join("s");
            copy_store_dir(&setup.pristine, &dir);
            let seg = bucket_dir(&dir, "default").join(&setup.last_seg_name);
            let f = OpenOptions::new().write(true).open(&seg).unwrap();
            match damage {
                Damage::SetLen => f.set_len(cut).unwrap(),
                Damage::Zeros => f
                    .write_all_at(&vec![0; (setup.end - cut) as usize], cut)
                    .unwrap(),
            }
            drop(f);
            let left_nonzero = pristine_seg[setup.start as usize..cut as usize]
                .iter()
                .any(|&b| b != 0);

            let store =
                Store::open(&dir, opts(SEG)).unwrap_or_else(|e| panic!("{ctx}: open failed: {e}"));
            let r = report(&store, "default");
            assert!(r.skipped.is_empty(), "{ctx}: {r:?}");
            if left_nonzero {
                assert!(
                    r.truncated_bytes > 0,
                    "{ctx}: torn bytes were left but nothing was truncated: {r:?}"
                );
            } else {
                assert_eq!(
                    r.truncated_bytes, 0,
                    "{ctx}: nothing but zeros was left: {r:?}"
                );
            }
            assert!(
                r.truncated_bytes <= cut - setup.start,
                "{ctx}: truncated more than the torn write: {r:?}"
            );
            let b = store.default_bucket().unwrap();
            check_model(&b, &setup.model, last_rev, &ctx);

            // Write again: visible, above every surviving revision, and it survives a reopen.
            let v = format!("after {cut}");
            let rev = b.put("after", v.clone()).unwrap();
            assert!(
                rev > last_rev,
                "{ctx}: new write got revision {rev}, last surviving is {last_rev}"
            );
            let mut model = setup.model.clone();
            model.insert("after".into(), (rev, Op::Put, v.into_bytes()));
            check_model(&b, &model, rev, &ctx);
            drop(b);
            drop(store);
            let store = Store::open(&dir, opts(SEG))
                .unwrap_or_else(|e| panic!("{ctx}: second open failed: {e}"));
            assert_clean(&store, &ctx);
            check_model(
                &store.default_bucket().unwrap(),
                &model,
                rev,
                &format!("{ctx}, after second reopen"),
            );
            for k in &setup.torn_keys {
                if k != "after" && !setup.model.contains_key(k) {
                    assert!(
                        store
                            .default_bucket()
                            .unwrap()
                            .history(k)
                            .unwrap()
                            .is_empty(),
                        "{ctx}: {k} invented"
                    );
                }
            }
            cases += 1;
        }
    }
    assert_eq!(cases, 2 * (setup.end - setup.start));
}

#[test]
fn torn_last_record_at_every_offset() {
    let _gate = shared_gate();
    torn_every_offset(LastWrite::Single);
}

#[test]
fn torn_last_batch_at_every_offset() {
    let _gate = shared_gate();
    torn_every_offset(LastWrite::Batch);
}

#[test]
fn torn_first_record_of_a_fresh_segment_at_every_offset() {
    let _gate = shared_gate();
    torn_every_offset(LastWrite::FirstInSegment);
}

/// A crash that tears the last record after the part of its value that holds
/// an encoded record: the torn record is cut like any other torn tail, and the
/// record inside its value is not taken for a real one.
#[test]
fn torn_record_holding_an_encoded_record_is_cut_not_replayed() {
    let _gate = shared_gate();
    let tmp = tempfile::tempdir().unwrap();
    let (pristine, model, rec, embedded_end) = store_with_embedded_record(tmp.path(), false);
    let seg_name = last_seg_name(&pristine, "default");
    let last_rev = model_last_rev(&model);
    for cut in [embedded_end, embedded_end + 1, rec.offset + rec.len - 1] {
        for damage in [Damage::SetLen, Damage::Zeros] {
            let ctx = format!(
                "{damage:?} at {cut} (blob record {}..{})",
                rec.offset,
                rec.offset + rec.len
            );
            for repair in [false, true] {
                // A fresh damaged copy per mode: the first open cuts the tail.
                let work = tempfile::tempdir().unwrap();
                let dir = work.path().join("s");
                copy_store_dir(&pristine, &dir);
                let seg = bucket_dir(&dir, "default").join(&seg_name);
                let f = OpenOptions::new().write(true).open(&seg).unwrap();
                match damage {
                    Damage::SetLen => f.set_len(cut).unwrap(),
                    Damage::Zeros => f
                        .write_all_at(&vec![0; (rec.offset + rec.len - cut) as usize], cut)
                        .unwrap(),
                }
                drop(f);
                let ctx = format!("{ctx}, repair {repair}");
                let o = if repair {
                    repair_opts(1 << 16)
                } else {
                    opts(1 << 16)
                };
                let store = Store::open(&dir, o)
                    .unwrap_or_else(|e| panic!("{ctx}: a torn tail must not stop the open: {e}"));
                let r = report(&store, "default");
                assert!(r.truncated_bytes > 0, "{ctx}: {r:?}");
                check_model(&store.default_bucket().unwrap(), &model, last_rev, &ctx);
            }
        }
    }
}

/// Under `never` a write is visible before it is durable. A power cut that tears
/// such a write leaves a tail that recovery cuts; the revision it had may have been
/// seen, so it is skipped (`lost_revisions`) and never given to other data. Found by
/// the `recovery` fuzz target: cutting the tail rewrote the durability mark without
/// its "visible before durable" flag, so the next open gave the torn revision again.
#[test]
fn a_torn_tail_cut_under_never_never_gives_its_revision_again() {
    let _gate = shared_gate();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("s");
    let store = Store::open(&path, opts(SEG)).unwrap();
    let b = store.default_bucket().unwrap();
    b.put("a", "durable").unwrap();
    store.sync().unwrap();
    let torn = b.put("b", "seen, then torn by the power cut").unwrap();
    drop(b);
    crash(store, &path);
    let seg = seg_files(&bucket_dir(&path, "default")).pop().unwrap();
    let rec = parse_segment(&seg)
        .records
        .into_iter()
        .find(|r| r.key == "b")
        .unwrap();
    let f = OpenOptions::new().write(true).open(&seg).unwrap();
    f.write_all_at(&vec![0; (rec.len / 2) as usize], rec.offset + rec.len / 2)
        .unwrap();
    drop(f);

    let store = Store::open(&path, opts(SEG)).unwrap();
    assert!(
        report(&store, "default").truncated_bytes > 0,
        "the torn write is cut"
    );
    let b = store.default_bucket().unwrap();
    assert_eq!(b.get("b").unwrap(), None);
    let lost = b.lost_revisions();
    assert!(
        lost.iter()
            .any(|&(first, last)| first <= torn && torn <= last),
        "revision {torn} is not among the skipped ones: {lost:?}"
    );
    let next = b.put("c", "other data").unwrap();
    assert!(
        next > torn,
        "revision {next} given again (the torn write had {torn})"
    );
}
