//! Backups against the real binary: `BACKUP name` under concurrent writers, served by a
//! second server; names that try to leave `--backup-dir` or write over something; the
//! remote backup (`logkv-server backup`) end to end, with a password, over TLS, and with
//! a byte flipped on the way.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::{cmd, Value};

mod common;

use common::BinaryServer;

fn connect(addr: SocketAddr) -> redis::Connection {
    redis::Client::open(format!("redis://{addr}/"))
        .unwrap()
        .get_connection()
        .unwrap()
}

fn text(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::Int(n) => n.to_string(),
        other => format!("{other:?}"),
    }
}

/// `BACKUP name` as the server replies: the map's fields, `revisions` as its own map.
fn backup(
    con: &mut redis::Connection,
    name: &str,
) -> redis::RedisResult<(BTreeMap<String, String>, BTreeMap<String, u64>)> {
    let v: Value = cmd("BACKUP").arg(name).query(con)?;
    let Value::Array(items) = v else {
        panic!("BACKUP replied {v:?}");
    };
    let mut fields = BTreeMap::new();
    let mut revisions = BTreeMap::new();
    for pair in items.chunks(2) {
        if text(&pair[0]) == "revisions" {
            let Value::Array(revs) = &pair[1] else {
                panic!("revisions: {:?}", pair[1]);
            };
            for r in revs.chunks(2) {
                revisions.insert(text(&r[0]), text(&r[1]).parse().unwrap());
            }
        } else {
            fields.insert(text(&pair[0]), text(&pair[1]));
        }
    }
    Ok((fields, revisions))
}

/// The error code of a failed command.
fn code(r: redis::RedisResult<impl std::fmt::Debug>) -> String {
    let e = r.expect_err("the command should fail");
    e.code().unwrap_or_default().to_string()
}

/// Writers acknowledged: (bucket, key) → [(revision, value or None for a delete)].
type Acked = Arc<Mutex<HashMap<(String, String), Vec<(u64, Option<String>)>>>>;

/// Four writers on three buckets, until `stop`.
fn writers(
    addr: SocketAddr,
    stop: &Arc<AtomicBool>,
    acked: &Acked,
) -> Vec<std::thread::JoinHandle<()>> {
    ["default", "alpha", "alpha", "beta"]
        .into_iter()
        .enumerate()
        .map(|(t, bucket)| {
            let stop = Arc::clone(stop);
            let acked = Arc::clone(acked);
            std::thread::spawn(move || {
                let mut con = connect(addr);
                let _: () = cmd("USE").arg(bucket).query(&mut con).unwrap();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) || i < 200 {
                    let key = format!("k.{t}.{}", i % 50);
                    let (rev, value) = if i % 7 == 3 {
                        (cmd("DEL").arg(&key).query::<u64>(&mut con).unwrap(), None)
                    } else {
                        let value = format!("{t}:{i}:{}", "x".repeat(100));
                        (
                            cmd("PUT")
                                .arg(&key)
                                .arg(&value)
                                .query::<u64>(&mut con)
                                .unwrap(),
                            Some(value),
                        )
                    };
                    acked
                        .lock()
                        .unwrap()
                        .entry((bucket.to_string(), key))
                        .or_default()
                        .push((rev, value));
                    i += 1;
                }
            })
        })
        .collect()
}

fn create_buckets(addr: SocketAddr) {
    let mut con = connect(addr);
    for b in ["alpha", "beta"] {
        let _: () = cmd("BUCKET").arg("CREATE").arg(b).query(&mut con).unwrap();
    }
}

/// Checks that the server at `addr` holds exactly the acknowledged writes up to each
/// bucket's revision in `revisions`.
fn assert_state(addr: SocketAddr, acked: &Acked, revisions: &BTreeMap<String, u64>) {
    assert_eq!(
        revisions.keys().collect::<Vec<_>>(),
        ["alpha", "beta", "default"]
    );
    let mut con = connect(addr);
    let acked = acked.lock().unwrap();
    for (bucket, &revision) in revisions {
        assert!(revision > 0, "{bucket}");
        let _: () = cmd("USE").arg(bucket).query(&mut con).unwrap();
        let status: Value = cmd("STATUS").query(&mut con).unwrap();
        let Value::Array(fields) = status else {
            panic!("{status:?}")
        };
        let last = fields
            .chunks(2)
            .find(|p| text(&p[0]) == "lastrev")
            .map(|p| text(&p[1]))
            .unwrap();
        assert_eq!(last, revision.to_string(), "{bucket}");
        let mut checked = 0;
        for ((b, key), writes) in acked.iter().filter(|((b, _), _)| b == bucket) {
            let want = writes
                .iter()
                .filter(|(r, _)| *r <= revision)
                .max_by_key(|(r, _)| *r)
                .and_then(|(_, v)| v.clone());
            let got: Option<String> = cmd("GET").arg(key).query(&mut con).unwrap();
            assert_eq!(got, want, "{b} {key} as of {revision}");
            checked += 1;
        }
        assert!(checked > 0);
    }
}

#[test]
fn backup_under_writers_is_served_as_it_was_by_a_second_server() {
    let backups = tempfile::tempdir().unwrap();
    let dir = backups.path().display().to_string();
    let server = BinaryServer::start(&["--backup-dir", &dir]);
    create_buckets(server.addr);
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Acked = Arc::default();
    let threads = writers(server.addr, &stop, &acked);
    std::thread::sleep(Duration::from_millis(300));
    let (fields, revisions) = backup(&mut connect(server.addr), "nightly").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let path = backups.path().canonicalize().unwrap().join("nightly");
    assert_eq!(fields["path"], path.display().to_string());
    assert_eq!(fields["buckets"], "3");
    let bytes: u64 = fields["bytes"].parse().unwrap();
    assert!(bytes > 0);
    // The writers went on past the backup.
    let after: Value = cmd("STATUS").query(&mut connect(server.addr)).unwrap();
    assert!(format!("{after:?}").contains("lastrev"));
    drop(server);
    let copy = BinaryServer::start_in(&path, &[]);
    assert_state(copy.addr, &acked, &revisions);
}

#[test]
fn backup_is_refused_without_backup_dir() {
    let server = BinaryServer::start(&[]);
    let mut con = connect(server.addr);
    let err = backup(&mut con, "x").unwrap_err();
    assert_eq!(err.code(), Some("ERR"));
    assert!(err.to_string().contains("--backup-dir"), "{err}");
}

#[test]
fn backup_names_never_leave_the_backup_dir_nor_write_over_anything() {
    let root = tempfile::tempdir().unwrap();
    let backups = root.path().join("backups");
    let outside = root.path().join("outside");
    std::fs::create_dir_all(&backups).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    let server = BinaryServer::start(&["--backup-dir", &backups.display().to_string()]);
    let mut con = connect(server.addr);
    for name in [
        "../outside/x",
        "..",
        ".",
        "/tmp/x",
        "a/b",
        "a\\b",
        "x y",
        "",
        "a\0b",
        "é",
        &"x".repeat(256),
    ] {
        assert_eq!(code(backup(&mut con, name)), "ERR", "{name:?}");
    }
    // Names that exist: a directory, an empty one, a file, links out of the directory.
    std::fs::create_dir(backups.join("taken")).unwrap();
    std::fs::write(backups.join("taken/keep"), "mine").unwrap();
    std::fs::create_dir(backups.join("empty")).unwrap();
    std::fs::write(backups.join("file"), "mine").unwrap();
    std::os::unix::fs::symlink(&outside, backups.join("planted")).unwrap();
    std::os::unix::fs::symlink(outside.join("new"), backups.join("dangling")).unwrap();
    for name in ["taken", "empty", "file", "planted", "dangling"] {
        assert_eq!(code(backup(&mut con, name)), "EXISTS", "{name}");
    }
    assert_eq!(std::fs::read(backups.join("taken/keep")).unwrap(), b"mine");
    assert_eq!(std::fs::read_dir(backups.join("empty")).unwrap().count(), 0);
    assert_eq!(std::fs::read(backups.join("file")).unwrap(), b"mine");
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "nothing written outside"
    );
    // A good name works once.
    backup(&mut con, "ok.1").unwrap();
    assert!(backups.join("ok.1/buckets/default/bucket.conf").exists());
    assert_eq!(code(backup(&mut con, "ok.1")), "EXISTS");
    let mut names: Vec<String> = std::fs::read_dir(&backups)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["dangling", "empty", "file", "ok.1", "planted", "taken"]
    );
}

#[test]
fn a_backup_dir_inside_the_data_dir_is_refused_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let inside = dir.path().join("buckets");
    let out = common::binary(dir.path())
        .args(["--listen", "127.0.0.1:0", "--backup-dir"])
        .arg(&inside)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("inside the data directory"), "{err}");
}

#[test]
fn a_backup_dir_is_accepted_beside_a_data_dir_that_does_not_exist_yet() {
    // The backup directory is checked against the data directory once the store has
    // created it.
    let base = tempfile::tempdir().unwrap();
    let (data, backups) = (base.path().join("data"), base.path().join("backups"));
    let (_server, addr, _dir) = common::start_server(|c| {
        c.data_dir.clone_from(&data);
        c.backup_dir = Some(backups.clone());
    });
    let mut con = connect(addr);
    let _: () = cmd("SET").arg("k").arg("v").query(&mut con).unwrap();
    let (_, revisions) = backup(&mut con, "first").unwrap();
    assert_eq!(revisions["default"], 1);
    assert!(backups.join("first").is_dir());
    assert!(data.is_dir());
}

/// `logkv-server backup` with these flags.
fn backup_command(args: &[&str], password: Option<&str>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_logkv-server"));
    c.arg("backup").args(args).env_remove("LOGKV_PASSWORD");
    if let Some(p) = password {
        c.env("LOGKV_PASSWORD", p);
    }
    c.output().unwrap()
}

/// `logkv-server backup --from FROM --to TO`, without a password.
fn remote_backup(from: &str, to: &str) -> Output {
    backup_command(&["--from", from, "--to", to], None)
}

/// The revisions `logkv-server backup` printed.
fn printed_revisions(out: &Output) -> BTreeMap<String, u64> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .filter_map(|l| l.trim().split_once(": revision "))
        .map(|(b, r)| (b.to_string(), r.parse().unwrap()))
        .collect()
}

#[test]
fn remote_backup_under_writers_end_to_end() {
    let server = BinaryServer::start(&[]);
    create_buckets(server.addr);
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Acked = Arc::default();
    let threads = writers(server.addr, &stop, &acked);
    std::thread::sleep(Duration::from_millis(300));
    let to = tempfile::tempdir().unwrap();
    let target = to.path().join("copy");
    let out = remote_backup(&server.addr.to_string(), &target.display().to_string());
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let revisions = printed_revisions(&out);
    // Into an existing directory: refused, nothing changed.
    let again = remote_backup(&server.addr.to_string(), &target.display().to_string());
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists already"));
    drop(server);
    let only: Vec<_> = std::fs::read_dir(to.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(only, ["copy"], "no temporary directory left");
    let copy = BinaryServer::start_in(&target, &[]);
    assert_state(copy.addr, &acked, &revisions);
}

/// A proxy that forwards a connection to `upstream` and flips one byte inside the file
/// data of the first large `data` frame it sees going back to the client.
fn corrupting_proxy(upstream: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let (client, _) = listener.accept().unwrap();
        let server = TcpStream::connect(upstream).unwrap();
        let (mut c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut c_in, &mut s_out);
        });
        let (mut s_in, mut c_out) = (server, client);
        let mut seen = Vec::new();
        let mut flipped = false;
        let mut cursor = 0;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match s_in.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let start = seen.len();
            seen.extend_from_slice(&buf[..n]);
            // `*2\r\n$4\r\ndata\r\n$<len>\r\n` then the bytes: flip the 100th of the
            // first frame longer than that.
            while !flipped {
                let Some(at) = find(&seen[cursor..], b"$4\r\ndata\r\n$") else {
                    break;
                };
                let len_at = cursor + at + 11;
                let Some(eol) = find(&seen[len_at..], b"\r\n") else {
                    break;
                };
                let len: usize = std::str::from_utf8(&seen[len_at..len_at + eol])
                    .unwrap()
                    .parse()
                    .unwrap();
                let target = len_at + eol + 2 + 100;
                if len <= 100 {
                    cursor = len_at;
                    continue;
                }
                if target >= seen.len() {
                    break;
                }
                if target >= start {
                    buf[target - start] ^= 0x01;
                    flipped = true;
                }
                cursor = len_at;
            }
            if c_out.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
    addr
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[test]
fn remote_backup_detects_a_corrupted_chunk() {
    let server = BinaryServer::start(&[]);
    let mut con = connect(server.addr);
    for i in 0..200 {
        let _: u64 = cmd("PUT")
            .arg(format!("k{i}"))
            .arg("v".repeat(200))
            .query(&mut con)
            .unwrap();
    }
    let proxy = corrupting_proxy(server.addr);
    let to = tempfile::tempdir().unwrap();
    let target = to.path().join("copy");
    let out = remote_backup(&proxy.to_string(), &target.display().to_string());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("checksum mismatch"), "{err}");
    assert!(err.contains("buckets/default/"), "{err}");
    assert!(!target.exists());
    assert_eq!(
        std::fs::read_dir(to.path()).unwrap().count(),
        0,
        "no partial copy left"
    );
    // Straight from the server it works.
    let out = remote_backup(&server.addr.to_string(), &target.display().to_string());
    assert_eq!(printed_revisions(&out)["default"], 200);
}

#[test]
fn remote_backup_with_a_password_and_tls() {
    let certs = common::certs::Certs::new();
    let mut flags = certs.server_flags(true);
    flags.extend(["--password".to_string(), "s3cret".to_string()]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let server = BinaryServer::start(&flags);
    let from = format!("localhost:{}", server.addr.port());
    let to = tempfile::tempdir().unwrap();
    let target = to.path().join("copy");
    let target_s = target.display().to_string();
    let ca = certs.ca.display().to_string();
    let client_cert = certs.client_cert.display().to_string();
    let client_key = certs.client_key.display().to_string();
    let tls = [
        "--tls-ca",
        ca.as_str(),
        "--tls-cert",
        client_cert.as_str(),
        "--tls-key",
        client_key.as_str(),
    ];
    let args = |extra: &[&str]| {
        let mut a = vec!["--from", from.as_str(), "--to", target_s.as_str()];
        a.extend_from_slice(extra);
        a.into_iter().map(str::to_string).collect::<Vec<_>>()
    };
    let run = |extra: &[&str], password| {
        let a = args(extra);
        backup_command(&a.iter().map(String::as_str).collect::<Vec<_>>(), password)
    };
    // No password, a wrong one, no TLS: refused, nothing written.
    for (extra, password, says) in [
        (&tls[..], None, "NOAUTH"),
        (&tls[..], Some("wrong"), "NOAUTH"),
        (&[][..], Some("s3cret"), "protocol error"),
    ] {
        let out = run(extra, password);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{says}: {err}");
        assert!(!target.exists());
    }
    let out = run(&tls, Some("s3cret"));
    assert_eq!(printed_revisions(&out)["default"], 0);
    assert!(target.join("buckets/default/bucket.conf").exists());
}
