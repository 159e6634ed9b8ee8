//! A request load from this harness's own client: connections driven by one thread's poll
//! loop, as redis-benchmark drives its clients, with a fixed number of requests in flight
//! on each. The `verbs` rows and the gateway's GET rows use it; what is sent and how a
//! reply is read and checked is the caller's ([`Requests`]).

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::io::AsRawFd;
use std::time::{Duration, Instant};

use crate::stores::BoxError;

/// Longest the client waits for a reply.
const STALL: Duration = Duration::from_secs(10);

/// What a load sends, and how it reads the replies.
pub(crate) trait Requests {
    /// Appends the next request to `out`; returns what its reply is checked against.
    fn next(&mut self, out: &mut Vec<u8>) -> u64;
    /// Reads the whole reply at the start of `buf` to the request that returned `token`:
    /// its length once checked, `None` while `buf` holds only part of it.
    fn reply(&mut self, buf: &[u8], token: u64) -> Result<Option<usize>, String>;
}

/// The shape of a load.
pub(crate) struct Load {
    /// Connections.
    pub clients: usize,
    /// Requests in flight on each.
    pub pipeline: usize,
    /// Requests in all.
    pub requests: u64,
}

/// A client connection.
struct Conn {
    stream: TcpStream,
    /// Bytes read and not yet taken as replies.
    inbox: Vec<u8>,
    /// Requests encoded and not yet written.
    outbox: Vec<u8>,
    /// The tokens of the requests in flight, oldest first.
    tokens: VecDeque<u64>,
}

impl Load {
    /// Runs the load against `addr`; returns requests per second.
    #[allow(
        clippy::cast_precision_loss,
        reason = "a request count, far below 2^52"
    )]
    pub(crate) fn run(&self, addr: &str, reqs: &mut impl Requests) -> Result<f64, BoxError> {
        let mut conns = Vec::with_capacity(self.clients);
        for _ in 0..self.clients {
            let stream = TcpStream::connect(addr)?;
            stream.set_nodelay(true)?;
            stream.set_nonblocking(true)?;
            conns.push(Conn {
                stream,
                inbox: Vec::new(),
                outbox: Vec::new(),
                tokens: VecDeque::new(),
            });
        }
        let t = Instant::now();
        let mut sent = 0;
        for c in &mut conns {
            self.top_up(c, &mut sent, reqs);
            write_some(c)?;
        }
        let mut fds: Vec<libc::pollfd> = conns
            .iter()
            .map(|c| libc::pollfd {
                fd: c.stream.as_raw_fd(),
                events: 0,
                revents: 0,
            })
            .collect();
        let nfds = libc::nfds_t::try_from(fds.len())?;
        let timeout = i32::try_from(STALL.as_millis())?;
        let mut chunk = vec![0u8; 64 << 10];
        let mut done = 0;
        while done < self.requests {
            for (pfd, c) in fds.iter_mut().zip(&conns) {
                pfd.events = libc::POLLIN;
                if !c.outbox.is_empty() {
                    pfd.events |= libc::POLLOUT;
                }
            }
            // SAFETY: fds is a valid array of nfds pollfd structs for the whole call.
            let r = unsafe { libc::poll(fds.as_mut_ptr(), nfds, timeout) };
            if r < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(format!("poll: {e}").into());
            }
            if r == 0 {
                return Err(format!(
                    "no reply within {STALL:?} ({done} of {} done)",
                    self.requests
                )
                .into());
            }
            for (pfd, c) in fds.iter_mut().zip(conns.iter_mut()) {
                if pfd.revents == 0 {
                    continue;
                }
                pfd.revents = 0;
                read_all(c, &mut chunk)?;
                let mut used = 0;
                while let Some(&token) = c.tokens.front() {
                    let Some(n) = reqs.reply(&c.inbox[used..], token)? else {
                        break;
                    };
                    used += n;
                    c.tokens.pop_front();
                    done += 1;
                }
                if c.tokens.is_empty() && used < c.inbox.len() {
                    return Err("bytes from the server with no request in flight".into());
                }
                c.inbox.drain(..used);
                self.top_up(c, &mut sent, reqs);
                write_some(c)?;
            }
        }
        let rate = self.requests as f64 / t.elapsed().as_secs_f64();
        for c in &mut conns {
            // Whatever arrived with the last replies, or just after them, answers nothing.
            read_all(c, &mut chunk)?;
            if !c.inbox.is_empty() {
                return Err("bytes from the server with no request in flight".into());
            }
        }
        Ok(rate)
    }

    /// Queues requests on `c` until it has its pipeline's worth in flight or the load has
    /// sent all of them.
    fn top_up(&self, c: &mut Conn, sent: &mut u64, reqs: &mut impl Requests) {
        while c.tokens.len() < self.pipeline && *sent < self.requests {
            c.tokens.push_back(reqs.next(&mut c.outbox));
            *sent += 1;
        }
    }
}

/// Reads what the socket holds now into the connection's inbox.
fn read_all(c: &mut Conn, chunk: &mut [u8]) -> Result<(), BoxError> {
    loop {
        match c.stream.read(chunk) {
            Ok(0) => return Err("the server closed a client connection".into()),
            Ok(n) => c.inbox.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Writes what the socket takes now of the connection's outbox.
fn write_some(c: &mut Conn) -> Result<(), BoxError> {
    let mut written = 0;
    while written < c.outbox.len() {
        match c.stream.write(&c.outbox[written..]) {
            Ok(0) => return Err("a client connection takes no more bytes".into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    c.outbox.drain(..written);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// Requests `n\n` and replies `n\n` read back: a line each.
    struct Echo {
        next: u64,
    }

    impl Requests for Echo {
        fn next(&mut self, out: &mut Vec<u8>) -> u64 {
            self.next += 1;
            out.extend_from_slice(format!("{}\n", self.next).as_bytes());
            self.next
        }

        fn reply(&mut self, buf: &[u8], token: u64) -> Result<Option<usize>, String> {
            let Some(end) = buf.iter().position(|&b| b == b'\n') else {
                return Ok(None);
            };
            let got = std::str::from_utf8(&buf[..end]).map_err(|e| e.to_string())?;
            if got != token.to_string() {
                return Err(format!("reply {got} to request {token}"));
            }
            Ok(Some(end + 1))
        }
    }

    /// An echo server on loopback: each connection gets back what it sends, cut into
    /// pieces of at most `piece` bytes (so that replies arrive split across reads), with
    /// `extra` (a reply to nothing) after the answer to its first read.
    fn echo_server(connections: usize, piece: usize, extra: &'static [u8]) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(connections) {
                let mut stream = stream.unwrap();
                stream.set_nodelay(true).unwrap();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    let mut first = true;
                    loop {
                        match stream.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                let mut answer = buf[..n].to_vec();
                                if std::mem::take(&mut first) {
                                    answer.extend_from_slice(extra);
                                }
                                for part in answer.chunks(piece) {
                                    if stream.write_all(part).is_err() {
                                        return;
                                    }
                                }
                            }
                        }
                    }
                });
            }
        });
        addr
    }

    /// Every request gets its own reply, in order, on every connection, with as many in
    /// flight as asked, replies split across reads included.
    #[test]
    fn every_request_is_answered_in_order_across_connections() {
        let addr = echo_server(3, 3, b"");
        let load = Load {
            clients: 3,
            pipeline: 4,
            requests: 1000,
        };
        let mut echo = Echo { next: 0 };
        load.run(&addr, &mut echo).unwrap();
        assert_eq!(echo.next, 1000, "exactly the requests asked for were sent");
    }

    /// A reply to no request fails the load, though it comes with the replies to every
    /// request of the load.
    #[test]
    fn a_reply_to_nothing_fails_the_load() {
        for pipeline in [1, 4] {
            let addr = echo_server(1, 4096, b"999999\n");
            let load = Load {
                clients: 1,
                pipeline,
                requests: pipeline as u64,
            };
            let err = load.run(&addr, &mut Echo { next: 0 }).unwrap_err();
            assert!(
                err.to_string().contains("no request in flight"),
                "pipeline {pipeline}: {err}"
            );
        }
    }
}
