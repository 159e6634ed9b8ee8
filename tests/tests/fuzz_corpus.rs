//! Replays every saved fuzz input (`fuzz/corpus/<target>/*`) through the same
//! target bodies cargo-fuzz runs, on stable Rust, plus seeded random inputs.

mod common;

use std::path::PathBuf;

use logkv_tests::fuzz_targets;

use common::Rng;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {} missing: {e}", dir.display()))
        .map(|e| {
            let p = e.unwrap().path();
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "empty corpus for {target}");
    files
}

/// Deterministic pseudo-random inputs (seeded), to go beyond the saved ones.
fn random_inputs(seed: u64, count: usize, max_len: usize) -> Vec<Vec<u8>> {
    let mut rng = Rng::new(seed);
    (0..count)
        .map(|_| {
            let len = rng.range_usize(0, max_len);
            rng.bytes(len)
        })
        .collect()
}

fn replay(target: &str, run: fn(&[u8]), randoms: usize, max_len: usize) {
    let mut inputs = corpus(target);
    for (i, r) in random_inputs(
        0x9E37_79B9_7F4A_7C15 ^ target.len() as u64,
        randoms,
        max_len,
    )
    .into_iter()
    .enumerate()
    {
        inputs.push((PathBuf::from(format!("random-{i}")), r));
    }
    for (path, bytes) in inputs {
        let result = std::panic::catch_unwind(|| run(&bytes));
        assert!(
            result.is_ok(),
            "fuzz target {target} failed on {}",
            path.display()
        );
    }
}

#[test]
fn protocol_corpus() {
    replay("protocol", fuzz_targets::protocol, 2000, 512);
}

#[test]
fn record_corpus() {
    replay("record", fuzz_targets::record, 2000, 256);
}

#[test]
fn recovery_corpus() {
    replay("recovery", fuzz_targets::recovery, 40, 400);
}

#[test]
fn ops_corpus() {
    replay("ops", fuzz_targets::ops, 40, 192);
}
