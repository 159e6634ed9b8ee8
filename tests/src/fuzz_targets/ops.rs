//! The `ops` target: operation sequences against a model of the semantics.

use std::collections::BTreeMap;

use logkv::{BucketConfig, Error, Op, Store};

use crate::options::opts;

/// Segment size of the ops target's store (small, so the log rotates).
const OPS_SEGMENT: u64 = 4096;

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
