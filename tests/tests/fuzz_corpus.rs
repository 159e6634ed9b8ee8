//! Replays every saved fuzz input (`fuzz/corpus/<target>/*`) through the same
//! target bodies cargo-fuzz runs, on stable Rust, plus seeded random inputs.

mod common;

use std::path::PathBuf;

use logkv_tests::fuzz_targets;

use common::Rng;

/// The saved inputs of `target` in `fuzz/<kind>/` (`corpus`: what the fuzzer
/// keeps for coverage; `regressions`: inputs that once failed, kept apart so
/// that minimizing the corpus never drops them).
fn saved(kind: &str, target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz")
        .join(kind)
        .join(target);
    let mut files: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{kind} {} missing: {e}", dir.display()))
        .map(|e| {
            let p = e.unwrap().path();
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no {kind} saved for {target}");
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
    let mut inputs = saved("corpus", target);
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
    run_each(target, run, inputs);
}

/// Runs `target`'s body on every input; fails naming the first it fails on.
fn run_each(target: &str, run: fn(&[u8]), inputs: Vec<(PathBuf, Vec<u8>)>) {
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

/// Inputs on which the `recovery` target once failed (each fixed in the engine;
/// see the regression tests in `tests/tests/recovery/`).
#[test]
fn recovery_regressions() {
    run_each(
        "recovery",
        fuzz_targets::recovery,
        saved("regressions", "recovery"),
    );
}

#[test]
fn ops_corpus() {
    replay("ops", fuzz_targets::ops, 40, 192);
}
