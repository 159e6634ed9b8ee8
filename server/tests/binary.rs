//! Tests of the real `logkv-server` binary: startup checks, signals, restart on the same
//! directory, `--help`, and a smoke test through `redis-cli` when it is installed.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_logkv-server");

fn command(dir: &Path, extra: &[&str]) -> Command {
    let mut cmd = common::binary(dir);
    cmd.args(extra);
    cmd
}

/// A running server process; killed if the test fails half-way.
struct Proc {
    child: Child,
    addr: SocketAddr,
    log: mpsc::Receiver<String>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the binary on a free loopback port and waits for its "listening on" line.
fn start(dir: &Path) -> Proc {
    let mut child = command(dir, &["--listen", "127.0.0.1:0"]).spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Owned by `Proc` from here on, so that it is killed and reaped if anything fails.
    let mut p = Proc {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        log: rx,
    };
    loop {
        let line = p
            .log
            .recv_timeout(Duration::from_secs(20))
            .expect("the server did not say where it listens");
        if let Some(rest) = line.split("listening on ").nth(1) {
            p.addr = rest.split_whitespace().next().unwrap().parse().unwrap();
            return p;
        }
    }
}

fn send(addr: SocketAddr, request: &[u8], replies: usize) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    let mut r = BufReader::new(s);
    let mut out = String::new();
    for _ in 0..replies {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        if let Some(n) = line
            .strip_prefix('$')
            .and_then(|n| n.trim().parse::<usize>().ok())
        {
            let mut body = vec![0u8; n + 2];
            r.read_exact(&mut body).unwrap();
            line.push_str(&String::from_utf8_lossy(&body));
        }
        out.push_str(&line);
    }
    out
}

fn terminate(p: &mut Proc) -> std::process::ExitStatus {
    let pid = p.child.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    p.child.wait().unwrap()
}

#[test]
fn refuses_a_public_address_without_a_password() {
    let dir = tempfile::tempdir().unwrap();
    let out = command(dir.path(), &["--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refusing to listen on 0.0.0.0:0"), "{err}");
    assert!(err.contains("--password"), "{err}");
    assert!(err.contains("LOGKV_PASSWORD"), "{err}");
    assert!(err.contains("--unprotected"), "{err}");
}

#[test]
fn sigterm_exits_cleanly_and_data_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = start(dir.path());
    assert_eq!(
        send(
            p.addr,
            b"PUT greeting hello\r\nBUCKET CREATE b HISTORY 2\r\n",
            2
        ),
        ":1\r\n+OK\r\n"
    );
    let status = terminate(&mut p);
    assert!(status.success(), "{status:?}");
    // The process has exited: its stderr reaches end of file, and the reader thread
    // hangs up once it has passed on every line (`try_iter` could stop before the last).
    let log: Vec<String> = p.log.iter().collect();
    assert!(log.iter().any(|l| l.contains("SIGTERM")), "{log:?}");
    assert!(
        log.iter().any(|l| l.contains("synced and closed")),
        "{log:?}"
    );
    drop(p);

    let mut p = start(dir.path());
    assert_eq!(
        send(p.addr, b"GET greeting\r\nBUCKET LIST\r\n", 2),
        "$5\r\nhello\r\n*2\r\n"
    );
    assert!(terminate(&mut p).success());
}

#[test]
fn a_second_process_on_the_same_directory_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = start(dir.path());
    let out = command(dir.path(), &["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is locked"), "{err}");
    assert!(err.contains("another logkv-server running"), "{err}");
    // The first one is unaffected.
    assert_eq!(send(first.addr, b"PING\r\n", 1), "+PONG\r\n");
    assert!(terminate(&mut first).success());
}

#[test]
fn help_explains_the_flags() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen",
        "--data-dir",
        "--fsync",
        "--password",
        "LOGKV_PASSWORD",
        "--max-connections",
        "--max-inline",
        "--max-bulk",
        "--max-args",
        "--max-output",
        "--unprotected",
        "redis-cli",
        "RUST_LOG",
    ] {
        assert!(
            help.contains(flag),
            "--help does not mention {flag}:\n{help}"
        );
    }
    let bad = Command::new(BIN)
        .args(["--fsync", "sometimes"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("interval=<ms>"));
}

#[test]
fn redis_cli_smoke() {
    let installed = Command::new("redis-cli")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !installed {
        common::skip("redis-cli is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut p = start(dir.path());
    let port = p.addr.port().to_string();
    let cli = |args: &[&str], stdin: &str| -> String {
        let mut child = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(cli(&["PUT", "a.b", "hello"], ""), "1\n");
    assert_eq!(cli(&["GET", "a.b"], ""), "hello\n");
    // Several commands piped in, as a person would.
    let out = cli(
        &[],
        "PUT x 1\nPUT x 2\nGET x\nKEYS\nCREATE x 3\nSET y \"two words\"\nGET y\n",
    );
    // (redis-cli follows an error with an empty line when its output is not a terminal)
    assert_eq!(out, "2\n3\n2\na.b\nx\nEXISTS key exists\n\nOK\ntwo words\n");
    assert!(terminate(&mut p).success());
}
