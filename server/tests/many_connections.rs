//! 10,000 concurrent connections, most of them idle watchers, on the real
//! binary: every one is served, a write reaches the watchers, the server runs
//! a handful of threads (not one per connection) and its memory stays small.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::proc_status;

mod common;

const CONNECTIONS: usize = 10_000;
const WATCHERS: usize = 9_000;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    logkv_server::free_loopback_addr().port()
}

fn connect(port: u16) -> TcpStream {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => {
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                return s;
            }
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("cannot connect: {e}"),
        }
    }
}

fn line(r: &mut BufReader<TcpStream>) -> String {
    let mut s = String::new();
    r.read_line(&mut s).unwrap();
    s.trim_end().to_string()
}

#[test]
fn ten_thousand_connections_most_of_them_watching() {
    let need = (CONNECTIONS + 512) as u64;
    match rlimit::increase_nofile_limit(need) {
        Ok(got) if got >= need => {}
        other => {
            common::skip(&format!(
                "this process may open only {other:?} files, {need} needed for \
                 {CONNECTIONS} connections"
            ));
            return;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = Server(
        Command::new(env!("CARGO_BIN_EXE_logkv-server"))
            .args(["--listen", &format!("127.0.0.1:{port}"), "--fsync", "never"])
            .arg("--data-dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = server.0.id();
    let mut watchers = Vec::with_capacity(WATCHERS);
    let mut idle = Vec::with_capacity(CONNECTIONS - WATCHERS);
    // 9,999 here and the writer below: exactly the default --max-connections.
    for i in 0..CONNECTIONS - 1 {
        let mut s = connect(port);
        if i < WATCHERS {
            s.write_all(b"WATCH >\r\n").unwrap();
            let mut r = BufReader::new(s);
            assert!(line(&mut r).starts_with(':'), "watch id");
            // ["watch", id, "ready"]: 6 lines in RESP2.
            let ready: Vec<String> = (0..6).map(|_| line(&mut r)).collect();
            assert_eq!(ready[5], "ready", "{ready:?}");
            watchers.push(r);
        } else {
            idle.push(s);
        }
    }
    // A fresh connection is still served promptly.
    let mut writer = BufReader::new(connect(port));
    writer.get_mut().write_all(b"PING\r\n").unwrap();
    assert_eq!(line(&mut writer), "+PONG");
    writer.get_mut().write_all(b"PUT news hello\r\n").unwrap();
    assert_eq!(line(&mut writer), ":1");
    // Every 90th watcher (100 of them) receives the event.
    for r in watchers.iter_mut().step_by(90) {
        let frame: Vec<String> = (0..5).map(|_| line(r)).collect();
        assert_eq!(frame[0], "*3", "{frame:?}");
        assert_eq!(frame[2], "watch");
        let mut rest = String::new();
        for _ in 0..20 {
            rest.push_str(&line(r));
            rest.push('\n');
            if rest.contains("hello") {
                break;
            }
        }
        assert!(rest.contains("news") && rest.contains("hello"), "{rest}");
    }
    let threads = proc_status(pid, "Threads:");
    let rss_kb = proc_status(pid, "VmRSS:");
    println!("{CONNECTIONS} connections: {threads} server threads, {rss_kb} kB resident");
    assert!(threads < 64, "{threads} threads: a thread per connection?");
    assert!(
        rss_kb < 400 * 1024,
        "{rss_kb} kB resident for {CONNECTIONS} connections"
    );
    drop(idle);
}
