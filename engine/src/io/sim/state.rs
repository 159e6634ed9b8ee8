//! The simulation's state: inodes, what is durable, and the power cut.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};

use super::{eio, Armed, CutStyle, SimFaults, SimStats};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Node {
    File(u64),
    Dir(u64),
}

#[derive(Debug, Clone)]
pub(super) enum DirOp {
    Link(OsString, Node),
    Unlink(OsString),
    Rename(OsString, OsString),
}

impl DirOp {
    pub(super) fn apply(&self, entries: &mut BTreeMap<OsString, Node>) {
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
pub(super) struct DirInode {
    pub(super) current: BTreeMap<OsString, Node>,
    pub(super) durable: BTreeMap<OsString, Node>,
    /// Changes since the last sync, in order: `current` is `durable` with all of them applied.
    pub(super) pending: Vec<DirOp>,
}

#[derive(Default)]
pub(super) struct FileInode {
    /// The contents on the simulated disk.
    pub(super) durable: Vec<u8>,
    /// Byte ranges changed since the last sync.
    pub(super) dirty: Vec<(u64, u64)>,
    /// The length may differ from the durable one.
    pub(super) len_changed: bool,
    /// Byte ranges a failed sync did not write: the file (the page cache)
    /// still shows them, counted clean, and the disk does not have them.
    pub(super) failed: Vec<(u64, u64)>,
    /// The contents when the file lost its last name, if it had unsynced changes.
    pub(super) orphan: Option<Vec<u8>>,
}

pub(super) struct State {
    pub(super) root: PathBuf,
    pub(super) root_dir: u64,
    pub(super) next_id: u64,
    pub(super) files: HashMap<u64, FileInode>,
    pub(super) dirs: HashMap<u64, DirInode>,
    pub(super) crashed: bool,
    pub(super) crash_after: Option<u64>,
    pub(super) faults: SimFaults,
    pub(super) armed: Armed,
    pub(super) rng: u64,
    pub(super) stats: SimStats,
    /// The file system cannot be synced whole (as off Linux): `syncfs` is refused.
    pub(super) no_syncfs: bool,
}

impl State {
    /// Removes `path` (a file or a directory tree) with `remove`, keeping the unsynced
    /// contents of what loses its last name and recording the unlink in its directory.
    pub(super) fn remove(
        &mut self,
        path: &Path,
        remove: impl FnOnce(&Path) -> io::Result<()>,
    ) -> io::Result<()> {
        let found = self.lookup(path)?;
        if let Some((_, _, Some(node))) = &found {
            self.keep_orphans(*node, path)?;
        }
        remove(path)?;
        if let Some((dir, name, Some(_))) = found {
            self.unlink(dir, &name);
        }
        Ok(())
    }

    pub(super) fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// `SplitMix64`.
    pub(super) fn rand(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub(super) fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.rand() % n
        }
    }

    pub(super) fn one_in(&mut self, n: u32) -> bool {
        n != 0 && self.below(u64::from(n)) == 0
    }

    /// Whether an armed sync failure is due now (and uses it up).
    pub(super) fn take_armed_sync(&mut self) -> bool {
        self.armed.syncs.due()
    }

    /// Counts a change; fails if the power is (or now goes) off.
    pub(super) fn change(&mut self) -> io::Result<()> {
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
    pub(super) fn adopt_dir(&mut self, path: &Path) -> io::Result<u64> {
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

    pub(super) fn adopt_file(&mut self, path: &Path) -> io::Result<u64> {
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
    pub(super) fn names(&self, path: &Path) -> Option<Vec<OsString>> {
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
    pub(super) fn parent_of(&mut self, path: &Path) -> io::Result<Option<(u64, OsString)>> {
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

    pub(super) fn lookup(
        &mut self,
        path: &Path,
    ) -> io::Result<Option<(u64, OsString, Option<Node>)>> {
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
    pub(super) fn link(&mut self, dir: u64, name: OsString, node: Node, durable: bool) {
        if let Some(d) = self.dirs.get_mut(&dir) {
            d.current.insert(name.clone(), node);
            if durable {
                d.durable.insert(name, node);
            } else {
                d.pending.push(DirOp::Link(name, node));
            }
        }
    }

    pub(super) fn unlink(&mut self, dir: u64, name: &OsString) {
        if let Some(d) = self.dirs.get_mut(&dir) {
            d.current.remove(name);
            d.pending.push(DirOp::Unlink(name.clone()));
        }
    }

    /// Keeps the contents of files under `node` that are about to lose their
    /// last name while they have unsynced changes (read from `path` before it goes).
    pub(super) fn keep_orphans(&mut self, node: Node, path: &Path) -> io::Result<()> {
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
    pub(super) fn names_of(&self, id: u64) -> usize {
        self.dirs
            .values()
            .map(|d| d.current.values().filter(|n| **n == Node::File(id)).count())
            .sum()
    }

    pub(super) fn mark_dirty(&mut self, id: u64, from: u64, to: u64) {
        if let Some(f) = self.files.get_mut(&id) {
            if from < to {
                f.dirty.push((from, to));
                f.failed = subtract(std::mem::take(&mut f.failed), from, to);
            }
        }
    }

    /// Copies the changed ranges of a file into its durable contents.
    pub(super) fn make_durable(&mut self, file: &fs::File, id: u64) -> io::Result<()> {
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

    /// `POSIX_FADV_DONTNEED` over `[from, to)`: what holds no unsynced change
    /// is read from the disk again. Elsewhere the file shows what the disk
    /// has already; the ranges a failed sync did not write (counted clean)
    /// now show the durable bytes (zeros past the durable length).
    pub(super) fn drop_cached(
        &mut self,
        file: &fs::File,
        id: u64,
        from: u64,
        to: u64,
    ) -> io::Result<()> {
        let Some(f) = self.files.get_mut(&id) else {
            return Ok(());
        };
        let to = to.min(file.metadata()?.len());
        let mut reread = Vec::new();
        for &(a, b) in &f.failed {
            let (x, y) = (a.max(from), b.min(to));
            if x < y {
                reread.push((x, y));
            }
        }
        f.failed = subtract(std::mem::take(&mut f.failed), from, to);
        let f = &*f;
        for (a, b) in reread {
            let mut bytes = vec![0u8; usize::try_from(b - a).map_err(|_| eio())?];
            let start = usize::try_from(a).map_err(|_| eio())?;
            if let Some(durable) = f.durable.get(start..) {
                let n = durable.len().min(bytes.len());
                bytes[..n].copy_from_slice(&durable[..n]);
            }
            file.write_all_at(&bytes, a)?;
        }
        Ok(())
    }

    /// A failed sync: each changed range reached the disk or not, and the
    /// pages count as clean from now on either way.
    pub(super) fn fail_sync(&mut self, file: &fs::File, id: u64) -> io::Result<()> {
        let Some(f) = self.files.get(&id) else {
            return Ok(());
        };
        let ranges = f.dirty.clone();
        let len = file.metadata()?.len();
        let keep_len = self.below(2) == 0;
        let mut keep = Vec::new();
        let mut lost = Vec::new();
        for r in ranges {
            if self.below(2) == 0 {
                keep.push(r);
            } else {
                lost.push(r);
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
            f.failed.extend(lost);
        }
        Ok(())
    }

    /// A sync of the whole file system (`syncfs`): every file's unsynced
    /// writes and every directory's changes become durable. If it `failed`,
    /// each changed range (and each file's new length) reached the disk or
    /// not, as after a failed fsync (the pages count as clean either way), and
    /// each directory kept a prefix of its changes.
    pub(super) fn sync_everything(&mut self, failed: bool) -> io::Result<()> {
        let current = self.current_contents()?;
        let mut ids: Vec<u64> = current.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let (Some(now), Some(ranges)) = (
                current.get(&id),
                self.files.get(&id).map(|f| f.dirty.clone()),
            ) else {
                continue;
            };
            let mut durable = self
                .files
                .get(&id)
                .map(|f| f.durable.clone())
                .unwrap_or_default();
            let mut lost = Vec::new();
            if failed {
                if self.below(2) == 0 {
                    durable.resize(now.len(), 0);
                }
                for (from, to) in ranges {
                    let (a, b) = (from as usize, (to as usize).min(now.len()));
                    if a < b && self.below(2) == 0 {
                        if durable.len() < b {
                            durable.resize(b, 0);
                        }
                        durable[a..b].copy_from_slice(&now[a..b]);
                    } else if a < b {
                        lost.push((from, to));
                    }
                }
            } else {
                // Everything the file shows, but what a failed sync did not write:
                // those pages count as clean, and a sync writes only dirty ones.
                let old = std::mem::replace(&mut durable, now.clone());
                let failed = self.files.get(&id).map(|f| f.failed.clone());
                for (from, to) in failed.unwrap_or_default() {
                    let (a, b) = (from as usize, (to as usize).min(durable.len()));
                    for (i, byte) in durable.iter_mut().enumerate().take(b).skip(a) {
                        *byte = old.get(i).copied().unwrap_or(0);
                    }
                }
            }
            if let Some(f) = self.files.get_mut(&id) {
                f.durable = durable;
                f.dirty.clear();
                f.len_changed = false;
                f.failed.extend(lost);
            }
        }
        let mut dir_ids: Vec<u64> = self.dirs.keys().copied().collect();
        dir_ids.sort_unstable();
        for id in dir_ids {
            self.sync_dir_changes(id, failed);
        }
        Ok(())
    }

    /// A directory's sync: its changes become durable, or (if it `failed`)
    /// a prefix of them, the rest staying pending.
    pub(super) fn sync_dir_changes(&mut self, id: u64, failed: bool) {
        let pending = self.dirs.get(&id).map_or(0, |d| d.pending.len());
        let keep = if failed {
            self.below(pending as u64 + 1) as usize
        } else {
            pending
        };
        if let Some(d) = self.dirs.get_mut(&id) {
            let pending = std::mem::take(&mut d.pending);
            for op in &pending[..keep] {
                op.apply(&mut d.durable);
            }
            d.pending = pending[keep..].to_vec();
        }
    }

    /// The contents of every file as the process sees them now, for files
    /// that have unsynced changes.
    pub(super) fn current_contents(&mut self) -> io::Result<HashMap<u64, Vec<u8>>> {
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
    pub(super) fn crash_image(
        &mut self,
        id: u64,
        current: Option<&Vec<u8>>,
        style: u64,
    ) -> Vec<u8> {
        let Some(f) = self.files.get(&id) else {
            return Vec::new();
        };
        let mut out = f.durable.clone();
        let Some(cur) = current else {
            return out;
        };
        let mut ranges = f.dirty.clone();
        let len_changed = f.len_changed || cur.len() != out.len();
        // A tearing cut keeps every new length: the torn bytes lie inside the file.
        if len_changed && (style == 3 || self.below(2) == 0) {
            out.resize(cur.len(), 0);
        }
        ranges.sort_unstable();
        for (from, to) in ranges {
            let to = (to as usize).min(cur.len()).min(out.len());
            let mut at = (from as usize).min(to);
            while at < to {
                // Torn in pieces of up to 64 bytes when every write is torn (so
                // that a small record is torn, not kept or lost whole), else 4 KiB.
                let largest = if style == 3 { 64 } else { 4096 };
                let piece = (1 + self.below(largest) as usize).min(to - at);
                let keep = match style {
                    0 => 0,
                    1 => piece,
                    3 => self.below(piece as u64) as usize,
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
    pub(super) fn power_cut(&mut self, style: CutStyle) -> io::Result<()> {
        self.stats.crashes += 1;
        let current = self.current_contents()?;
        // 0: every unsynced write lost; 1: all kept (what SIGKILL leaves); 2: each its own
        // way; 3: every one torn, every directory change kept.
        let style = match style {
            CutStyle::LoseAll => 0,
            CutStyle::KeepAll => 1,
            CutStyle::Random => self.below(3),
            CutStyle::TearAll => 3,
        };
        // The durable directory tree after the cut: a prefix of each directory's pending changes.
        // In id order, so that a seed replays the same cut (a HashMap's order differs per process).
        let mut dir_ids: Vec<u64> = self.dirs.keys().copied().collect();
        dir_ids.sort_unstable();
        let mut after: HashMap<u64, BTreeMap<OsString, Node>> = HashMap::new();
        for id in dir_ids {
            let (mut entries, pending) = match self.dirs.get(&id) {
                Some(d) => (d.durable.clone(), d.pending.clone()),
                None => continue,
            };
            let keep = match style {
                0 => 0,
                1 | 3 => pending.len(),
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

/// `ranges` less `[from, to)`.
fn subtract(ranges: Vec<(u64, u64)>, from: u64, to: u64) -> Vec<(u64, u64)> {
    ranges
        .into_iter()
        .flat_map(|(x, y)| [(x, y.min(from)), (x.max(to), y)])
        .filter(|(x, y)| x < y)
        .collect()
}
