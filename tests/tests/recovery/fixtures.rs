//! Stores prepared for a scenario.

use std::path::{Path, PathBuf};

use logkv::log::record::{encode, Op as RecOp, HEADER_LEN};
use logkv::{Op, Store};

use crate::common::{copy_store_dir, opts, Rng};
use crate::oracle::{model_last_rev, Model};
use crate::segments::{bucket_dir, parse_segment, remove_snapshots, seg_files, Rec, SEG};

/// A value with no zero byte, so that zeroing any suffix of its record changes it.
pub fn nonzero_value(rng: &mut Rng, len: usize) -> Vec<u8> {
    (0..len)
        .map(|_| b'!' + (rng.next_u64() % 90) as u8)
        .collect()
}

/// Leaves the directory of `store` as a killed process leaves it: written but
/// not synced, no index snapshot of now, no clean-close mark (a copy taken while
/// the store is open replaces the directory once the store is dropped).
pub fn crash(store: Store, path: &Path) {
    let copy = path.with_extension("crashed");
    copy_store_dir(path, &copy);
    drop(store);
    std::fs::remove_dir_all(path).unwrap();
    std::fs::rename(&copy, path).unwrap();
}

/// A closed store with some records; returns (tempdir, store dir, model).
pub fn filled_store(seed: u64, n: usize) -> (tempfile::TempDir, PathBuf, Model) {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("s");
    let mut rng = Rng::new(seed);
    let mut model = Model::new();
    let store = Store::open(&path, opts(SEG)).unwrap();
    let b = store.default_bucket().unwrap();
    for i in 0..n {
        let k = format!("k.{i:04}");
        let len = rng.range_usize(1, 80);
        let v = nonzero_value(&mut rng, len);
        let r = b.put(&k, v.clone()).unwrap();
        model.insert(k, (r, Op::Put, v));
    }
    drop(b);
    drop(store);
    (tmp, path, model)
}

/// A store whose last record ("blob") carries, inside its value, the bytes of
/// a complete valid record (as a stored backup of a logkv log would); no
/// snapshot (the state a crash leaves). With `more_after`, records follow the
/// blob and the log was synced: the blob lies below the durable point. Returns the directory, the model
/// without the blob, the blob record, and where the embedded record ends.
pub fn store_with_embedded_record(tmp: &Path, more_after: bool) -> (PathBuf, Model, Rec, u64) {
    let path = tmp.join("pristine");
    let mut model = Model::new();
    let store = Store::open(&path, opts(1 << 16)).unwrap();
    let b = store.default_bucket().unwrap();
    for i in 0..5 {
        let k = format!("k.{i}");
        let v = format!("value {i}").into_bytes();
        let r = b.put(&k, v.clone()).unwrap();
        model.insert(k, (r, Op::Put, v));
    }
    let mut embedded = Vec::new();
    let rev = model_last_rev(&model) + 2;
    // The attacker knows the format but not the segment's salt.
    encode(
        &mut embedded,
        0,
        RecOp::Put,
        0,
        rev,
        1_700_000_000_000,
        0,
        b"evil.key",
        b"injected",
    );
    let prefix = b"blob:".to_vec();
    let mut value = prefix.clone();
    value.extend_from_slice(&embedded);
    value.extend_from_slice(b":end");
    b.put("blob", value).unwrap();
    if more_after {
        for i in 5..8 {
            let k = format!("k.{i}");
            let v = format!("value {i}").into_bytes();
            let r = b.put(&k, v.clone()).unwrap();
            model.insert(k, (r, Op::Put, v));
        }
    }
    drop(b);
    if more_after {
        // The blob is then below what was synced: damage to it is corruption, not a torn tail.
        store.sync().unwrap();
    }
    crash(store, &path);
    remove_snapshots(&path);
    let seg = seg_files(&bucket_dir(&path, "default")).pop().unwrap();
    let rec = parse_segment(&seg)
        .records
        .into_iter()
        .find(|r| r.key == "blob")
        .unwrap();
    let embedded_end = rec.offset + (HEADER_LEN + 4 + prefix.len() + embedded.len()) as u64;
    (path, model, rec, embedded_end)
}
