//! S5's floor: what fanning one message out to W connections costs on this machine when the
//! server does nothing else. It answers the two commands redis's side of S5 sends
//! (`SUBSCRIBE s5`, `PUBLISH s5 <message>`), so [`super::fanout::round`] measures it with the
//! same client code as logkv and redis-server.
//!
//! There is no storage, no event loop and no parsing beyond those two commands. A `PUBLISH`
//! is answered at once (as redis-server writes the publisher's reply before the
//! subscribers'); then the message, framed once, goes to every subscriber with one blocking
//! `write` each, from as many threads as there are cores, each thread taking a contiguous
//! share of the subscribers (logkv splits a large delivery the same way). What a real server
//! adds on top of this is mostly its own cost; this is about the kernel's, the loopback's
//! and the client's. It is one simple design, not a proven minimum.
//!
//! It runs as a process of its own ([`FloorProcess`]: the harness's binary started with the
//! hidden subcommand `__floor`), as the servers do, so that its threads are scheduled
//! against the client's as theirs are. A connection is served by a short-lived thread until
//! its first command says which kind it is.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::resp::{self, Inbox, Value};
use crate::stores::BoxError;
/// Longest a write to a subscriber may block (one that stopped reading fails the delivery
/// instead of hanging it).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The subscribers, in the order they subscribed.
type Subs = Arc<Vec<Arc<TcpStream>>>;

/// What the connection threads share.
struct Shared {
    /// Replaced whole when a subscriber is added, so that a delivery sends to a snapshot
    /// and holds no lock while it does.
    subs: Mutex<Subs>,
    stop: AtomicBool,
}

impl Shared {
    fn snapshot(&self) -> Subs {
        Arc::clone(&self.subs.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// A running floor server on 127.0.0.1; stopped when dropped.
pub struct Floor {
    addr: String,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl Floor {
    /// Listens on a free port of 127.0.0.1.
    pub fn start() -> Result<Floor, BoxError> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?.to_string();
        let shared = Arc::new(Shared {
            subs: Mutex::new(Arc::new(Vec::new())),
            stop: AtomicBool::new(false),
        });
        let s = Arc::clone(&shared);
        let acceptor = std::thread::Builder::new()
            .name("floor-accept".into())
            .spawn(move || accept(&listener, &s))?;
        Ok(Floor {
            addr,
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// `host:port` to connect to.
    pub fn addr(&self) -> &str {
        &self.addr
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        // Unblocks the acceptor, which then sees `stop`.
        drop(TcpStream::connect(&self.addr));
        if let Some(h) = self.acceptor.take() {
            drop(h.join());
        }
        // Closing the subscribers' sockets (once no delivery holds them) ends their
        // connections.
        *self
            .shared
            .subs
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(Vec::new());
    }
}

/// The body of `logkv-bench __floor`: starts a [`Floor`], prints its address on a line of
/// its own, and serves until standard input closes.
pub fn serve_until_stdin_closes() -> Result<(), BoxError> {
    let floor = Floor::start()?;
    let mut out = io::stdout().lock();
    writeln!(out, "{}", floor.addr())?;
    out.flush()?;
    drop(out);
    // Returns at end of input (the harness closed it, or ended).
    io::copy(&mut io::stdin().lock(), &mut io::sink())?;
    drop(floor);
    Ok(())
}

/// A floor server in a process of its own; stopped when dropped.
pub struct FloorProcess {
    child: Child,
    addr: String,
}

impl FloorProcess {
    /// Starts `<this binary> __floor` and reads the address it listens on.
    pub fn spawn() -> Result<FloorProcess, BoxError> {
        let mut child = Command::new(std::env::current_exe()?)
            .arg("__floor")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let mut line = String::new();
        let read = match child.stdout.take() {
            Some(out) => BufReader::new(out)
                .read_line(&mut line)
                .map_err(BoxError::from),
            None => Err("the floor server's output was not captured".into()),
        };
        let addr = line.trim().to_string();
        if let Err(e) = read.and_then(|n| {
            if n == 0 || addr.is_empty() {
                Err("the floor server ended without printing its address".into())
            } else {
                Ok(())
            }
        }) {
            drop(child.kill());
            drop(child.wait());
            return Err(e);
        }
        Ok(FloorProcess { child, addr })
    }

    /// `host:port` to connect to.
    pub fn addr(&self) -> &str {
        &self.addr
    }
}

impl Drop for FloorProcess {
    fn drop(&mut self) {
        // Closing its input ends it; a kill if it does not.
        drop(self.child.stdin.take());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        drop(self.child.kill());
        drop(self.child.wait());
    }
}

fn accept(listener: &TcpListener, shared: &Arc<Shared>) {
    for conn in listener.incoming() {
        if shared.stop.load(Ordering::Relaxed) {
            return;
        }
        let conn = match conn {
            Ok(c) => c,
            Err(e) => {
                // Such as too many open files: say so, and do not spin on it.
                eprintln!("    floor: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let s = Arc::clone(shared);
        // A thread per connection until its first command; a subscriber's then ends.
        if let Err(e) = std::thread::Builder::new()
            .name("floor-conn".into())
            .spawn(move || {
                if let Err(e) = serve(conn, &s) {
                    if !s.stop.load(Ordering::Relaxed) {
                        eprintln!("    floor: a connection failed: {e}");
                    }
                }
            })
        {
            eprintln!("    floor: cannot start a connection thread: {e}");
        }
    }
}

/// Serves one connection: a `SUBSCRIBE` makes it a subscriber (kept, its thread ends); a
/// `PUBLISH` makes it the writer, served here until it closes.
fn serve(conn: TcpStream, shared: &Arc<Shared>) -> Result<(), BoxError> {
    conn.set_nodelay(true)?;
    let mut inbox = Inbox::default();
    let mut writer = conn;
    let mut helpers: Option<Helpers> = None;
    loop {
        let Some(cmd) = read_command(&mut &writer, &mut inbox)? else {
            return Ok(());
        };
        let name = cmd.first().map(|c| c.to_ascii_uppercase());
        match (name.as_deref(), cmd.get(1), cmd.get(2)) {
            (Some(b"SUBSCRIBE"), Some(channel), None) => {
                // Registered before the reply, as redis does: a PUBLISH sent after the
                // reply reaches this subscriber.
                writer.set_write_timeout(Some(WRITE_TIMEOUT))?;
                {
                    let mut subs = shared.subs.lock().unwrap_or_else(PoisonError::into_inner);
                    let mut more = Vec::with_capacity(subs.len() + 1);
                    more.extend(subs.iter().cloned());
                    more.push(Arc::new(writer.try_clone()?));
                    *subs = Arc::new(more);
                }
                let mut reply = b"*3\r\n".to_vec();
                resp::bulk(b"subscribe", &mut reply);
                resp::bulk(channel, &mut reply);
                reply.extend_from_slice(b":1\r\n");
                writer.write_all(&reply)?;
                return Ok(());
            }
            (Some(b"PUBLISH"), Some(channel), Some(message)) => {
                let subs = shared.snapshot();
                writer.write_all(format!(":{}\r\n", subs.len()).as_bytes())?;
                let mut frame = Vec::new();
                resp::encode(&[b"message", channel, message], &mut frame);
                let helpers = match helpers.as_mut() {
                    Some(h) => h,
                    None => helpers.insert(Helpers::start()?),
                };
                helpers.send(&subs, &Arc::from(frame))?;
            }
            _ => {
                writer.write_all(b"-ERR the floor server takes SUBSCRIBE and PUBLISH only\r\n")?;
            }
        }
    }
}

/// A message, the subscribers, and the range of them a helper sends it to.
type Share = (Arc<[u8]>, Subs, usize, usize);

/// Threads that send the later shares of a message while the writer's thread sends the
/// first.
struct Helpers {
    jobs: Vec<mpsc::Sender<Share>>,
    done: mpsc::Receiver<Result<(), String>>,
}

impl Helpers {
    fn start() -> Result<Helpers, BoxError> {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        let (done_tx, done) = mpsc::channel();
        let mut jobs = Vec::new();
        for _ in 1..cores {
            let (tx, rx) = mpsc::channel::<Share>();
            let done_tx = done_tx.clone();
            std::thread::Builder::new()
                .name("floor-send".into())
                .spawn(move || {
                    for (frame, subs, from, to) in rx {
                        let r = send_all(&subs[from.min(subs.len())..to.min(subs.len())], &frame);
                        if done_tx.send(r.map_err(|e| e.to_string())).is_err() {
                            return;
                        }
                    }
                })?;
            jobs.push(tx);
        }
        Ok(Helpers { jobs, done })
    }

    /// Sends `frame` to every subscriber: the first share on this thread, the others on
    /// the helpers; returns once all are sent.
    fn send(&mut self, subs: &Subs, frame: &Arc<[u8]>) -> Result<(), BoxError> {
        let per = subs.len().div_ceil(self.jobs.len() + 1);
        for (i, job) in self.jobs.iter().enumerate() {
            job.send((
                Arc::clone(frame),
                Arc::clone(subs),
                per * (i + 1),
                per * (i + 2),
            ))
            .map_err(|_| "a floor sender thread ended")?;
        }
        send_all(&subs[..per.min(subs.len())], frame)?;
        for _ in &self.jobs {
            self.done
                .recv()
                .map_err(|_| "a floor sender thread ended")??;
        }
        Ok(())
    }
}

fn send_all(subs: &[Arc<TcpStream>], frame: &[u8]) -> io::Result<()> {
    for s in subs {
        (&**s).write_all(frame)?;
    }
    Ok(())
}

/// Reads one command, a RESP array of bulk strings, from `conn` through `inbox`; `None`
/// at a clean end of the connection.
fn read_command(conn: &mut impl Read, inbox: &mut Inbox) -> Result<Option<Vec<Vec<u8>>>, BoxError> {
    let mut chunk = [0u8; 4096];
    loop {
        match inbox.next_value()? {
            Some(Value::Array(args)) => {
                return args
                    .into_iter()
                    .map(|a| match a {
                        Value::Bulk(b) => Ok(b),
                        other => Err(format!("expected a bulk string, got {other:?}").into()),
                    })
                    .collect::<Result<_, _>>()
                    .map(Some)
            }
            Some(other) => return Err(format!("expected a command, got {other:?}").into()),
            None => {}
        }
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            if inbox.is_empty() {
                return Ok(None);
            }
            return Err("the connection ended inside a command".into());
        }
        inbox.extend(&chunk[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resp::{Client, Value};

    #[test]
    fn a_publish_reaches_every_subscriber_and_reports_their_count() {
        let floor = Floor::start().expect("start");
        let mut subs: Vec<Client> = (0..5)
            .map(|_| {
                let mut c = Client::connect(floor.addr()).expect("connect");
                let v = c.call(&[b"SUBSCRIBE", b"s5"]).expect("subscribe");
                assert!(
                    matches!(&v, Value::Array(items) if items.first().is_some_and(|x| x.is_str("subscribe"))),
                    "{v:?}"
                );
                c
            })
            .collect();
        // Each subscriber is registered before its reply: a publish right after the
        // replies reaches all five.
        let mut w = Client::connect(floor.addr()).expect("connect");
        for round in 0..3u8 {
            let msg = [b'0' + round; 100];
            let v = w.call(&[b"PUBLISH", b"s5", &msg]).expect("publish");
            assert_eq!(v.as_int(), Some(5), "{v:?}");
            for s in &mut subs {
                match s.read().expect("message") {
                    Value::Array(items) => {
                        assert_eq!(items.len(), 3);
                        assert!(items[0].is_str("message"));
                        assert!(items[1].is_str("s5"));
                        assert_eq!(items[2], Value::Bulk(msg.to_vec()));
                    }
                    v => panic!("expected a message, got {v:?}"),
                }
            }
        }
        let v = w.call(&[b"GET", b"x"]).expect("reply");
        assert!(matches!(v, Value::Error(_)), "{v:?}");
    }

    #[test]
    fn a_malformed_command_is_an_error() {
        let read = |bytes: &[u8]| read_command(&mut io::Cursor::new(bytes), &mut Inbox::default());
        assert!(read(b"*1\r\n$3\r\nabcd\r\n").is_err());
        assert!(read(b"PING\r\n").is_err());
        assert!(read(b"*1\r\n$4\r\nPI").is_err(), "ended inside a command");
        assert!(read(b"*1\r\n:1\r\n").is_err(), "not a bulk string");
        assert!(read(b"").expect("end").is_none());
        assert_eq!(
            read(b"*2\r\n$9\r\nSUBSCRIBE\r\n$2\r\ns5\r\n").expect("a command"),
            Some(vec![b"SUBSCRIBE".to_vec(), b"s5".to_vec()])
        );
    }
}
