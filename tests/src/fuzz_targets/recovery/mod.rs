//! The `recovery` target: a real store built from the input, damaged where
//! the input says, then opened with and without repair.
//!
//! The input: one byte of flags (bit 0: close cleanly instead of crashing;
//! bit 1: keep the index snapshot a clean close writes; bits 2-3: how many
//! damages), three damages of eight bytes each (see [`damage::Damage`]), then
//! the writes (see [`generate::build`]).

mod check;
mod damage;
mod generate;
mod layout;

use std::collections::HashMap;
use std::path::Path;

use logkv::{Error, Store};

use super::input::Input;
use crate::options::{opts, repair_opts};
use crate::store_dir::copy_store_dir;
use check::{Expect, Seen};
use damage::{Damage, Damaged};
use generate::{Built, SEGMENT};
use layout::{read_segments, SegmentFile};

const DAMAGES: usize = 3;
/// Set (to anything) to have the target describe its run on stderr.
const TRACE: &str = "LOGKV_FUZZ_TRACE";

fn tracing() -> bool {
    std::env::var_os(TRACE).is_some()
}

/// Recovery of a damaged store:
///
/// - (a) without repair, open succeeds or fails with `Corrupt` naming a
///   segment file of the bucket and an offset inside it; it fails only if
///   some damage lies where the log was durable (a sealed segment, or below
///   the last segment's durability mark), and then opening again after a
///   clean close gives the same entries;
/// - (b) nothing is invented: every entry is one the generator wrote, with
///   its key, value, operation and revision;
/// - (c) every write whose batch lies where the log was durable, or before
///   the first damage to its segment, is there (or hidden by a later purge);
/// - (d) batches are all or nothing;
/// - (e) with repair, open always succeeds, and (b) and (d) hold;
///
/// and after either, no revision is given again (unless repair had to move
/// aside a segment whose header was damaged, and with it what it knew).
///
/// # Panics
///
/// When recovery breaks one of those rules (a finding).
pub fn recovery(data: &[u8]) {
    let mut input = Input::new(data);
    let flags = input.byte();
    let clean = flags & 1 != 0;
    let keep_snapshot = flags & 2 != 0;
    let count = usize::from(flags >> 2 & 3);
    let plan: [Damage; DAMAGES] = std::array::from_fn(|_| Damage::read(&mut input));
    let tmp = crate::scratch::scratch_dir().expect("a scratch directory");
    let built = generate::build(tmp.path(), clean, &mut input);
    let original = read_segments(&built.bucket_dir()).expect("the segments read back");
    let at = locate(&built, &original);
    let mut now: Vec<Vec<u8>> = original.iter().map(|s| s.bytes.clone()).collect();
    for d in &plan[..count] {
        d.apply(&original, &mut now);
    }
    for (file, bytes) in original.iter().zip(&now) {
        std::fs::write(&file.path, bytes).expect("the damaged segment is written");
    }
    if !keep_snapshot {
        let _ = std::fs::remove_file(built.bucket_dir().join("index.snap"));
    }
    let repair_dir = tmp.path().join("repair");
    copy_store_dir(&built.dir, &repair_dir).expect("a copy for repair");
    let damaged = Damaged {
        original: &original,
        now,
    };
    let expect = Expect {
        writes: &built.writes,
        at,
        damaged: &damaged,
    };
    if tracing() {
        eprintln!("clean close {clean}, snapshot kept {keep_snapshot}");
        eprintln!("{:#?}", &plan[..count]);
        expect.describe();
    }
    without_repair(&built.dir, &expect, &original);
    with_repair(&repair_dir, &expect);
}

/// Where each write lies in the log before the damage. Checks that every
/// write is there once, and that the durability mark covers every write a
/// sync returned after.
fn locate(built: &Built, log: &[SegmentFile]) -> HashMap<u64, (usize, layout::Located)> {
    let mut at = HashMap::new();
    for (i, seg) in log.iter().enumerate() {
        for loc in seg.records() {
            assert!(
                at.insert(loc.revision, (i, loc)).is_none(),
                "revision {} is in the log twice",
                loc.revision
            );
        }
    }
    let last = log.len().saturating_sub(1);
    for w in &built.writes {
        let (seg, loc) = at
            .get(&w.revision)
            .unwrap_or_else(|| panic!("revision {} is not in the log", w.revision));
        if w.synced && *seg == last {
            assert!(
                loc.end() <= log[last].mark_end(),
                "revision {} was synced, yet the durability mark ends at {}",
                w.revision,
                log[last].mark_end()
            );
        }
    }
    assert_eq!(
        at.len(),
        built.writes.len(),
        "the log holds only what was written"
    );
    at
}

fn without_repair(dir: &Path, expect: &Expect<'_>, original: &[SegmentFile]) {
    let seen = match Store::open(dir, opts(SEGMENT)) {
        Ok(store) => {
            let bucket = store.bucket(generate::BUCKET).expect("the bucket is there");
            let seen = Seen::read(&bucket, expect.writes);
            if tracing() {
                eprintln!("open: {:#?}\n{seen:?}", store.recovery_reports());
            }
            expect.nothing_invented(&seen);
            expect.durable_kept(&seen);
            expect.batches_whole(&seen);
            seen
        }
        Err(Error::Corrupt {
            path,
            offset,
            reason,
        }) => {
            if tracing() {
                eprintln!("open: corrupt at {offset} of {} ({reason})", path.display());
            }
            assert!(
                expect.damaged.below_durable(),
                "corrupt at {offset} of {} ({reason}), yet nothing durable was damaged",
                path.display()
            );
            let Some((_, now)) = original
                .iter()
                .zip(&expect.damaged.now)
                .find(|(s, _)| s.path == path)
            else {
                panic!("corrupt names {}, not a segment", path.display());
            };
            let len = now.len();
            assert!(
                usize::try_from(offset).is_ok_and(|o| o <= len),
                "corrupt at {offset} of {}, a file of {len} bytes",
                path.display()
            );
            return;
        }
        Err(e) => panic!("open failed with {e}"),
    };
    // Recovered once, the store opens again to the same entries.
    let store = Store::open(dir, opts(SEGMENT)).expect("a recovered store opens again");
    let bucket = store.bucket(generate::BUCKET).expect("the bucket is there");
    assert_eq!(
        Seen::read(&bucket, expect.writes),
        seen,
        "a second open differs"
    );
    expect.revisions_go_on(&bucket, &seen);
}

fn with_repair(dir: &Path, expect: &Expect<'_>) {
    let store = Store::open(dir, repair_opts(SEGMENT)).expect("repair always opens");
    let bucket = store.bucket(generate::BUCKET).expect("the bucket is there");
    let seen = Seen::read(&bucket, expect.writes);
    if tracing() {
        eprintln!("repair: {:#?}\n{seen:?}", store.recovery_reports());
    }
    expect.nothing_invented(&seen);
    expect.batches_whole(&seen);
    if expect.damaged.headers_intact() {
        expect.revisions_go_on(&bucket, &seen);
    }
}
