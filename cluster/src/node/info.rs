//! `CLUSTER INFO`: what a node knows of the cluster.

use openraft::async_runtime::WatchReceiver;
use openraft::ServerState;

use super::ClusterNode;
use crate::types::NodeId;

/// One member as `CLUSTER INFO` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    /// Its id.
    pub id: NodeId,
    /// Its raft address.
    pub raft_addr: String,
    /// Its client address (empty when not known yet).
    pub client_addr: String,
    /// A voter (else a learner).
    pub voter: bool,
    /// On the leader: the last log index known replicated there.
    pub matched: Option<u64>,
}

/// What `CLUSTER INFO` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterInfo {
    /// This node.
    pub node: NodeId,
    /// `leader`, `follower`, `candidate`, `learner` (or `shutdown`).
    pub role: &'static str,
    /// The leader, if known.
    pub leader: Option<NodeId>,
    /// The leader's client address, if known.
    pub leader_addr: Option<String>,
    /// The current term.
    pub term: u64,
    /// The last committed log index.
    pub commit: u64,
    /// The last applied log index.
    pub applied: u64,
    /// The members, in id order.
    pub members: Vec<MemberInfo>,
}

impl ClusterNode {
    /// What this node knows of the cluster now.
    pub fn info(&self) -> ClusterInfo {
        let rx = self.inner.raft.metrics();
        let m = rx.borrow_watched();
        let membership = m.membership_config.membership();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, n)| MemberInfo {
                id: *id,
                raft_addr: n.raft_addr.clone(),
                client_addr: n.client_addr.clone(),
                voter: voters.contains(id),
                matched: m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id))
                    .map(|l| l.as_ref().map_or(0, |l| l.index)),
            })
            .collect();
        let leader_addr = m
            .current_leader
            .and_then(|l| membership.get_node(&l))
            .map(|n| n.client_addr.clone())
            .filter(|a| !a.is_empty());
        ClusterInfo {
            node: m.id,
            role: match m.state {
                ServerState::Leader => "leader",
                ServerState::Follower => "follower",
                ServerState::Candidate => "candidate",
                ServerState::Learner => "learner",
                ServerState::Shutdown => "shutdown",
            },
            leader: m.current_leader,
            leader_addr,
            term: m.current_term,
            commit: m.local_committed.map_or(0, |l| l.index),
            applied: m.last_applied.map_or(0, |l| l.index),
            members,
        }
    }
}
