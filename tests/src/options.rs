//! Options for test and fuzz stores: no background thread (the tests decide when sweeps
//! and compactions run), and small segments so that the log rotates often.

use std::sync::Arc;

use logkv::{FsyncPolicy, ManualClock, Options};

/// Where the manual clocks of the tests start (an arbitrary, fixed instant).
pub const T0: u64 = 1_700_000_000_000;

/// No background thread, no fsync (a killed process leaves the page cache behind, so
/// tests that copy or kill need none), segments of `segment_size` bytes, and an index
/// snapshot at every clean close however small the log (tests of snapshots use small ones).
pub fn opts(segment_size: u64) -> Options {
    Options {
        background: false,
        fsync: FsyncPolicy::Never,
        segment_size,
        snapshot_min_bytes: 0,
        // A mark after every fsync: the recovery checks hold the mark to
        // covering every write a sync returned after.
        durability_mark_interval: std::time::Duration::ZERO,
        ..Default::default()
    }
}

/// [`opts`] that open a damaged store by skipping what is damaged.
pub fn repair_opts(segment_size: u64) -> Options {
    Options {
        repair: true,
        ..opts(segment_size)
    }
}

/// [`opts`] with every write fsynced before it returns.
pub fn durable_opts(segment_size: u64) -> Options {
    Options {
        fsync: FsyncPolicy::Always,
        ..opts(segment_size)
    }
}

/// Deterministic options: [`opts`] with 4 KiB segments and a manual clock.
pub fn clock_opts(clock: &ManualClock) -> Options {
    Options {
        clock: Arc::new(clock.clone()),
        ..opts(4096)
    }
}
