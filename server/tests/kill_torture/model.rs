//! What the cycles so far allow the store to hold, and the checks after each restart.
//!
//! Every value a client sends is unique, so a PUT entry names the request that wrote
//! it. A request's outcome is known (acknowledged with its revision, refused) or unknown
//! (its connection died first). After a restart every retained entry must be a write
//! some client sent that was not refused, with the revision it was acknowledged with;
//! every write known to be committed (acknowledged, read by a client, or found at an
//! earlier restart) must still be there unless a later write of its key superseded it;
//! batches are all or nothing; no revision of a bucket is ever given to two different
//! writes, lost ones included.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};

use crate::load::{Effect, Entry, Outcome, Request, Unit, Write, BUCKETS};

/// How the server syncs, and so what a kill may take back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `--fsync always`: nothing acknowledged or read is ever lost.
    Always,
    /// `--fsync interval=<ms>`: the tail of the log past the last sync may be lost,
    /// but its revisions are never given to other data.
    Interval,
}

/// What the model keeps of a write: a DEL, or a value by its 64-bit digest (values run
/// to KiB, and a long run sends a million of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kept {
    Put(u64),
    Del,
}

impl From<&Effect> for Kept {
    fn from(effect: &Effect) -> Kept {
        match effect {
            Effect::Put(v) => Kept::Put(digest(v)),
            Effect::Del => Kept::Del,
        }
    }
}

/// A value's digest (`SipHash` with fixed keys: the same in every run).
fn digest(value: &str) -> u64 {
    let mut h = DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

/// What is known of a PUT-like request (named by its unique value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    /// Acknowledged with this revision.
    Acked(u64),
    /// Outcome unknown, then seen (by a read or after a restart) at this revision.
    Applied(u64),
    /// Refused by a precondition: must never be seen.
    Refused,
    /// Outcome unknown, not seen yet.
    Unknown,
    /// Unknown and not found after the restart, or lost: must never be seen again.
    Absent,
}

/// A PUT-like request: where it wrote and what became of it.
#[derive(Debug)]
struct Sent {
    bucket: usize,
    key: String,
    status: Status,
}

/// How a committed write became known; the strongest way counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Origin {
    /// Found at a restart.
    Found,
    /// Returned by a client's read.
    Read,
    /// Acknowledged to its client.
    Acked,
}

/// A write known to be committed.
#[derive(Debug, Clone)]
struct Committed {
    effect: Kept,
    origin: Origin,
}

/// One bucket of the model.
#[derive(Debug, Default)]
struct BucketModel {
    history: usize,
    /// Every revision known to have been given out, and to what (lost ones included).
    given: BTreeMap<u64, (String, Kept)>,
    /// Per key, the writes known to be committed that the next restart must keep
    /// (or show superseded).
    committed: BTreeMap<String, BTreeMap<u64, Committed>>,
}

/// A batch to check for all or nothing: its writes, and its first revision when known.
#[derive(Debug)]
struct Batch {
    bucket: usize,
    writes: Vec<(String, Kept)>,
    first: Option<u64>,
}

/// The counts of a run.
#[derive(Debug, Default, Clone)]
pub struct Figures {
    pub cycles: u64,
    pub restarts: u64,
    pub writes_acked: u64,
    pub writes_refused: u64,
    /// Refused requests (a batch counts once) by error code.
    pub refusals: BTreeMap<String, u64>,
    pub writes_unknown: u64,
    pub unknown_found_applied: u64,
    pub entries_read: u64,
    /// Acknowledged writes whose presence (or supersession) a restart checked.
    pub acked_checked: u64,
    pub lost_acked: u64,
    pub lost_read: u64,
    pub lost_found: u64,
    pub batches_acked: u64,
    pub batches_aborted: u64,
    pub batches_unknown: u64,
    pub batches_unknown_applied: u64,
    pub compactions: u64,
    pub entries_found: u64,
    /// Starts killed while they opened the store (before the one that served).
    pub starts_killed: u64,
    /// Restarts whose log says the revision counter skipped (unclean stop under interval).
    pub counter_skips: u64,
    /// Restarts whose log says recovery cut a torn tail.
    pub tails_cut: u64,
}

/// The model of a whole run.
pub struct Model {
    mode: Mode,
    buckets: Vec<BucketModel>,
    /// PUT-like requests by the digest of their value.
    puts: HashMap<u64, Sent>,
    /// This cycle's PUT-like requests of unknown outcome.
    unknown_puts: Vec<u64>,
    /// This cycle's DELs of unknown outcome, by bucket and key.
    unknown_dels: HashSet<(usize, String)>,
    /// This cycle's batches that were acknowledged or of unknown outcome.
    batches: Vec<Batch>,
    pub figures: Figures,
}

impl Model {
    pub fn new(mode: Mode) -> Model {
        Model {
            mode,
            buckets: BUCKETS
                .iter()
                .map(|&(_, history)| BucketModel {
                    history,
                    ..BucketModel::default()
                })
                .collect(),
            puts: HashMap::new(),
            unknown_puts: Vec::new(),
            unknown_dels: HashSet::new(),
            batches: Vec::new(),
            figures: Figures::default(),
        }
    }

    /// The highest revision of `bucket` known to have been given out.
    pub fn highest_given(&self, bucket: usize) -> u64 {
        self.buckets[bucket]
            .given
            .last_key_value()
            .map_or(0, |(r, _)| *r)
    }

    /// Records a single PUT the harness itself made and had acknowledged.
    pub fn acked_put(&mut self, bucket: usize, key: &str, value: &str, revision: u64) {
        self.sent(bucket, key, &Effect::Put(value.to_string()));
        self.acked(bucket, key, &Effect::Put(value.to_string()), revision);
    }

    /// Records what the clients of a cycle sent and learned: writes first (all of
    /// them, so that reads can name the requests they saw), then reads.
    pub fn record(&mut self, requests: &[Request]) {
        for r in requests {
            self.record_writes(r);
        }
        for r in requests {
            if let Outcome::Read(entries) = &r.outcome {
                for e in entries {
                    self.identify(r.bucket, e, "a client read");
                    self.commit(
                        r.bucket,
                        &e.key,
                        e.revision,
                        (&e.effect).into(),
                        Origin::Read,
                    );
                    self.figures.entries_read += 1;
                }
            }
        }
    }

    fn record_writes(&mut self, r: &Request) {
        let b = r.bucket;
        let writes: Vec<&Write> = match &r.unit {
            Unit::Write(w) => vec![w],
            Unit::Batch(ws) => ws.iter().collect(),
            Unit::Read(..) => return,
            Unit::Compact => {
                if matches!(r.outcome, Outcome::Compacted) {
                    self.figures.compactions += 1;
                }
                return;
            }
        };
        for w in &writes {
            self.sent(b, w.key(), &w.effect());
        }
        let batch = || -> Vec<(String, Kept)> {
            writes
                .iter()
                .map(|w| (w.key().to_string(), Kept::from(&w.effect())))
                .collect()
        };
        let is_batch = matches!(r.unit, Unit::Batch(_));
        match &r.outcome {
            Outcome::Acked(revs) => {
                assert_eq!(revs.len(), writes.len(), "{r:?}");
                for (i, (w, rev)) in writes.iter().zip(revs).enumerate() {
                    assert_eq!(
                        *rev,
                        revs[0] + i as u64,
                        "a batch's revisions are consecutive: {r:?}"
                    );
                    self.acked(b, w.key(), &w.effect(), *rev);
                }
                if is_batch {
                    self.figures.batches_acked += 1;
                    self.batches.push(Batch {
                        bucket: b,
                        writes: batch(),
                        first: Some(revs[0]),
                    });
                }
            }
            Outcome::Refused(code) => {
                *self.figures.refusals.entry(code.clone()).or_default() += 1;
                for w in &writes {
                    if let Kept::Put(v) = Kept::from(&w.effect()) {
                        self.put_mut(v).status = Status::Refused;
                    }
                }
                self.figures.writes_refused += writes.len() as u64;
                self.figures.batches_aborted += u64::from(is_batch);
            }
            Outcome::Unknown => {
                for w in &writes {
                    match Kept::from(&w.effect()) {
                        Kept::Put(v) => self.unknown_puts.push(v),
                        Kept::Del => {
                            self.unknown_dels.insert((b, w.key().to_string()));
                        }
                    }
                }
                self.figures.writes_unknown += writes.len() as u64;
                if is_batch {
                    self.figures.batches_unknown += 1;
                    self.batches.push(Batch {
                        bucket: b,
                        writes: batch(),
                        first: None,
                    });
                }
            }
            other => panic!("a write's outcome {other:?}"),
        }
    }

    /// Notes a write sent (a PUT-like one is named by its value, which must be new).
    fn sent(&mut self, bucket: usize, key: &str, effect: &Effect) {
        if let Effect::Put(v) = effect {
            let old = self.puts.insert(
                digest(v),
                Sent {
                    bucket,
                    key: key.to_string(),
                    status: Status::Unknown,
                },
            );
            assert!(old.is_none(), "the value {v:?} was sent twice");
        }
    }

    fn acked(&mut self, bucket: usize, key: &str, effect: &Effect, revision: u64) {
        let kept = Kept::from(effect);
        if let Kept::Put(v) = kept {
            self.put_mut(v).status = Status::Acked(revision);
        }
        self.commit(bucket, key, revision, kept, Origin::Acked);
        self.figures.writes_acked += 1;
    }

    fn put_mut(&mut self, digest: u64) -> &mut Sent {
        self.puts
            .get_mut(&digest)
            .unwrap_or_else(|| panic!("no request sent a value of digest {digest:x}"))
    }

    /// Notes that `revision` of `bucket` holds this write, which is committed: a
    /// revision is never given to two different writes.
    fn commit(&mut self, bucket: usize, key: &str, revision: u64, effect: Kept, origin: Origin) {
        let name = BUCKETS[bucket].0;
        let model = &mut self.buckets[bucket];
        let what = (key.to_string(), effect);
        let held = model.given.entry(revision).or_insert_with(|| what.clone());
        assert_eq!(
            *held, what,
            "bucket {name}: revision {revision} given to two different writes"
        );
        let slot = model
            .committed
            .entry(key.to_string())
            .or_default()
            .entry(revision)
            .or_insert_with(|| Committed { effect, origin });
        slot.origin = slot.origin.max(origin);
    }

    /// Checks that an entry the server returned is a write some client sent, with the
    /// revision it was acknowledged with, neither refused nor found absent before; a
    /// write of unknown outcome seen here was applied.
    fn identify(&mut self, bucket: usize, e: &Entry, seen_by: &str) {
        let name = BUCKETS[bucket].0;
        match &e.effect {
            Effect::Put(v) => {
                let sent = self.puts.get_mut(&digest(v)).unwrap_or_else(|| {
                    panic!("{seen_by}: bucket {name}: {e:?} holds a value no client sent")
                });
                assert!(
                    sent.bucket == bucket && sent.key == e.key,
                    "{seen_by}: bucket {name}: {e:?} was sent to bucket {} key {}",
                    BUCKETS[sent.bucket].0,
                    sent.key
                );
                match sent.status {
                    Status::Acked(r) | Status::Applied(r) => assert_eq!(
                        r, e.revision,
                        "{seen_by}: bucket {name}: {e:?} was acknowledged or seen at revision {r}"
                    ),
                    Status::Unknown => {
                        sent.status = Status::Applied(e.revision);
                        self.figures.unknown_found_applied += 1;
                    }
                    Status::Refused => {
                        panic!("{seen_by}: bucket {name}: {e:?} was refused, yet applied")
                    }
                    Status::Absent => panic!(
                        "{seen_by}: bucket {name}: {e:?} was missing after a restart \
                         (or lost), yet came back"
                    ),
                }
            }
            Effect::Del => {
                let known = self.buckets[bucket].given.contains_key(&e.revision);
                assert!(
                    known || self.unknown_dels.contains(&(bucket, e.key.clone())),
                    "{seen_by}: bucket {name}: a DEL marker {e:?} that no request can have written"
                );
            }
        }
    }

    /// Checks what the restarted server holds (`found[b]`: every retained entry of
    /// bucket `b`), then makes it the committed state the next restart starts from.
    pub fn check(&mut self, found: &[Vec<Entry>]) {
        let mut held: Vec<BTreeMap<String, BTreeMap<u64, Kept>>> = Vec::new();
        for (b, entries) in found.iter().enumerate() {
            held.push(self.check_bucket(b, entries));
        }
        self.check_batches(&held);
        // Unknown writes not seen by now were not applied, or were superseded: either
        // way they never show up again.
        for v in std::mem::take(&mut self.unknown_puts) {
            let sent = self.put_mut(v);
            if sent.status == Status::Unknown {
                sent.status = Status::Absent;
            }
        }
        self.unknown_dels.clear();
    }

    /// Checks one bucket; returns its entries by key.
    #[allow(clippy::too_many_lines, reason = "one check, read top to bottom")]
    fn check_bucket(
        &mut self,
        b: usize,
        entries: &[Entry],
    ) -> BTreeMap<String, BTreeMap<u64, Kept>> {
        let name = BUCKETS[b].0;
        let history = self.buckets[b].history;
        let mut by_key: BTreeMap<String, BTreeMap<u64, Kept>> = BTreeMap::new();
        let mut revisions = HashSet::new();
        for e in entries {
            assert!(
                revisions.insert(e.revision),
                "bucket {name}: revision {} held twice: {entries:?}",
                e.revision
            );
            self.identify(b, e, "after the restart");
            by_key
                .entry(e.key.clone())
                .or_default()
                .insert(e.revision, Kept::from(&e.effect));
        }
        self.figures.entries_found += entries.len() as u64;
        for (key, revs) in &by_key {
            assert!(
                revs.len() <= history,
                "bucket {name}: {key} keeps {} entries, history {history}",
                revs.len()
            );
        }
        let empty = BTreeMap::new();
        let mut lost: Vec<(u64, String, Kept)> = Vec::new();
        for (key, committed) in &self.buckets[b].committed {
            let held = by_key.get(key).unwrap_or(&empty);
            let oldest = held.keys().next().copied().unwrap_or(0);
            let newest = held.keys().next_back().copied().unwrap_or(0);
            for (&rev, c) in committed {
                let present = match held.get(&rev) {
                    Some(effect) => {
                        assert_eq!(*effect, c.effect, "bucket {name}: {key} revision {rev}");
                        true
                    }
                    // Superseded by later writes of the key, past its history.
                    None => held.len() == history && rev < oldest,
                };
                if present {
                    if c.origin == Origin::Acked {
                        self.figures.acked_checked += 1;
                    }
                    continue;
                }
                assert!(
                    self.mode == Mode::Interval,
                    "bucket {name}: {key} revision {rev} ({:?}, {:?}) is gone after the kill \
                     under --fsync always; the key holds {held:?}",
                    c.effect,
                    c.origin
                );
                assert!(
                    rev > newest,
                    "bucket {name}: {key} revision {rev} ({:?}) is gone, yet the key holds \
                     {held:?}: only the last writes of a key can be lost (a tail of the log)",
                    c.effect
                );
                match c.origin {
                    Origin::Acked => self.figures.lost_acked += 1,
                    Origin::Read => self.figures.lost_read += 1,
                    Origin::Found => self.figures.lost_found += 1,
                }
                lost.push((rev, key.clone(), c.effect));
            }
        }
        if let Some(first_lost) = lost.iter().map(|l| l.0).min() {
            // A kill takes back the tail of the log: nothing after a lost write stays.
            let after: Vec<&Entry> = entries.iter().filter(|e| e.revision > first_lost).collect();
            assert!(
                after.is_empty(),
                "bucket {name}: revision {first_lost} was lost but later ones stayed: {after:?}"
            );
        }
        for (_, _, effect) in &lost {
            // A lost write never comes back (its revision stays given: see `commit`).
            if let Kept::Put(v) = effect {
                self.put_mut(*v).status = Status::Absent;
            }
        }
        for e in entries {
            self.commit(b, &e.key, e.revision, (&e.effect).into(), Origin::Found);
        }
        self.buckets[b].committed = by_key
            .iter()
            .map(|(key, revs)| {
                let revs = revs
                    .iter()
                    .map(|(&r, effect)| {
                        let c = Committed {
                            effect: *effect,
                            origin: Origin::Found,
                        };
                        (r, c)
                    })
                    .collect();
                (key.clone(), revs)
            })
            .collect();
        by_key
    }

    /// Batches are all or nothing: once one write of a batch is seen, each of the others
    /// is there at its revision or superseded; under `interval` a batch may also be
    /// lost whole.
    fn check_batches(&mut self, held: &[BTreeMap<String, BTreeMap<u64, Kept>>]) {
        for batch in std::mem::take(&mut self.batches) {
            let name = BUCKETS[batch.bucket].0;
            let seen: Vec<u64> = batch
                .writes
                .iter()
                .enumerate()
                .filter_map(|(i, (_, effect))| match effect {
                    Kept::Put(v) => match self.puts[v].status {
                        Status::Applied(r) | Status::Acked(r) => Some(r - i as u64),
                        _ => None,
                    },
                    Kept::Del => None,
                })
                .collect();
            let Some(first) = batch.first.or_else(|| seen.first().copied()) else {
                continue;
            };
            assert!(
                seen.iter().all(|&f| f == first),
                "bucket {name}: a batch's writes at revisions that do not follow each other: \
                 {batch:?} (first revisions {seen:?})"
            );
            if batch.first.is_none() {
                self.figures.batches_unknown_applied += 1;
            }
            let empty = BTreeMap::new();
            let history = self.buckets[batch.bucket].history;
            let states: Vec<&str> = batch
                .writes
                .iter()
                .enumerate()
                .map(|(i, (key, effect))| {
                    let rev = first + i as u64;
                    let revs = held[batch.bucket].get(key).unwrap_or(&empty);
                    let oldest = revs.keys().next().copied().unwrap_or(0);
                    let newest = revs.keys().next_back().copied().unwrap_or(0);
                    if revs.get(&rev) == Some(effect) || (revs.len() == history && rev < oldest) {
                        "there"
                    } else if rev > newest {
                        "lost"
                    } else {
                        "missing"
                    }
                })
                .collect();
            let whole = states.iter().all(|s| *s == "there")
                || (self.mode == Mode::Interval && states.iter().all(|s| *s == "lost"));
            assert!(
                whole,
                "bucket {name}: a batch applied in part: {states:?} for {batch:?} from revision {first}"
            );
        }
    }
}
