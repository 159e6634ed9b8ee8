//! Locks: one open store per directory, within a process and across processes, released
//! when the holder goes away.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use logkv::{Error, Store};

use crate::common::opts;
use crate::segments::SEG;
use crate::{exclusive_gate, shared_gate};

#[test]
fn second_open_in_the_same_process_is_locked() {
    let _gate = shared_gate();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("s");
    let store = Store::open(&path, opts(SEG)).unwrap();
    store.default_bucket().unwrap().put("k", "v").unwrap();
    match Store::open(&path, opts(SEG)) {
        Err(e @ Error::Locked(_)) => {
            let msg = e.to_string();
            let Error::Locked(p) = e else { unreachable!() };
            assert_eq!(p, path);
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            assert_eq!(logkv_server::error_code(&Error::Locked(p)), "BUSY");
        }
        other => panic!("expected Locked, got {other:?}"),
    }
    // The failed open left the first store working.
    assert_eq!(
        store.default_bucket().unwrap().get("k").unwrap().as_deref(),
        Some(&b"v"[..])
    );

    // The lock is held until the last clone and the last bucket handle are gone.
    let clone = store.clone();
    let bucket = store.default_bucket().unwrap();
    drop(store);
    assert!(
        matches!(Store::open(&path, opts(SEG)), Err(Error::Locked(_))),
        "a clone still holds the store"
    );
    drop(clone);
    assert!(
        matches!(Store::open(&path, opts(SEG)), Err(Error::Locked(_))),
        "a bucket handle still holds the store"
    );
    drop(bucket);
    let store = Store::open(&path, opts(SEG)).unwrap();
    assert_eq!(
        store.default_bucket().unwrap().get("k").unwrap().as_deref(),
        Some(&b"v"[..])
    );
}

fn spawn_holder(path: &Path) -> (std::process::Child, BufReader<std::process::ChildStdout>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_crash_writer"))
        .arg("--hold")
        .arg(path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n", "the holder did not open the store");
    (child, out)
}

#[test]
fn open_locked_by_another_process() {
    let _gate = exclusive_gate();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("s");
    {
        let store = Store::open(&path, opts(SEG)).unwrap();
        store.default_bucket().unwrap().put("k", "v").unwrap();
    }
    let (mut child, mut out) = spawn_holder(&path);
    match Store::open(&path, opts(SEG)) {
        Err(e @ Error::Locked(_)) => {
            assert!(e.to_string().contains(&path.display().to_string()), "{e}");
            assert!(matches!(e, Error::Locked(p) if p == path));
        }
        other => panic!("expected Locked while another process holds the store, got {other:?}"),
    }
    // Let the holder close the store and exit.
    drop(child.stdin.take());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "closed\n");
    assert!(child.wait().unwrap().success());
    let store = Store::open(&path, opts(SEG)).unwrap();
    assert_eq!(
        store.default_bucket().unwrap().get("k").unwrap().as_deref(),
        Some(&b"v"[..])
    );
}

#[test]
fn lock_is_released_when_the_holder_is_killed() {
    let _gate = exclusive_gate();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("s");
    let (mut child, _out) = spawn_holder(&path);
    assert!(matches!(
        Store::open(&path, opts(SEG)),
        Err(Error::Locked(_))
    ));
    child.kill().unwrap();
    child.wait().unwrap();
    let store = Store::open(&path, opts(SEG)).unwrap();
    assert_eq!(store.bucket_names(), vec!["default".to_string()]);
}
