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

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use super::{Backend, OpenMode};

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Node {
    File(u64),
    Dir(u64),
}

#[derive(Debug, Clone)]
enum DirOp {
    Link(OsString, Node),
    Unlink(OsString),
    Rename(OsString, OsString),
}

impl DirOp {
    fn apply(&self, entries: &mut BTreeMap<OsString, Node>) {
        match self {
            DirOp::Link(name, node) => {
                entries.insert(name.clone(), *node);
            }
            DirOp::Unlink(name) => {
                entries.remove(name);
            }
            DirOp::Rename(from, to) => {
                if let Some(node) = entries.remove(from) {
                    entries.insert(to.clone(), node);
                }
            }
        }
    }
}

#[derive(Default)]
struct DirInode {
    current: BTreeMap<OsString, Node>,
    durable: BTreeMap<OsString, Node>,
    /// Changes since the last sync, in order: `current` is `durable` with all of them applied.
    pending: Vec<DirOp>,
}

#[derive(Default)]
struct FileInode {
    /// The contents on the simulated disk.
    durable: Vec<u8>,
    /// Byte ranges changed since the last sync.
    dirty: Vec<(u64, u64)>,
    /// The length may differ from the durable one.
    len_changed: bool,
    /// The contents when the file lost its last name, if it had unsynced changes.
    orphan: Option<Vec<u8>>,
}

struct State {
    root: PathBuf,
    root_dir: u64,
    next_id: u64,
    files: HashMap<u64, FileInode>,
    dirs: HashMap<u64, DirInode>,
    crashed: bool,
    crash_after: Option<u64>,
    faults: SimFaults,
    armed: Armed,
    rng: u64,
    stats: SimStats,
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

fn eio() -> io::Error {
    io::Error::from_raw_os_error(EIO)
}

impl State {
    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// `SplitMix64`.
    fn rand(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.rand() % n
        }
    }

    fn one_in(&mut self, n: u32) -> bool {
        n != 0 && self.below(u64::from(n)) == 0
    }

    /// Whether an armed sync failure is due now (and uses it up).
    fn take_armed_sync(&mut self) -> bool {
        self.armed.syncs.due()
    }

    /// Counts a change; fails if the power is (or now goes) off.
    fn change(&mut self) -> io::Result<()> {
        if self.crashed {
            return Err(eio());
        }
        if let Some(left) = self.crash_after.as_mut() {
            if *left == 0 {
                self.crashed = true;
                return Err(eio());
            }
            *left -= 1;
        }
        self.stats.ops += 1;
        Ok(())
    }

    /// Takes in an existing directory tree as durable.
    fn adopt_dir(&mut self, path: &Path) -> io::Result<u64> {
        let id = self.id();
        let mut dir = DirInode::default();
        for entry in fs::read_dir(path)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            let node = if kind.is_dir() {
                Node::Dir(self.adopt_dir(&entry.path())?)
            } else if kind.is_file() {
                Node::File(self.adopt_file(&entry.path())?)
            } else {
                continue;
            };
            dir.durable.insert(entry.file_name(), node);
        }
        dir.current = dir.durable.clone();
        self.dirs.insert(id, dir);
        Ok(id)
    }

    fn adopt_file(&mut self, path: &Path) -> io::Result<u64> {
        let id = self.id();
        let durable = fs::read(path)?;
        self.files.insert(
            id,
            FileInode {
                durable,
                ..FileInode::default()
            },
        );
        Ok(id)
    }

    /// The names of `path` below the root, or `None` outside it.
    fn names(&self, path: &Path) -> Option<Vec<OsString>> {
        let abs;
        let path = if path.is_absolute() {
            path
        } else {
            abs = std::env::current_dir().ok()?.join(path);
            &abs
        };
        let rest = path.strip_prefix(&self.root).ok()?;
        let mut names = Vec::new();
        for c in rest.components() {
            match c {
                Component::Normal(n) => names.push(n.to_os_string()),
                Component::CurDir => {}
                _ => return None,
            }
        }
        Some(names)
    }

    /// The directory holding `path` and the name in it; `None` outside the root.
    /// Directories that exist on disk but are unknown (made around the seam) are adopted.
    fn parent_of(&mut self, path: &Path) -> io::Result<Option<(u64, OsString)>> {
        let Some(mut names) = self.names(path) else {
            return Ok(None);
        };
        let Some(last) = names.pop() else {
            return Ok(None);
        };
        let mut dir = self.root_dir;
        let mut at = self.root.clone();
        for name in names {
            at.push(&name);
            dir = match self.dirs.get(&dir).and_then(|d| d.current.get(&name)) {
                Some(Node::Dir(d)) => *d,
                Some(Node::File(_)) => return Err(io::Error::from_raw_os_error(20)),
                None if at.is_dir() => {
                    let d = self.adopt_dir(&at)?;
                    self.link(dir, name, Node::Dir(d), true);
                    d
                }
                None => return Err(io::Error::from(io::ErrorKind::NotFound)),
            };
        }
        Ok(Some((dir, last)))
    }

    fn lookup(&mut self, path: &Path) -> io::Result<Option<(u64, OsString, Option<Node>)>> {
        let Some((dir, name)) = self.parent_of(path)? else {
            return Ok(None);
        };
        let node = self
            .dirs
            .get(&dir)
            .and_then(|d| d.current.get(&name))
            .copied();
        Ok(Some((dir, name, node)))
    }

    /// Adds an entry (durable at once when `durable`: adopted from disk).
    fn link(&mut self, dir: u64, name: OsString, node: Node, durable: bool) {
        if let Some(d) = self.dirs.get_mut(&dir) {
            d.current.insert(name.clone(), node);
            if durable {
                d.durable.insert(name, node);
            } else {
                d.pending.push(DirOp::Link(name, node));
            }
        }
    }

    fn unlink(&mut self, dir: u64, name: &OsString) {
        if let Some(d) = self.dirs.get_mut(&dir) {
            d.current.remove(name);
            d.pending.push(DirOp::Unlink(name.clone()));
        }
    }

    /// Keeps the contents of files under `node` that are about to lose their
    /// last name while they have unsynced changes (read from `path` before it goes).
    fn keep_orphans(&mut self, node: Node, path: &Path) -> io::Result<()> {
        match node {
            Node::File(id) => {
                let dirty = self
                    .files
                    .get(&id)
                    .is_some_and(|f| !f.dirty.is_empty() || f.len_changed);
                if dirty && self.names_of(id) <= 1 {
                    let contents = fs::read(path)?;
                    if let Some(f) = self.files.get_mut(&id) {
                        f.orphan = Some(contents);
                    }
                }
            }
            Node::Dir(d) => {
                let entries: Vec<(OsString, Node)> = self
                    .dirs
                    .get(&d)
                    .map(|d| d.current.iter().map(|(n, e)| (n.clone(), *e)).collect())
                    .unwrap_or_default();
                for (name, child) in entries {
                    self.keep_orphans(child, &path.join(name))?;
                }
            }
        }
        Ok(())
    }

    /// How many current names the file has.
    fn names_of(&self, id: u64) -> usize {
        self.dirs
            .values()
            .map(|d| d.current.values().filter(|n| **n == Node::File(id)).count())
            .sum()
    }

    fn mark_dirty(&mut self, id: u64, from: u64, to: u64) {
        if let Some(f) = self.files.get_mut(&id) {
            if from < to {
                f.dirty.push((from, to));
            }
        }
    }

    /// Copies the changed ranges of a file into its durable contents.
    fn make_durable(&mut self, file: &fs::File, id: u64) -> io::Result<()> {
        let len = file.metadata()?.len();
        let Some(f) = self.files.get_mut(&id) else {
            return Ok(());
        };
        let new_len = usize::try_from(len).map_err(|_| eio())?;
        f.durable.resize(new_len, 0);
        for (from, to) in std::mem::take(&mut f.dirty) {
            let to = to.min(len);
            if from >= to {
                continue;
            }
            let (a, b) = (from as usize, to as usize);
            file.read_exact_at(&mut f.durable[a..b], from)?;
        }
        f.len_changed = false;
        Ok(())
    }

    /// A failed sync: each changed range reached the disk or not, and the
    /// pages count as clean from now on either way.
    fn fail_sync(&mut self, file: &fs::File, id: u64) -> io::Result<()> {
        let Some(f) = self.files.get(&id) else {
            return Ok(());
        };
        let ranges = f.dirty.clone();
        let len = file.metadata()?.len();
        let keep_len = self.below(2) == 0;
        let mut keep = Vec::new();
        for r in ranges {
            if self.below(2) == 0 {
                keep.push(r);
            }
        }
        let mut bufs = Vec::new();
        for (from, to) in keep {
            let to = to.min(len);
            if from < to {
                let mut b = vec![0; (to - from) as usize];
                file.read_exact_at(&mut b, from)?;
                bufs.push((from, b));
            }
        }
        if let Some(f) = self.files.get_mut(&id) {
            if keep_len {
                f.durable.resize(len as usize, 0);
            }
            for (from, b) in bufs {
                let end = from as usize + b.len();
                if f.durable.len() < end {
                    f.durable.resize(end, 0);
                }
                f.durable[from as usize..end].copy_from_slice(&b);
            }
            f.dirty.clear();
            f.len_changed = false;
        }
        Ok(())
    }

    /// The contents of every file as the process sees them now, for files
    /// that have unsynced changes.
    fn current_contents(&mut self) -> io::Result<HashMap<u64, Vec<u8>>> {
        let mut out = HashMap::new();
        let mut stack = vec![(self.root_dir, self.root.clone())];
        while let Some((dir, path)) = stack.pop() {
            let entries: Vec<(OsString, Node)> = self
                .dirs
                .get(&dir)
                .map(|d| d.current.iter().map(|(n, e)| (n.clone(), *e)).collect())
                .unwrap_or_default();
            for (name, node) in entries {
                match node {
                    Node::Dir(d) => stack.push((d, path.join(&name))),
                    Node::File(id) => {
                        let dirty = self
                            .files
                            .get(&id)
                            .is_some_and(|f| !f.dirty.is_empty() || f.len_changed);
                        if dirty && !out.contains_key(&id) {
                            out.insert(id, fs::read(path.join(&name))?);
                        }
                    }
                }
            }
        }
        for (id, f) in &mut self.files {
            if let Some(orphan) = f.orphan.take() {
                out.entry(*id).or_insert(orphan);
            }
        }
        Ok(out)
    }

    /// What the disk holds for one file after the power cut.
    fn crash_image(&mut self, id: u64, current: Option<&Vec<u8>>, style: u64) -> Vec<u8> {
        let Some(f) = self.files.get(&id) else {
            return Vec::new();
        };
        let mut out = f.durable.clone();
        let Some(cur) = current else {
            return out;
        };
        let mut ranges = f.dirty.clone();
        let len_changed = f.len_changed || cur.len() != out.len();
        if len_changed && self.below(2) == 0 {
            out.resize(cur.len(), 0);
        }
        ranges.sort_unstable();
        for (from, to) in ranges {
            let to = (to as usize).min(cur.len()).min(out.len());
            let mut at = (from as usize).min(to);
            while at < to {
                let piece = (1 + self.below(4096) as usize).min(to - at);
                let keep = match style {
                    0 => 0,
                    1 => piece,
                    _ => match self.below(3) {
                        0 => 0,
                        1 => piece,
                        _ => self.below(piece as u64) as usize,
                    },
                };
                match keep {
                    0 => self.stats.lost += 1,
                    k if k == piece => self.stats.kept += 1,
                    _ => self.stats.torn += 1,
                }
                out[at..at + keep].copy_from_slice(&cur[at..at + keep]);
                at += piece;
            }
        }
        out
    }

    /// Rebuilds the real directory as the disk holds it after a power cut.
    fn power_cut(&mut self, style: CutStyle) -> io::Result<()> {
        self.stats.crashes += 1;
        let current = self.current_contents()?;
        // 0: every unsynced write lost; 1: all kept (what SIGKILL leaves); 2: each its own way.
        let style = match style {
            CutStyle::LoseAll => 0,
            CutStyle::KeepAll => 1,
            CutStyle::Random => self.below(3),
        };
        // The durable directory tree after the cut: a prefix of each directory's pending changes.
        let dir_ids: Vec<u64> = self.dirs.keys().copied().collect();
        let mut after: HashMap<u64, BTreeMap<OsString, Node>> = HashMap::new();
        for id in dir_ids {
            let (mut entries, pending) = match self.dirs.get(&id) {
                Some(d) => (d.durable.clone(), d.pending.clone()),
                None => continue,
            };
            let keep = match style {
                0 => 0,
                1 => pending.len(),
                _ => self.below(pending.len() as u64 + 1) as usize,
            };
            self.stats.undone_dir_ops += (pending.len() - keep) as u64;
            for op in &pending[..keep] {
                op.apply(&mut entries);
            }
            after.insert(id, entries);
        }
        // Empty the real directory, then write the tree back.
        for entry in fs::read_dir(&self.root)? {
            let path = entry?.path();
            if path.is_dir() {
                fs::remove_dir_all(&path)?;
            } else {
                fs::remove_file(&path)?;
            }
        }
        let mut written: HashMap<u64, PathBuf> = HashMap::new();
        let mut stack = vec![(self.root_dir, self.root.clone())];
        while let Some((dir, path)) = stack.pop() {
            let entries = after.get(&dir).cloned().unwrap_or_default();
            for (name, node) in entries {
                let at = path.join(&name);
                match node {
                    Node::Dir(d) => {
                        fs::create_dir(&at)?;
                        stack.push((d, at));
                    }
                    Node::File(id) => {
                        if let Some(first) = written.get(&id) {
                            fs::hard_link(first, &at)?;
                        } else {
                            let image = self.crash_image(id, current.get(&id), style);
                            fs::write(&at, image)?;
                            written.insert(id, at);
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

impl Backend for SimFs {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<(fs::File, u64)> {
        let mut s = self.state.lock();
        if s.crashed {
            return Err(eio());
        }
        let mut o = fs::OpenOptions::new();
        o.read(true).write(true);
        let Some((dir, name, node)) = s.lookup(path)? else {
            if mode == OpenMode::Create {
                o.create(true).truncate(true);
            }
            return Ok((o.open(path)?, 0));
        };
        match (mode, node) {
            (_, Some(Node::Dir(_))) => Err(io::Error::from_raw_os_error(21)),
            (OpenMode::ReadWrite, Some(Node::File(id))) => Ok((o.open(path)?, id)),
            (OpenMode::ReadWrite, None) => {
                let file = o.open(path)?;
                let id = s.adopt_file(path)?;
                s.link(dir, name, Node::File(id), true);
                Ok((file, id))
            }
            (OpenMode::Create, Some(Node::File(id))) => {
                s.change()?;
                let old_len = fs::metadata(path)?.len();
                let file = o.truncate(true).open(path)?;
                if let Some(f) = s.files.get_mut(&id) {
                    f.len_changed = true;
                }
                s.mark_dirty(id, 0, old_len);
                Ok((file, id))
            }
            (OpenMode::Create, None) => {
                s.change()?;
                let file = o.create(true).truncate(true).open(path)?;
                let id = s.id();
                s.files.insert(id, FileInode::default());
                s.link(dir, name, Node::File(id), false);
                Ok((file, id))
            }
        }
    }

    fn write_at(&self, file: &fs::File, id: u64, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut s = self.state.lock();
        s.change()?;
        let armed = s.armed.writes.due();
        if armed || s.faults.write_error_one_in != 0 {
            let n = s.faults.write_error_one_in;
            if armed || s.one_in(n) {
                s.stats.write_errors += 1;
                return Err(io::Error::from_raw_os_error(ENOSPC));
            }
        }
        file.write_all_at(buf, offset)?;
        s.mark_dirty(id, offset, offset + buf.len() as u64);
        Ok(())
    }

    fn note_mapped_write(&self, id: u64, offset: u64, len: u64) -> io::Result<()> {
        let mut s = self.state.lock();
        s.change()?;
        let armed = s.armed.writes.due();
        if armed || s.faults.write_error_one_in != 0 {
            let n = s.faults.write_error_one_in;
            if armed || s.one_in(n) {
                s.stats.write_errors += 1;
                return Err(io::Error::from_raw_os_error(ENOSPC));
            }
        }
        s.mark_dirty(id, offset, offset + len);
        Ok(())
    }

    fn set_len(&self, file: &fs::File, id: u64, len: u64) -> io::Result<()> {
        let mut s = self.state.lock();
        s.change()?;
        let old = file.metadata()?.len();
        file.set_len(len)?;
        if let Some(f) = s.files.get_mut(&id) {
            f.len_changed = true;
        }
        s.mark_dirty(id, old.min(len), old.max(len));
        Ok(())
    }

    fn sync(&self, file: &fs::File, id: u64, _data_only: bool) -> io::Result<()> {
        let mut s = self.state.lock();
        s.change()?;
        let n = s.faults.sync_error_one_in;
        if s.take_armed_sync() || s.one_in(n) {
            s.stats.sync_errors += 1;
            s.fail_sync(file, id)?;
            let code = if s.below(2) == 0 { EIO } else { ENOSPC };
            return Err(io::Error::from_raw_os_error(code));
        }
        s.stats.syncs += 1;
        s.make_durable(file, id)
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        let mut s = self.state.lock();
        s.change()?;
        fs::create_dir(path)?;
        if let Some((dir, name)) = s.parent_of(path)? {
            let id = s.id();
            s.dirs.insert(id, DirInode::default());
            s.link(dir, name, Node::Dir(id), false);
        }
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.state.lock();
        s.change()?;
        let src = s.lookup(from)?;
        let dst = s.lookup(to)?;
        if let Some((_, _, Some(old))) = &dst {
            if src.as_ref().and_then(|x| x.2) != Some(*old) {
                s.keep_orphans(*old, to)?;
            }
        }
        fs::rename(from, to)?;
        match (src, dst) {
            (Some((sd, sn, Some(node))), Some((dd, dn, _))) => {
                if sd == dd {
                    if let Some(d) = s.dirs.get_mut(&sd) {
                        d.current.remove(&sn);
                        d.current.insert(dn.clone(), node);
                        d.pending.push(DirOp::Rename(sn, dn));
                    }
                } else {
                    s.unlink(sd, &sn);
                    s.link(dd, dn, node, false);
                }
            }
            (Some((sd, sn, Some(_))), None) => s.unlink(sd, &sn),
            (_, Some((dd, dn, _))) => {
                // Moved in from outside the simulation: adopt it as it is.
                let node = if to.is_dir() {
                    Node::Dir(s.adopt_dir(to)?)
                } else {
                    Node::File(s.adopt_file(to)?)
                };
                s.link(dd, dn, node, false);
            }
            _ => {}
        }
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut s = self.state.lock();
        s.change()?;
        if s.armed.removes.due() {
            return Err(eio());
        }
        let found = s.lookup(path)?;
        if let Some((_, _, Some(node))) = &found {
            s.keep_orphans(*node, path)?;
        }
        fs::remove_file(path)?;
        if let Some((dir, name, Some(_))) = found {
            s.unlink(dir, &name);
        }
        Ok(())
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut s = self.state.lock();
        s.change()?;
        let found = s.lookup(path)?;
        if let Some((_, _, Some(node))) = &found {
            s.keep_orphans(*node, path)?;
        }
        fs::remove_dir_all(path)?;
        if let Some((dir, name, Some(_))) = found {
            s.unlink(dir, &name);
        }
        Ok(())
    }

    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.state.lock();
        s.change()?;
        if s.armed.links.due() {
            return Err(io::Error::from_raw_os_error(EXDEV));
        }
        let src = s.lookup(from)?;
        let dst = s.parent_of(to)?;
        fs::hard_link(from, to)?;
        if let (Some((_, _, Some(node))), Some((dir, name))) = (src, dst) {
            s.link(dir, name, node, false);
        }
        Ok(())
    }

    fn rename_noreplace(&self, from: &Path, to: &Path) -> io::Result<()> {
        if to.symlink_metadata().is_ok() {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        self.rename(from, to)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let mut s = self.state.lock();
        s.change()?;
        let n = s.faults.sync_error_one_in;
        let failed = s.take_armed_sync() || s.one_in(n);
        let node = if s.names(path).is_some_and(|n| n.is_empty()) {
            Some(Node::Dir(s.root_dir))
        } else {
            s.lookup(path)?.and_then(|x| x.2)
        };
        let Some(Node::Dir(id)) = node else {
            return if path.is_dir() {
                Ok(())
            } else {
                Err(io::Error::from(io::ErrorKind::NotFound))
            };
        };
        let pending = s.dirs.get(&id).map_or(0, |d| d.pending.len());
        let keep = if failed {
            s.below(pending as u64 + 1) as usize
        } else {
            pending
        };
        if let Some(d) = s.dirs.get_mut(&id) {
            let pending = std::mem::take(&mut d.pending);
            for op in &pending[..keep] {
                op.apply(&mut d.durable);
            }
            d.pending = pending[keep..].to_vec();
        }
        if failed {
            s.stats.sync_errors += 1;
            return Err(eio());
        }
        s.stats.syncs += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::Storage;

    fn setup(seed: u64) -> (tempfile::TempDir, SimFs, Storage) {
        let dir = tempfile::tempdir().unwrap();
        let sim = SimFs::new(dir.path(), seed).unwrap();
        let storage = Storage::simulated(&sim);
        (dir, sim, storage)
    }

    #[test]
    fn synced_data_survives_every_power_cut() {
        for seed in 0..50 {
            let (_d, sim, st) = setup(seed);
            let root = sim.root();
            st.sync_dir(&root).unwrap();
            let f = st.open(&root.join("a"), OpenMode::Create).unwrap();
            f.write_all_at(b"hello", 0).unwrap();
            f.sync_data().unwrap();
            st.sync_dir(&root).unwrap();
            f.write_all_at(b"world", 5).unwrap();
            drop(f);
            sim.restart().unwrap();
            let got = fs::read(root.join("a")).unwrap();
            assert!(got.starts_with(b"hello"), "seed {seed}: {got:?}");
            assert!(got.len() == 5 || got.len() == 10, "seed {seed}: {got:?}");
        }
    }

    #[test]
    fn unsynced_writes_are_lost_kept_or_torn() {
        let mut seen = std::collections::HashSet::new();
        for seed in 0..200 {
            let (_d, sim, st) = setup(seed);
            let root = sim.root();
            let f = st.open(&root.join("a"), OpenMode::Create).unwrap();
            f.write_all_at(&[0; 16], 0).unwrap();
            f.sync_data().unwrap();
            st.sync_dir(&root).unwrap();
            f.write_all_at(&[7; 16], 0).unwrap();
            drop(f);
            sim.restart().unwrap();
            let got = fs::read(root.join("a")).unwrap();
            assert_eq!(got.len(), 16);
            let sevens = got.iter().take_while(|&&b| b == 7).count();
            assert!(
                got[sevens..].iter().all(|&b| b == 0),
                "seed {seed}: {got:?}"
            );
            seen.insert(sevens);
        }
        assert!(seen.contains(&0) && seen.contains(&16), "{seen:?}");
        assert!(seen.len() > 3, "no torn writes seen: {seen:?}");
    }

    #[test]
    fn a_file_not_synced_into_its_directory_may_vanish() {
        let mut outcomes = std::collections::HashSet::new();
        for seed in 0..64 {
            let (_d, sim, st) = setup(seed);
            let root = sim.root();
            let f = st.open(&root.join("new"), OpenMode::Create).unwrap();
            f.write_all_at(b"x", 0).unwrap();
            f.sync_all().unwrap();
            drop(f);
            sim.restart().unwrap();
            outcomes.insert(root.join("new").exists());
        }
        assert_eq!(
            outcomes.len(),
            2,
            "the entry should sometimes survive, sometimes not"
        );
    }

    #[test]
    fn an_unsynced_rename_may_be_undone_but_never_loses_the_file() {
        let mut outcomes = std::collections::HashSet::new();
        for seed in 0..64 {
            let (_d, sim, st) = setup(seed);
            let root = sim.root();
            let f = st.open(&root.join("tmp"), OpenMode::Create).unwrap();
            f.write_all_at(b"data", 0).unwrap();
            f.sync_all().unwrap();
            st.sync_dir(&root).unwrap();
            st.rename(&root.join("tmp"), &root.join("final")).unwrap();
            drop(f);
            sim.restart().unwrap();
            let tmp = root.join("tmp").exists();
            let fin = root.join("final").exists();
            assert!(tmp != fin, "seed {seed}: exactly one name survives");
            let name = if fin { "final" } else { "tmp" };
            assert_eq!(fs::read(root.join(name)).unwrap(), b"data");
            outcomes.insert(fin);
        }
        assert_eq!(outcomes.len(), 2);
    }

    #[test]
    fn a_removed_directory_comes_back_unless_its_parent_was_synced() {
        for synced in [false, true] {
            let (_d, sim, st) = setup(3);
            let root = sim.root();
            let sub = root.join("sub");
            st.create_dir(&sub).unwrap();
            let f = st.open(&sub.join("f"), OpenMode::Create).unwrap();
            f.write_all_at(b"kept", 0).unwrap();
            f.sync_all().unwrap();
            st.sync_dir(&sub).unwrap();
            st.sync_dir(&root).unwrap();
            drop(f);
            st.rename(&sub, &root.join("doomed")).unwrap();
            st.remove_dir_all(&root.join("doomed")).unwrap();
            if synced {
                st.sync_dir(&root).unwrap();
            }
            sim.crash_now();
            sim.restart().unwrap();
            if synced {
                assert!(!sub.exists() && !root.join("doomed").exists());
            } else if sub.exists() {
                assert_eq!(fs::read(sub.join("f")).unwrap(), b"kept");
            }
        }
    }

    #[test]
    fn a_failed_sync_is_not_repaired_by_the_next_one() {
        let mut lost = 0;
        for seed in 0..64 {
            let (_d, sim, st) = setup(seed);
            let root = sim.root();
            let f = st.open(&root.join("a"), OpenMode::Create).unwrap();
            f.write_all_at(&[0; 8], 0).unwrap();
            f.sync_data().unwrap();
            st.sync_dir(&root).unwrap();
            f.write_all_at(&[9; 8], 0).unwrap();
            sim.set_faults(SimFaults {
                sync_error_one_in: 1,
                write_error_one_in: 0,
            });
            assert!(f.sync_data().is_err());
            sim.set_faults(SimFaults::default());
            f.sync_data().unwrap(); // reports success, as Linux does
            drop(f);
            sim.restart().unwrap();
            if fs::read(root.join("a")).unwrap() != [9; 8] {
                lost += 1;
            }
        }
        assert!(
            lost > 0,
            "a failed sync should sometimes lose the data for good"
        );
    }

    #[test]
    fn after_the_cut_nothing_changes_the_files() {
        let (_d, sim, st) = setup(1);
        let root = sim.root();
        let f = st.open(&root.join("a"), OpenMode::Create).unwrap();
        sim.crash_after(1);
        f.write_all_at(b"one", 0).unwrap();
        assert!(f.write_all_at(b"two", 3).is_err());
        assert!(sim.is_crashed());
        assert!(f.sync_data().is_err());
        assert_eq!(fs::read(root.join("a")).unwrap(), b"one");
    }
}
