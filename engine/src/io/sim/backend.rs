//! The storage backend calls, each recorded in the simulation's state.

use std::fs;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::state::{DirInode, DirOp, FileInode, Node};
use super::{eio, Backend, OpenMode, SimFs, EIO, ENOSPC, EXDEV};

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
        if buf.len() > 1 && s.armed.short_writes.due() {
            // All but the last byte reach the page cache, then the call fails.
            let kept = buf.len() - 1;
            file.write_all_at(&buf[..kept], offset)?;
            s.mark_dirty(id, offset, offset + kept as u64);
            s.stats.write_errors += 1;
            return Err(eio());
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

    fn drop_cached(&self, file: &fs::File, id: u64, from: u64, to: u64) -> io::Result<()> {
        let mut s = self.state.lock();
        s.change()?;
        s.drop_cached(file, id, from, to)
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
            s.stats.remove_errors += 1;
            return Err(eio());
        }
        s.remove(path, |p| fs::remove_file(p))
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut s = self.state.lock();
        s.change()?;
        s.remove(path, |p| fs::remove_dir_all(p))
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
        s.sync_dir_changes(id, failed);
        if failed {
            s.stats.sync_errors += 1;
            return Err(eio());
        }
        s.stats.syncs += 1;
        Ok(())
    }

    fn can_sync_file_system(&self, _path: &Path) -> bool {
        !self.state.lock().no_syncfs
    }

    fn sync_file_system(&self, _path: &Path) -> io::Result<()> {
        // The simulation is one file system: everything in it.
        let mut s = self.state.lock();
        if s.no_syncfs {
            return Err(io::Error::from(io::ErrorKind::Unsupported));
        }
        s.change()?;
        let n = s.faults.sync_error_one_in;
        let failed = s.take_armed_sync() || s.one_in(n);
        s.sync_everything(failed)?;
        if failed {
            s.stats.sync_errors += 1;
            return Err(eio());
        }
        s.stats.syncs += 1;
        Ok(())
    }

    fn replays_call_order(&self) -> bool {
        // Files are numbered, faults drawn and crash countdowns counted in call order.
        true
    }
}
