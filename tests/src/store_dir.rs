//! Copies of store directories.

use std::io;
use std::path::Path;

/// Copies a store directory as it is on disk right now, without the lock file: what a
/// process that was killed at this instant leaves behind (the page cache survives a
/// process crash, so every acknowledged `write` is in it). On a closed store it is a
/// plain copy (the next open creates the lock file again).
pub fn copy_store_dir(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        if name == "LOCK" {
            continue;
        }
        let src = entry.path();
        let dst = to.join(&name);
        if entry.file_type()?.is_dir() {
            copy_store_dir(&src, &dst)?;
        } else {
            copy_file(&src, &dst)?;
        }
    }
    Ok(())
}

/// `std::fs::copy`, again when a signal interrupts it (its `copy_file_range`
/// returns `EINTR` rather than restarting: libFuzzer's timeout timer
/// interrupted a copy in a long run).
fn copy_file(src: &Path, dst: &Path) -> io::Result<u64> {
    loop {
        match std::fs::copy(src, dst) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            done => return done,
        }
    }
}
