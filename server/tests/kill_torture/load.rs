//! The load: client threads that each send a random mix of writes (PUT, CREATE, UPDATE
//! and CAS with preconditions, DEL), MULTI/EXEC batches, reads and the odd COMPACT,
//! alone or pipelined, over two buckets, until their connection dies; and what became of
//! every request.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;

use crate::resp::{Conn, Reply};
use crate::rng::Rng;

/// The buckets of the load: name and HISTORY. `default` exists; the others are created
/// before the first cycle.
pub const BUCKETS: [(&str, usize); 2] = [("default", 1), ("hist", 3)];

/// Keys each client has to itself (its preconditions hold unless it raced with
/// nobody), and keys all clients share (their preconditions race).
const PRIVATE_KEYS: u64 = 10;
const SHARED_KEYS: u64 = 5;

/// What a write leaves as its key's latest entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Effect {
    /// A value; every value a client sends is unique, so it names its request.
    Put(String),
    /// A DEL marker.
    Del,
}

/// A retained entry, as a read or HISTORY returned it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub revision: u64,
    pub effect: Effect,
}

impl Entry {
    /// Reads an entry reply (RESP2: a flat array of field/value pairs).
    pub fn parse(reply: &Reply) -> Entry {
        let text = |name: &str| {
            reply
                .field(name)
                .and_then(Reply::text)
                .unwrap_or_else(|| panic!("no {name} in the entry {reply:?}"))
        };
        let revision = reply
            .field("revision")
            .and_then(Reply::int)
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or_else(|| panic!("no revision in the entry {reply:?}"));
        let effect = match text("op").as_str() {
            "PUT" => Effect::Put(text("value")),
            "DEL" => Effect::Del,
            op => panic!("the load never writes {op}: {reply:?}"),
        };
        Entry {
            key: text("key"),
            revision,
            effect,
        }
    }

    /// Reads an array of entries (HISTORY).
    pub fn parse_all(reply: &Reply) -> Vec<Entry> {
        match reply {
            Reply::Array(Some(items)) => items.iter().map(Entry::parse).collect(),
            other => panic!("not an array of entries: {other:?}"),
        }
    }
}

/// One write request.
#[derive(Debug, Clone)]
pub enum Write {
    Put {
        key: String,
        value: String,
    },
    Create {
        key: String,
        value: String,
    },
    Update {
        key: String,
        value: String,
        rev: u64,
    },
    Cas {
        key: String,
        value: String,
        old: Option<String>,
    },
    Del {
        key: String,
        rev: Option<u64>,
    },
}

impl Write {
    pub fn key(&self) -> &str {
        match self {
            Write::Put { key, .. }
            | Write::Create { key, .. }
            | Write::Update { key, .. }
            | Write::Cas { key, .. }
            | Write::Del { key, .. } => key,
        }
    }

    /// What the write leaves, if it is applied.
    pub fn effect(&self) -> Effect {
        match self {
            Write::Put { value, .. }
            | Write::Create { value, .. }
            | Write::Update { value, .. }
            | Write::Cas { value, .. } => Effect::Put(value.clone()),
            Write::Del { .. } => Effect::Del,
        }
    }

    fn args(&self) -> Vec<String> {
        let s = String::clone;
        match self {
            Write::Put { key, value } => vec!["PUT".into(), s(key), s(value)],
            Write::Create { key, value } => vec!["CREATE".into(), s(key), s(value)],
            Write::Update { key, value, rev } => {
                vec!["UPDATE".into(), s(key), s(value), rev.to_string()]
            }
            Write::Cas { key, value, old } => {
                let mut args = vec!["CAS".into(), s(key), s(value)];
                args.extend(old.clone());
                args
            }
            Write::Del { key, rev: None } => vec!["DEL".into(), s(key)],
            Write::Del { key, rev: Some(r) } => {
                vec!["DEL".into(), s(key), "REV".into(), r.to_string()]
            }
        }
    }
}

/// How a read asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadVerb {
    /// `ENTRY key`: the live value, or null.
    Entry,
    /// `HISTORY key`: every retained entry of the key, markers included.
    History,
}

/// One request, or one batch sent as MULTI, its writes, EXEC.
#[derive(Debug, Clone)]
pub enum Unit {
    Write(Write),
    Batch(Vec<Write>),
    Read(String, ReadVerb),
    Compact,
}

/// What became of a unit.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Applied: the revision of each write (one for a single write).
    Acked(Vec<u64>),
    /// Refused by a precondition, with the error's code (for a batch: `ABORTED`
    /// and the code of the write that failed).
    Refused(String),
    /// A read: the entries it returned.
    Read(Vec<Entry>),
    /// COMPACT finished.
    Compacted,
    /// The connection died before the whole reply came: applied or not.
    Unknown,
}

/// A unit sent, in a bucket, and its outcome.
#[derive(Debug, Clone)]
pub struct Request {
    pub bucket: usize,
    pub unit: Unit,
    pub outcome: Outcome,
}

/// One client's connection and its view of the keys.
struct Client {
    rng: Rng,
    id: u64,
    cycle: u64,
    seq: u64,
    /// The bucket the connection is in.
    bucket: usize,
    /// What this client last learned of a key: its latest revision and live value.
    view: HashMap<(usize, String), (u64, Option<String>)>,
    /// Keys whose precondition failed, to read before writing them again.
    refresh: Vec<(usize, String)>,
}

/// Runs client `id` of `cycle` against `addr` until its connection dies (the server is
/// killed); returns every request it sent, in order, with its outcome.
pub fn run(addr: SocketAddr, id: u64, cycle: u64, seed: u64) -> Vec<Request> {
    let mut done = Vec::new();
    // The kill may come before the connection.
    let Ok(mut conn) = Conn::connect(addr) else {
        return done;
    };
    let mut c = Client {
        rng: Rng::new(seed),
        id,
        cycle,
        seq: 0,
        bucket: 0,
        view: HashMap::new(),
        refresh: Vec::new(),
    };
    loop {
        let n = if c.rng.below(10) < 3 {
            c.rng.range_usize(2, 7)
        } else {
            1
        };
        let units: Vec<(usize, Unit)> = (0..n).map(|_| c.next_unit()).collect();
        let mut bytes = Vec::new();
        let mut switches = Vec::new();
        for (bucket, unit) in &units {
            let switch = *bucket != c.bucket;
            if switch {
                logkv_server::protocol::encode_request(&["USE", BUCKETS[*bucket].0], &mut bytes);
                c.bucket = *bucket;
            }
            switches.push(switch);
            for args in requests(unit) {
                logkv_server::protocol::encode_request(&args, &mut bytes);
            }
        }
        let mut alive = conn.send(&bytes).is_ok();
        for ((bucket, unit), switch) in units.into_iter().zip(switches) {
            let outcome = if alive {
                read_outcome(&mut conn, &unit, switch).unwrap_or(Outcome::Unknown)
            } else {
                Outcome::Unknown
            };
            alive = !matches!(outcome, Outcome::Unknown);
            c.learn(bucket, &unit, &outcome);
            done.push(Request {
                bucket,
                unit,
                outcome,
            });
        }
        if !alive {
            return done;
        }
    }
}

/// The requests of a unit, in order.
fn requests(unit: &Unit) -> Vec<Vec<String>> {
    match unit {
        Unit::Write(w) => vec![w.args()],
        Unit::Batch(ws) => std::iter::once(vec!["MULTI".to_string()])
            .chain(ws.iter().map(Write::args))
            .chain(std::iter::once(vec!["EXEC".to_string()]))
            .collect(),
        Unit::Read(key, ReadVerb::Entry) => vec![vec!["ENTRY".into(), key.clone()]],
        Unit::Read(key, ReadVerb::History) => vec![vec!["HISTORY".into(), key.clone()]],
        Unit::Compact => vec![vec!["COMPACT".into()]],
    }
}

/// Reads the replies of a unit (after USE's when it switched buckets). An I/O error
/// means the outcome is unknown; a reply the protocol does not allow here panics.
fn read_outcome(conn: &mut Conn, unit: &Unit, switch: bool) -> io::Result<Outcome> {
    let expect_status = |reply: Reply, status: &str, what: &str| {
        assert_eq!(reply, Reply::Status(status.into()), "{what} in {unit:?}");
    };
    if switch {
        expect_status(conn.read()?, "OK", "USE");
    }
    Ok(match unit {
        Unit::Write(w) => match conn.read()? {
            Reply::Int(r) => Outcome::Acked(vec![revision(r)]),
            e if is_refusal(&e) => Outcome::Refused(e.error_code().unwrap_or("").to_string()),
            other => panic!("{w:?}: unexpected reply {other:?}"),
        },
        Unit::Batch(ws) => {
            expect_status(conn.read()?, "OK", "MULTI");
            for _ in ws {
                expect_status(conn.read()?, "QUEUED", "a queued write");
            }
            match conn.read()? {
                Reply::Array(Some(items)) => {
                    assert_eq!(items.len(), ws.len(), "EXEC's replies for {ws:?}");
                    Outcome::Acked(
                        items
                            .iter()
                            .map(|r| revision(r.int().unwrap_or_else(|| panic!("EXEC {r:?}"))))
                            .collect(),
                    )
                }
                // `-ABORTED <index> <code> <message>`: refused by a precondition.
                Reply::Error(e)
                    if e.starts_with("ABORTED ")
                        && is_refusal(&Reply::Error(
                            e.splitn(3, ' ').nth(2).unwrap_or("").into(),
                        )) =>
                {
                    let code = e.split(' ').nth(2).unwrap_or("");
                    Outcome::Refused(format!("ABORTED {code}"))
                }
                other => panic!("EXEC of {ws:?}: unexpected reply {other:?}"),
            }
        }
        Unit::Read(key, verb) => {
            let reply = conn.read()?;
            let entries = match verb {
                ReadVerb::Entry if reply.is_null() => Vec::new(),
                ReadVerb::Entry => vec![Entry::parse(&reply)],
                ReadVerb::History => Entry::parse_all(&reply),
            };
            assert!(
                entries.iter().all(|e| &e.key == key),
                "{verb:?} {key} returned {entries:?}"
            );
            Outcome::Read(entries)
        }
        Unit::Compact => {
            expect_status(conn.read()?, "OK", "COMPACT");
            Outcome::Compacted
        }
    })
}

/// Whether a reply is a write's refusal by its precondition.
fn is_refusal(reply: &Reply) -> bool {
    matches!(reply.error_code(), Some("WRONGREV" | "MISMATCH" | "EXISTS"))
}

fn revision(r: i64) -> u64 {
    u64::try_from(r).unwrap_or_else(|_| panic!("a negative revision {r}"))
}

impl Client {
    fn next_unit(&mut self) -> (usize, Unit) {
        if let Some((bucket, key)) = self.refresh.pop() {
            return (bucket, Unit::Read(key, ReadVerb::History));
        }
        let bucket = self.rng.range_usize(0, BUCKETS.len());
        let unit = match self.rng.below(100) {
            0..=59 => Unit::Write(self.write(bucket)),
            60..=77 => Unit::Batch(self.batch(bucket)),
            78..=98 => {
                let verb = if self.rng.below(2) == 0 {
                    ReadVerb::Entry
                } else {
                    ReadVerb::History
                };
                Unit::Read(self.key(), verb)
            }
            _ => Unit::Compact,
        };
        (bucket, unit)
    }

    fn key(&mut self) -> String {
        if self.rng.below(10) < 7 {
            format!("c{}.{}", self.id, self.rng.below(PRIVATE_KEYS))
        } else {
            format!("s.{}", self.rng.below(SHARED_KEYS))
        }
    }

    /// A value no other request of the run sends: cycle, client, sequence, then padding
    /// of a random length (now and then a few KiB).
    fn value(&mut self) -> String {
        self.seq += 1;
        let pad = if self.rng.below(50) == 0 {
            self.rng.range_usize(2048, 8192)
        } else {
            self.rng.range_usize(0, 48)
        };
        let letters: String = self
            .rng
            .bytes(pad)
            .into_iter()
            .map(|b| char::from(b'a' + b % 26))
            .collect();
        format!("v{}.{}.{}.{letters}", self.cycle, self.id, self.seq)
    }

    /// Two to five writes of different keys, half of them plain PUTs (a batch aborts
    /// when any precondition fails).
    fn batch(&mut self, bucket: usize) -> Vec<Write> {
        let n = self.rng.range_usize(2, 6);
        let mut writes: Vec<Write> = Vec::with_capacity(n);
        while writes.len() < n {
            let w = if self.rng.below(2) == 0 {
                let key = self.key();
                let value = self.value();
                Write::Put { key, value }
            } else {
                self.write(bucket)
            };
            if writes.iter().all(|o| o.key() != w.key()) {
                writes.push(w);
            }
        }
        writes
    }

    fn write(&mut self, bucket: usize) -> Write {
        let key = self.key();
        let (rev, old) = self
            .view
            .get(&(bucket, key.clone()))
            .cloned()
            .unwrap_or((0, None));
        let value = self.value();
        match self.rng.below(100) {
            0..=29 => Write::Put { key, value },
            30..=39 => Write::Create { key, value },
            // Now and then a revision that cannot be the latest.
            40..=59 => Write::Update {
                key,
                value,
                rev: if self.rng.below(20) == 0 {
                    rev + 1
                } else {
                    rev
                },
            },
            60..=79 => Write::Cas { key, value, old },
            _ => Write::Del {
                key,
                rev: (rev > 0 && self.rng.below(2) == 0).then_some(rev),
            },
        }
    }

    /// Updates the view with what a unit's outcome tells.
    fn learn(&mut self, bucket: usize, unit: &Unit, outcome: &Outcome) {
        let mut set = |key: &str, rev: u64, effect: &Effect| {
            let value = match effect {
                Effect::Put(v) => Some(v.clone()),
                Effect::Del => None,
            };
            let slot = self.view.entry((bucket, key.to_string())).or_default();
            if rev >= slot.0 {
                *slot = (rev, value);
            }
        };
        match (unit, outcome) {
            (Unit::Write(w), Outcome::Acked(revs)) => set(w.key(), revs[0], &w.effect()),
            (Unit::Batch(ws), Outcome::Acked(revs)) => {
                for (w, r) in ws.iter().zip(revs) {
                    set(w.key(), *r, &w.effect());
                }
            }
            (Unit::Read(key, _), Outcome::Read(entries)) => {
                for e in entries {
                    set(&e.key, e.revision, &e.effect);
                }
                if entries.is_empty() {
                    // ENTRY's null: no live value (its revision is not told).
                    if let Some(slot) = self.view.get_mut(&(bucket, key.clone())) {
                        slot.1 = None;
                    }
                }
            }
            (Unit::Write(w), Outcome::Refused(_)) => {
                self.refresh.push((bucket, w.key().to_string()));
            }
            (Unit::Batch(ws), Outcome::Refused(_)) => {
                let w = &ws[self.rng.range_usize(0, ws.len())];
                self.refresh.push((bucket, w.key().to_string()));
            }
            _ => {}
        }
    }
}
