//! A linearizability checker for one register (a key) under PUT, CAS and GET, after Wing &
//! Gong with Lowe's memoization: a depth-first search for an order of the operations that
//! respects real time (an operation that returned before another was invoked comes first)
//! and the register's semantics. An operation whose outcome is unknown (INDOUBT, or the
//! connection died) never returned: it may take effect at any point after its invocation,
//! or never.

use std::collections::HashSet;

/// What an operation did.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `PUT key value`.
    Put(String),
    /// `CAS key new old`.
    Cas { new: String, old: String },
    /// `GET key`.
    Get,
}

/// What it returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A write that was applied.
    Ok,
    /// A CAS that found another value.
    Mismatch,
    /// A read: the value seen.
    Value(Option<String>),
    /// Unknown (in doubt).
    Unknown,
}

/// One operation on the key.
#[derive(Debug, Clone)]
pub struct Op {
    pub kind: Kind,
    /// Invocation, ns from the start of the run.
    pub call: u64,
    /// Completion; `None` when the outcome is unknown.
    pub ret: Option<u64>,
    pub outcome: Outcome,
}

/// An outcome the register cannot produce from the value it is applied to.
struct Contradiction;

/// Applies `op` to `value`: the new value, or a contradiction with the model.
fn step(value: Option<&String>, op: &Op) -> Result<Option<String>, Contradiction> {
    let is = |old: &String| value == Some(old);
    let ok = |cond: bool, v: Option<String>| if cond { Ok(v) } else { Err(Contradiction) };
    match (&op.kind, &op.outcome) {
        (Kind::Put(v), Outcome::Ok | Outcome::Unknown) => Ok(Some(v.clone())),
        (Kind::Cas { new, old }, Outcome::Ok) => ok(is(old), Some(new.clone())),
        (Kind::Cas { old, .. }, Outcome::Mismatch) => ok(!is(old), value.cloned()),
        (Kind::Cas { new, old }, Outcome::Unknown) => Ok(if is(old) {
            Some(new.clone())
        } else {
            value.cloned()
        }),
        (Kind::Get, Outcome::Value(v)) => ok(v.as_ref() == value, value.cloned()),
        (Kind::Get, Outcome::Unknown) => Ok(value.cloned()),
        _ => Err(Contradiction),
    }
}

/// Whether the history of one key is linearizable, starting from an absent value.
pub fn linearizable(ops: &[Op]) -> bool {
    let n = ops.len();
    let words = n.div_ceil(64);
    // The search recurses once per operation it places: the long run's histories (several
    // thousand operations on a key) need a deeper stack than a test thread has.
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("linearizability".into())
            .stack_size(1 << 30)
            .spawn_scoped(scope, || {
                let mut done = vec![0u64; words];
                let mut seen: HashSet<(Vec<u64>, Option<String>)> = HashSet::new();
                search(ops, &mut done, None, &mut seen)
            })
            .expect("a thread for the search")
            .join()
            .expect("the search finished")
    })
}

fn is_done(done: &[u64], i: usize) -> bool {
    done[i / 64] & (1 << (i % 64)) != 0
}

fn flip(done: &mut [u64], i: usize) {
    done[i / 64] ^= 1 << (i % 64);
}

fn search(
    ops: &[Op],
    done: &mut Vec<u64>,
    value: Option<&String>,
    seen: &mut HashSet<(Vec<u64>, Option<String>)>,
) -> bool {
    // The earliest return among the completed operations not yet placed: whatever comes
    // next must have been invoked before it.
    let horizon = ops
        .iter()
        .enumerate()
        .filter(|(i, o)| !is_done(done, *i) && o.ret.is_some())
        .filter_map(|(_, o)| o.ret)
        .min();
    let Some(horizon) = horizon else {
        // Every completed operation is placed; unknown ones may never have happened.
        return true;
    };
    if !seen.insert((done.clone(), value.cloned())) {
        return false;
    }
    for (i, op) in ops.iter().enumerate() {
        if is_done(done, i) || op.call > horizon {
            continue;
        }
        if let Ok(next) = step(value, op) {
            flip(done, i);
            if search(ops, done, next.as_ref(), seen) {
                return true;
            }
            flip(done, i);
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(kind: Kind, call: u64, ret: Option<u64>, outcome: Outcome) -> Op {
        Op {
            kind,
            call,
            ret,
            outcome,
        }
    }

    fn put(v: &str, call: u64, ret: u64) -> Op {
        op(Kind::Put(v.into()), call, Some(ret), Outcome::Ok)
    }

    fn get(v: Option<&str>, call: u64, ret: u64) -> Op {
        op(
            Kind::Get,
            call,
            Some(ret),
            Outcome::Value(v.map(String::from)),
        )
    }

    #[test]
    fn sequential_and_concurrent_histories() {
        assert!(linearizable(&[put("a", 0, 1), get(Some("a"), 2, 3)]));
        assert!(
            !linearizable(&[put("a", 0, 1), get(None, 2, 3)]),
            "a stale read"
        );
        // Concurrent with the write: either value is fine.
        assert!(linearizable(&[
            put("a", 0, 10),
            get(None, 1, 2),
            get(Some("a"), 3, 4)
        ]));
        // But not going back once the new value was seen.
        assert!(!linearizable(&[
            put("a", 0, 10),
            get(Some("a"), 1, 2),
            get(None, 3, 4)
        ]));
        let cas = |new: &str, old: &str, c, r, o| {
            op(
                Kind::Cas {
                    new: new.into(),
                    old: old.into(),
                },
                c,
                Some(r),
                o,
            )
        };
        assert!(linearizable(&[
            put("a", 0, 1),
            cas("b", "a", 2, 3, Outcome::Ok),
            get(Some("b"), 4, 5)
        ]));
        assert!(!linearizable(&[
            put("a", 0, 1),
            cas("b", "x", 2, 3, Outcome::Ok)
        ]));
        assert!(!linearizable(&[
            put("a", 0, 1),
            cas("b", "a", 2, 3, Outcome::Mismatch)
        ]));
    }

    #[test]
    fn unknown_outcomes_may_or_may_not_happen() {
        let doubt = op(Kind::Put("x".into()), 0, None, Outcome::Unknown);
        assert!(linearizable(&[doubt.clone(), get(None, 5, 6)]));
        assert!(linearizable(&[doubt.clone(), get(Some("x"), 5, 6)]));
        assert!(linearizable(&[
            doubt.clone(),
            get(None, 5, 6),
            get(Some("x"), 7, 8)
        ]));
        assert!(!linearizable(&[
            doubt,
            get(Some("x"), 5, 6),
            get(None, 7, 8)
        ]));
    }
}
