//! SIGKILL of the leader under concurrent writers, restart; every acknowledged write is on
//! every node with the same revision; the failover time is measured.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::env_count;
use super::nodes::{Client, ProcCluster};
use crate::common::server::Frame;

/// What the writers saw.
#[derive(Default)]
struct Outcomes {
    /// key → (revision, value) of acknowledged writes.
    acked: BTreeMap<String, (i64, String)>,
    /// Keys whose write is in doubt (INDOUBT, or the connection died after sending).
    in_doubt: Vec<String>,
    /// NOLEADER refusals.
    refused: usize,
    /// When each acknowledged write was sent and when its acknowledgement came.
    ack_times: Vec<(Instant, Instant)>,
}

fn writer(c: &ProcCluster, t: usize, stop: &AtomicBool, out: &Mutex<Outcomes>) {
    let ids: Vec<u64> = c.nodes.keys().copied().collect();
    let addrs: Vec<_> = ids.iter().map(|id| c.nodes[id].client).collect();
    let mut n = 0usize;
    let mut conn: Option<Client> = None;
    let mut target = t;
    while !stop.load(Ordering::Acquire) {
        let Some(client) = Client::reconnect(&mut conn, &addrs, &mut target) else {
            continue;
        };
        let key = format!("w{t}-{n}");
        let value = format!("v{t}-{n}");
        let sent = Instant::now();
        match client.cmd(&["PUT", &key, &value]) {
            Ok(Frame::Int(rev)) => {
                let mut o = out.lock().unwrap();
                o.acked.insert(key, (rev, value));
                o.ack_times.push((sent, Instant::now()));
                n += 1;
            }
            Ok(Frame::Error(e)) if e.starts_with("NOLEADER") => {
                out.lock().unwrap().refused += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(Frame::Error(e)) if e.starts_with("INDOUBT") => {
                out.lock().unwrap().in_doubt.push(key);
                n += 1;
            }
            Ok(other) => panic!("unexpected reply {other:?}"),
            Err(_) => {
                // Sent, then the node died: the write may have happened.
                out.lock().unwrap().in_doubt.push(key);
                n += 1;
                conn = None;
            }
        }
    }
}

fn entry_revision(c: &mut Client, key: &str) -> Option<(i64, Vec<u8>)> {
    match c.cmd(&["ENTRY", key]).expect("ENTRY") {
        Frame::Null => None,
        f => {
            let rev = f.field("revision").int();
            let Frame::Bulk(v) = f.field("value") else {
                panic!("entry without value: {f:?}")
            };
            Some((rev, v))
        }
    }
}

/// Every node's retained history: (key, revision) in order.
pub fn history(c: &ProcCluster, id: u64) -> Vec<(String, i64)> {
    let mut cl = c.client(id).expect("client");
    assert_eq!(cl.cmd(&["READONLY"]).unwrap(), Frame::ok());
    let f = cl.cmd(&["HISTORY", ">"]).expect("HISTORY");
    f.items()
        .iter()
        .map(|e| (e.field("key").text(), e.field("revision").int()))
        .collect()
}

#[test]
fn leader_killed_under_writers_loses_no_acknowledged_write() {
    let kills = env_count("LOGKV_CLUSTER_KILLS", 2);
    let c = ProcCluster::start(3);
    let first = c.leader(Duration::from_secs(30));
    eprintln!("leader: node {first}");
    let stop = Arc::new(AtomicBool::new(false));
    let out = Arc::new(Mutex::new(Outcomes::default()));
    let mut failovers = Vec::new();
    std::thread::scope(|s| {
        let c_ref = &c;
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let (stop, out) = (Arc::clone(&stop), Arc::clone(&out));
                s.spawn(move || writer(c_ref, t, &stop, &out))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(800));
        let killer = s.spawn(|| {
            let mut times = Vec::new();
            for round in 0..kills {
                let leader = c_ref.leader(Duration::from_secs(30));
                let acked_before = out.lock().unwrap().ack_times.len();
                let killed_at = Instant::now();
                c_ref.kill(leader);
                // The first acknowledgement of a write sent after the kill.
                let deadline = killed_at + Duration::from_secs(30);
                let acked = loop {
                    let o = out.lock().unwrap();
                    if let Some((_, t)) = o.ack_times[acked_before..]
                        .iter()
                        .find(|(sent, _)| *sent > killed_at)
                    {
                        break *t;
                    }
                    drop(o);
                    assert!(
                        Instant::now() < deadline,
                        "no write acknowledged after kill {round}"
                    );
                    std::thread::sleep(Duration::from_millis(5));
                };
                times.push((leader, acked - killed_at));
                std::thread::sleep(Duration::from_millis(500));
                c_ref.spawn(leader);
            }
            times
        });
        failovers = killer.join().expect("killer");
        stop.store(true, Ordering::Release);
        for h in handles {
            h.join().expect("writer");
        }
    });
    c.leader(Duration::from_secs(30));
    c.converge(Duration::from_secs(60));

    let o = out.lock().unwrap();
    eprintln!(
        "acknowledged {}, in doubt {}, refused (NOLEADER) {}",
        o.acked.len(),
        o.in_doubt.len(),
        o.refused
    );
    let mut ms: Vec<u128> = failovers.iter().map(|(_, d)| d.as_millis()).collect();
    ms.sort_unstable();
    eprintln!("failover (SIGKILL of the leader to the first acknowledged write), ms: {ms:?}");
    assert!(o.acked.len() > 10, "the writers made progress");
    let ids: Vec<u64> = c.nodes.keys().copied().collect();
    let mut clients: Vec<Client> = ids
        .iter()
        .map(|id| {
            let mut cl = c.client(*id).expect("client");
            assert_eq!(cl.cmd(&["READONLY"]).unwrap(), Frame::ok());
            cl
        })
        .collect();
    for (key, (rev, value)) in &o.acked {
        for (id, cl) in ids.iter().zip(clients.iter_mut()) {
            let got = entry_revision(cl, key);
            assert_eq!(
                got,
                Some((*rev, value.as_bytes().to_vec())),
                "acknowledged {key} at {rev} on node {id}"
            );
        }
    }
    for key in &o.in_doubt {
        let seen: Vec<_> = clients
            .iter_mut()
            .map(|cl| entry_revision(cl, key))
            .collect();
        assert!(seen.windows(2).all(|w| w[0] == w[1]), "{key}: {seen:?}");
    }
    let histories: Vec<_> = ids.iter().map(|id| history(&c, *id)).collect();
    assert!(
        histories.windows(2).all(|w| w[0] == w[1]),
        "histories differ"
    );
    let revs: Vec<i64> = histories[0].iter().map(|(_, r)| *r).collect();
    let mut sorted = revs.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), revs.len(), "revisions are unique");
}
