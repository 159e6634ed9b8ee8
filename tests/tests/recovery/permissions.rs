//! Permissions: a store directory that cannot be created or locked is an I/O error naming
//! the path.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use logkv::{Error, Store};

use crate::common::{opts, skip};
use crate::segments::SEG;
use crate::{exclusive_gate, shared_gate};

#[test]
fn store_dir_under_a_file_is_an_io_error_naming_it() {
    let _gate = shared_gate();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("file");
    fs::write(&file, "x").unwrap();
    let path = file.join("store");
    match Store::open(&path, opts(SEG)) {
        Err(e @ Error::Io { .. }) => {
            assert!(e.to_string().contains(&path.display().to_string()), "{e}");
            assert!(matches!(e, Error::Io { path: p, .. } if p == path));
        }
        other => panic!("expected an I/O error, got {other:?}"),
    }
}

/// Whether permission bits bind this process (they do not for root).
fn permissions_enforced(ro_dir: &Path) -> bool {
    let probe = ro_dir.join("probe");
    match fs::write(&probe, "x") {
        Ok(()) => {
            fs::remove_file(&probe).unwrap();
            false
        }
        Err(_) => true,
    }
}

#[test]
fn permission_denied_is_an_io_error_naming_the_path() {
    let _gate = exclusive_gate();
    let tmp = tempfile::tempdir().unwrap();
    let outer = tmp.path();
    fs::set_permissions(outer, fs::Permissions::from_mode(0o755)).unwrap();
    let ro = outer.join("ro");
    fs::create_dir(&ro).unwrap();
    // An existing store directory that became read-only.
    let ro_store = outer.join("ro_store");
    Store::open(&ro_store, opts(SEG)).unwrap();
    fs::remove_file(ro_store.join("LOCK")).unwrap();
    for d in [&ro, &ro_store] {
        fs::set_permissions(d, fs::Permissions::from_mode(0o555)).unwrap();
    }
    let restore = || {
        for d in [&ro, &ro_store] {
            fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
        }
    };
    let cannot_create = ro.join("store");
    let cannot_lock = ro_store.join("LOCK");

    if permissions_enforced(&ro) {
        for (dir, named) in [(&cannot_create, &cannot_create), (&ro_store, &cannot_lock)] {
            match Store::open(dir, opts(SEG)) {
                Err(e @ Error::Io { .. }) => {
                    assert!(e.to_string().contains(&named.display().to_string()), "{e}");
                    let Error::Io { path, source } = e else {
                        unreachable!()
                    };
                    assert_eq!(&path, named);
                    assert_eq!(source.kind(), std::io::ErrorKind::PermissionDenied);
                }
                other => panic!(
                    "expected an I/O error on {}, got {other:?}",
                    named.display()
                ),
            }
        }
        restore();
        return;
    }

    // Running as root: permission bits do not bind us, so try as an unprivileged user. It
    // runs a copy of the helper from this test's directory: the build directory may sit
    // where that user cannot enter (a checkout under /root).
    let helper = outer.join("crash_writer");
    fs::copy(env!("CARGO_BIN_EXE_crash_writer"), &helper).unwrap();
    for (dir, named) in [(&cannot_create, &cannot_create), (&ro_store, &cannot_lock)] {
        let out = Command::new(&helper)
            .arg("--try-open")
            .arg(dir)
            .uid(65534)
            .gid(65534)
            .output();
        let out = match out {
            Ok(o) if o.status.success() => o,
            Ok(o) => {
                restore();
                return skip(&format!(
                    "running as root and the helper could not run as uid 65534: {:?} {}",
                    o.status,
                    String::from_utf8_lossy(&o.stderr)
                ));
            }
            Err(e) => {
                restore();
                return skip(&format!(
                    "running as root (chmod has no effect) and could not start a helper as uid \
                     65534: {e}"
                ));
            }
        };
        let line = String::from_utf8(out.stdout).unwrap();
        let fields: Vec<&str> = line.trim_end().splitn(3, '\t').collect();
        assert_eq!(fields.len(), 3, "unexpected helper output {line:?}");
        assert_eq!(fields[0], "err Io", "{line}");
        assert_eq!(fields[1], named.display().to_string(), "{line}");
        assert!(fields[2].contains(&named.display().to_string()), "{line}");
        assert!(
            fields[2].to_lowercase().contains("permission denied"),
            "{line}"
        );
    }
    restore();
}
