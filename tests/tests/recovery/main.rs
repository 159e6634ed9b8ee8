//! Recovery tests: what `Store::open` makes of a store directory after clean
//! closes, torn tails, garbage, corruption, stray files, locks and permissions.
//!
//! The rules under test are in `engine/src/log/recovery.rs`. One test binary; a module per
//! scenario, and three of helpers: `segments` (the store's files read and damaged from
//! outside), `oracle` (what a bucket must hold, and checks against it) and `fixtures`
//! (stores prepared for a scenario).
#![allow(
    clippy::too_many_lines,
    reason = "a test reads as one scenario, top to bottom"
)]
#![allow(
    clippy::many_single_char_names,
    reason = "b, k, v, r, e (bucket, key, value, revision, entry) as throughout the tests"
)]
#![allow(
    clippy::cast_possible_truncation,
    reason = "offsets and sizes of small test files; the tests run on 64-bit targets"
)]

#[path = "../common/mod.rs"]
mod common;

mod fixtures;
mod oracle;
mod segments;

mod corruption;
mod locks;
mod many_buckets;
mod permissions;
mod repair;
mod round_trip;
mod stray_files;
mod tail_garbage;
mod torn_tail;

use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Spawning a process copies every open file of this process into the child
/// until the child execs, and a store's directory lock (an `flock`) belongs to
/// the open file: a store closed by one test while another test spawns stays
/// locked until that exec, and an immediate reopen can fail with `Locked`.
/// Tests that spawn processes take this gate exclusively; all others share it.
pub static SPAWN_GATE: RwLock<()> = RwLock::new(());

pub fn shared_gate() -> RwLockReadGuard<'static, ()> {
    SPAWN_GATE
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub fn exclusive_gate() -> RwLockWriteGuard<'static, ()> {
    SPAWN_GATE
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
