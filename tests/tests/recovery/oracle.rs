//! What a bucket must hold, and the checks of a reopened store against it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use logkv::{Bucket, BucketStatus, Entry, Error, Op, RecoveryReport, Store};

/// The ops of a key's retained history, oldest first.
pub fn ops(b: &Bucket, key: &str) -> Vec<Op> {
    b.history(key).unwrap().iter().map(|e| e.op).collect()
}

/// The report recovery made for `bucket`.
pub fn report<'a>(store: &'a Store, bucket: &str) -> &'a RecoveryReport {
    &store
        .recovery_reports()
        .iter()
        .find(|(n, _)| n == bucket)
        .unwrap_or_else(|| panic!("no report for {bucket}"))
        .1
}

pub fn assert_clean(store: &Store, ctx: &str) {
    for (name, r) in store.recovery_reports() {
        assert_eq!(
            r.truncated_bytes, 0,
            "{ctx}: bucket {name} truncated on a clean reopen: {r:?}"
        );
        assert!(
            r.skipped.is_empty(),
            "{ctx}: bucket {name} skipped regions on a clean reopen: {r:?}"
        );
    }
}

/// What a bucket with history 1 should hold: key -> (revision, op, value).
pub type Model = BTreeMap<String, (u64, Op, Vec<u8>)>;

pub fn model_last_rev(model: &Model) -> u64 {
    model.values().map(|(r, _, _)| *r).max().unwrap_or(0)
}

/// [`check_model`] of `model` without `lost` (a key recovery rightly dropped).
pub fn check_model_without(bucket: &Bucket, model: &Model, lost: &str, last_rev: u64, ctx: &str) {
    let mut expect = model.clone();
    expect.remove(lost);
    check_model(bucket, &expect, last_rev, ctx);
}

/// Checks a history-1 bucket against a model: the same keys, each with exactly the
/// modelled revision, op and value, nothing else, and the expected last revision.
pub fn check_model(bucket: &Bucket, model: &Model, last_rev: u64, ctx: &str) {
    let mut seen: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
    for e in bucket.history(">").unwrap() {
        seen.entry(e.key.clone()).or_default().push(e);
    }
    let seen_keys: BTreeSet<&String> = seen.keys().collect();
    let model_keys: BTreeSet<&String> = model.keys().collect();
    let invented: Vec<_> = seen_keys.difference(&model_keys).collect();
    let lost: Vec<_> = model_keys.difference(&seen_keys).collect();
    assert!(
        invented.is_empty() && lost.is_empty(),
        "{ctx}: keys invented {invented:?}, keys lost {lost:?}"
    );
    for (key, (rev, op, value)) in model {
        let h = &seen[key];
        assert_eq!(h.len(), 1, "{ctx}: {key}: history {h:?}");
        assert_eq!((h[0].revision, h[0].op), (*rev, *op), "{ctx}: {key}");
        assert_eq!(&h[0].value[..], &value[..], "{ctx}: {key} value");
        let live = bucket.entry(key).unwrap();
        match op {
            Op::Put => {
                let e = live.unwrap_or_else(|| panic!("{ctx}: {key} has no live value"));
                assert_eq!(
                    (e.revision, &e.value[..]),
                    (*rev, &value[..]),
                    "{ctx}: {key}"
                );
            }
            _ => assert!(
                live.is_none(),
                "{ctx}: {key} should have no live value, has {live:?}"
            ),
        }
    }
    let live_keys: Vec<String> = model
        .iter()
        .filter(|(_, (_, op, _))| *op == Op::Put)
        .map(|(k, _)| k.clone())
        .collect();
    assert_eq!(bucket.keys(">").unwrap(), live_keys, "{ctx}: live keys");
    // After an unclean stop under `never` the counter may stand at the end of
    // the revisions it skipped (see `Bucket::lost_revisions`).
    let counter = bucket.status().unwrap().last_revision;
    let skipped = bucket.lost_revisions();
    assert!(
        counter == last_rev
            || skipped
                .last()
                .is_some_and(|&(first, end)| end == counter && first <= last_rev + 1),
        "{ctx}: last revision {counter}, expected {last_rev} (skipped {skipped:?})"
    );
}

/// The parts of [`BucketStatus`] that are state (not counters since open).
#[derive(Debug, Clone, PartialEq)]
pub struct StatusState {
    pub values: u64,
    pub keys: u64,
    pub bytes: u64,
    pub history: u8,
    pub ttl_ms: u64,
    pub max_bytes: u64,
    pub max_value_size: u64,
    pub first_revision: u64,
    pub last_revision: u64,
    pub segments: u64,
    pub dead_bytes: u64,
}

impl From<BucketStatus> for StatusState {
    fn from(s: BucketStatus) -> StatusState {
        StatusState {
            values: s.values,
            keys: s.keys,
            bytes: s.bytes,
            history: s.history,
            ttl_ms: s.ttl_ms,
            max_bytes: s.max_bytes,
            max_value_size: s.max_value_size,
            first_revision: s.first_revision,
            last_revision: s.last_revision,
            segments: s.segments,
            dead_bytes: s.dead_bytes,
        }
    }
}

/// Everything observable about a bucket, for before/after comparisons.
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    pub entries: BTreeMap<String, (Option<Entry>, Vec<Entry>)>,
    pub history: Vec<Entry>,
    pub keys: Vec<String>,
    pub status: StatusState,
}

pub fn state_of(bucket: &Bucket, extra_keys: &[String]) -> State {
    let history = bucket.history(">").unwrap();
    let mut names: BTreeSet<String> = history.iter().map(|e| e.key.clone()).collect();
    names.extend(extra_keys.iter().cloned());
    let entries = names
        .into_iter()
        .map(|k| {
            let latest = bucket.entry(&k).unwrap();
            let h = bucket.history(&k).unwrap();
            for e in &h {
                assert_eq!(
                    bucket.entry_at(&k, e.revision).unwrap().as_ref(),
                    Some(e),
                    "entry_at({k}, {})",
                    e.revision
                );
            }
            (k, (latest, h))
        })
        .collect();
    State {
        entries,
        history,
        keys: bucket.keys(">").unwrap(),
        status: bucket.status().unwrap().into(),
    }
}

/// A short description of an entry (values can be long).
pub fn brief(e: &Entry) -> String {
    format!(
        "{}@{} {:?} {}B crc {:08x} created {} expires {}",
        e.key,
        e.revision,
        e.op,
        e.value.len(),
        crc32fast::hash(&e.value),
        e.created_ms,
        e.expires_ms
    )
}

/// Asserts two states are equal, naming the first differences briefly.
pub fn assert_same_state(got: &State, want: &State, ctx: &str) {
    if got == want {
        return;
    }
    let mut diffs = Vec::new();
    if got.status != want.status {
        diffs.push(format!(
            "status: got {:?}, want {:?}",
            got.status, want.status
        ));
    }
    if got.keys != want.keys {
        diffs.push(format!(
            "live keys differ: got {} keys, want {}",
            got.keys.len(),
            want.keys.len()
        ));
    }
    let all: BTreeSet<&String> = got.entries.keys().chain(want.entries.keys()).collect();
    for k in all {
        let g = got.entries.get(k);
        let w = want.entries.get(k);
        if g != w {
            let show = |x: Option<&(Option<Entry>, Vec<Entry>)>| match x {
                None => "absent".to_string(),
                Some((latest, h)) => format!(
                    "latest {:?}, history [{}]",
                    latest.as_ref().map(brief),
                    h.iter().map(brief).collect::<Vec<_>>().join("; ")
                ),
            };
            diffs.push(format!("{k}: got {}, want {}", show(g), show(w)));
        }
    }
    if got.history != want.history {
        diffs.push(format!(
            "history(\">\"): got {} entries, want {}",
            got.history.len(),
            want.history.len()
        ));
    }
    let n = diffs.len();
    diffs.truncate(12);
    panic!("{ctx}: {n} differences:\n  {}", diffs.join("\n  "));
}

pub fn expect_corrupt(r: logkv::Result<Store>, ctx: &str) -> (PathBuf, u64, String) {
    match r {
        Err(e @ Error::Corrupt { .. }) => {
            let msg = e.to_string();
            let Error::Corrupt { path, offset, .. } = e else {
                unreachable!()
            };
            assert!(
                msg.contains(&path.display().to_string()),
                "{ctx}: message {msg:?} does not name {}",
                path.display()
            );
            (path, offset, msg)
        }
        Err(e) => panic!("{ctx}: expected Error::Corrupt, got {e:?}"),
        Ok(_) => panic!("{ctx}: expected Error::Corrupt, the store opened"),
    }
}
