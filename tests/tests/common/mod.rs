//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use logkv::{FsyncPolicy, ManualClock, Options};

/// Where the manual clocks of the tests start (an arbitrary, fixed instant).
pub const T0: u64 = 1_700_000_000_000;

/// Deterministic test options: no background thread, no fsync, small
/// segments (so the log rotates often) and a manual clock.
pub fn opts(clock: &ManualClock) -> Options {
    Options {
        background: false,
        fsync: FsyncPolicy::Never,
        segment_size: 4096,
        clock: Arc::new(clock.clone()),
        ..Default::default()
    }
}

/// Copies a store directory as it is on disk right now, without the lock file:
/// what a process that was killed at this instant leaves behind (the page cache
/// survives a process crash, so every acknowledged `write` is in it).
pub fn copy_store_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name == "LOCK" {
            continue;
        }
        let src = entry.path();
        let dst = to.join(&name);
        if entry.file_type().unwrap().is_dir() {
            copy_store_dir(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

/// A tiny deterministic PRNG (xorshift64*), so tests need no extra crates.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    /// Uniform in `[lo, hi)`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        assert!(lo < hi);
        lo + self.below(hi - lo)
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}
