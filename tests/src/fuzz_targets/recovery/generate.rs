//! The store the recovery target damages: writes and batches chosen by the
//! input, some syncs, then a crash (a copy of the directory taken while the
//! store is open, as a killed process leaves it) or a clean close.

use std::path::{Path, PathBuf};

use logkv::{Bucket, BucketConfig, Op, Store, WriteOp};

use super::super::input::Input;
use crate::options::opts;
use crate::store_dir::copy_store_dir;

/// Segment size: the smallest the engine takes, so that a few writes rotate.
pub const SEGMENT: u64 = 4096;
/// The bucket written and damaged. It keeps every revision the generator
/// can write to a key, so that what recovery kept is all visible.
pub const BUCKET: &str = "f";
/// Keys written.
pub const KEYS: [&str; 6] = ["k0", "k1", "k2", "k3", "k4", "k5"];
/// Most writes in one run: each key's whole history fits the bucket's.
const MAX_WRITES: usize = 56;
const HISTORY: u8 = 64;

/// One record the generator wrote, as the store acknowledged it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub revision: u64,
    pub key: String,
    pub op: Op,
    pub value: Vec<u8>,
    /// The call that wrote it: records of one batch share it.
    pub batch: usize,
    /// A sync returned after it, before the crash (or the store was closed).
    pub synced: bool,
}

/// A store directory as the generator left it.
pub struct Built {
    /// The store directory to open.
    pub dir: PathBuf,
    /// Every record written, in revision order.
    pub writes: Vec<Write>,
}

impl Built {
    /// The directory of the bucket under test.
    pub fn bucket_dir(&self) -> PathBuf {
        bucket_dir(&self.dir)
    }
}

/// The directory of the bucket under test in the store at `dir`.
pub fn bucket_dir(dir: &Path) -> PathBuf {
    dir.join("buckets").join(BUCKET)
}

/// Writes what the input says into a new store under `root`, then crashes
/// or closes it (`clean`).
///
/// # Panics
///
/// When the store refuses a write a healthy store takes (a finding).
pub fn build(root: &Path, clean: bool, input: &mut Input<'_>) -> Built {
    let live = root.join("live");
    let store = Store::open(&live, opts(SEGMENT)).expect("a new store opens");
    let bucket = store
        .create_bucket(
            BUCKET,
            BucketConfig {
                history: HISTORY,
                ..BucketConfig::default()
            },
        )
        .expect("the bucket is created");
    let mut writes: Vec<Write> = Vec::new();
    let mut calls = 0;
    while !input.is_empty() && writes.len() < MAX_WRITES {
        let planned = match input.below(8) {
            0 | 1 => vec![Planned::read(input, Op::Put)],
            2 => vec![Planned::read(input, Op::Del)],
            3 => vec![Planned::read(input, Op::Purge)],
            4 | 5 => {
                let n = 2 + usize::from(input.below(3));
                (0..n)
                    .map(|_| {
                        let op =
                            [Op::Put, Op::Put, Op::Del, Op::Purge][usize::from(input.below(4))];
                        Planned::read(input, op)
                    })
                    .collect()
            }
            6 => {
                bucket.sync().expect("sync");
                for w in &mut writes {
                    w.synced = true;
                }
                continue;
            }
            _ => {
                let key = key(input);
                let len = 600 + 4 * usize::from(input.byte());
                vec![Planned {
                    key,
                    op: Op::Put,
                    value: value(len, input.byte()),
                }]
            }
        };
        write(&bucket, &planned, calls, &mut writes);
        calls += 1;
    }
    drop(bucket);
    if clean {
        drop(store);
        for w in &mut writes {
            w.synced = true;
        }
        return Built { dir: live, writes };
    }
    let crashed = root.join("crashed");
    copy_store_dir(&live, &crashed).expect("the crash copy is taken");
    drop(store);
    Built {
        dir: crashed,
        writes,
    }
}

/// A write the input asks for.
struct Planned {
    key: &'static str,
    op: Op,
    value: Vec<u8>,
}

impl Planned {
    /// A write of `op` to a key the input names (and a value, for a put).
    fn read(input: &mut Input<'_>, op: Op) -> Planned {
        let key = key(input);
        let value = if op == Op::Put {
            let len = usize::from(input.byte());
            value(len, input.byte())
        } else {
            Vec::new()
        };
        Planned { key, op, value }
    }

    fn write_op(&self) -> WriteOp {
        match self.op {
            Op::Put => WriteOp::put(self.key, self.value.clone()),
            Op::Del => WriteOp::delete(self.key),
            Op::Purge => WriteOp::purge(self.key),
        }
    }
}

fn key(input: &mut Input<'_>) -> &'static str {
    KEYS[usize::from(input.below(6))]
}

#[allow(
    clippy::cast_possible_truncation,
    reason = "a byte pattern: the index wraps on purpose"
)]
fn value(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| seed.wrapping_add(i as u8)).collect()
}

/// Applies one call (a batch when it has several writes) and records what it wrote.
fn write(bucket: &Bucket, planned: &[Planned], call: usize, writes: &mut Vec<Write>) {
    let ops: Vec<WriteOp> = planned.iter().map(Planned::write_op).collect();
    let written = bucket.write(&ops).expect("a write to a healthy store");
    assert_eq!(written.len(), ops.len(), "one revision per write");
    for (p, w) in planned.iter().zip(written) {
        writes.push(Write {
            revision: w.revision,
            key: p.key.to_string(),
            op: p.op,
            value: p.value.clone(),
            batch: call,
            synced: false,
        });
    }
}
