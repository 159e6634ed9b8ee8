//! Fuzz target bodies. Each takes arbitrary bytes and panics only on a bug.

use std::collections::BTreeMap;

use logkv::log::record::{self, decode, find_next_valid, Decoded};
use logkv::{BucketConfig, Error, Op, Store};
use logkv_server::protocol::{parse_request, Limits};

use crate::options::{opts, repair_opts};

/// Segment size of the recovery target's store (one segment holds every input).
const RECOVERY_SEGMENT: u64 = 64 * 1024;
/// Segment size of the ops target's store (small, so the log rotates).
const OPS_SEGMENT: u64 = 4096;

/// The request parser: never panics, never claims more bytes than it was
/// given, and an error that keeps the connection open always skips forward.
///
/// # Panics
///
/// When the parser breaks one of those rules (a finding).
pub fn protocol(data: &[u8]) {
    let limits = Limits {
        max_inline: 1024,
        max_bulk: 4096,
        max_args: 16,
    };
    let mut at = 0;
    while at < data.len() {
        match parse_request(&data[at..], &limits) {
            Ok(Some((req, n))) => {
                assert!(
                    n > 0 && n <= data.len() - at,
                    "consumed {n} of {}",
                    data.len() - at
                );
                // The element limit is for RESP arrays; an inline line is bounded by its length.
                let max_words = if req.inline {
                    limits.max_inline
                } else {
                    limits.max_args
                };
                assert!(req.args.len() <= max_words);
                assert!(req
                    .args
                    .iter()
                    .all(|a| a.len() <= limits.max_bulk.max(limits.max_inline)));
                at += n;
            }
            Ok(None) => break,
            Err(e) if e.closes_connection() => break,
            Err(e) => match e.skip() {
                Some(n) if n > 0 && n <= data.len() - at => at += n,
                other => panic!("non-closing error {e} skips {other:?}"),
            },
        }
    }
}

/// The record decoder: a decoded record re-encodes to the same bytes, and a
/// damaged copy, or the same bytes under another segment's salt, never decodes.
/// The first four input bytes are the salt.
///
/// # Panics
///
/// When the decoder breaks one of those rules (a finding).
pub fn record(data: &[u8]) {
    let Some((salt, data)) = data.split_first_chunk::<4>() else {
        return;
    };
    let salt = u32::from_le_bytes(*salt);
    if let Decoded::Record(r) = decode(data, salt) {
        let h = r.header;
        let mut again = Vec::new();
        record::encode(
            &mut again,
            salt,
            h.op,
            h.flags,
            h.revision,
            h.created_ms,
            h.expires_ms,
            r.key,
            r.value,
        );
        assert_eq!(&again[..], &data[..h.record_len()]);
        assert!(!matches!(
            decode(&again, salt ^ 0x8000_0001),
            Decoded::Record(_)
        ));
        if let Some(last) = again.last_mut() {
            *last ^= 0x40;
            assert!(!matches!(decode(&again, salt), Decoded::Record(_)));
        }
    }
    if let Some(at) = find_next_valid(data, 0, salt) {
        assert!(matches!(decode(&data[at..], salt), Decoded::Record(_)));
    }
}

/// Recovery over arbitrary bytes after valid records in the last segment:
/// open either succeeds keeping every earlier record, or fails with a clear
/// corruption error; repair always opens and keeps them too.
///
/// # Panics
///
/// When recovery breaks one of those rules (a finding).
pub fn recovery(data: &[u8]) {
    let Ok(dir) = tempfile::tempdir() else { return };
    let mut written = Vec::new();
    {
        let Ok(store) = Store::open(dir.path(), opts(RECOVERY_SEGMENT)) else {
            return;
        };
        let Ok(b) = store.default_bucket() else {
            return;
        };
        for i in 0..5u32 {
            let key = format!("k.{i}");
            if let Ok(rev) = b.put(&key, format!("value-{i}")) {
                written.push((key, rev));
            }
        }
    }
    // Damage: the fuzz bytes go right after the last record, and the
    // snapshot goes, so recovery has to read them.
    let bucket = dir.path().join("buckets").join("default");
    let _ = std::fs::remove_file(bucket.join("index.snap"));
    let Some(seg) = std::fs::read_dir(&bucket).ok().and_then(|rd| {
        rd.filter_map(std::result::Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "seg"))
    }) else {
        return;
    };
    let Ok(mut bytes) = std::fs::read(&seg) else {
        return;
    };
    let end = bytes
        .iter()
        .rposition(|&b| b != 0)
        .map_or(bytes.len(), |p| p + 1);
    bytes.truncate(end);
    bytes.extend_from_slice(data);
    if std::fs::write(&seg, &bytes).is_err() {
        return;
    }
    let check = |store: &Store| {
        let b = store.default_bucket().expect("default bucket");
        for (key, rev) in &written {
            let e = b
                .entry(key)
                .expect("readable")
                .expect("an acknowledged record survives");
            assert_eq!(e.revision, *rev);
        }
    };
    match Store::open(dir.path(), opts(RECOVERY_SEGMENT)) {
        Ok(store) => check(&store),
        Err(Error::Corrupt { .. }) => {
            let store =
                Store::open(dir.path(), repair_opts(RECOVERY_SEGMENT)).expect("repair opens");
            check(&store);
        }
        Err(e) => panic!("unexpected error: {e}"),
    }
}

/// key → retained (revision, op, value), oldest first.
type Model = BTreeMap<String, Vec<(u64, Op, Vec<u8>)>>;

/// Operation sequences against a model of the semantics (history 2), with
/// reopens mixed in.
///
/// # Panics
///
/// When the store and the model disagree (a finding).
#[allow(
    clippy::too_many_lines,
    reason = "one interpreter loop over the input's operations"
)]
pub fn ops(data: &[u8]) {
    let Ok(dir) = tempfile::tempdir() else { return };
    let Ok(store) = Store::open(dir.path(), opts(OPS_SEGMENT)) else {
        return;
    };
    if store
        .create_bucket(
            "m",
            BucketConfig {
                history: 2,
                ..Default::default()
            },
        )
        .is_err()
    {
        return;
    }
    let mut store = Some(store);
    let mut model: Model = BTreeMap::new();
    let mut last_rev = 0u64;
    for chunk in data.chunks(3).take(64) {
        let (op, k, arg) = (
            chunk[0] % 7,
            chunk.get(1).copied().unwrap_or(0) % 4,
            chunk.get(2).copied().unwrap_or(0),
        );
        let key = ["a", "a.b", "b", "c.d.e"][k as usize].to_string();
        let value = vec![b'v', arg];
        let Some(s) = store.as_ref() else { return };
        let b = s.bucket("m").expect("bucket m");
        let latest = model.get(&key).and_then(|v| v.last()).cloned();
        let live = matches!(latest, Some((_, Op::Put, _)));
        let mut push = |model: &mut Model, op: Op, v: Vec<u8>| {
            last_rev += 1;
            let h = model.entry(key.clone()).or_default();
            if op == Op::Purge {
                h.clear();
            }
            h.push((last_rev, op, v));
            if h.len() > 2 {
                h.remove(0);
            }
            last_rev
        };
        match op {
            0 => assert_eq!(
                b.put(&key, value.clone()).ok(),
                Some(push(&mut model, Op::Put, value))
            ),
            1 => assert_eq!(
                b.delete(&key).ok(),
                Some(push(&mut model, Op::Del, Vec::new()))
            ),
            2 => assert_eq!(
                b.purge(&key).ok(),
                Some(push(&mut model, Op::Purge, Vec::new()))
            ),
            3 => match b.create(&key, value.clone()) {
                Ok(rev) => assert_eq!((live, rev), (false, push(&mut model, Op::Put, value))),
                Err(Error::Exists) => assert!(live),
                Err(e) => panic!("{e}"),
            },
            4 => {
                let expected = if arg % 2 == 0 {
                    latest.as_ref().map_or(0, |l| l.0)
                } else {
                    u64::from(arg)
                };
                let ok = match &latest {
                    None => expected == 0,
                    Some(l) => expected == l.0 && expected != 0,
                };
                match b.update(&key, value.clone(), expected) {
                    Ok(rev) => assert_eq!((ok, rev), (true, push(&mut model, Op::Put, value))),
                    Err(Error::WrongRevision { latest: l, .. }) => {
                        assert!(!ok);
                        assert_eq!(l, latest.map_or(0, |x| x.0));
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            5 => {
                drop(b);
                // Close before reopening: the directory lock allows one store.
                drop(store.take());
                store = Some(Store::open(dir.path(), opts(OPS_SEGMENT)).expect("reopen"));
            }
            _ => {
                let want = latest.filter(|l| l.1 == Op::Put).map(|l| l.2);
                assert_eq!(b.get(&key).expect("get").map(|v| v.to_vec()), want);
            }
        }
    }
    if let Some(s) = store {
        let b = s.bucket("m").expect("bucket m");
        for (key, revs) in &model {
            let got: Vec<(u64, Op)> = b
                .history(key)
                .expect("history")
                .iter()
                .map(|e| (e.revision, e.op))
                .collect();
            let want: Vec<(u64, Op)> = revs.iter().map(|r| (r.0, r.1)).collect();
            assert_eq!(got, want, "history of {key}");
        }
    }
}
