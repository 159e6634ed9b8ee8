//! Garbage after the last record: cut, reported, and never taken for records.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;

use logkv::log::record::{encode, Op as RecOp};
use logkv::{Op, Store};

use crate::common::{opts, Rng};
use crate::fixtures::filled_store;
use crate::oracle::{assert_clean, check_model, model_last_rev, report};
use crate::segments::{bucket_dir, parse_segment, remove_snapshots, seg_files, SEG};
use crate::shared_gate;

#[test]
fn garbage_after_the_last_record_is_cut_and_nothing_is_invented() {
    let _gate = shared_gate();
    for seed in 0..32u64 {
        let (_tmp, path, model) = filled_store(100 + seed, 40 + seed as usize * 7);
        // With the snapshot of the clean close, or without (as after a crash).
        let snapshot_kept = (seed / 4) % 2 == 0;
        if !snapshot_kept {
            remove_snapshots(&path);
        }
        let mut rng = Rng::new(seed);
        let last = seg_files(&bucket_dir(&path, "default")).pop().unwrap();
        let parsed = parse_segment(&last);
        let file_len = fs::metadata(&last).unwrap().len();
        assert!(file_len >= parsed.data_end);
        let glen = rng.range_usize(1, 300);
        let mut garbage = rng.bytes(glen);
        let variant = seed % 4;
        let at = match variant {
            // Right at the end of the data.
            0 => parsed.data_end,
            // Somewhere in the pre-written zeros (possibly running past the file end).
            1 => rng.range(parsed.data_end, file_len.max(parsed.data_end + 1)),
            // Past the end of the file.
            2 => file_len + rng.range(0, 100),
            // Something that looks like the start of a record, with a bad checksum.
            _ => {
                garbage.clear();
                let rev = model_last_rev(&model) + 1;
                encode(
                    &mut garbage,
                    0,
                    RecOp::Put,
                    0,
                    rev,
                    1_700_000_000_000,
                    0,
                    b"k.1",
                    b"hello",
                );
                garbage[0] ^= 0xff;
                parsed.data_end
            }
        };
        if garbage.iter().all(|&b| b == 0) {
            garbage[0] = 1;
        }
        let ctx = format!(
            "seed {seed}, variant {variant}, snapshot kept {snapshot_kept}, {} garbage bytes at {at} \
             (data ends at {}, file at {file_len})",
            garbage.len(),
            parsed.data_end
        );
        OpenOptions::new()
            .write(true)
            .open(&last)
            .unwrap()
            .write_all_at(&garbage, at)
            .unwrap();

        let store = Store::open(&path, opts(SEG)).unwrap_or_else(|e| panic!("{ctx}: {e}"));
        let r = report(&store, "default");
        assert!(
            r.truncated_bytes > 0,
            "{ctx}: the garbage was not reported: {r:?}"
        );
        assert!(r.skipped.is_empty(), "{ctx}: {r:?}");
        if !snapshot_kept {
            assert_eq!(r.records, model.len() as u64, "{ctx}");
        }
        let b = store.default_bucket().unwrap();
        let last_rev = model_last_rev(&model);
        check_model(&b, &model, last_rev, &ctx);
        let rev = b.put("after", "garbage").unwrap();
        assert!(rev > last_rev);
        drop(b);
        drop(store);
        let store =
            Store::open(&path, opts(SEG)).unwrap_or_else(|e| panic!("{ctx}: second open: {e}"));
        assert_clean(&store, &ctx);
        let mut model = model;
        model.insert("after".into(), (rev, Op::Put, b"garbage".to_vec()));
        check_model(&store.default_bucket().unwrap(), &model, rev, &ctx);
    }
}
