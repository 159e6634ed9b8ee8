//! Real `logkv-server` processes on loopback forming a cluster, each behind a [`Proxy`]
//! for its raft port, and a client that survives their deaths.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::proxy::Proxy;
use crate::common::server::Frame;

pub const PASSWORD: &str = "cluster-test-pw";

/// A node's address: below the ephemeral ports, so that while a killed node is down no
/// connection of the test takes its port (see [`logkv_server::free_loopback_addr`]).
fn free_addr() -> SocketAddr {
    logkv_server::free_loopback_addr()
}

/// One node process.
pub struct Proc {
    pub id: u64,
    pub client: SocketAddr,
    pub raft: SocketAddr,
    pub data: PathBuf,
    pub log: PathBuf,
    child: Mutex<Option<Child>>,
}

/// A cluster of node processes.
pub struct ProcCluster {
    /// Holds every node's directory and log.
    _dir: tempfile::TempDir,
    pub nodes: BTreeMap<u64, Proc>,
    pub proxies: BTreeMap<u64, Proxy>,
    members: String,
}

impl ProcCluster {
    /// Starts `n` nodes.
    pub fn start(n: u64) -> ProcCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut nodes = BTreeMap::new();
        let mut proxies = BTreeMap::new();
        for id in 1..=n {
            let raft = free_addr();
            let proc_ = Proc {
                id,
                client: free_addr(),
                raft,
                data: dir.path().join(format!("n{id}")),
                log: dir.path().join(format!("n{id}.log")),
                child: Mutex::new(None),
            };
            proxies.insert(id, Proxy::start(raft));
            nodes.insert(id, proc_);
        }
        let members = proxies
            .iter()
            .map(|(id, p)| format!("{id}={}", p.addr))
            .collect::<Vec<_>>()
            .join(",");
        let c = ProcCluster {
            _dir: dir,
            nodes,
            proxies,
            members,
        };
        for id in 1..=n {
            c.spawn(id);
        }
        c
    }

    /// Starts (or restarts) node `id` on its data directory.
    pub fn spawn(&self, id: u64) {
        let members = self.members.clone();
        let p = &self.nodes[&id];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p.log)
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_logkv_node"))
            .args([
                "--node-id",
                &id.to_string(),
                "--listen",
                &p.client.to_string(),
                "--raft-listen",
                &p.raft.to_string(),
                "--initial-cluster",
                &members,
                "--data-dir",
                &p.data.display().to_string(),
                "--threads",
                "1",
            ])
            .env("LOGKV_PASSWORD", PASSWORD)
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn logkv_node");
        *p.child.lock().unwrap() = Some(child);
    }

    /// SIGKILL.
    pub fn kill(&self, id: u64) {
        let taken = self.nodes[&id].child.lock().unwrap().take();
        if let Some(mut c) = taken {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits up to `within` for node `id`'s process to exit on its own; its exit status
    /// (`None`: still running, or not started).
    pub fn wait_exit(&self, id: u64, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            {
                let mut child = self.nodes[&id].child.lock().unwrap();
                let exited = child.as_mut().map(Child::try_wait);
                match exited {
                    None => return None,
                    Some(Ok(Some(status))) => {
                        child.take();
                        return Some(status);
                    }
                    Some(Ok(None)) => {}
                    Some(Err(e)) => panic!("waiting for node {id}: {e}"),
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn alive(&self) -> Vec<u64> {
        self.nodes
            .values()
            .filter(|p| p.child.lock().unwrap().is_some())
            .map(|p| p.id)
            .collect()
    }

    pub fn client(&self, id: u64) -> io::Result<Client> {
        Client::connect(self.nodes[&id].client)
    }

    /// `CLUSTER INFO` of node `id` as name → frame.
    pub fn info(&self, id: u64) -> io::Result<BTreeMap<String, Frame>> {
        let f = self.client(id)?.cmd(&["CLUSTER", "INFO"])?;
        Ok(f.pairs().into_iter().collect())
    }

    /// Waits until the live nodes agree on a live leader; returns it.
    pub fn leader(&self, within: Duration) -> u64 {
        let deadline = Instant::now() + within;
        loop {
            let alive = self.alive();
            let leaders: Vec<Option<i64>> = alive
                .iter()
                .map(|id| {
                    self.info(*id).ok().and_then(|m| match m.get("leader") {
                        Some(Frame::Int(l)) => Some(*l),
                        _ => None,
                    })
                })
                .collect();
            if let Some(Some(l)) = leaders.first() {
                let l = u64::try_from(*l).unwrap_or(0);
                if leaders.iter().all(|x| *x == leaders[0]) && alive.contains(&l) {
                    return l;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader: {leaders:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until every live node has applied the same last index.
    pub fn converge(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let applied: Vec<Option<(i64, i64)>> = self
                .alive()
                .iter()
                .map(|id| {
                    self.info(*id).ok().map(|m| {
                        let get = |k: &str| match m.get(k) {
                            Some(Frame::Int(n)) => *n,
                            _ => -1,
                        };
                        (get("commit"), get("applied"))
                    })
                })
                .collect();
            let done = applied
                .iter()
                .all(|a| a.is_some_and(|(c, ap)| c == ap && Some((c, ap)) == applied[0]));
            if done {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nodes did not converge: {applied:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The tail of every node's log (for failure messages).
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for p in self.nodes.values() {
            let text = std::fs::read_to_string(&p.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            let _ = writeln!(s, "--- node {} ---", p.id);
            for l in tail.iter().rev() {
                s.push_str(l);
                s.push('\n');
            }
        }
        s
    }

    /// Partitions `side` from the other nodes (through the proxies).
    pub fn partition(&self, side: &[u64]) {
        let others: Vec<u64> = self
            .nodes
            .keys()
            .copied()
            .filter(|id| !side.contains(id))
            .collect();
        for a in side {
            for b in &others {
                self.proxies[a].block(*b);
                self.proxies[b].block(*a);
            }
        }
    }

    pub fn heal(&self) {
        for p in self.proxies.values() {
            p.heal();
        }
    }
}

impl Drop for ProcCluster {
    fn drop(&mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            self.kill(id);
        }
    }
}

/// A RESP client whose every failure is an `Err` (nodes die under it).
pub struct Client {
    reader: BufReader<TcpStream>,
    stream: TcpStream,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> io::Result<Client> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        stream.set_nodelay(true)?;
        let mut c = Client {
            reader: BufReader::new(stream.try_clone()?),
            stream,
        };
        match c.cmd(&["AUTH", PASSWORD])? {
            Frame::Simple(_) => Ok(c),
            other => Err(io::Error::other(format!("AUTH: {other:?}"))),
        }
    }

    /// The open connection in `conn`, or a new one to the next of `addrs` (round robin from
    /// `target`); `None` (after a pause) when that node does not answer.
    pub fn reconnect<'a>(
        conn: &'a mut Option<Client>,
        addrs: &[SocketAddr],
        target: &mut usize,
    ) -> Option<&'a mut Client> {
        if conn.is_none() {
            *target += 1;
            *conn = Client::connect(addrs[*target % addrs.len()]).ok();
            if conn.is_none() {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        conn.as_mut()
    }

    pub fn send(&mut self, args: &[&str]) -> io::Result<()> {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        let mut buf = Vec::new();
        logkv_server::protocol::encode_request(&args, &mut buf);
        self.stream.write_all(&buf)
    }

    pub fn cmd(&mut self, args: &[&str]) -> io::Result<Frame> {
        self.send(args)?;
        self.read()
    }

    fn line(&mut self) -> io::Result<Vec<u8>> {
        let mut line = Vec::new();
        self.reader.read_until(b'\n', &mut line)?;
        if !line.ends_with(b"\r\n") {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        line.truncate(line.len() - 2);
        Ok(line)
    }

    pub fn read(&mut self) -> io::Result<Frame> {
        let line = self.line()?;
        let (tag, rest) = line
            .split_first()
            .ok_or_else(|| io::Error::other("empty line"))?;
        let rest = String::from_utf8_lossy(rest).into_owned();
        let num = || rest.parse::<i64>().map_err(io::Error::other);
        Ok(match tag {
            b'+' => Frame::Simple(rest),
            b'-' => Frame::Error(rest),
            b':' => Frame::Int(num()?),
            b'_' => Frame::Null,
            b'$' => {
                let Ok(n) = usize::try_from(num()?) else {
                    return Ok(Frame::Null);
                };
                let mut buf = vec![0u8; n + 2];
                self.reader.read_exact(&mut buf)?;
                buf.truncate(n);
                Frame::Bulk(buf)
            }
            b'*' | b'>' => {
                let n = num()?;
                if n < 0 {
                    return Ok(Frame::Null);
                }
                let items = (0..n)
                    .map(|_| self.read())
                    .collect::<io::Result<Vec<_>>>()?;
                if *tag == b'>' {
                    Frame::Push(items)
                } else {
                    Frame::Array(items)
                }
            }
            b'%' => {
                let mut pairs = Vec::new();
                for _ in 0..num()? {
                    pairs.push((self.read()?, self.read()?));
                }
                Frame::Map(pairs)
            }
            other => {
                return Err(io::Error::other(format!(
                    "unknown frame type {:?}",
                    *other as char
                )))
            }
        })
    }
}
