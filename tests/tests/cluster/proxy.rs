//! A TCP proxy in front of a node's raft port that can cut links: it reads the first frame
//! of each link (the dialer's `Hello`) to learn which node dials, and refuses or cuts links
//! from blocked nodes. A proxy per node, placed in the membership's addresses, lets a test
//! partition any set of nodes from the others.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct Rules {
    /// Dialers refused.
    blocked: HashSet<u64>,
    /// Refuse everyone.
    isolated: bool,
    /// Open links: the dialer and both sockets.
    open: Vec<(u64, TcpStream, TcpStream)>,
}

/// A proxy to one node's raft address.
pub struct Proxy {
    pub addr: SocketAddr,
    rules: Arc<Mutex<Rules>>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `target`.
    pub fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy bind");
        let addr = listener.local_addr().expect("proxy addr");
        let rules = Arc::new(Mutex::new(Rules::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (Arc::clone(&rules), Arc::clone(&stop));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::Acquire) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let r = Arc::clone(&r);
                std::thread::spawn(move || relay(conn, target, &r));
            }
        });
        Proxy { addr, rules, stop }
    }

    /// Refuses and cuts links dialed by `node`.
    pub fn block(&self, node: u64) {
        let mut r = self.rules.lock().unwrap();
        r.blocked.insert(node);
        r.open.retain(|(d, a, b)| {
            if *d == node {
                let _ = a.shutdown(Shutdown::Both);
                let _ = b.shutdown(Shutdown::Both);
                false
            } else {
                true
            }
        });
    }

    /// Refuses and cuts every link.
    pub fn isolate(&self) {
        let mut r = self.rules.lock().unwrap();
        r.isolated = true;
        for (_, a, b) in r.open.drain(..) {
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        }
    }

    /// Lets everyone through again.
    pub fn heal(&self) {
        let mut r = self.rules.lock().unwrap();
        r.isolated = false;
        r.blocked.clear();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.isolate();
        let _ = TcpStream::connect(self.addr);
    }
}

fn read_first_frame(conn: &mut TcpStream) -> Option<(Vec<u8>, u64)> {
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut head = [0u8; 8];
    conn.read_exact(&mut head).ok()?;
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    if !(9..=1 << 16).contains(&len) {
        return None;
    }
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body).ok()?;
    let node = logkv_cluster::net::handshake::dialer_of(&body[9..])?;
    conn.set_read_timeout(None).ok()?;
    let mut frame = head.to_vec();
    frame.extend_from_slice(&body);
    Some((frame, node))
}

fn relay(mut conn: TcpStream, target: SocketAddr, rules: &Mutex<Rules>) {
    let Some((first, dialer)) = read_first_frame(&mut conn) else {
        return;
    };
    {
        let r = rules.lock().unwrap();
        if r.isolated || r.blocked.contains(&dialer) {
            return;
        }
    }
    let Ok(mut up) = TcpStream::connect(target) else {
        return;
    };
    let _ = up.set_nodelay(true);
    let _ = conn.set_nodelay(true);
    if up.write_all(&first).is_err() {
        return;
    }
    let (Ok(a2), Ok(b2)) = (conn.try_clone(), up.try_clone()) else {
        return;
    };
    {
        let mut r = rules.lock().unwrap();
        if r.isolated || r.blocked.contains(&dialer) {
            return;
        }
        if let (Ok(a3), Ok(b3)) = (conn.try_clone(), up.try_clone()) {
            r.open.push((dialer, a3, b3));
        }
    }
    let t = std::thread::spawn(move || copy(a2, b2));
    copy(up, conn);
    let _ = t.join();
}

fn copy(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}
