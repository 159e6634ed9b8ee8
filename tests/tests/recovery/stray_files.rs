//! Stray files: foreign files are left alone, unfinished segments removed, a file with a
//! segment's name that is not one is corruption, and a damaged bucket.conf a clear error.

use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;

use logkv::{Error, Op, Store};

use crate::common::{copy_store_dir, opts, repair_opts, Rng};
use crate::fixtures::filled_store;
use crate::oracle::{assert_clean, check_model, expect_corrupt, model_last_rev, report};
use crate::segments::{bucket_dir, seg_files, SEG};
use crate::shared_gate;

#[test]
fn stray_files_are_ignored_and_unfinished_segments_removed() {
    let _gate = shared_gate();
    let (_tmp, path, model) = filled_store(9, 100);
    let bdir = bucket_dir(&path, "default");
    let segs = seg_files(&bdir);
    let last_seq = segs.len() as u64;
    let junk = b"not a segment\n";
    fs::write(path.join("junk.txt"), junk).unwrap();
    fs::write(path.join("buckets").join("junk.txt"), junk).unwrap();
    fs::write(bdir.join("junk.txt"), junk).unwrap();
    fs::write(bdir.join("notes.seg.bak"), junk).unwrap();
    fs::create_dir(bdir.join("subdir")).unwrap();
    // Unfinished segment creations: one for the next segment, one named after an existing one.
    let tmp_next = bdir.join(format!("{:016x}-00000000.seg.tmp", last_seq + 1));
    let tmp_existing = bdir.join(format!(
        "{}.tmp",
        segs[0].file_name().unwrap().to_str().unwrap()
    ));
    fs::write(&tmp_next, Rng::new(3).bytes(500)).unwrap();
    fs::copy(&segs[0], &tmp_existing).unwrap();

    let store = Store::open(&path, opts(SEG)).unwrap();
    assert_clean(&store, "stray files");
    let r = report(&store, "default");
    let removed: BTreeSet<&PathBuf> = r.removed_files.iter().collect();
    assert_eq!(removed, BTreeSet::from([&tmp_next, &tmp_existing]), "{r:?}");
    assert!(!tmp_next.exists() && !tmp_existing.exists());
    assert_eq!(seg_files(&bdir), segs, "real segments untouched");
    for p in [
        path.join("junk.txt"),
        path.join("buckets/junk.txt"),
        bdir.join("junk.txt"),
        bdir.join("notes.seg.bak"),
    ] {
        assert_eq!(
            fs::read(&p).unwrap(),
            junk,
            "{} should be left alone",
            p.display()
        );
    }
    assert_eq!(store.bucket_names(), vec!["default".to_string()]);
    check_model(
        &store.default_bucket().unwrap(),
        &model,
        model_last_rev(&model),
        "stray files",
    );
}

#[test]
fn file_with_a_segment_name_that_is_not_a_segment_is_corruption() {
    let _gate = shared_gate();
    let (_tmp, pristine, model) = filled_store(11, 100);
    let segs = seg_files(&bucket_dir(&pristine, "default"));
    let next = segs.len() as u64 + 1;
    let variants: Vec<(String, Vec<u8>)> = vec![
        (format!("{next:016x}-00000000.seg"), Vec::new()),
        (format!("{next:016x}-00000000.seg"), Rng::new(5).bytes(300)),
        (
            format!("{:016x}-00000000.seg", 0),
            b"LOGKVSEG but nothing else".to_vec(),
        ),
        // A valid segment under another segment's name.
        (
            format!("{next:016x}-00000000.seg"),
            fs::read(&segs[0]).unwrap(),
        ),
    ];
    for (name, contents) in variants {
        let ctx = format!("{name} with {} bytes", contents.len());
        let work = tempfile::tempdir().unwrap();
        let dir = work.path().join("s");
        copy_store_dir(&pristine, &dir);
        let bdir = bucket_dir(&dir, "default");
        let bad = bdir.join(&name);
        fs::write(&bad, &contents).unwrap();

        let (p, offset, msg) = expect_corrupt(Store::open(&dir, opts(SEG)), &ctx);
        assert_eq!((p, offset), (bad.clone(), 0), "{ctx}: {msg}");

        let store =
            Store::open(&dir, repair_opts(SEG)).unwrap_or_else(|e| panic!("{ctx}: repair: {e}"));
        let r = report(&store, "default");
        assert_eq!(r.skipped.len(), 1, "{ctx}: {r:?}");
        assert_eq!(r.skipped[0].path, bad, "{ctx}");
        assert!(!bad.exists(), "{ctx}: the file should be moved aside");
        let aside: Vec<_> = fs::read_dir(&bdir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with(&name) && n != &name)
            .collect();
        assert_eq!(aside.len(), 1, "{ctx}: moved-aside copy: {aside:?}");
        assert_eq!(
            fs::read(bdir.join(&aside[0])).unwrap(),
            contents,
            "{ctx}: the moved file keeps its bytes"
        );
        let b = store.default_bucket().unwrap();
        check_model(&b, &model, model_last_rev(&model), &ctx);
        let rev = b.put("after", "x").unwrap();
        drop(b);
        drop(store);
        // Once moved aside, the store opens without repair.
        let store = Store::open(&dir, opts(SEG))
            .unwrap_or_else(|e| panic!("{ctx}: open after repair: {e}"));
        assert_clean(&store, &ctx);
        let mut m = model.clone();
        m.insert("after".into(), (rev, Op::Put, b"x".to_vec()));
        check_model(&store.default_bucket().unwrap(), &m, rev, &ctx);
    }
}

#[test]
fn damaged_bucket_conf_is_a_clear_error() {
    let _gate = shared_gate();
    let (_tmp, path, _model) = filled_store(12, 5);
    let conf = bucket_dir(&path, "default").join("bucket.conf");
    fs::write(&conf, "history=banana\n").unwrap();
    match Store::open(&path, opts(SEG)) {
        Err(Error::Config(msg)) => assert!(msg.contains(&conf.display().to_string()), "{msg}"),
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

#[test]
fn a_bucket_without_bucket_conf_but_with_segments_is_refused_not_removed() {
    let _gate = shared_gate();
    let (_tmp, path, _model) = filled_store(12, 5);
    let dir = bucket_dir(&path, "default");
    let conf = dir.join("bucket.conf");
    let saved = fs::read(&conf).unwrap();
    fs::remove_file(&conf).unwrap();
    let segments = || {
        fs::read_dir(&dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".seg")
            })
            .count()
    };
    let before = segments();
    assert!(before > 0);
    match Store::open(&path, opts(SEG)) {
        Err(Error::Corrupt {
            path: p, reason, ..
        }) => {
            assert_eq!(p, conf);
            assert!(reason.contains("missing"), "{reason}");
        }
        other => panic!("expected Corrupt naming bucket.conf, got {other:?}"),
    }
    assert_eq!(segments(), before, "the segments are left as they were");
    // Put back, the bucket opens with its data.
    fs::write(&conf, saved).unwrap();
    let store = Store::open(&path, opts(SEG)).unwrap();
    assert!(store.default_bucket().unwrap().stats().keys > 0);
}
