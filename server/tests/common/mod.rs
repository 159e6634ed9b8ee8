//! Helpers shared by the server's own end-to-end tests: an in-process server, the real
//! binary with its log, a raw-socket round trip, INFO fields.
#![allow(dead_code, reason = "each test binary uses a part of the helpers")]

pub mod certs;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use logkv_server::{spawn_test_server_with, ServerConfig, TestServer};
use tempfile::TempDir;

/// A server in this process on a free loopback port, over a fresh directory, with the
/// defaults that `tweak` adjusts.
pub fn start_server(tweak: impl FnOnce(&mut ServerConfig)) -> (TestServer, SocketAddr, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::new(dir.path());
    config.listen = "127.0.0.1:0".into();
    tweak(&mut config);
    let (addr, server) = spawn_test_server_with(config).unwrap();
    (server, addr, dir)
}

/// Sends `request` and reads exactly one reply (nested arrays included), as text.
pub fn roundtrip(s: &mut TcpStream, request: &[u8]) -> String {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    roundtrip_on(s, request)
}

/// [`roundtrip`] over any stream (a TLS stream, say); its timeouts are the caller's.
pub fn roundtrip_on(s: &mut (impl Read + Write), request: &[u8]) -> String {
    s.write_all(request).unwrap();
    s.flush().unwrap();
    let mut out = Vec::new();
    read_reply(s, &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads one RESP reply, byte-exact: nothing past it is consumed.
pub fn read_one(s: &mut TcpStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut out = Vec::new();
    read_reply(s, &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads one RESP reply into `out`, byte-exact: nothing past it is consumed.
pub fn read_reply(s: &mut impl Read, out: &mut Vec<u8>) {
    let start = out.len();
    let mut byte = [0u8; 1];
    while !out.ends_with(b"\n") || out.len() == start {
        s.read_exact(&mut byte).unwrap();
        out.push(byte[0]);
    }
    let header = String::from_utf8_lossy(&out[start..])
        .trim_end()
        .to_string();
    let count = |h: &str| h[1..].parse::<i64>().unwrap();
    match header.as_bytes().first() {
        Some(b'$') if count(&header) >= 0 => {
            let mut body = vec![0u8; usize::try_from(count(&header)).unwrap() + 2];
            s.read_exact(&mut body).unwrap();
            out.extend_from_slice(&body);
        }
        Some(b'*' | b'%' | b'>') if count(&header) > 0 => {
            let items = count(&header) * if header.starts_with('%') { 2 } else { 1 };
            for _ in 0..items {
                read_reply(s, out);
            }
        }
        _ => {}
    }
}

/// Skips the calling test because the machine cannot run it: says why, or panics when
/// `LOGKV_NO_SKIP=1` (as CI sets it), so that a skip never passes for a success there.
pub fn skip(why: &str) {
    assert!(
        std::env::var("LOGKV_NO_SKIP").as_deref() != Ok("1"),
        "cannot run: {why} (LOGKV_NO_SKIP=1 forbids skipping)"
    );
    println!("skipped: {why}");
}

/// Whether `curl` runs here; when not, skips the calling test (see [`skip`]).
pub fn have_curl() -> bool {
    let ok = Command::new("curl")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        skip("curl is not installed (apt-get install curl)");
    }
    ok
}

/// Whether `python3` can import `module` (a package of that name on the Python package index); when not, skips the
/// calling test.
pub fn have_python_module(module: &str) -> bool {
    let ok = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        skip(&format!(
            "the Python {module} package is not installed (python3 -m pip install {module})"
        ));
    }
    ok
}

/// A `name:  value kB` line of /proc/<pid>/status, in KiB (a count for `Threads:`).
pub fn proc_status(pid: u32, name: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A numeric `name:value` field of an INFO reply.
pub fn info_field(info: &str, name: &str) -> u64 {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {info}"))
}

/// The real `logkv-server` binary on a free loopback port, with `--fsync never` over a
/// fresh directory; every line it logs is kept. Killed on drop.
pub struct BinaryServer {
    child: Child,
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    _dir: Option<TempDir>,
}

impl BinaryServer {
    /// Starts it with `extra` flags and waits until it listens.
    pub fn start(extra: &[&str]) -> BinaryServer {
        let dir = tempfile::tempdir().unwrap();
        let child = binary(dir.path())
            .args(["--listen", "127.0.0.1:0", "--fsync", "never"])
            .args(extra)
            .spawn()
            .unwrap();
        BinaryServer::watch(child, Some(dir))
    }

    /// Starts it over an existing directory (`--fsync always`) with `extra` flags.
    pub fn start_in(dir: &Path, extra: &[&str]) -> BinaryServer {
        let child = binary(dir)
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .spawn()
            .unwrap();
        BinaryServer::watch(child, None)
    }

    fn watch(child: Child, dir: Option<TempDir>) -> BinaryServer {
        let mut server = BinaryServer {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log: Arc::default(),
            _dir: dir,
        };
        let stderr = server.child.stderr.take().unwrap();
        let log = Arc::clone(&server.log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                log.lock().unwrap().push(line);
            }
        });
        let line = server.wait_for_log(" listening on ");
        let rest = line.split(" listening on ").nth(1).unwrap();
        server.addr = rest.split_whitespace().next().unwrap().parse().unwrap();
        server
    }

    /// The HTTP gateway's address (started with `--http-listen 127.0.0.1:0`).
    pub fn http_addr(&self) -> SocketAddr {
        let line = self.wait_for_log("HTTP gateway listening on ");
        let rest = line.split("HTTP gateway listening on ").nth(1).unwrap();
        rest.split_whitespace().next().unwrap().parse().unwrap()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills it with SIGKILL and waits for it to end; returns how it ended (a process
    /// that had already exited on its own says so).
    pub fn kill(&mut self) -> std::process::ExitStatus {
        let _ = self.child.kill();
        self.child.wait().unwrap()
    }

    /// Every line it has logged so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// The first log line containing `text`, waiting for it up to 20 seconds.
    pub fn wait_for_log(&self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let found = self
                .log
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(text))
                .cloned();
            if let Some(line) = found {
                return line;
            }
            let log = self.log.lock().unwrap().join("\n");
            assert!(Instant::now() < deadline, "no {text:?} in the log:\n{log}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for BinaryServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The binary over `dir`, logging at info level to a pipe, without a password.
pub fn binary(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_logkv-server"));
    cmd.arg("--data-dir")
        .arg(dir)
        .env_remove("LOGKV_PASSWORD")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}
