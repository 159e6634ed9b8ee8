//! S5, watch fan-out: W subscriber connections, one writer; the time from a write's reply to
//! the event's arrival at the subscribers.
//!
//! logkv: W connections each `WATCH >` on bucket `s5`, the writer PUTs `fan.out` (100-byte
//! values) one at a time. The anchor, measured by the same code in the same run: redis-server
//! with W connections `SUBSCRIBE s5` and the writer `PUBLISH`ing 100-byte messages one at a
//! time. Rounds go logkv, redis, floor, floor, redis, logkv; the latencies of both rounds of a
//! server are pooled. Rows: `S5.p50` / `S5.p99` (to the *last* subscriber), `S5.each.p50` /
//! `.p99` (per write and subscriber), `S5.first.p50` (per write, to the first subscriber:
//! how long the server takes to start sending), `S5.sent.p50` / `.p99` (per write, from
//! its sending to the last subscriber: a server that acknowledges a write late, after
//! its events went out, looks faster from the acknowledgement but not from here),
//! `S5.ack.p50` / `.p99` (the writer's round trip), the same as `S5.redis.*` for redis and `S5.floor.*`
//! for the floor server ([`super::floor`], measured as redis is), and `logkv/redis` and
//! `logkv/floor` ratios of the p50s and p99s.

use std::collections::HashMap;
use std::io::Read;
use std::net::TcpStream;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::{expect_ok, percentile, row};
use crate::report::{Extra, Reporter, Row};
use crate::resp::{watch_frame, Client, Value, WatchFrame};
use crate::skim::{self, Frame, SEQ_DIGITS};
use crate::stores::BoxError;

/// Unmeasured writes at the start of a round.
pub(crate) const WARMUP: usize = 5;
/// The bucket the watchers watch and the writer writes.
pub(crate) const BUCKET: &str = "s5";
const VALUE: [u8; 100] = [b'v'; 100];

/// Which server, and so which verbs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// `WATCH >` and `PUT`.
    Logkv,
    /// `SUBSCRIBE` and `PUBLISH`.
    Redis,
}

impl Side {
    /// Opens one subscriber connection, ready to receive.
    pub(crate) fn subscriber(self, addr: &str) -> Result<Client, BoxError> {
        let mut c = Client::connect(addr)?;
        match self {
            Side::Logkv => {
                expect_ok(c.call(&[b"USE", BUCKET.as_bytes()])?, "USE")?;
                let id = expect_ok(c.call(&[b"WATCH", b">"])?, "WATCH")?;
                if id.as_int().is_none() {
                    return Err(format!("WATCH replied {id:?}").into());
                }
                loop {
                    if let Some(WatchFrame::Ready(_)) = watch_frame(&c.read()?) {
                        return Ok(c);
                    }
                }
            }
            Side::Redis => {
                let v = expect_ok(c.call(&[b"SUBSCRIBE", b"s5"])?, "SUBSCRIBE")?;
                match v {
                    Value::Array(items) if items.first().is_some_and(|x| x.is_str("subscribe")) => {
                        Ok(c)
                    }
                    v => Err(format!("SUBSCRIBE replied {v:?}").into()),
                }
            }
        }
    }

    /// The id of the write a pushed frame carries; `None` for frames that carry none.
    fn event_id(self, f: Frame) -> Result<Option<u64>, String> {
        match (self, f) {
            (Side::Logkv, Frame::Entry(revision)) => Ok(Some(revision)),
            (Side::Logkv, Frame::Ready) => Ok(None),
            (Side::Logkv, Frame::Lost) => Err("a watch was lost".into()),
            (Side::Redis, Frame::Message(seq)) => Ok(Some(seq)),
            (side, f) => Err(format!("unexpected frame on a {side:?} subscriber: {f:?}")),
        }
    }

    /// Sends write `seq` and waits for its reply; returns the id its events carry.
    pub(crate) fn write(
        self,
        w: &mut Client,
        seq: u64,
        subscribers: usize,
    ) -> Result<u64, BoxError> {
        match self {
            Side::Logkv => {
                let r = expect_ok(w.call(&[b"PUT", b"fan.out", &VALUE])?, "PUT")?
                    .as_int()
                    .ok_or("PUT did not reply a revision")?;
                Ok(u64::try_from(r).map_err(|_| format!("PUT replied revision {r}"))?)
            }
            Side::Redis => {
                let mut msg = format!("{seq:0SEQ_DIGITS$}").into_bytes();
                msg.resize(VALUE.len(), b'v');
                let got = expect_ok(w.call(&[b"PUBLISH", b"s5", &msg])?, "PUBLISH")?.as_int();
                if got.and_then(|g| usize::try_from(g).ok()) != Some(subscribers) {
                    return Err(format!("PUBLISH reached {got:?} of {subscribers}").into());
                }
                Ok(seq)
            }
        }
    }
}

/// Latencies of one server's rounds, ms.
#[derive(Debug, Default)]
pub struct Latencies {
    /// Per write: to the last subscriber.
    pub last: Vec<f64>,
    /// Per (write, subscriber).
    pub each: Vec<f64>,
    /// Per write: to the first subscriber (how long the server took to start sending).
    pub first: Vec<f64>,
    /// Per write: from the moment it was sent to the last subscriber's event (the
    /// writer's round trip included, so a server that acknowledges late gains nothing).
    pub sent_last: Vec<f64>,
    /// Per write: the writer's round trip, sent to acknowledged.
    pub ack: Vec<f64>,
}

/// Per receiver thread: which write's event arrived when.
pub(crate) struct Arrivals {
    pub(crate) events: Vec<(u64, Instant)>,
}

/// What a subscriber connection's bytes say: the ids of the events in them.
pub(crate) trait Events: Send {
    /// Takes bytes read from the connection; appends the id of every whole event in them.
    fn feed(&mut self, bytes: &[u8], ids: &mut Vec<u64>) -> Result<(), String>;
}

/// A RESP subscriber connection's decoder: it skims frames ([`crate::skim`]) rather than
/// building values, since on this machine the client's work is taken from the server's.
pub(crate) struct RespEvents {
    side: Side,
    /// Bytes read and not yet decoded (a frame cut by a read).
    pending: Vec<u8>,
}

impl RespEvents {
    /// Splits a subscriber's [`Client`] into its socket and a decoder of what follows.
    pub(crate) fn split(side: Side, c: Client) -> (TcpStream, RespEvents) {
        let (stream, inbox) = c.into_parts();
        let pending = inbox.into_unread();
        (stream, RespEvents { side, pending })
    }

    /// Decodes the whole frames at the start of `buf`; returns the bytes used.
    fn decode(&self, buf: &[u8], ids: &mut Vec<u64>) -> Result<usize, String> {
        let mut used = 0;
        while let Some((f, n)) = skim::frame(&buf[used..])? {
            used += n;
            if let Some(id) = self.side.event_id(f)? {
                ids.push(id);
            }
        }
        Ok(used)
    }
}

impl Events for RespEvents {
    fn feed(&mut self, bytes: &[u8], ids: &mut Vec<u64>) -> Result<(), String> {
        if self.pending.is_empty() {
            let used = self.decode(bytes, ids)?;
            self.pending.extend_from_slice(&bytes[used..]);
        } else {
            self.pending.extend_from_slice(bytes);
            let used = self.decode(&self.pending, ids)?;
            self.pending.drain(..used);
        }
        Ok(())
    }
}

/// An epoll instance over a receiver's connections (poll(2) over hundreds of sockets costs
/// the client a scan of all of them per wake-up, which the servers then wait for).
struct Epoll(libc::c_int);

impl Epoll {
    fn new(socks: impl Iterator<Item = libc::c_int>) -> Result<Epoll, String> {
        // SAFETY: epoll_create1 takes no pointers.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(format!(
                "epoll_create1: {}",
                std::io::Error::last_os_error()
            ));
        }
        let ep = Epoll(fd);
        for (i, sock) in socks.enumerate() {
            let mut ev = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: i as u64,
            };
            // SAFETY: `ev` is a valid epoll_event for the duration of the call.
            if unsafe { libc::epoll_ctl(ep.0, libc::EPOLL_CTL_ADD, sock, &raw mut ev) } < 0 {
                return Err(format!("epoll_ctl: {}", std::io::Error::last_os_error()));
            }
        }
        Ok(ep)
    }

    /// Waits up to `timeout_ms` for ready connections; their indexes go into `ready`.
    fn wait(
        &self,
        events: &mut [libc::epoll_event],
        timeout_ms: i32,
        ready: &mut Vec<usize>,
    ) -> Result<(), String> {
        let max = libc::c_int::try_from(events.len()).map_err(|e| e.to_string())?;
        // SAFETY: `events` is a valid, writable array of `max` epoll_event structs.
        let r = unsafe { libc::epoll_wait(self.0, events.as_mut_ptr(), max, timeout_ms) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                return Ok(());
            }
            return Err(format!("epoll_wait: {e}"));
        }
        let n = usize::try_from(r).map_err(|e| e.to_string())?;
        ready.extend(events.iter().take(n).map(|ev| {
            let data = ev.u64;
            usize::try_from(data).unwrap_or(usize::MAX)
        }));
        Ok(())
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        // SAFETY: the descriptor is ours and closed once.
        unsafe { libc::close(self.0) };
    }
}

fn receive<E: Events>(
    conns: Vec<(TcpStream, E)>,
    stop: &AtomicBool,
    count: &AtomicU64,
) -> Result<Arrivals, String> {
    let mut conns = conns;
    for (s, _) in &conns {
        s.set_nonblocking(true).map_err(|e| e.to_string())?;
    }
    let epoll = Epoll::new(conns.iter().map(|(s, _)| s.as_raw_fd()))?;
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut ready = Vec::new();
    let mut out = Arrivals { events: Vec::new() };
    let mut chunk = vec![0u8; 64 << 10];
    let mut ids = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        ready.clear();
        epoll.wait(&mut events, 20, &mut ready)?;
        let now = Instant::now();
        for &i in &ready {
            let Some((sock, events)) = conns.get_mut(i) else {
                return Err(format!("epoll reported an unknown connection {i}"));
            };
            loop {
                match sock.read(&mut chunk) {
                    Ok(0) => return Err("a subscriber connection was closed by the server".into()),
                    Ok(n) => {
                        events.feed(&chunk[..n], &mut ids)?;
                        if n < chunk.len() {
                            // Drained (the epoll is level-triggered: more data later is
                            // reported again), so no second read just to see EAGAIN.
                            break;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(format!("subscriber read: {e}")),
                }
            }
            count.fetch_add(ids.len() as u64, Ordering::Relaxed);
            out.events.extend(ids.drain(..).map(|id| (id, now)));
        }
    }
    Ok(out)
}

/// Reads the subscriber connections `conns` on two threads while `drive`
/// runs with the count of events they have received so far (each an epoll loop); then stops them and returns
/// what `drive` returned and what they received.
pub(crate) fn with_receivers<E: Events, R>(
    mut conns: Vec<(TcpStream, E)>,
    drive: impl FnOnce(&AtomicU64) -> R,
) -> Result<(R, Vec<Arrivals>), BoxError> {
    let stop = AtomicBool::new(false);
    let count = AtomicU64::new(0);
    std::thread::scope(|sc| {
        let per = conns.len().div_ceil(2).max(1);
        let mut handles = Vec::new();
        while !conns.is_empty() {
            let group: Vec<_> = conns.drain(..per.min(conns.len())).collect();
            let (stop, count) = (&stop, &count);
            handles.push(sc.spawn(move || receive(group, stop, count)));
        }
        let result = drive(&count);
        stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for h in handles {
            all.push(h.join().map_err(|_| "receiver panicked")??);
        }
        Ok((result, all))
    })
}

/// Adds to `lat` the latency of every event of a write in `acks` (id, time of its reply):
/// per (write, subscriber), and per write to its last subscriber. A reply can come after
/// some events: the reply, not the event, is late then (the latency counts as 0).
pub(crate) fn add_latencies(acks: &[(u64, Instant)], arrivals: &[Arrivals], lat: &mut Latencies) {
    let ack_of: HashMap<u64, Instant> = acks.iter().copied().collect();
    let mut slowest: HashMap<u64, f64> = HashMap::new();
    let mut fastest: HashMap<u64, f64> = HashMap::new();
    for a in arrivals {
        for (id, at) in &a.events {
            if let Some(ack) = ack_of.get(id) {
                let ms = at.saturating_duration_since(*ack).as_secs_f64() * 1e3;
                lat.each.push(ms);
                let m = slowest.entry(*id).or_insert(0.0);
                *m = m.max(ms);
                let f = fastest.entry(*id).or_insert(f64::INFINITY);
                *f = f.min(ms);
            }
        }
    }
    lat.last.extend(slowest.into_values());
    lat.first.extend(fastest.into_values());
}

/// One round on one server (`name`, for the log): `subscribers` connections, `writes`
/// measured writes (after a few unmeasured ones); the latencies are added to `lat`.
pub fn round(
    name: &str,
    side: Side,
    addr: &str,
    subscribers: usize,
    writes: usize,
    lat: &mut Latencies,
) -> Result<(), BoxError> {
    let mut w = Client::connect(addr)?;
    if side == Side::Logkv {
        use_bucket(&mut w)?;
    }
    let t = Instant::now();
    let mut conns = Vec::with_capacity(subscribers);
    for i in 0..subscribers {
        let c = side
            .subscriber(addr)
            .map_err(|e| format!("subscriber {i}: {e}"))?;
        conns.push(RespEvents::split(side, c));
    }
    eprintln!(
        "    {name}: {subscribers} subscribers connected in {:.2} s",
        t.elapsed().as_secs_f64()
    );
    let total = WARMUP + writes;
    let mut acks: Vec<(u64, Instant)> = Vec::with_capacity(total);
    let mut sends: Vec<Instant> = Vec::with_capacity(total);
    let mut incomplete = None;
    let (result, arrivals) = with_receivers(conns, |count| -> Result<(), BoxError> {
        for i in 0..total {
            let before = count.load(Ordering::Relaxed);
            let sent = Instant::now();
            let id = side.write(&mut w, i as u64 + 1, subscribers)?;
            let ack = Instant::now();
            acks.push((id, ack));
            sends.push(sent);
            let deadline = ack + Duration::from_secs(10);
            while count.load(Ordering::Relaxed) < before + subscribers as u64 {
                if Instant::now() > deadline {
                    incomplete = Some((i, count.load(Ordering::Relaxed)));
                    return Ok(());
                }
                // Sleeping here costs no accuracy (arrival times are taken by the
                // receivers) and leaves the 2 cores to the server and the receivers.
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        Ok(())
    })?;
    result?;
    if let Some((i, got)) = incomplete {
        return Err(format!(
            "write {i}: only {got} events of {} arrived within 10 s",
            (i + 1) * subscribers
        )
        .into());
    }
    let measured = WARMUP.min(acks.len());
    add_latencies(&acks[measured..], &arrivals, lat);
    add_from_sent(&sends[measured..], &acks[measured..], &arrivals, lat);
    Ok(())
}

/// Adds, per write, the time from its sending (`sends`, in the order of `acks`) to its
/// event at the last subscriber, and the writer's round trip.
fn add_from_sent(
    sends: &[Instant],
    acks: &[(u64, Instant)],
    arrivals: &[Arrivals],
    lat: &mut Latencies,
) {
    let ms = |from: Instant, to: Instant| to.saturating_duration_since(from).as_secs_f64() * 1e3;
    let sent_of: HashMap<u64, Instant> = acks
        .iter()
        .map(|(id, _)| *id)
        .zip(sends.iter().copied())
        .collect();
    let mut latest: HashMap<u64, Instant> = HashMap::new();
    for (id, at) in arrivals.iter().flat_map(|a| &a.events) {
        if sent_of.contains_key(id) {
            let l = latest.entry(*id).or_insert(*at);
            *l = (*l).max(*at);
        }
    }
    for (id, at) in latest {
        if let Some(&sent) = sent_of.get(&id) {
            lat.sent_last.push(ms(sent, at));
        }
    }
    for (&sent, &(_, ack)) in sends.iter().zip(acks) {
        lat.ack.push(ms(sent, ack));
    }
}

/// Creates (if need be) and selects the bucket [`BUCKET`] on a writer's connection.
pub(crate) fn use_bucket(w: &mut Client) -> Result<(), BoxError> {
    let created = w.call(&[b"BUCKET", b"CREATE", BUCKET.as_bytes()])?;
    if !matches!(&created, Value::Error(e) if e.starts_with("EXISTS")) {
        expect_ok(created, "BUCKET CREATE")?;
    }
    expect_ok(w.call(&[b"USE", BUCKET.as_bytes()])?, "USE")?;
    Ok(())
}

/// Emits the rows of one server's pooled rounds: `{prefix}.p50` and so on, as `store`'s.
pub fn emit(
    store: &str,
    prefix: &str,
    lat: &mut Latencies,
    subscribers: usize,
    rounds: usize,
    rep: &mut Reporter,
) -> (f64, f64) {
    lat.last.sort_by(f64::total_cmp);
    lat.each.sort_by(f64::total_cmp);
    lat.first.sort_by(f64::total_cmp);
    lat.sent_last.sort_by(f64::total_cmp);
    lat.ack.sort_by(f64::total_cmp);
    let tag = |r: Row| {
        r.with("watchers", Extra::count(subscribers))
            .with("rounds", Extra::count(rounds))
    };
    let rows: [(&str, &[f64], f64); 9] = [
        ("p50", &lat.last, 50.0),
        ("p99", &lat.last, 99.0),
        ("each.p50", &lat.each, 50.0),
        ("each.p99", &lat.each, 99.0),
        ("first.p50", &lat.first, 50.0),
        ("sent.p50", &lat.sent_last, 50.0),
        ("sent.p99", &lat.sent_last, 99.0),
        ("ack.p50", &lat.ack, 50.0),
        ("ack.p99", &lat.ack, 99.0),
    ];
    // The gateway's rounds time no sending.
    for (suffix, samples, p) in rows.into_iter().filter(|(_, s, _)| !s.is_empty()) {
        let w = format!("{prefix}.{suffix}");
        let n = samples.len() as u64;
        rep.emit(tag(row(store, &w, percentile(samples, p), "ms", n)));
    }
    let (p50, p99) = (percentile(&lat.last, 50.0), percentile(&lat.last, 99.0));
    (p50, p99)
}
