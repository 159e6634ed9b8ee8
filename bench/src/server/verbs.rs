//! The verbs only logkv has, loaded as redis-benchmark loads SET and GET: PUT, UPDATE (a
//! compare-and-set on the key's revision) and HISTORY, each against the nearest redis verb
//! measured by the same client in the same run (SET for PUT and UPDATE, GET for HISTORY).
//!
//! One logkv-server at `--fsync interval=1000` and one redis-server at `appendfsync
//! everysec`, both preloaded with every key of `--keyspace` (`key:%012d`, values of
//! `--value-size` bytes) by [`preload`]. The client is this harness's own: `--clients`
//! connections driven by one thread's poll loop (as redis-benchmark drives its clients),
//! with 1 or 16 requests in flight on each, `--n` requests per run, on random keys of the
//! keyspace. No two requests in flight touch the same key, so the client knows every
//! key's latest revision (the preload wrote key `i` as revision `i + 1`, which is checked;
//! then every write's reply says the key's new one) and every UPDATE names it: each one
//! must succeed, and each reply is checked (an integer revision, `+OK`, a value of the
//! right size, a history of at least one entry). HISTORY is asked of one key (its pattern
//! is the key itself); the bucket keeps one entry per key, so it returns one.
//!
//! Rounds A B B A (logkv, redis, redis, logkv); on logkv a round runs PUT, UPDATE and
//! HISTORY, on redis SET and GET. Rows, ops/s of the mean of a server's two rounds:
//! `put|update|history.P1|P16.everysec` with store `logkv`, the same workload with store
//! `redis` for the redis verb it is compared with (field `anchor`), and `logkv/redis`.

use std::path::Path;

use super::compare::{preload, quiet};
use super::load::{Load, Requests};
use super::process::{start_logkv, start_redis, Running};
use super::slow::middle;
use super::{expect_ok, row, Config};
use crate::keys::{self, Rng, KEY_LEN};
use crate::report::{Extra, Reporter, Row};
use crate::resp::{self, Client, Value};
use crate::skim::{self, Reply};
use crate::stores::BoxError;

const PIPELINES: [usize; 2] = [1, 16];
/// Seed of the key sequences.
const SEED: u64 = 0x5EED_0005;

/// A request of the load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    /// logkv `PUT key value`: replies the new revision.
    Put,
    /// logkv `UPDATE key value rev` with the key's latest revision: replies the new one.
    Update,
    /// logkv `HISTORY key`: the key's retained entries.
    History,
    /// redis `SET key value`.
    Set,
    /// redis `GET key`.
    Get,
}

impl Verb {
    fn name(self) -> &'static str {
        match self {
            Verb::Put => "PUT",
            Verb::Update => "UPDATE",
            Verb::History => "HISTORY",
            Verb::Set => "SET",
            Verb::Get => "GET",
        }
    }

    /// The redis verb a logkv verb is compared with.
    fn anchor(self) -> Verb {
        match self {
            Verb::Put | Verb::Update | Verb::Set => Verb::Set,
            Verb::History | Verb::Get => Verb::Get,
        }
    }

    /// Appends the request for key `i`, whose latest revision is `rev`.
    fn encode(self, i: u64, rev: u64, value: &[u8], out: &mut Vec<u8>) {
        let mut kb = [0u8; KEY_LEN];
        let key = keys::key(i, &mut kb).as_bytes();
        match self {
            Verb::Put => resp::encode(&[b"PUT", key, value], out),
            Verb::Update => {
                let rev = rev.to_string();
                resp::encode(&[b"UPDATE", key, value, rev.as_bytes()], out);
            }
            Verb::History => resp::encode(&[b"HISTORY", key], out),
            Verb::Set => resp::encode(&[b"SET", key, value], out),
            Verb::Get => resp::encode(&[b"GET", key], out),
        }
    }

    /// Checks a reply to a request on a key whose latest revision was `rev`; returns the
    /// key's new revision, if the request wrote one.
    fn check(self, reply: Reply<'_>, rev: u64, value_size: usize) -> Result<Option<u64>, String> {
        let ok = match (self, reply) {
            (Verb::Put | Verb::Update, r) => match skim::int_reply(r) {
                Some(new) if new > rev => return Ok(Some(new)),
                _ => false,
            },
            (Verb::History, Reply::Aggregate(n)) => n >= 1,
            (Verb::Set, Reply::Line(b'+', text)) => text == b"OK",
            (Verb::Get, Reply::Bulk(v)) => v.len() == value_size,
            _ => false,
        };
        if ok {
            Ok(None)
        } else {
            Err(format!(
                "{} of a key at revision {rev} replied {}",
                self.name(),
                shown(reply)
            ))
        }
    }
}

fn shown(r: Reply<'_>) -> String {
    match r {
        Reply::Line(kind, text) => format!("{}{}", kind as char, String::from_utf8_lossy(text)),
        Reply::Bulk(s) => format!("a string of {} bytes", s.len()),
        Reply::Aggregate(n) => format!("an aggregate of {n}"),
    }
}

/// What the client knows of the keyspace: every key's latest revision (as logkv numbers
/// them; unused on redis), and which keys have a request in flight.
struct Keyspace {
    revs: Vec<u64>,
    busy: Vec<bool>,
}

impl Keyspace {
    /// Keys `0..n`, key `i` at revision `i + 1` (as the preload wrote them).
    fn preloaded(n: u64) -> Result<Keyspace, BoxError> {
        let len = usize::try_from(n)?;
        Ok(Keyspace {
            revs: (1..=n).collect(),
            busy: vec![false; len],
        })
    }

    /// A random key with nothing in flight, marked busy.
    fn take(&mut self, rng: &mut Rng) -> u64 {
        let n = self.busy.len() as u64;
        loop {
            let i = rng.below(n);
            if let Some(b) = self.busy.get_mut(usize::try_from(i).unwrap_or(usize::MAX)) {
                if !*b {
                    *b = true;
                    return i;
                }
            }
        }
    }

    fn rev(&self, i: u64) -> u64 {
        usize::try_from(i)
            .ok()
            .and_then(|i| self.revs.get(i))
            .copied()
            .unwrap_or(0)
    }

    /// The request on key `i` was answered; `new` is its new revision, if it wrote one.
    fn done(&mut self, i: u64, new: Option<u64>) {
        if let Ok(i) = usize::try_from(i) {
            if let Some(b) = self.busy.get_mut(i) {
                *b = false;
            }
            if let (Some(new), Some(r)) = (new, self.revs.get_mut(i)) {
                *r = new;
            }
        }
    }
}

/// The verbs part; rows go to `rep`. Without logkv there is nothing to measure; without
/// redis, the logkv rows only.
pub fn verbs(
    cfg: &Config,
    logkv: &Path,
    redis: Option<&Path>,
    base: &Path,
    rep: &mut Reporter,
) -> Result<(), BoxError> {
    let clients = usize::try_from(cfg.clients)?;
    let in_flight = clients * PIPELINES.iter().max().copied().unwrap_or(1);
    if u64::try_from(in_flight)? > cfg.keyspace {
        return Err(format!(
            "verbs: {in_flight} requests in flight need as many distinct keys; \
             the keyspace has {}",
            cfg.keyspace
        )
        .into());
    }
    let logkv = start_logkv(logkv, "interval=1000", base)?;
    let redis = redis
        .map(|b| start_redis(b, "everysec", base))
        .transpose()?;
    for server in std::iter::once(&logkv).chain(redis.as_ref()) {
        preload(server, cfg.keyspace, cfg.value_size)
            .map_err(|e| format!("{e}\n{}", server.log_tail()))?;
    }
    check_preloaded_revisions(&logkv, cfg.keyspace)?;
    eprintln!(
        "verbs: PUT, UPDATE, HISTORY on logkv, SET and GET on redis, {} requests per run \
         from {clients} connections, rounds A B B A",
        cfg.n
    );
    let mut keyspace = [
        Keyspace::preloaded(cfg.keyspace)?,
        Keyspace::preloaded(cfg.keyspace)?,
    ];
    let mut rng = Rng::new(SEED);
    let value = vec![b'v'; cfg.value_size];
    for pipeline in PIPELINES {
        let mut rates: Vec<(Verb, f64)> = Vec::new();
        for side in [0, 1, 1, 0] {
            let (server, verbs) = match (side, &redis) {
                (0, _) => (&logkv, &[Verb::Put, Verb::Update, Verb::History][..]),
                (_, Some(r)) => (r, &[Verb::Set, Verb::Get][..]),
                (_, None) => continue,
            };
            for &verb in verbs {
                let load = Load {
                    clients,
                    pipeline,
                    requests: cfg.n,
                };
                let mut reqs = VerbRequests {
                    verb,
                    value: &value,
                    keyspace: &mut keyspace[side],
                    rng: &mut rng,
                };
                quiet(server)?;
                let rate = load.run(&server.addr(), &mut reqs).map_err(|e| {
                    format!("{} -P {pipeline}: {e}\n{}", verb.name(), server.log_tail())
                })?;
                eprintln!("    {} -P {pipeline}: {rate:.0} ops/s", verb.name());
                rates.push((verb, rate));
            }
        }
        let rate_of = |verb: Verb| {
            let mut of: Vec<f64> = rates.iter().filter(|r| r.0 == verb).map(|r| r.1).collect();
            (!of.is_empty()).then(|| middle(&mut of))
        };
        for verb in [Verb::Put, Verb::Update, Verb::History] {
            let workload = format!("{}.P{pipeline}.everysec", verb.name().to_ascii_lowercase());
            let anchor = verb.anchor();
            let tag = |r: Row| {
                r.with("clients", Extra::count(clients))
                    .with("pipeline", Extra::count(pipeline))
                    .with("anchor", Extra::Str(anchor.name().to_string()))
                    .with("keyspace", Extra::count(cfg.keyspace))
                    .with("rounds", Extra::count(2))
            };
            let Some(mine) = rate_of(verb) else {
                continue;
            };
            rep.emit(tag(row("logkv", &workload, mine, "ops/s", cfg.n)
                .with("fsync", Extra::Str("interval=1000".into()))));
            if let Some(theirs) = rate_of(anchor) {
                rep.emit(tag(row("redis", &workload, theirs, "ops/s", cfg.n)
                    .with("fsync", Extra::Str("everysec".into()))));
                rep.emit(tag(row(
                    "logkv/redis",
                    &workload,
                    mine / theirs,
                    "ratio",
                    cfg.n,
                )));
            }
        }
    }
    Ok(())
}

/// The UPDATE rows rely on key `i` being at revision `i + 1` after the preload: checks the
/// bucket's last revision and the first and last keys.
fn check_preloaded_revisions(server: &Running, keyspace: u64) -> Result<(), BoxError> {
    let mut c = Client::connect(&server.addr())?;
    let last = expect_ok(c.call(&[b"STATUS"])?, "STATUS")?
        .field("lastrev")
        .and_then(Value::as_int);
    let mut kb = [0u8; KEY_LEN];
    let mut revs = vec![last];
    for i in [0, keyspace.saturating_sub(1)] {
        let e = expect_ok(
            c.call(&[b"ENTRY", keys::key(i, &mut kb).as_bytes()])?,
            "ENTRY",
        )?;
        revs.push(e.field("revision").and_then(Value::as_int));
    }
    let want = i64::try_from(keyspace)?;
    if revs != [Some(want), Some(1), Some(want)] {
        return Err(format!(
            "after the preload of {keyspace} keys logkv's last revision and those of the first \
             and last keys are {revs:?}, not [{want}, 1, {want}]"
        )
        .into());
    }
    Ok(())
}

/// The requests of one verb on random keys, each checked with what the client knows of
/// its key.
struct VerbRequests<'a> {
    verb: Verb,
    value: &'a [u8],
    keyspace: &'a mut Keyspace,
    rng: &'a mut Rng,
}

impl Requests for VerbRequests<'_> {
    fn next(&mut self, out: &mut Vec<u8>) -> u64 {
        let key = self.keyspace.take(self.rng);
        self.verb
            .encode(key, self.keyspace.rev(key), self.value, out);
        key
    }

    fn reply(&mut self, buf: &[u8], key: u64) -> Result<Option<usize>, String> {
        let Some((reply, used)) = skim::reply(buf)? else {
            return Ok(None);
        };
        let new = self
            .verb
            .check(reply, self.keyspace.rev(key), self.value.len())?;
        self.keyspace.done(key, new);
        Ok(Some(used))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_the_verbs_with_their_arguments() {
        let mut out = Vec::new();
        Verb::Update.encode(7, 8, b"vv", &mut out);
        assert_eq!(
            resp::parse(&out).unwrap().unwrap().0,
            Value::Array(
                [&b"UPDATE"[..], b"key:000000000007", b"vv", b"8"]
                    .iter()
                    .map(|a| Value::Bulk(a.to_vec()))
                    .collect()
            )
        );
        out.clear();
        Verb::History.encode(1, 2, b"vv", &mut out);
        assert_eq!(out, b"*2\r\n$7\r\nHISTORY\r\n$16\r\nkey:000000000001\r\n");
    }

    #[test]
    fn replies_are_checked_and_writes_give_the_new_revision() {
        let int = Reply::Line(b':', b"12");
        assert_eq!(Verb::Update.check(int, 11, 3), Ok(Some(12)));
        assert_eq!(Verb::Put.check(int, 5, 3), Ok(Some(12)));
        // A revision that does not move forward, or an error, fails the run.
        assert!(Verb::Put.check(int, 12, 3).is_err());
        let wrongrev = Reply::Line(b'-', b"WRONGREV expected 3, latest 4");
        let err = Verb::Update.check(wrongrev, 3, 3).unwrap_err();
        assert!(err.contains("WRONGREV"), "{err}");
        assert_eq!(Verb::History.check(Reply::Aggregate(1), 1, 3), Ok(None));
        assert!(Verb::History.check(Reply::Aggregate(0), 1, 3).is_err());
        assert_eq!(Verb::Set.check(Reply::Line(b'+', b"OK"), 0, 3), Ok(None));
        assert_eq!(Verb::Get.check(Reply::Bulk(b"abc"), 0, 3), Ok(None));
        assert!(Verb::Get.check(Reply::Bulk(b"ab"), 0, 3).is_err());
        assert!(Verb::Get.check(Reply::Line(b'_', b""), 0, 3).is_err());
    }

    #[test]
    fn keys_in_flight_are_never_drawn_twice_and_revisions_follow_replies() {
        let mut ks = Keyspace::preloaded(3).unwrap();
        let mut rng = Rng::new(1);
        let mut drawn: Vec<u64> = (0..3).map(|_| ks.take(&mut rng)).collect();
        drawn.sort_unstable();
        assert_eq!(
            drawn,
            [0, 1, 2],
            "three keys in flight: all three, once each"
        );
        assert_eq!((ks.rev(0), ks.rev(2)), (1, 3));
        ks.done(2, Some(9));
        ks.done(0, None);
        assert_eq!((ks.rev(0), ks.rev(2)), (1, 9));
        let again = ks.take(&mut rng);
        assert!(again == 0 || again == 2, "only answered keys come back");
    }
}
