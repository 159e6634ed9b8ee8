//! A node whose Raft stops on a storage error serves nothing more: the server process
//! shuts down (its connections closed, its listener gone, so clients go to another node)
//! and exits with a failure status and the cause in its log, for a supervisor to see.

use std::time::Duration;

use super::nodes::ProcCluster;
use crate::common::server::Frame;

/// A follower whose next vote cannot be saved (the vote's temp file name is taken by a
/// directory: the write fails with EISDIR, which no retry helps) stops when the leader is
/// killed and an election begins. Before, the process kept running with its Raft stopped:
/// its listener open, READONLY reads served from a frozen state, watches never ended.
#[test]
fn a_node_stopped_by_a_storage_error_exits_with_a_failure() {
    let c = ProcCluster::start(3);
    let leader = c.leader(Duration::from_secs(30));
    let target = c
        .nodes
        .keys()
        .copied()
        .find(|id| *id != leader)
        .expect("a follower");
    std::fs::create_dir(c.nodes[&target].data.join("raft").join("vote.tmp"))
        .expect("vote.tmp as a directory");
    let mut client = c.client(target).expect("client");
    assert_eq!(
        client.cmd(&["PING"]).expect("PING"),
        Frame::Simple("PONG".into())
    );

    // An election: every remaining node saves a new vote.
    c.kill(leader);
    let status = c.wait_exit(target, Duration::from_secs(60));
    let Some(status) = status else {
        panic!(
            "node {target} still runs after its Raft stopped\n{}",
            c.logs()
        );
    };
    assert!(!status.success(), "exit status {status}");
    let log = std::fs::read_to_string(&c.nodes[&target].log).expect("log");
    assert!(
        log.contains("the cluster node stopped") && log.contains("vote.tmp"),
        "{log}"
    );
    assert!(
        client.cmd(&["PING"]).is_err(),
        "its client connections were closed"
    );
}
