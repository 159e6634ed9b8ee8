//! The HTTP gateway against the RESP port of the same logkv-server, in the same run.
//!
//! One logkv-server with `--fsync interval=1000` and `--http-listen` on a free loopback port,
//! preloaded with every key of `--keyspace` (`key:%012d`, values of `--value-size` bytes)
//! by [`preload`] over RESP. Then:
//!
//! * `gateway.GET` / `gateway.resp.GET`: `--n` GETs of random keys (the same seeded sequence
//!   on both) from `--clients` connections, one request in flight on each (as
//!   `redis-benchmark -P 1`), driven by one client thread polling every connection, over
//!   HTTP/1.1 keep-alive (`GET /v1/buckets/default/keys/{key}`, the entry as JSON) and over
//!   RESP (`GET key`); every reply is checked. Rounds A B B A; ops/s of the median round
//!   and `gateway.GET.ratio` = gateway / RESP.
//! * `gateway.SSE` / `gateway.resp.watch`: `--watchers` connections watching `>` on one
//!   bucket as Server-Sent Events (`GET /v1/buckets/s5/watch`) or with RESP `WATCH >`, and
//!   one RESP writer doing `--s5-writes` PUTs (100-byte values) one after the other without
//!   waiting for the events: events delivered per second to all the watchers, from the
//!   first PUT to the arrival of the last event at the last watcher, and the latency from a
//!   PUT's reply to its event's arrival at the last watcher (`.p50`, `.p99`; PUTs queue up
//!   behind each other, so this includes the wait behind earlier events). Rounds A B B A,
//!   the rate of the median round, latencies of both rounds pooled; `gateway.SSE.ratio` =
//!   SSE / RESP. The watchers are read by the same poll loops as S5's ([`super::fanout`]).

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::compare::preload;
use super::fanout::{
    add_latencies, use_bucket, with_receivers, Events, Latencies, RespEvents, Side, BUCKET, WARMUP,
};
use super::load::{Load, Requests};
use super::process::{start_logkv_http, Running};
use super::slow::middle;
use super::{percentile, row, Config};
use crate::http::{self, SseEvent, SseReader};
use crate::keys::{self, Rng, KEY_LEN};
use crate::report::{Extra, Reporter, Row};
use crate::resp::{self, Client, Value};
use crate::stores::BoxError;

/// Seed of the GET key sequence (the same for every round and port).
const SEED: u64 = 42;
/// How an entry of the preloaded bucket starts as JSON.
const ENTRY_START: &[u8] = b"{\"bucket\":\"default\",\"key\":";
/// Longest the harness waits for a reply or for the next event.
const STALL: Duration = Duration::from_secs(10);

/// Which port of the server a round uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Port {
    /// The HTTP gateway.
    Http,
    /// The RESP listener.
    Resp,
}

/// The gateway part: both comparisons on one server; rows go to `rep`.
pub fn gateway(cfg: &Config, bin: &Path, base: &Path, rep: &mut Reporter) -> Result<(), BoxError> {
    let (server, http_port) = start_logkv_http(bin, "interval=1000", base)?;
    let http_addr = format!("127.0.0.1:{http_port}");
    preload(&server, cfg.keyspace, cfg.value_size)
        .map_err(|e| format!("{e}\n{}", server.log_tail()))?;
    let clients = usize::try_from(cfg.clients)?;
    eprintln!(
        "gateway: {} random GETs from {clients} connections (1 in flight each), rounds A B B A",
        cfg.n
    );
    let mut rates = [Vec::new(), Vec::new()];
    for port in [Port::Http, Port::Resp, Port::Resp, Port::Http] {
        let getter = Getter {
            port,
            host: http_addr.clone(),
            value_size: cfg.value_size,
        };
        let addr = match port {
            Port::Http => &http_addr,
            Port::Resp => &server.addr(),
        };
        let rate = get_round(&getter, addr, clients, cfg.n, cfg.keyspace)
            .map_err(|e| format!("GET over {port:?}: {e}\n{}", server.log_tail()))?;
        eprintln!("    {port:?}: {rate:.0} GETs/s");
        rates[usize::from(port == Port::Resp)].push(rate);
    }
    let tag = |r: Row| {
        r.with("clients", Extra::count(clients))
            .with("keyspace", Extra::count(cfg.keyspace))
            .with("rounds", Extra::count(2))
    };
    let [http_rate, resp_rate] = rates.map(|mut v| middle(&mut v));
    rep.emit(tag(row("logkv", "gateway.GET", http_rate, "ops/s", cfg.n)));
    rep.emit(tag(row(
        "logkv",
        "gateway.resp.GET",
        resp_rate,
        "ops/s",
        cfg.n,
    )));
    rep.emit(tag(row(
        "logkv",
        "gateway.GET.ratio",
        http_rate / resp_rate,
        "ratio",
        cfg.n,
    )));
    fan_out(cfg, &server, &http_addr, rep)
}

/// The SSE against RESP watch fan-out, rounds A B B A.
fn fan_out(
    cfg: &Config,
    server: &Running,
    http_addr: &str,
    rep: &mut Reporter,
) -> Result<(), BoxError> {
    let (watchers, writes) = (cfg.watchers, cfg.s5_writes);
    eprintln!("gateway: {watchers} watchers, one writer doing {writes} PUTs, rounds A B B A");
    // The watchers need the bucket before the writer connects.
    use_bucket(&mut Client::connect(&server.addr())?)?;
    let mut rates = [Vec::new(), Vec::new()];
    let mut lat = [Latencies::default(), Latencies::default()];
    for port in [Port::Http, Port::Resp, Port::Resp, Port::Http] {
        let i = usize::from(port == Port::Resp);
        let t = Instant::now();
        let rate = match port {
            Port::Http => {
                let conns = (0..watchers)
                    .map(|_| sse_watcher(http_addr))
                    .collect::<Result<Vec<_>, _>>()?;
                eprintln!(
                    "    SSE: {watchers} watchers connected in {:.2} s",
                    t.elapsed().as_secs_f64()
                );
                fan_round(&server.addr(), conns, writes, &mut lat[i])
            }
            Port::Resp => {
                let conns = (0..watchers)
                    .map(|_| Side::Logkv.subscriber(&server.addr()))
                    .map(|c| c.map(|c| RespEvents::split(Side::Logkv, c)))
                    .collect::<Result<Vec<_>, _>>()?;
                eprintln!(
                    "    RESP: {watchers} watchers connected in {:.2} s",
                    t.elapsed().as_secs_f64()
                );
                fan_round(&server.addr(), conns, writes, &mut lat[i])
            }
        }
        .map_err(|e| format!("fan-out over {port:?}: {e}\n{}", server.log_tail()))?;
        eprintln!("    {port:?}: {rate:.0} events/s delivered");
        rates[i].push(rate);
    }
    let n = (watchers * writes) as u64;
    let tag = |r: Row| {
        r.with("watchers", Extra::count(watchers))
            .with("writes", Extra::count(writes))
            .with("rounds", Extra::count(2))
    };
    let [sse_rate, resp_rate] = rates.map(|mut v| middle(&mut v));
    rep.emit(tag(row("logkv", "gateway.SSE", sse_rate, "ops/s", n)));
    rep.emit(tag(row(
        "logkv",
        "gateway.resp.watch",
        resp_rate,
        "ops/s",
        n,
    )));
    rep.emit(tag(row(
        "logkv",
        "gateway.SSE.ratio",
        sse_rate / resp_rate,
        "ratio",
        n,
    )));
    for (name, l) in ["gateway.SSE", "gateway.resp.watch"]
        .into_iter()
        .zip(&mut lat)
    {
        l.last.sort_by(f64::total_cmp);
        let writes = l.last.len() as u64;
        for p in [50.0, 99.0] {
            let v = percentile(&l.last, p);
            rep.emit(tag(row(
                "logkv",
                &format!("{name}.p{p:.0}"),
                v,
                "ms",
                writes,
            )));
        }
    }
    Ok(())
}

/// A GET of one key on one port: the request, and the checks of its reply.
struct Getter {
    port: Port,
    /// The gateway's address, the `Host` of HTTP requests.
    host: String,
    value_size: usize,
}

impl Getter {
    fn encode(&self, key: &str, out: &mut Vec<u8>) {
        match self.port {
            Port::Http => {
                let path = format!("/v1/buckets/default/keys/{key}");
                http::encode_get(&self.host, &path, &[], out);
            }
            Port::Resp => resp::encode(&[b"GET", key.as_bytes()], out),
        }
    }

    /// The length of the whole, checked reply at the start of `buf`; `None` while it is
    /// incomplete.
    fn reply(&self, buf: &[u8]) -> Result<Option<usize>, String> {
        match self.port {
            Port::Http => match http::parse_response(buf)? {
                None => Ok(None),
                Some(r) if r.status == 200 && r.body.starts_with(ENTRY_START) => Ok(Some(r.len)),
                Some(r) => Err(format!(
                    "GET answered {}: {}",
                    r.status,
                    String::from_utf8_lossy(r.body)
                )),
            },
            Port::Resp => match resp::parse(buf)? {
                None => Ok(None),
                Some((Value::Bulk(v), used)) if v.len() == self.value_size => Ok(Some(used)),
                Some((v, _)) => Err(format!("GET replied {v:?}")),
            },
        }
    }
}

/// `requests` GETs of random keys of `0..keyspace` on `clients` connections to `addr`, one
/// in flight on each, all driven by this thread's poll loop ([`Load`]); returns GETs per
/// second.
fn get_round(
    getter: &Getter,
    addr: &str,
    clients: usize,
    requests: u64,
    keyspace: u64,
) -> Result<f64, BoxError> {
    let load = Load {
        clients,
        pipeline: 1,
        requests,
    };
    let mut gets = Gets {
        getter,
        rng: Rng::new(SEED),
        keyspace,
    };
    load.run(addr, &mut gets)
}

/// GETs of random keys, each reply checked.
struct Gets<'a> {
    getter: &'a Getter,
    rng: Rng,
    keyspace: u64,
}

impl Requests for Gets<'_> {
    fn next(&mut self, out: &mut Vec<u8>) -> u64 {
        let mut kb = [0u8; KEY_LEN];
        let i = self.rng.below(self.keyspace);
        self.getter.encode(keys::key(i, &mut kb), out);
        i
    }

    fn reply(&mut self, buf: &[u8], _key: u64) -> Result<Option<usize>, String> {
        self.getter.reply(buf)
    }
}

/// An SSE watch connection's decoder: the ids of the live events (those after `ready`).
struct SseEvents {
    reader: SseReader,
    events: Vec<SseEvent>,
    ready: bool,
}

impl Events for SseEvents {
    fn feed(&mut self, bytes: &[u8], ids: &mut Vec<u64>) -> Result<(), String> {
        self.reader.feed(bytes, &mut self.events)?;
        for e in self.events.drain(..) {
            match (e.event.as_str(), e.id) {
                // The initial data (the watched key's latest entry) comes before `ready`.
                ("", Some(_)) if !self.ready => {}
                ("", Some(id)) => ids.push(id.parse().map_err(|_| format!("event id {id:?}"))?),
                ("ready", _) => self.ready = true,
                ("lost", _) => return Err(format!("a watch was lost: {}", e.data)),
                (other, _) => return Err(format!("unexpected event {other:?}: {}", e.data)),
            }
        }
        if self.reader.ended() {
            return Err("the server ended a watch stream".into());
        }
        Ok(())
    }
}

/// Opens one SSE watch of `>` on [`BUCKET`] and reads it up to `ready`.
fn sse_watcher(http_addr: &str) -> Result<(TcpStream, SseEvents), BoxError> {
    let mut stream = TcpStream::connect(http_addr)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(STALL))?;
    let mut req = Vec::new();
    http::encode_get(
        http_addr,
        &format!("/v1/buckets/{BUCKET}/watch"),
        &[],
        &mut req,
    );
    stream.write_all(&req)?;
    let mut events = SseEvents {
        reader: SseReader::default(),
        events: Vec::new(),
        ready: false,
    };
    let mut chunk = [0u8; 4096];
    let mut ids = Vec::new();
    while !events.ready {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err("the server closed a watch before ready".into());
        }
        events.feed(&chunk[..n], &mut ids)?;
    }
    Ok((stream, events))
}

/// One fan-out round: a writer on the RESP port `addr` does a few unmeasured PUTs (all
/// delivered before going on), then `writes` PUTs one after the other; returns the events
/// delivered per second to all of `conns` until the last arrived, and adds the latencies
/// to the last watcher to `lat`.
fn fan_round<E: Events>(
    addr: &str,
    conns: Vec<(TcpStream, E)>,
    writes: usize,
    lat: &mut Latencies,
) -> Result<f64, BoxError> {
    let watchers = conns.len();
    let mut w = Client::connect(addr)?;
    use_bucket(&mut w)?;
    let mut acks: Vec<(u64, Instant)> = Vec::with_capacity(writes);
    let mut start = None;
    let (result, arrivals) = with_receivers(conns, |count| -> Result<(), BoxError> {
        for seq in 0..WARMUP {
            Side::Logkv.write(&mut w, seq as u64, watchers)?;
        }
        wait_for(count, (WARMUP * watchers) as u64)?;
        start = Some(Instant::now());
        for seq in 0..writes {
            let id = Side::Logkv.write(&mut w, seq as u64, watchers)?;
            acks.push((id, Instant::now()));
        }
        wait_for(count, ((WARMUP + writes) * watchers) as u64)
    })?;
    result?;
    let start = start.ok_or("the round did not start")?;
    let measured: HashSet<u64> = acks.iter().map(|(id, _)| *id).collect();
    let end = arrivals
        .iter()
        .flat_map(|a| &a.events)
        .filter(|(id, _)| measured.contains(id))
        .map(|(_, at)| *at)
        .max()
        .ok_or("no event arrived")?;
    add_latencies(&acks, &arrivals, lat);
    #[allow(clippy::cast_precision_loss, reason = "an event count, far below 2^52")]
    Ok((watchers * writes) as f64 / end.duration_since(start).as_secs_f64())
}

/// Waits until `count` reaches `target`; an error if it stops growing for [`STALL`].
fn wait_for(count: &AtomicU64, target: u64) -> Result<(), BoxError> {
    let mut seen = count.load(Ordering::Relaxed);
    let mut since = Instant::now();
    while seen < target {
        // Arrival times are taken by the receivers: sleeping here costs no accuracy.
        std::thread::sleep(Duration::from_micros(200));
        let now = count.load(Ordering::Relaxed);
        if now > seen {
            (seen, since) = (now, Instant::now());
        } else if since.elapsed() > STALL {
            return Err(
                format!("only {seen} of {target} events arrived (none for {STALL:?})").into(),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_count_only_live_entries() {
        let mut e = SseEvents {
            reader: SseReader::default(),
            events: Vec::new(),
            ready: false,
        };
        let mut ids = Vec::new();
        e.feed(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\nid: 4\ndata: {}\n\n",
            &mut ids,
        )
        .unwrap();
        e.feed(b"event: ready\ndata: {}\n\nid: 9\ndata: {}\n\n", &mut ids)
            .unwrap();
        assert_eq!(ids, [9]);
        assert!(e
            .feed(b"event: lost\ndata: {\"first_retained\":1}\n\n", &mut ids)
            .is_err());
    }

    #[test]
    fn gets_check_their_replies() {
        let g = |port| Getter {
            port,
            host: "127.0.0.1:1".into(),
            value_size: 3,
        };
        let mut out = Vec::new();
        g(Port::Http).encode("key:000000000001", &mut out);
        assert!(out.starts_with(b"GET /v1/buckets/default/keys/key:000000000001 HTTP/1.1\r\n"));
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 26\r\n\r\n{\"bucket\":\"default\",\"key\":";
        assert_eq!(g(Port::Http).reply(ok).unwrap(), Some(ok.len()));
        assert_eq!(g(Port::Http).reply(&ok[..20]).unwrap(), None);
        assert!(g(Port::Http)
            .reply(b"HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\n\r\n{}")
            .is_err());
        assert_eq!(g(Port::Resp).reply(b"$3\r\nabc\r\n").unwrap(), Some(9));
        assert!(g(Port::Resp).reply(b"$-1\r\n").is_err());
    }
}
