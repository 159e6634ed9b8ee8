//! The `ops` target: operation sequences against a model of the semantics.

use std::collections::BTreeMap;
use std::path::PathBuf;

use logkv::log::record::HEADER_LEN;
use logkv::{Bucket, BucketConfig, Error, Op, Store, WriteOp};

use super::input::Input;
use crate::options::opts;
use crate::store_dir::copy_store_dir;

/// Segment size (small, so that the log rotates and compaction has sealed
/// segments to work on).
const SEGMENT: u64 = 4096;
/// Keys written (one dotted, for the subject patterns).
const KEYS: [&str; 5] = ["a", "b", "c.d", "c.e", "f"];
/// Most operations in one run.
const MAX_OPS: usize = 96;
const BUCKET: &str = "m";

/// A write the input asks for, as the model sees it.
#[derive(Debug, Clone)]
enum Kind {
    Put,
    Create,
    /// Expected revision.
    Update(u64),
    Delete,
    /// Expected revision.
    DeleteAt(u64),
    Purge,
    /// Expected value (none: the key has no live value).
    Cas(Option<Vec<u8>>),
    /// The revision whose value is written again.
    Revert(u64),
}

#[derive(Debug, Clone)]
struct Planned {
    key: &'static str,
    kind: Kind,
    value: Vec<u8>,
}

impl Planned {
    fn write_op(&self) -> WriteOp {
        let (key, value) = (self.key, self.value.clone());
        match &self.kind {
            Kind::Put => WriteOp::put(key, value),
            Kind::Create => WriteOp::create(key, value),
            Kind::Update(rev) => WriteOp::update(key, value, *rev),
            Kind::Delete => WriteOp::delete(key),
            Kind::DeleteAt(rev) => WriteOp::delete_at(key, *rev),
            Kind::Purge => WriteOp::purge(key),
            Kind::Cas(expected) => WriteOp::cas(key, value, expected.clone().map(Into::into)),
            Kind::Revert(rev) => WriteOp::revert(key, *rev),
        }
    }
}

/// Why the model refuses a write (the engine's error, compared by kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    Exists,
    WrongRevision { expected: u64, latest: u64 },
    Mismatch,
    NotFound,
}

impl Refused {
    fn matches(self, e: &Error) -> bool {
        match (self, e) {
            (Refused::Exists, Error::Exists)
            | (Refused::Mismatch, Error::Mismatch)
            | (Refused::NotFound, Error::NotFound) => true,
            (
                Refused::WrongRevision { expected, latest },
                Error::WrongRevision {
                    expected: e,
                    latest: l,
                },
            ) => (expected, latest) == (*e, *l),
            _ => false,
        }
    }
}

/// One retained entry: (revision, op, value).
type Retained = (u64, Op, Vec<u8>);

/// The bucket as it must be: each key's retained entries, oldest first, and
/// the revision counter.
#[derive(Debug, Clone, Default)]
struct Model {
    keys: BTreeMap<&'static str, Vec<Retained>>,
    last_rev: u64,
    history: usize,
}

impl Model {
    fn latest(&self, key: &str) -> Option<&Retained> {
        self.keys.get(key).and_then(|h| h.last())
    }

    fn live_value(&self, key: &str) -> Option<&[u8]> {
        self.latest(key)
            .filter(|l| l.1 == Op::Put)
            .map(|l| &l.2[..])
    }

    /// Applies one write as the engine must (preconditions as in the
    /// engine's documentation of `WriteOp`); returns its revision.
    fn apply(&mut self, p: &Planned) -> Result<u64, Refused> {
        let latest = self.latest(p.key).map_or(0, |l| l.0);
        let has_entry = self.latest(p.key).is_some();
        let live = self.live_value(p.key);
        let (op, value) = match &p.kind {
            Kind::Create if live.is_some() => return Err(Refused::Exists),
            Kind::Put | Kind::Create => (Op::Put, p.value.clone()),
            // Revision 0 is the latest of a key with no entry, for both.
            Kind::Update(e) | Kind::DeleteAt(e) => {
                let ok = if *e == 0 {
                    !has_entry
                } else {
                    has_entry && *e == latest
                };
                if !ok {
                    return Err(Refused::WrongRevision {
                        expected: *e,
                        latest,
                    });
                }
                if matches!(p.kind, Kind::Update(_)) {
                    (Op::Put, p.value.clone())
                } else {
                    (Op::Del, Vec::new())
                }
            }
            Kind::Delete => (Op::Del, Vec::new()),
            Kind::Purge => (Op::Purge, Vec::new()),
            Kind::Cas(expected) => {
                if live != expected.as_deref() {
                    return Err(Refused::Mismatch);
                }
                (Op::Put, p.value.clone())
            }
            Kind::Revert(rev) => {
                let found = self
                    .keys
                    .get(p.key)
                    .and_then(|h| h.iter().find(|r| r.0 == *rev && r.1 == Op::Put));
                match found {
                    Some(r) => (Op::Put, r.2.clone()),
                    None => return Err(Refused::NotFound),
                }
            }
        };
        self.last_rev += 1;
        let history = self.keys.entry(p.key).or_default();
        if op == Op::Purge {
            history.clear();
        }
        history.push((self.last_rev, op, value));
        let excess = history.len().saturating_sub(self.history);
        history.drain(..excess);
        Ok(self.last_rev)
    }

    /// Applies a call: a batch (all or nothing: the first refusal, with its
    /// index when the call has several writes) or each write on its own.
    fn call(&mut self, planned: &[Planned], batch: bool) -> Vec<Result<u64, (usize, Refused)>> {
        if !batch {
            return planned
                .iter()
                .enumerate()
                .map(|(i, p)| self.apply(p).map_err(|r| (i, r)))
                .collect();
        }
        let mut scratch = self.clone();
        let mut out = Vec::new();
        for (i, p) in planned.iter().enumerate() {
            match scratch.apply(p) {
                Ok(rev) => out.push(Ok(rev)),
                Err(r) => return vec![Err((i, r))],
            }
        }
        *self = scratch;
        out
    }
}

/// The store under test, with what it takes to crash and reopen it.
struct Subject {
    root: PathBuf,
    dir: PathBuf,
    store: Option<Store>,
    reopens: usize,
}

impl Subject {
    fn bucket(&self) -> Bucket {
        self.store
            .as_ref()
            .expect("the store is open")
            .bucket(BUCKET)
            .expect("the bucket is there")
    }

    /// Closes the store cleanly and opens it again.
    fn reopen(&mut self) {
        drop(self.store.take());
        self.store = Some(Store::open(&self.dir, opts(SEGMENT)).expect("a clean reopen"));
    }

    /// Opens a copy of the directory taken while the store is open: what a
    /// killed process leaves (every write is in the page cache).
    fn crash(&mut self) {
        self.reopens += 1;
        let copy = self.root.join(format!("crash-{}", self.reopens));
        copy_store_dir(&self.dir, &copy).expect("the crash copy");
        drop(self.store.take());
        self.dir = copy;
        self.store = Some(Store::open(&self.dir, opts(SEGMENT)).expect("reopen after a crash"));
    }
}

/// Operation sequences against a model of the bucket semantics (history 1 to
/// 4, chosen by the first byte): put, create, update, delete, delete at a
/// revision, purge, compare-and-set and revert, alone, as atomic batches of
/// two or three, or as independent writes in one call; reads; syncs;
/// compactions; clean reopens; crashes (a copy of the directory taken while
/// open, under which the revision counter skips what a power cut could have
/// taken back). Every result, every error, and after each reopen, crash or
/// compaction and at the end the whole state (each key's history, each
/// retained revision, live values, keys, the status counters) must be the
/// model's.
///
/// # Panics
///
/// When the store and the model disagree (a finding).
pub fn ops(data: &[u8]) {
    let mut input = Input::new(data);
    let history = 1 + input.below(4);
    let tmp = crate::scratch::scratch_dir().expect("a scratch directory");
    let dir = tmp.path().join("s");
    let store = Store::open(&dir, opts(SEGMENT)).expect("a new store opens");
    store
        .create_bucket(
            BUCKET,
            BucketConfig {
                history,
                ..BucketConfig::default()
            },
        )
        .expect("the bucket is created");
    let mut subject = Subject {
        root: tmp.path().to_path_buf(),
        dir,
        store: Some(store),
        reopens: 0,
    };
    let mut model = Model {
        history: usize::from(history),
        ..Model::default()
    };
    for _ in 0..MAX_OPS {
        if input.is_empty() {
            break;
        }
        step(&mut input, &mut subject, &mut model);
    }
    check_all(&subject.bucket(), &model);
}

fn step(input: &mut Input<'_>, subject: &mut Subject, model: &mut Model) {
    match input.below(16) {
        0..=5 => {
            let p = plan(input, model);
            call(&subject.bucket(), model, &[p], true);
        }
        6 | 7 => {
            let n = 2 + usize::from(input.below(2));
            let planned: Vec<Planned> = (0..n).map(|_| plan(input, model)).collect();
            call(&subject.bucket(), model, &planned, input.below(2) == 0);
        }
        8 | 9 => read(input, &subject.bucket(), model),
        10 => subject.bucket().sync().expect("sync"),
        11 => {
            subject.bucket().compact().expect("compaction");
            check_all(&subject.bucket(), model);
        }
        12 => {
            subject.reopen();
            check_all(&subject.bucket(), model);
        }
        13 => {
            let before = subject.bucket().lost_revisions();
            subject.crash();
            let b = subject.bucket();
            let after = b.lost_revisions();
            if after != before {
                // The new range starts just past the last write (it may have
                // joined the range before it).
                let &(first, last) = after.last().expect("a new skipped range");
                assert!(
                    first <= model.last_rev + 1 && last > model.last_rev,
                    "the skip does not start past revision {}: {after:?}",
                    model.last_rev
                );
                model.last_rev = last;
            }
            for (first, last) in &after {
                assert!(
                    model
                        .keys
                        .values()
                        .flatten()
                        .all(|r| r.0 < *first || r.0 > *last),
                    "skipped revisions {first}-{last} hold writes"
                );
            }
            check_all(&b, model);
        }
        _ => {
            let b = subject.bucket();
            let key = KEYS[usize::from(input.below(5))];
            let ops: Vec<WriteOp> = vec![WriteOp::delete(key)];
            let planned = [Planned {
                key,
                kind: Kind::Delete,
                value: Vec::new(),
            }];
            // A ticketed write: visible at once, durable once waited for.
            let (written, ticket) = b.write_nowait(&ops).expect("a write");
            let want = model.call(&planned, true);
            assert_eq!(written.first().map(|w| w.revision), want[0].ok());
            b.wait_durable(ticket).expect("durable");
        }
    }
}

/// A write of a key the input names; preconditions aim at the model's
/// current state half the time.
fn plan(input: &mut Input<'_>, model: &Model) -> Planned {
    let key = KEYS[usize::from(input.below(5))];
    let len = usize::from(input.byte());
    let value: Vec<u8> = (b'a'..=b'z').cycle().take(len).collect();
    let aim = input.byte();
    let aimed = aim.is_multiple_of(2);
    let latest = model.latest(key).map_or(0, |l| l.0);
    let rev = if aimed { latest } else { u64::from(aim / 2) };
    let kind = match input.below(8) {
        0 => Kind::Put,
        1 => Kind::Create,
        2 => Kind::Update(rev),
        3 => Kind::Delete,
        4 => Kind::DeleteAt(rev),
        5 => Kind::Purge,
        6 => Kind::Cas(if aimed {
            model.live_value(key).map(<[u8]>::to_vec)
        } else {
            None
        }),
        _ => Kind::Revert(if aimed {
            model
                .keys
                .get(key)
                .and_then(|h| h.first())
                .map_or(0, |r| r.0)
        } else {
            u64::from(aim / 2)
        }),
    };
    Planned { key, kind, value }
}

/// One call (a batch, or independent writes) against the store and the model.
fn call(bucket: &Bucket, model: &mut Model, planned: &[Planned], batch: bool) {
    let ops: Vec<WriteOp> = planned.iter().map(Planned::write_op).collect();
    let want = model.call(planned, batch);
    if batch {
        match (bucket.write(&ops), want.as_slice()) {
            (Ok(written), _) => {
                let got: Vec<u64> = written.iter().map(|w| w.revision).collect();
                let want: Vec<u64> = want.iter().map(|w| w.expect("the model refused")).collect();
                assert_eq!(got, want, "{planned:?}");
            }
            (Err(Error::Batch { index, source }), [Err((i, r))]) if ops.len() > 1 => {
                assert_eq!(index, *i, "{planned:?}");
                assert!(r.matches(&source), "{planned:?}: {source} for {r:?}");
            }
            (Err(e), [Err((0, r))]) if ops.len() == 1 => {
                assert!(r.matches(&e), "{planned:?}: {e} for {r:?}");
            }
            (Err(e), _) => panic!("{planned:?}: {e}, the model says {want:?}"),
        }
    } else {
        let (results, _) = bucket.write_each(&ops).expect("independent writes");
        assert_eq!(results.len(), want.len());
        for ((got, want), p) in results.iter().zip(&want).zip(planned) {
            match (got, want) {
                (Ok(w), Ok(rev)) => assert_eq!(w.revision, *rev, "{p:?}"),
                (Err(e), Err((_, r))) => assert!(r.matches(e), "{p:?}: {e} for {r:?}"),
                _ => panic!("{p:?}: {got:?}, the model says {want:?}"),
            }
        }
    }
}

/// A read of one key: its live value, its latest entry, a revision of it.
fn read(input: &mut Input<'_>, bucket: &Bucket, model: &Model) {
    let key = KEYS[usize::from(input.below(5))];
    let got = bucket.get(key).expect("get").map(|v| v.to_vec());
    assert_eq!(got.as_deref(), model.live_value(key), "get {key}");
    let rev = u64::from(input.byte());
    let got = bucket.entry_at(key, rev).expect("entry_at");
    let want = model
        .keys
        .get(key)
        .and_then(|h| h.iter().find(|r| r.0 == rev));
    assert_eq!(
        got.map(|e| (e.revision, e.op, e.value.to_vec())),
        want.cloned(),
        "{key} at {rev}"
    );
}

/// The whole state against the model.
fn check_all(bucket: &Bucket, model: &Model) {
    let mut values = 0;
    let mut bytes = 0;
    let mut first = u64::MAX;
    for key in KEYS {
        let want: Vec<Retained> = model.keys.get(key).cloned().unwrap_or_default();
        let got: Vec<Retained> = bucket
            .history(key)
            .expect("history")
            .into_iter()
            .map(|e| (e.revision, e.op, e.value.to_vec()))
            .collect();
        assert_eq!(got, want, "history of {key}");
        for r in &want {
            let e = bucket.entry_at(key, r.0).expect("entry_at");
            assert_eq!(e.map(|e| (e.revision, e.op)), Some((r.0, r.1)));
            values += 1;
            bytes += (HEADER_LEN + key.len() + r.2.len()) as u64;
            first = first.min(r.0);
        }
        let got = bucket.get(key).expect("get").map(|v| v.to_vec());
        assert_eq!(got.as_deref(), model.live_value(key), "get {key}");
    }
    let live: Vec<String> = KEYS
        .iter()
        .filter(|k| model.live_value(k).is_some())
        .map(|k| (*k).to_string())
        .collect();
    let mut sorted = live.clone();
    sorted.sort();
    assert_eq!(bucket.keys(">").expect("keys"), sorted, "live keys");
    let s = bucket.status().expect("status");
    assert_eq!(s.last_revision, model.last_rev, "last revision");
    assert_eq!(
        (s.values, s.keys, s.bytes, s.first_revision),
        (
            values,
            live.len() as u64,
            bytes,
            if values == 0 { 0 } else { first }
        ),
        "status counters"
    );
}
