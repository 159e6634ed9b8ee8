//! The history checker: concurrent clients run PUT, CAS and GET on a few keys through every
//! node while the leader is killed and partitioned away; every key's history must be
//! linearizable, each node must hold the same revisions, and every watch stream (resumed
//! with FROM on another node when its node dies) must agree with the others.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::checker::{linearizable, Kind, Op, Outcome};
use super::env_count;
use super::kills::history;
use super::nodes::{Client, ProcCluster};
use crate::common::server::Frame;
use crate::common::Rng;

const KEYS: [&str; 3] = ["x", "y", "z"];

fn run_client(
    c: &ProcCluster,
    t: usize,
    start: Instant,
    stop: &AtomicBool,
    log: &Mutex<Vec<(String, Op)>>,
) {
    let addrs: Vec<_> = c.nodes.values().map(|p| p.client).collect();
    let mut rng = Rng::new(0x5eed + t as u64);
    let mut conn: Option<Client> = None;
    let mut target = t;
    let mut n = 0;
    let mut last_seen: BTreeMap<&str, String> = BTreeMap::new();
    let now = || u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
    while !stop.load(Ordering::Acquire) {
        let Some(client) = Client::reconnect(&mut conn, &addrs, &mut target) else {
            continue;
        };
        let key = KEYS[usize::try_from(rng.below(KEYS.len() as u64)).unwrap_or(0)];
        n += 1;
        let value = format!("{t}-{n}");
        let (kind, args): (Kind, Vec<String>) = match rng.below(3) {
            0 => (
                Kind::Put(value.clone()),
                vec!["PUT".into(), key.into(), value.clone()],
            ),
            1 => {
                let old = last_seen.get(key).cloned().unwrap_or_else(|| "none".into());
                (
                    Kind::Cas {
                        new: value.clone(),
                        old: old.clone(),
                    },
                    vec!["CAS".into(), key.into(), value.clone(), old],
                )
            }
            _ => (Kind::Get, vec!["GET".into(), key.into()]),
        };
        let call = now();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let reply = client.cmd(&args);
        let ret = now();
        let (ret, outcome) = match (&kind, reply) {
            (_, Err(_)) => {
                conn = None;
                (None, Outcome::Unknown)
            }
            (_, Ok(Frame::Error(e))) if e.starts_with("NOLEADER") => {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            (_, Ok(Frame::Error(e))) if e.starts_with("INDOUBT") => (None, Outcome::Unknown),
            (Kind::Cas { .. }, Ok(Frame::Error(e))) if e.starts_with("MISMATCH") => {
                (Some(ret), Outcome::Mismatch)
            }
            (Kind::Get, Ok(Frame::Bulk(v))) => {
                let v = String::from_utf8_lossy(&v).into_owned();
                last_seen.insert(key, v.clone());
                (Some(ret), Outcome::Value(Some(v)))
            }
            (Kind::Get, Ok(Frame::Null)) => (Some(ret), Outcome::Value(None)),
            (Kind::Put(_) | Kind::Cas { .. }, Ok(Frame::Int(_))) => {
                last_seen.insert(key, value.clone());
                (Some(ret), Outcome::Ok)
            }
            (_, Ok(other)) => panic!("unexpected reply to {args:?}: {other:?}"),
        };
        log.lock().unwrap().push((
            key.to_string(),
            Op {
                kind,
                call,
                ret,
                outcome,
            },
        ));
    }
}

/// What a watcher saw: (revision, key, op) per event, and whether it ever had to resume.
type WatchResult = (Vec<(i64, String, String)>, bool);

/// A watch of every key, resumed with FROM on the next node when its node dies. Returns
/// the (revision, key, op) seen and whether it ever had to resume.
fn run_watcher(
    c: &ProcCluster,
    first: usize,
    stop: &AtomicBool,
    started_count: &AtomicUsize,
) -> WatchResult {
    let addrs: Vec<_> = c.nodes.values().map(|p| p.client).collect();
    let mut events = Vec::new();
    let mut resumed = false;
    let mut target = first;
    let mut started = false;
    while !stop.load(Ordering::Acquire) {
        let Ok(mut cl) = Client::connect(addrs[target % addrs.len()]) else {
            target += 1;
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        if cl.cmd(&["HELLO", "3"]).is_err() {
            continue;
        }
        let from = events.last().map_or(1, |(r, _, _)| r + 1).to_string();
        if started {
            resumed = true;
        }
        if !matches!(cl.cmd(&["WATCH", ">", "FROM", &from]), Ok(Frame::Int(_))) {
            target += 1;
            continue;
        }
        if !started {
            started_count.fetch_add(1, Ordering::AcqRel);
        }
        started = true;
        loop {
            if stop.load(Ordering::Acquire) {
                return (events, resumed);
            }
            match cl.read() {
                Ok(Frame::Push(items)) => {
                    if let Some(e @ Frame::Map(_)) = items.get(2) {
                        events.push((
                            e.field("revision").int(),
                            e.field("key").text(),
                            e.field("op").text(),
                        ));
                    }
                }
                Ok(_) => {}
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => break,
            }
        }
        target += 1;
    }
    (events, resumed)
}

#[test]
fn histories_are_linearizable_across_kills_and_partitions() {
    let rounds = env_count("LOGKV_CLUSTER_ROUNDS", 2);
    let c = ProcCluster::start(3);
    c.leader(Duration::from_secs(30));
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(Vec::new()));
    let watches = std::thread::scope(|s| {
        let c_ref = &c;
        // The watchers first: a watch that started after a key was written again would
        // begin at the retained revisions only (FROM gives what is still retained), and
        // the streams could not be compared as prefixes.
        let watching = Arc::new(AtomicUsize::new(0));
        let watchers: Vec<_> = (0..3)
            .map(|w| {
                let (stop, watching) = (Arc::clone(&stop), Arc::clone(&watching));
                s.spawn(move || run_watcher(c_ref, w, &stop, &watching))
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        while watching.load(Ordering::Acquire) < 3 {
            assert!(Instant::now() < deadline, "the watches did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        let clients: Vec<_> = (0..6)
            .map(|t| {
                let (stop, log) = (Arc::clone(&stop), Arc::clone(&log));
                s.spawn(move || run_client(c_ref, t, start, &stop, &log))
            })
            .collect();
        for round in 0..rounds {
            std::thread::sleep(Duration::from_millis(1500));
            let leader = c_ref.leader(Duration::from_secs(30));
            if round % 2 == 0 {
                // Cut the leader off; its clients get NOLEADER or INDOUBT until healed.
                c_ref.partition(&[leader]);
                std::thread::sleep(Duration::from_millis(2500));
                c_ref.heal();
            } else {
                c_ref.kill(leader);
                std::thread::sleep(Duration::from_millis(1500));
                c_ref.spawn(leader);
            }
        }
        std::thread::sleep(Duration::from_secs(1));
        stop.store(true, Ordering::Release);
        for h in clients {
            h.join().expect("client");
        }
        watchers
            .into_iter()
            .map(|h| h.join().expect("watcher"))
            .collect::<Vec<_>>()
    });
    c.leader(Duration::from_secs(30));
    c.converge(Duration::from_secs(60));

    let log = log.lock().unwrap();
    let mut per_key: BTreeMap<&str, Vec<Op>> = BTreeMap::new();
    for (k, op) in log.iter() {
        per_key.entry(k.as_str()).or_default().push(op.clone());
    }
    let total: usize = per_key.values().map(Vec::len).sum();
    let unknown = log
        .iter()
        .filter(|(_, o)| o.outcome == Outcome::Unknown)
        .count();
    eprintln!(
        "{total} operations ({unknown} in doubt) on {} keys",
        per_key.len()
    );
    assert!(total > 50, "the clients made progress");
    for (k, ops) in &per_key {
        assert!(
            linearizable(ops),
            "the history of {k} is not linearizable: {ops:#?}"
        );
    }

    let ids: Vec<u64> = c.nodes.keys().copied().collect();
    let histories: Vec<_> = ids.iter().map(|id| history(&c, *id)).collect();
    assert!(
        histories.windows(2).all(|w| w[0] == w[1]),
        "nodes hold different revisions"
    );

    check_watch_streams(&watches);
}

/// Watch streams: increasing revisions, the same key and op for a revision everywhere;
/// streams that never had to resume are prefixes of one another.
fn check_watch_streams(watches: &[WatchResult]) {
    let mut by_rev: BTreeMap<i64, (String, String)> = BTreeMap::new();
    for (events, _) in watches {
        let bad: Vec<_> = events.windows(2).filter(|w| w[0].0 >= w[1].0).collect();
        assert!(bad.is_empty(), "a watch went back or repeated: {bad:?}");
        for (r, k, op) in events {
            let prev = by_rev.insert(*r, (k.clone(), op.clone()));
            assert!(
                prev.is_none_or(|p| p == (k.clone(), op.clone())),
                "revision {r} differs between watches"
            );
        }
    }
    let whole: Vec<&Vec<(i64, String, String)>> =
        watches.iter().filter(|(_, r)| !r).map(|(e, _)| e).collect();
    for a in &whole {
        for b in &whole {
            let n = a.len().min(b.len());
            assert_eq!(
                a[..n],
                b[..n],
                "watch streams are not prefixes of each other"
            );
        }
    }
    assert!(!by_rev.is_empty(), "the watches saw the writes");
}
