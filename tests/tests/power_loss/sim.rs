//! A store directory on a simulated page cache, for tests that cut the power by hand.

use std::path::PathBuf;
use std::sync::Arc;

use logkv::io::{CutStyle, SimFs, Storage};
use logkv::{FsyncPolicy, ManualClock, Options, Store};

use crate::common::T0;

pub struct Sim {
    _root: tempfile::TempDir,
    pub fs: SimFs,
    pub dir: PathBuf,
    pub clock: ManualClock,
}

impl Sim {
    pub fn new(seed: u64) -> Sim {
        let root = tempfile::tempdir().expect("tempdir");
        let sim = SimFs::new(root.path(), seed).expect("sim");
        let dir = sim.root().join("store");
        Sim {
            _root: root,
            fs: sim,
            dir,
            clock: ManualClock::new(T0),
        }
    }

    /// Options on the simulated page cache: no background thread, 4 KiB segments,
    /// the manual clock.
    pub fn options(&self, fsync: FsyncPolicy) -> Options {
        Options {
            storage: Storage::simulated(&self.fs),
            fsync,
            background: false,
            segment_size: 4096,
            clock: Arc::new(self.clock.clone()),
            ..Default::default()
        }
    }

    pub fn open(&self, fsync: FsyncPolicy) -> Store {
        Store::open(&self.dir, self.options(fsync)).expect("open")
    }

    /// Cuts the power with `store` still open, then powers on as `style` says.
    pub fn cut(&self, store: Store, style: CutStyle) {
        self.fs.crash_now();
        drop(store);
        self.fs.restart_with(style).expect("restart");
    }

    /// Kills the process holding `store`: it writes nothing more, and what it
    /// wrote without a sync stays unsynced in the page cache for the next.
    pub fn kill(&self, store: Store) {
        self.fs.crash_now();
        drop(store);
        self.fs.revive();
    }

    /// Cuts the power with no store open, then powers on as `style` says.
    pub fn cut_idle(&self, style: CutStyle) {
        self.fs.crash_now();
        self.fs.restart_with(style).expect("restart");
    }

    /// Syncs made while `f` runs.
    pub fn syncs_during(&self, f: impl FnOnce()) -> u64 {
        let before = self.fs.stats().syncs;
        f();
        self.fs.stats().syncs - before
    }
}
