//! A full disk: writes fail with a clear I/O error, nothing acknowledged is
//! lost, reads keep working, and the store reopens with every acknowledged
//! write. Uses a small tmpfs; skips (saying why) where mounting is not allowed (a failure
//! under `LOGKV_NO_SKIP=1`: CI runs as root).

mod common;

use std::path::Path;
use std::process::Command;

use logkv::{Error, Store};

use common::{durable_opts, skip};

struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn small_tmpfs(dir: &Path, size: &str) -> Option<Mount> {
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .status()
        .is_ok_and(|s| s.success());
    ok.then(|| Mount(dir.to_path_buf()))
}

#[test]
fn full_disk_fails_writes_cleanly_and_loses_nothing() {
    let base = tempfile::tempdir().unwrap();
    let Some(mount) = small_tmpfs(base.path(), "3m") else {
        return skip("cannot mount a small tmpfs here (needs root, or CAP_SYS_ADMIN)");
    };
    let dir = mount.0.join("store");
    let opts = || durable_opts(256 * 1024);
    let store = Store::open(&dir, opts()).unwrap();
    let b = store.default_bucket().unwrap();
    let value = vec![b'x'; 2000];
    let mut acked = Vec::new();
    let err = loop {
        let key = format!("k.{}", acked.len());
        match b.put(&key, value.clone()) {
            Ok(rev) => acked.push((key, rev)),
            Err(e) => break e,
        }
        assert!(acked.len() < 100_000, "the disk never filled");
    };
    match err.cause() {
        Error::Io { source, path } => {
            assert_eq!(
                source.raw_os_error(),
                Some(28),
                "ENOSPC expected, got {source}"
            );
            assert!(
                path.starts_with(&dir),
                "the error names the file: {}",
                path.display()
            );
        }
        other => panic!("expected an I/O error, got {other}"),
    }
    assert!(acked.len() > 100, "only {} writes fit", acked.len());
    // Reads still work, and every acknowledged write is there.
    for (key, rev) in &acked {
        assert_eq!(b.entry(key).unwrap().unwrap().revision, *rev);
    }
    // Further writes keep failing cleanly (no panic, no partial state).
    for _ in 0..5 {
        assert!(b.put("more", value.clone()).is_err());
    }
    // Deletes write small markers; they may or may not fit, but must not corrupt.
    let _ = b.delete("k.0");
    drop(b);
    drop(store);
    let store = Store::open(&dir, opts()).unwrap();
    let b = store.default_bucket().unwrap();
    for (key, rev) in &acked[1..] {
        let e = b
            .entry(key)
            .unwrap()
            .expect("acknowledged write survives a full disk and a reopen");
        assert_eq!(e.revision, *rev);
    }
    assert_eq!(b.get("more").unwrap(), None);
}
