//! In-process clusters on the in-memory network.

#![allow(dead_code, reason = "each test file uses part of the harness")]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use logkv_cluster::command::{Command, Op, Response};
use logkv_cluster::node::Timing;
use logkv_cluster::testing::MemNet;
use logkv_cluster::{ClusterError, ClusterNode, NodeConfig, NodeId};

pub struct TestCluster {
    pub net: MemNet,
    pub nodes: BTreeMap<NodeId, ClusterNode>,
    pub dir: tempfile::TempDir,
    pub snapshot_every: u64,
}

/// The id of entry `index` of term 1, led by node 1.
pub fn log_id(index: u64) -> logkv_cluster::types::LogId {
    logkv_cluster::types::LogId::new(
        openraft::impls::leader_id_adv::LeaderId {
            term: 1,
            node_id: 1,
        },
        index,
    )
}

pub fn addr(id: NodeId) -> String {
    format!("mem-{id}")
}

impl TestCluster {
    /// Starts nodes `1..=n` as the initial members.
    pub async fn start(n: u64, snapshot_every: u64) -> TestCluster {
        let mut c = TestCluster {
            net: MemNet::new(),
            nodes: BTreeMap::new(),
            dir: tempfile::tempdir().expect("tempdir"),
            snapshot_every,
        };
        let members: BTreeMap<NodeId, String> = (1..=n).map(|id| (id, addr(id))).collect();
        for id in 1..=n {
            c.start_node(id, members.clone()).await;
        }
        c
    }

    pub fn config(&self, id: NodeId, members: BTreeMap<NodeId, String>) -> NodeConfig {
        let mut cfg = NodeConfig::new(id, addr(id), self.data_dir(id));
        cfg.client_addr = format!("client-{id}");
        cfg.initial_members = members;
        cfg.password = Some("secret".into());
        cfg.timing = Timing {
            heartbeat_ms: 50,
            election_min_ms: 250,
            election_max_ms: 500,
        };
        cfg.snapshot_every = self.snapshot_every;
        cfg.segment_size = 1 << 16;
        cfg.leader_wait = Duration::from_secs(3);
        cfg.write_timeout = Duration::from_secs(5);
        cfg.sweep_interval = Duration::from_millis(200);
        cfg.catch_up_wait = Duration::from_secs(2);
        cfg
    }

    pub fn data_dir(&self, id: NodeId) -> PathBuf {
        self.dir.path().join(format!("n{id}"))
    }

    pub async fn start_node(
        &mut self,
        id: NodeId,
        members: BTreeMap<NodeId, String>,
    ) -> ClusterNode {
        let cfg = self.config(id, members);
        let node = ClusterNode::start(cfg, self.net.transport())
            .await
            .expect("node starts");
        self.net.listen(&addr(id), id, node.network());
        self.nodes.insert(id, node.clone());
        node
    }

    /// Stops a node (as a crash would, minus the page cache).
    pub async fn stop(&mut self, id: NodeId) {
        self.net.unlisten(&addr(id));
        if let Some(n) = self.nodes.remove(&id) {
            n.shutdown().await;
        }
    }

    /// Restarts a stopped node on its data directory.
    pub async fn restart(&mut self, id: NodeId) -> ClusterNode {
        self.start_node(id, BTreeMap::new()).await
    }

    pub fn node(&self, id: NodeId) -> &ClusterNode {
        &self.nodes[&id]
    }

    /// Waits until every running node agrees on one leader; returns it.
    pub async fn leader(&self) -> NodeId {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let leaders: Vec<Option<NodeId>> =
                self.nodes.values().map(ClusterNode::leader).collect();
            if let Some(Some(l)) = leaders.first() {
                if leaders.iter().all(|x| *x == Some(*l))
                    && self.nodes.get(l).is_some_and(ClusterNode::is_leader)
                {
                    return *l;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no leader agreed: {leaders:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn follower(&self, leader: NodeId) -> NodeId {
        *self
            .nodes
            .keys()
            .find(|id| **id != leader)
            .expect("a follower")
    }

    /// Waits until every running node has applied what `id` has.
    pub async fn converge(&self) {
        let target = self
            .nodes
            .values()
            .map(|n| n.info().commit)
            .max()
            .unwrap_or(0);
        for n in self.nodes.values() {
            n.raft()
                .wait(Some(Duration::from_secs(15)))
                .applied_index_at_least(Some(target), "converge")
                .await
                .expect("node caught up");
        }
    }

    pub async fn shutdown(self) {
        for n in self.nodes.values() {
            n.shutdown().await;
        }
    }
}

pub fn put(key: &str, value: &str) -> Command {
    Command::Write {
        bucket: "default".into(),
        atomic: false,
        ops: vec![Op::put(key, value.to_string())],
    }
}

/// The revision of a single-write response.
pub fn revision(r: &Response) -> u64 {
    match r {
        Response::Each(v) => v[0].as_ref().expect("write succeeded").revision,
        other => panic!("unexpected response {other:?}"),
    }
}

/// Writes, retrying NOLEADER for a while (elections in progress).
pub async fn write_retrying(node: &ClusterNode, cmd: Command) -> Response {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        match node.write(cmd.clone()).await {
            Ok(r) => return r,
            Err(ClusterError::NoLeader(why)) if tokio::time::Instant::now() < deadline => {
                tracing::debug!("retrying: {why}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("write failed: {e}"),
        }
    }
}

/// Every retained entry of the default bucket: (key, revision, value, created).
pub fn contents(node: &ClusterNode) -> Vec<(String, u64, Vec<u8>, u64)> {
    let store = node.store().get();
    let b = store.default_bucket().expect("default bucket");
    b.history(">")
        .expect("history")
        .into_iter()
        .map(|e| (e.key, e.revision, e.value.to_vec(), e.created_ms))
        .collect()
}
