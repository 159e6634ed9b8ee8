//! A simulated page cache over a real directory, for power-loss tests.
//!
//! Every change goes to the real files at once (so memory maps and reads see
//! it, as they would see the kernel's page cache), and the simulation also
//! keeps what is *durable*: each file's contents as of its last sync, and each
//! directory's entries as of its last sync. A simulated power cut then rebuilds
//! the directory as a disk could hold it after the cut:
//!
//! - each byte range written since the file's last sync is kept, lost, or torn
//!   (a prefix of it kept), independently and at any byte; a size change not
//!   yet synced may or may not have happened;
//! - each directory's changes since its last sync (creations, renames,
//!   removals) are kept up to some point of their sequence and undone after it,
//!   as a journaling file system commits its metadata in order;
//! - a directory not yet synced into its parent vanishes with its contents.
//!
//! Faults can be injected: a sync that fails with `EIO` or `ENOSPC` (after
//! which, as on Linux, the dirty pages count as written back whether or not
//! they reached the disk, and the next sync reports success), and writes that
//! fail with `ENOSPC`. After [`SimFs::crash_now`] (or the countdown of
//! [`SimFs::crash_after`]) every change fails and nothing more reaches the
//! files; once the store is dropped, [`SimFs::restart`] rebuilds the directory.

#![allow(
    clippy::cast_possible_truncation,
    clippy::indexing_slicing,
    reason = "a test simulation over small files: offsets fit usize, and every slice is \
              bounded by lengths computed a line before"
)]

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use super::{Backend, OpenMode};

mod backend;
mod state;
#[cfg(test)]
mod tests;

use state::State;

const EIO: i32 = 5;
const ENOSPC: i32 = 28;
const EXDEV: i32 = 18;

/// Faults to inject, each as "one in N" (0: never).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimFaults {
    /// A file or directory sync fails with `EIO` or `ENOSPC`.
    pub sync_error_one_in: u32,
    /// A write fails with `ENOSPC`, writing nothing.
    pub write_error_one_in: u32,
}

/// What a power cut does with what was not synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutStyle {
    /// Each unsynced write lost, kept or torn, each directory's unsynced
    /// changes kept up to a random point (or all lost, or all kept).
    Random,
    /// Every unsynced write and directory change lost.
    LoseAll,
    /// Every unsynced write and directory change kept (what `SIGKILL` leaves).
    KeepAll,
    /// Every unsynced write torn (a random part of each piece of up to 64
    /// bytes kept, never all of it), every new file length and every directory
    /// change kept: a record written and not synced never survives whole.
    TearAll,
}

/// Failures armed for calls of one kind, whatever the odds: after `skip`
/// calls that succeed, `fail` calls fail.
#[derive(Debug, Clone, Copy, Default)]
struct Countdown {
    skip: u32,
    fail: u32,
}

impl Countdown {
    /// Whether this call fails (and counts it).
    fn due(&mut self) -> bool {
        if self.skip > 0 {
            self.skip -= 1;
            false
        } else if self.fail > 0 {
            self.fail -= 1;
            true
        } else {
            false
        }
    }
}

/// Failures armed per kind of call.
#[derive(Debug, Clone, Copy, Default)]
struct Armed {
    syncs: Countdown,
    removes: Countdown,
    writes: Countdown,
    short_writes: Countdown,
    links: Countdown,
}

/// What the simulation has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Changes made (writes, syncs, directory operations).
    pub ops: u64,
    /// Syncs of files and directories that succeeded.
    pub syncs: u64,
    /// Syncs failed by injection.
    pub sync_errors: u64,
    /// Writes failed by injection.
    pub write_errors: u64,
    /// File removals failed by injection.
    pub remove_errors: u64,
    /// Power cuts simulated.
    pub crashes: u64,
    /// Unsynced byte ranges kept whole at a power cut.
    pub kept: u64,
    /// Unsynced byte ranges lost at a power cut.
    pub lost: u64,
    /// Unsynced byte ranges torn at a power cut.
    pub torn: u64,
    /// Unsynced directory operations undone at a power cut.
    pub undone_dir_ops: u64,
}

/// A simulated page cache over the directory `root` (see the module documentation).
///
/// Cheap to clone; clones share the simulation.
#[derive(Clone)]
pub struct SimFs {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for SimFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.state.lock();
        f.debug_struct("SimFs")
            .field("root", &s.root)
            .field("crashed", &s.crashed)
            .finish_non_exhaustive()
    }
}

impl SimFs {
    /// A simulation over `root`, which must exist; what is in it now counts as durable.
    pub fn new(root: &Path, seed: u64) -> io::Result<SimFs> {
        let root = root.canonicalize()?;
        let mut state = State {
            root: root.clone(),
            root_dir: 0,
            next_id: 1,
            files: HashMap::new(),
            dirs: HashMap::new(),
            crashed: false,
            crash_after: None,
            faults: SimFaults::default(),
            armed: Armed::default(),
            rng: seed ^ 0x9E37_79B9_7F4A_7C15,
            stats: SimStats::default(),
            no_syncfs: false,
        };
        state.root_dir = state.adopt_dir(&root)?;
        Ok(SimFs {
            state: Arc::new(Mutex::new(state)),
        })
    }

    /// The simulated directory (canonical).
    pub fn root(&self) -> PathBuf {
        self.state.lock().root.clone()
    }

    /// Sets the faults to inject from now on.
    pub fn set_faults(&self, faults: SimFaults) {
        self.state.lock().faults = faults;
    }

    /// After `ok` more syncs (of files or directories) that succeed, makes
    /// the next `fail` fail with `EIO`.
    pub fn fail_syncs(&self, ok: u32, fail: u32) {
        self.state.lock().armed.syncs = Countdown { skip: ok, fail };
    }

    /// After `ok` more writes through a system call (not a mapping), makes the next
    /// `fail` write all but their last byte and then fail with `EIO`.
    pub fn fail_writes_short(&self, ok: u32, fail: u32) {
        self.state.lock().armed.short_writes = Countdown { skip: ok, fail };
    }

    /// After `ok` more file removals, makes the next `fail` fail with `EIO` (the file stays).
    pub fn fail_removes(&self, ok: u32, fail: u32) {
        self.state.lock().armed.removes = Countdown { skip: ok, fail };
    }

    /// After `ok` more writes, makes the next `fail` fail with `ENOSPC` (nothing written).
    pub fn fail_writes(&self, ok: u32, fail: u32) {
        self.state.lock().armed.writes = Countdown { skip: ok, fail };
    }

    /// After `ok` more hard links, makes the next `fail` fail with `EXDEV`, as
    /// between two file systems (nothing linked).
    pub fn fail_links(&self, ok: u32, fail: u32) {
        self.state.lock().armed.links = Countdown { skip: ok, fail };
    }

    /// Ends a power-off made with [`SimFs::crash_now`] without a power cut: what
    /// was written and not synced stays in the simulated page cache, still
    /// unsynced, and changes are accepted again. This is what a killed process
    /// leaves for the next one (drop the store while the power is off, so that
    /// it writes nothing more).
    pub fn revive(&self) {
        let mut s = self.state.lock();
        s.crashed = false;
        s.crash_after = None;
        s.armed = Armed::default();
    }

    /// Makes the simulated file system one that cannot be synced whole (as on
    /// a system without `syncfs`): every open then syncs each bucket's files.
    pub fn without_syncfs(&self) {
        self.state.lock().no_syncfs = true;
    }

    /// Cuts the power after `ops` more changes: the next one fails, and so does every later one.
    pub fn crash_after(&self, ops: u64) {
        self.state.lock().crash_after = Some(ops);
    }

    /// Cuts the power now: every later change fails and reaches nothing.
    pub fn crash_now(&self) {
        self.state.lock().crashed = true;
    }

    /// Whether the power has been cut.
    pub fn is_crashed(&self) -> bool {
        self.state.lock().crashed
    }

    /// What the simulation has done so far.
    pub fn stats(&self) -> SimStats {
        self.state.lock().stats
    }

    /// Rebuilds the directory as the disk holds it after the power cut (cutting
    /// it now if that has not happened), and powers on again: the rebuilt
    /// contents become the durable state. Call it only once the store using
    /// this simulation has been dropped.
    pub fn restart(&self) -> io::Result<()> {
        self.restart_with(CutStyle::Random)
    }

    /// [`SimFs::restart`], with the power cut doing what `style` says.
    pub fn restart_with(&self, style: CutStyle) -> io::Result<()> {
        let mut s = self.state.lock();
        s.crashed = true;
        s.power_cut(style)?;
        let root = s.root.clone();
        s.files.clear();
        s.dirs.clear();
        s.crashed = false;
        s.crash_after = None;
        s.armed = Armed::default();
        s.root_dir = s.adopt_dir(&root)?;
        Ok(())
    }
}

pub(super) fn eio() -> io::Error {
    io::Error::from_raw_os_error(EIO)
}
