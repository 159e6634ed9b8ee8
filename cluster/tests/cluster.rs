//! In-process clusters on the controllable in-memory network: elections, failover,
//! forwarding, a partition that heals, a lagging node caught up by a snapshot, membership
//! changes, leader transfer, replicated TTL sweeps.

mod support;

use std::time::Duration;

use futures_util::FutureExt;

use logkv_cluster::command::{Command, Op, OpError, Response};
use logkv_cluster::ClusterError;
use support::{contents, put, revision, write_retrying, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elect_write_everywhere_and_fail_over() {
    let mut c = TestCluster::start(3, 100_000).await;
    let leader = c.leader().await;
    let follower = c.follower(leader);

    // A write sent to a follower is forwarded; the revision is the same on every node.
    let r1 = revision(&write_retrying(c.node(follower), put("a", "1")).await);
    let r2 = revision(&write_retrying(c.node(leader), put("b", "2")).await);
    assert_eq!((r1, r2), (1, 2));
    // A linearizable read on the follower sees both.
    c.node(follower).read_barrier().await.unwrap();
    let on_follower = contents(c.node(follower));
    assert_eq!(on_follower.len(), 2);
    c.converge().await;
    for n in c.nodes.values() {
        assert_eq!(contents(n), on_follower, "node {}", n.id());
    }

    // The leader stops; a new one is elected and takes writes; nothing acknowledged is lost.
    c.stop(leader).await;
    let new_leader = c.leader().await;
    assert_ne!(new_leader, leader);
    let r3 = revision(&write_retrying(c.node(new_leader), put("c", "3")).await);
    assert_eq!(r3, 3);
    // The old leader comes back as a follower and catches up.
    c.restart(leader).await;
    c.converge().await;
    let expected = contents(c.node(new_leader));
    assert_eq!(expected.len(), 3);
    for n in c.nodes.values() {
        assert_eq!(contents(n), expected, "node {}", n.id());
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_leader_refuses_and_catches_up_after_healing() {
    let c = TestCluster::start(3, 100_000).await;
    let leader = c.leader().await;
    write_retrying(c.node(leader), put("before", "x")).await;
    let others: Vec<u64> = c.nodes.keys().copied().filter(|id| *id != leader).collect();
    c.net.partition(&[leader], &others);

    // The majority elects a new leader and goes on.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let new_leader = loop {
        let l = c.node(others[0]).leader();
        if l.is_some_and(|l| l != leader) && l == c.node(others[1]).leader() {
            break l.unwrap();
        }
        assert!(tokio::time::Instant::now() < deadline, "no new leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    write_retrying(c.node(new_leader), put("during", "y")).await;

    // The cut-off leader cannot commit: its client gets NOLEADER (its lease ran out) or
    // INDOUBT (it appended before noticing), never success.
    match c.node(leader).write(put("lost", "z")).await {
        Err(ClusterError::NoLeader(_) | ClusterError::InDoubt(_)) => {}
        other => panic!("a write on the cut-off side must not succeed: {other:?}"),
    }
    assert!(
        c.node(leader).read_barrier().await.is_err(),
        "no linearizable read either"
    );

    c.net.heal();
    write_retrying(c.node(new_leader), put("after", "w")).await;
    c.converge().await;
    let expected = contents(c.node(new_leader));
    let keys: Vec<&str> = expected.iter().map(|e| e.0.as_str()).collect();
    assert!(keys.contains(&"before") && keys.contains(&"during") && keys.contains(&"after"));
    // "lost" was in doubt: if it was applied, it is everywhere; revisions agree either way.
    for n in c.nodes.values() {
        assert_eq!(contents(n), expected, "node {}", n.id());
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_node_is_caught_up_by_a_snapshot() {
    let mut c = TestCluster::start(3, 20).await;
    let leader = c.leader().await;
    let lagging = c.follower(leader);
    c.stop(lagging).await;
    for i in 0..120 {
        write_retrying(c.node(leader), put(&format!("k{i}"), &i.to_string())).await;
    }
    // The leader snapshotted and purged the entries the lagging node misses.
    let m = c
        .node(leader)
        .raft()
        .wait(Some(Duration::from_secs(10)))
        .metrics(|m| m.purged.is_some_and(|p| p.index > 20), "purged")
        .await
        .expect("leader purged its log");
    assert!(m.snapshot.is_some());
    let node = c.restart(lagging).await;
    let generation = node.store().generation();
    c.converge().await;
    assert!(
        node.store().generation() > generation,
        "the lagging node installed a snapshot (its store was replaced)"
    );
    assert_eq!(contents(&node), contents(c.node(leader)));
    assert_eq!(contents(&node).len(), 120);
    // It goes on with the log after the snapshot.
    write_retrying(c.node(leader), put("next", "1")).await;
    c.converge().await;
    assert_eq!(contents(&node), contents(c.node(leader)));
    c.shutdown().await;
}

/// A follower behind by more large entries than one frame between nodes carries catches up
/// from the log: the leader sends them in parts. (openraft asks for up to 300 entries at a
/// time whatever their size; the whole request failed to encode, the leader retried it
/// forever and the follower never caught up.) A write over one entry's limit is refused
/// before anything is proposed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_by_more_than_one_frame_of_entries_catches_up() {
    let mut c = TestCluster::start(3, 100_000).await;
    let leader = c.leader().await;
    let lagging = c.follower(leader);
    c.stop(lagging).await;
    let big = |i: usize| Command::Write {
        bucket: "default".into(),
        atomic: false,
        ops: vec![Op::put(
            format!("big{i}"),
            vec![b"0123456789"[i % 10]; 1 << 20],
        )],
    };
    // 80 entries of 1 MiB: more than one frame's 64 MiB.
    for i in 0..80 {
        write_retrying(c.node(leader), big(i)).await;
    }
    let node = c.restart(lagging).await;
    c.converge().await;
    assert_eq!(contents(&node), contents(c.node(leader)));
    assert_eq!(contents(&node).len(), 80);

    let huge = Command::Write {
        bucket: "default".into(),
        atomic: true,
        ops: (0..70)
            .map(|i| Op::put(format!("h{i}"), vec![b'h'; 1 << 20]))
            .collect(),
    };
    match c.node(lagging).write(huge).await {
        Err(ClusterError::TooLarge { bytes, max }) => assert!(bytes > max, "{bytes} {max}"),
        other => panic!("{other:?}"),
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_are_added_and_removed_and_leadership_moves() {
    let mut c = TestCluster::start(3, 100_000).await;
    let leader = c.leader().await;
    write_retrying(c.node(leader), put("a", "1")).await;
    // Node 4 starts empty, without initial members, and is added through a follower.
    c.start_node(4, std::collections::BTreeMap::new()).await;
    let follower = c.follower(leader);
    c.node(follower)
        .add(4, &support::addr(4), false)
        .await
        .unwrap();
    let voters: Vec<u64> = c.node(leader).membership().voter_ids().collect();
    assert_eq!(voters, [1, 2, 3, 4]);
    c.converge().await;
    assert_eq!(contents(c.node(4)), contents(c.node(leader)));
    let info = c.node(4).info();
    assert_eq!(info.members.len(), 4);

    // Leadership handed to node 4.
    c.node(follower).transfer_leader(4).await.unwrap();
    assert_eq!(c.leader().await, 4);
    write_retrying(c.node(1), put("b", "2")).await;

    // A voter removed; the cluster goes on with three.
    let gone = if leader == 4 { 1 } else { leader };
    c.node(4).remove(gone).await.unwrap();
    let voters: Vec<u64> = c.node(4).membership().voter_ids().collect();
    assert!(!voters.contains(&gone) && voters.len() == 3, "{voters:?}");
    c.stop(gone).await;
    write_retrying(c.node(4), put("c", "3")).await;
    assert!(matches!(
        c.node(4).remove(99).await,
        Err(ClusterError::Failed(_))
    ));
    c.shutdown().await;
}

/// CLUSTER ADD of a node that is not running returns, saying the node stays a learner,
/// once the catch-up wait is over (it waited forever); the cluster goes on, and the node
/// can be removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_a_node_that_is_not_running_fails_in_time_and_changes_only_the_learners() {
    let c = TestCluster::start(3, 100_000).await;
    let leader = c.leader().await;
    let follower = c.follower(leader);
    write_retrying(c.node(leader), put("a", "1")).await;
    let started = tokio::time::Instant::now();
    match c.node(follower).add(9, &support::addr(9), false).await {
        Err(ClusterError::Failed(msg)) => assert!(msg.contains("stays a learner"), "{msg}"),
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(30));
    let m = c.node(leader).membership();
    assert!(m.learner_ids().any(|id| id == 9));
    assert!(!m.voter_ids().any(|id| id == 9));
    write_retrying(c.node(leader), put("b", "2")).await;
    c.node(leader).remove(9).await.unwrap();
    assert!(c.node(leader).membership().get_node(&9).is_none());
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiries_are_proposed_by_the_leader_with_the_same_revision_everywhere() {
    let c = TestCluster::start(3, 100_000).await;
    let leader = c.leader().await;
    for (id, n) in &c.nodes {
        c.net.delay(*id, leader, Duration::from_millis(2));
        let _ = n;
    }
    let cmd = Command::Write {
        bucket: "default".into(),
        atomic: false,
        ops: vec![Op::put("t", "v").with_ttl(Duration::from_millis(100))],
    };
    let r = write_retrying(c.node(c.follower(leader)), cmd).await;
    assert_eq!(revision(&r), 1);
    // The leader's sweep writes the DEL marker (revision 2) and every node applies it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        c.converge().await;
        let all: Vec<_> = c.nodes.values().map(contents).collect();
        if all.iter().all(|h| h.iter().any(|e| e.1 == 2)) {
            assert!(all.windows(2).all(|w| w[0] == w[1]), "{all:?}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no expiry marker: {all:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Bucket-level commands are replicated too.
    let create = Command::CreateBucket {
        bucket: "b".into(),
        config: logkv_cluster::command::BucketSpec {
            history: 1,
            ttl_ms: 0,
            max_bytes: 0,
            max_value_size: 0,
        },
    };
    assert_eq!(
        write_retrying(c.node(leader), create.clone()).await,
        Response::Done
    );
    assert!(matches!(
        write_retrying(c.node(leader), create).await,
        Response::Failed(_)
    ));
    c.converge().await;
    for n in c.nodes.values() {
        assert!(n.store().get().bucket("b").is_ok());
    }
    c.shutdown().await;
}

/// Pipelines of independent writes from many clients at once (the leader may group them into
/// one entry): each gets its own results, in order, with revisions no other write got, and a
/// pipeline to a missing bucket fails alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pipelines_each_get_their_own_results() {
    let c = TestCluster::start(3, 100_000).await;
    let leader = c.leader().await;
    let follower = c.follower(leader);
    write_retrying(c.node(leader), put("warm", "up")).await;
    let clients = 40;
    let mut tasks = Vec::new();
    for i in 0..clients {
        let node = c.node(if i % 2 == 0 { leader } else { follower }).clone();
        tasks.push(tokio::spawn(async move {
            let key = format!("k{i}");
            let bucket = if i == 7 { "missing" } else { "default" };
            let cmd = Command::Write {
                bucket: bucket.into(),
                atomic: false,
                ops: vec![
                    Op::put(key.clone(), format!("v{i}")),
                    Op::create(key.clone(), "again".to_string()),
                    Op::put(key, format!("w{i}")),
                ],
            };
            (i, write_retrying(&node, cmd).await)
        }));
    }
    let mut revisions = Vec::new();
    for t in tasks {
        let (i, response) = t.await.unwrap();
        if i == 7 {
            assert!(
                matches!(response, Response::Failed(OpError::NoBucket(_))),
                "{response:?}"
            );
            continue;
        }
        let Response::Each(results) = response else {
            panic!("client {i}: {response:?}");
        };
        assert_eq!(results.len(), 3, "client {i}: {results:?}");
        let first = results[0].as_ref().expect("put").revision;
        assert_eq!(results[1], Err(OpError::Exists), "client {i}");
        let second = results[2].as_ref().expect("put").revision;
        assert_eq!(second, first + 1, "client {i}: its writes are in order");
        revisions.extend([first, second]);
    }
    revisions.sort_unstable();
    let expected: Vec<u64> = (2..2 + 2 * (clients - 1)).collect();
    assert_eq!(revisions, expected, "every revision given once");
    c.converge().await;
    let on_leader = contents(c.node(leader));
    // One value per key (the default bucket keeps the latest): "warm" and 39 clients' keys.
    assert_eq!(on_leader.len(), usize::try_from(clients).unwrap());
    for n in c.nodes.values() {
        assert_eq!(contents(n), on_leader, "node {}", n.id());
    }
    c.shutdown().await;
}

/// A leader stopped by a storage error (its `snapshots/` directory replaced by a file, so
/// the snapshot after 20 entries fails) still names itself the leader. A write sent to it,
/// or forwarded to it by a follower, is refused as nothing applied (NOLEADER, "this node
/// stopped"), not reported in doubt: before, `client_write` on the stopped Raft returned
/// Fatal, answered INDOUBT, although nothing was proposed. Its `failed()` reports why; the
/// others elect a leader and go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_to_a_stopped_former_leader_are_refused_as_nothing_applied() {
    let c = TestCluster::start(3, 20).await;
    let leader = c.leader().await;
    let follower = c.follower(leader);
    let snapshots = c.data_dir(leader).join("snapshots");
    std::fs::remove_dir_all(&snapshots).unwrap();
    std::fs::write(&snapshots, b"not a directory").unwrap();
    let stopped = c.node(leader).clone();
    let why = tokio::spawn(async move { stopped.failed().await });
    // Writes until the snapshot is due and fails (the last ones may be in doubt).
    let mut i = 0;
    while c.node(leader).failure().is_none() {
        assert!(i < 200, "the leader did not stop");
        let _ = c.node(leader).write(put(&format!("k{i}"), "v")).await;
        i += 1;
    }
    let why = why.await.unwrap();
    assert!(why.contains("Write Snapshot"), "{why}");
    assert_eq!(
        c.node(leader).leader(),
        Some(leader),
        "it still names itself"
    );

    match c.node(leader).write(put("late", "x")).await {
        Err(ClusterError::NoLeader(m)) => {
            assert!(
                m.contains("this node stopped") && m.contains("nothing was applied"),
                "{m}"
            );
        }
        other => panic!("a write on the stopped node: {other:?}"),
    }
    match c.node(leader).read_barrier().await {
        Err(ClusterError::NoLeader(m)) => assert!(m.contains("this node stopped"), "{m}"),
        other => panic!("a read barrier on the stopped node: {other:?}"),
    }
    // A follower that still forwards to it is refused as nothing applied and retries,
    // until the others have elected a leader that takes the write.
    let r = write_retrying(c.node(follower), put("after", "y")).await;
    assert!(revision(&r) > 0);
    assert_ne!(c.node(follower).leader(), Some(leader));
    // A node shut down has not failed: what a server waits on to exit never completes.
    let other = c.node(follower).clone();
    c.shutdown().await;
    assert!(other.failure().is_some(), "shut down");
    assert_eq!(other.failed().now_or_never(), None);
}
