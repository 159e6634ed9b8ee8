//! What the server asks of a node: writes (forwarded to the leader from a follower),
//! linearizable-read barriers, and membership changes, each with the outcome a client must
//! be told: done, refused before anything happened (`NOLEADER`), or unknown (`INDOUBT`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use logkv::Clock;
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ChangeMembershipError, ClientWriteError, LinearizableReadError, RaftError};
use openraft::{ChangeMembers, ReadPolicy, ServerState};

use super::ClusterNode;
use crate::command::{encoded_size_hint, Command, Proposal, Response, MAX_PROPOSAL_BYTES};
use crate::net::message::{Forward, Outcome, Reply, Request};
use crate::net::CallError;
use crate::types::{Node, NodeId};

/// Pause between attempts while there is no leader or its lease is not established.
const RETRY: Duration = Duration::from_millis(20);

/// Why a request to the cluster did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    /// No leader or no quorum now; nothing was applied. Retry.
    #[error("{0}")]
    NoLeader(String),
    /// The write reached the leader but its outcome is unknown.
    #[error("{0}")]
    InDoubt(String),
    /// Refused (an impossible membership change, an unknown node).
    #[error("{0}")]
    Failed(String),
    /// A write too large for one replicated entry; nothing was applied. Split it.
    #[error("a write of about {bytes} bytes is over the limit of {max} bytes for one replicated entry (split it into smaller writes or batches)")]
    TooLarge {
        /// About the bytes the write encodes to.
        bytes: usize,
        /// The limit ([`crate::command::MAX_PROPOSAL_BYTES`]).
        max: usize,
    },
}

impl From<Outcome> for ClusterError {
    fn from(o: Outcome) -> ClusterError {
        match o {
            Outcome::NoLeader(m) => ClusterError::NoLeader(m),
            Outcome::InDoubt(m) => ClusterError::InDoubt(m),
            Outcome::Failed(m) => ClusterError::Failed(m),
            Outcome::NotLeader(l) => ClusterError::NoLeader(format!(
                "the leader changed (now {})",
                l.map_or_else(|| "unknown".to_string(), |l| l.to_string())
            )),
            other => ClusterError::Failed(format!("unexpected outcome {other:?}")),
        }
    }
}

/// Why a node that stopped (on a storage error, or shut down) refuses a request: nothing
/// was applied; a client goes to another node.
pub(crate) fn stopped(why: &str) -> String {
    format!(
        "this node stopped: {why}; nothing was applied (send it to another node; this one \
         must be restarted or replaced)"
    )
}

fn no_leader(waited: Duration) -> ClusterError {
    ClusterError::NoLeader(format!(
        "no leader with a quorum within {}ms; nothing was applied, retry",
        waited.as_millis()
    ))
}

impl ClusterNode {
    /// Whether this node is the leader now.
    pub fn is_leader(&self) -> bool {
        self.inner.raft.metrics().borrow_watched().state == ServerState::Leader
    }

    /// The membership this node knows of.
    pub fn membership(&self) -> crate::types::Membership {
        self.inner
            .raft
            .metrics()
            .borrow_watched()
            .membership_config
            .membership()
            .clone()
    }

    /// The leader this node knows of.
    pub fn leader(&self) -> Option<NodeId> {
        self.inner.raft.metrics().borrow_watched().current_leader
    }

    /// Proposes `command` and returns its response once applied (on the leader), forwarding
    /// it to the leader from a follower.
    pub async fn write(&self, command: Command) -> Result<Response, ClusterError> {
        let bytes = encoded_size_hint(&command);
        if bytes > MAX_PROPOSAL_BYTES {
            return Err(ClusterError::TooLarge {
                bytes,
                max: MAX_PROPOSAL_BYTES,
            });
        }
        match self.forward(Forward::Write(Arc::new(command))).await? {
            Outcome::Applied { response, .. } => Ok(response),
            other => Err(other.into()),
        }
    }

    /// Waits until this node has applied everything committed before the call: reads after it
    /// are linearizable.
    pub async fn read_barrier(&self) -> Result<(), ClusterError> {
        let index = match self.forward(Forward::ReadIndex).await? {
            Outcome::ReadIndex(i) => i,
            other => return Err(other.into()),
        };
        let wait = self.inner.cfg.leader_wait;
        self.inner
            .raft
            .wait(Some(wait))
            .applied_index_at_least(Some(index), "read barrier")
            .await
            .map(|_| ())
            .map_err(|e| ClusterError::NoLeader(format!("this node is behind the leader: {e}")))
    }

    /// Adds node `id` (a learner that catches up first, then a voter unless `learner`).
    pub async fn add(
        &self,
        id: NodeId,
        raft_addr: &str,
        learner: bool,
    ) -> Result<(), ClusterError> {
        self.admin(Forward::Add {
            id,
            raft_addr: raft_addr.to_string(),
            learner,
        })
        .await
    }

    /// Removes node `id` from the membership.
    pub async fn remove(&self, id: NodeId) -> Result<(), ClusterError> {
        self.admin(Forward::Remove { id }).await
    }

    /// Hands leadership to node `id`; returns once it leads.
    pub async fn transfer_leader(&self, id: NodeId) -> Result<(), ClusterError> {
        self.admin(Forward::Lead { id }).await
    }

    /// Records a member's addresses.
    pub async fn set_node(&self, id: NodeId, node: Node) -> Result<(), ClusterError> {
        self.admin(Forward::SetNode { id, node }).await
    }

    async fn admin(&self, req: Forward) -> Result<(), ClusterError> {
        match self.forward(req).await? {
            Outcome::Done => Ok(()),
            other => Err(other.into()),
        }
    }

    /// Serves `req` here if this node leads, else sends it to the leader; retries while there
    /// is no leader (or the one found is not it any more) for up to `leader_wait`.
    pub(crate) async fn forward(&self, req: Forward) -> Result<Outcome, ClusterError> {
        // A stopped leader still names itself the leader: its requests would fail in Raft,
        // and a write so failed would be reported in doubt, though nothing was proposed.
        if let Some(why) = self.failure() {
            return Err(ClusterError::NoLeader(stopped(&why)));
        }
        let started = Instant::now();
        let wait = self.inner.cfg.leader_wait;
        loop {
            let leader = self.leader();
            let outcome = match leader {
                Some(l) if l == self.id() => self.serve_forward(req.clone()).await,
                Some(l) => {
                    let msg = Request::Forward(req.clone());
                    let cfg = &self.inner.cfg;
                    let mut timeout = cfg.write_timeout + cfg.leader_wait;
                    if let Forward::Add { .. } = req {
                        // Two membership changes and the wait for the node to catch up.
                        timeout = 2 * timeout + cfg.catch_up_wait;
                    }
                    match self.inner.net.call(l, &msg, timeout).await {
                        Ok(Reply::Forward(o)) => o,
                        Ok(Reply::Unavailable(why)) | Err(CallError::NotSent(why)) => {
                            Outcome::NoLeader(why)
                        }
                        Ok(other) => {
                            return Err(ClusterError::InDoubt(format!(
                                "unexpected reply from the leader: {other:?}"
                            )))
                        }
                        Err(e @ (CallError::Lost(_) | CallError::Timeout(_))) => {
                            return Err(match req {
                                // A read changes nothing: no doubt.
                                Forward::ReadIndex => ClusterError::NoLeader(format!(
                                    "the leader did not answer: {e}"
                                )),
                                _ => ClusterError::InDoubt(format!(
                                    "the leader (node {l}) did not answer: {e}; check with ENTRY"
                                )),
                            });
                        }
                    }
                }
                None => Outcome::NoLeader("no leader".into()),
            };
            match outcome {
                Outcome::NotLeader(_) | Outcome::NoLeader(_) if started.elapsed() < wait => {
                    self.wait_for_leader_change(leader, RETRY).await;
                }
                Outcome::NotLeader(_) | Outcome::NoLeader(_) => return Err(no_leader(wait)),
                other => return Ok(other),
            }
        }
    }

    async fn wait_for_leader_change(&self, seen: Option<NodeId>, at_most: Duration) {
        let _ = self
            .inner
            .raft
            .wait(Some(at_most))
            .metrics(|m| m.current_leader != seen, "leader change")
            .await;
    }

    /// Serves a forwarded request on this node, which believes it leads.
    pub(crate) async fn serve_forward(&self, req: Forward) -> Outcome {
        if let Some(why) = self.failure() {
            return Outcome::NoLeader(stopped(&why));
        }
        match req {
            Forward::Write(command) => self.propose_grouping(command).await,
            Forward::ReadIndex => self.read_index().await,
            Forward::Add {
                id,
                raft_addr,
                learner,
            } => self.add_local(id, raft_addr, learner).await,
            Forward::Remove { id } => self.remove_local(id).await,
            Forward::Lead { id } => self.lead_local(id).await,
            Forward::SetNode { id, node } => {
                let change = ChangeMembers::SetNodes(BTreeMap::from([(id, node)]));
                self.change_membership(change).await
            }
        }
    }

    /// Proposes a command on this node as the leader; fails at once if it does not lead.
    pub(crate) async fn propose_as_leader(
        &self,
        command: Command,
    ) -> Result<Response, ClusterError> {
        match self.propose_local(Arc::new(command)).await {
            Outcome::Applied { response, .. } => Ok(response),
            other => Err(other.into()),
        }
    }

    pub(crate) async fn propose_local(&self, command: Arc<Command>) -> Outcome {
        let raft = &self.inner.raft;
        let started = Instant::now();
        loop {
            // Stopped before this attempt: nothing of it reached Raft. (A Fatal that comes
            // back from an attempt made while the node ran leaves the write in doubt.)
            if let Some(why) = self.failure() {
                return Outcome::NoLeader(stopped(&why));
            }
            let proposal = Proposal::shared(logkv::SystemClock.now_ms(), Arc::clone(&command));
            let written =
                tokio::time::timeout(self.inner.cfg.write_timeout, raft.client_write(proposal))
                    .await;
            match written {
                Err(_) => {
                    return Outcome::InDoubt(format!(
                        "no outcome within {}ms (the leader may have lost its quorum); check with ENTRY",
                        self.inner.cfg.write_timeout.as_millis()
                    ))
                }
                Ok(Ok(resp)) => {
                    return Outcome::Applied {
                        response: resp.data,
                        index: resp.log_id.index,
                    }
                }
                Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                    if let Some(l) = f.leader_id.filter(|l| *l != self.id()) {
                        return Outcome::NotLeader(Some(l));
                    }
                    // Just elected (its lease not established yet) or cut off: nothing was
                    // appended; retry for a while.
                    if started.elapsed() >= self.inner.cfg.leader_wait {
                        return Outcome::NoLeader(format!("this leader has no quorum: {f}"));
                    }
                    tokio::time::sleep(RETRY).await;
                }
                Ok(Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(f)))) => {
                    return Outcome::InDoubt(format!(
                        "the write was replaced in this node's log by another leader's entries ({f}); it may or may not have been applied: check with ENTRY"
                    ))
                }
                Ok(Err(RaftError::APIError(other))) => return Outcome::Failed(other.to_string()),
                Ok(Err(RaftError::Fatal(f))) => {
                    return Outcome::InDoubt(format!(
                        "the node stopped while the write was proposed: {f}; check with ENTRY \
                         on another node"
                    ))
                }
            }
        }
    }

    async fn read_index(&self) -> Outcome {
        let started = Instant::now();
        loop {
            if let Some(why) = self.failure() {
                return Outcome::NoLeader(stopped(&why));
            }
            match self
                .inner
                .raft
                .get_read_linearizer(ReadPolicy::ReadIndex)
                .await
            {
                Ok(l) => return Outcome::ReadIndex(l.read_log_id().index()),
                Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f))) => {
                    if let Some(l) = f.leader_id.filter(|l| *l != self.id()) {
                        return Outcome::NotLeader(Some(l));
                    }
                    if started.elapsed() >= self.inner.cfg.leader_wait {
                        return Outcome::NoLeader(format!("this leader has no quorum: {f}"));
                    }
                    tokio::time::sleep(RETRY).await;
                }
                Err(RaftError::APIError(LinearizableReadError::QuorumNotEnough(q))) => {
                    return Outcome::NoLeader(q.to_string())
                }
                Err(RaftError::Fatal(f)) => return Outcome::NoLeader(f.to_string()),
            }
        }
    }

    async fn change_membership(&self, change: ChangeMembers<NodeId, Node>) -> Outcome {
        let raft = &self.inner.raft;
        self.membership_outcome(|| raft.change_membership(change.clone(), false))
            .await
    }

    /// Runs a membership change, retrying while another one is in progress (changes are
    /// serialized: joint consensus, the announcements of nodes' addresses).
    async fn membership_outcome<F, Fut, T>(&self, mut op: F) -> Outcome
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<
            Output = Result<
                T,
                RaftError<crate::types::TypeConfig, ClientWriteError<crate::types::TypeConfig>>,
            >,
        >,
    {
        let started = Instant::now();
        let limit = self.inner.cfg.write_timeout;
        loop {
            let Ok(result) = tokio::time::timeout(limit, op()).await else {
                return Outcome::InDoubt(format!(
                    "the membership change was not committed within {}ms (is a quorum of \
                     the members up?): check CLUSTER STATUS",
                    limit.as_millis()
                ));
            };
            let busy = match result {
                Ok(_) => return Outcome::Done,
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                    return Outcome::NotLeader(f.leader_id.filter(|l| *l != self.id()))
                }
                Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(f))) => {
                    return Outcome::InDoubt(f.to_string())
                }
                Err(RaftError::APIError(
                    e @ (ClientWriteError::PreconditionFailed(_)
                    | ClientWriteError::ChangeMembershipError(
                        ChangeMembershipError::InProgress(_)
                        | ChangeMembershipError::UncommittedLeaderLog(_),
                    )),
                )) => e,
                Err(RaftError::APIError(e)) => return Outcome::Failed(e.to_string()),
                Err(RaftError::Fatal(f)) => return Outcome::InDoubt(f.to_string()),
            };
            if started.elapsed() >= self.inner.cfg.leader_wait * 2 {
                return Outcome::Failed(busy.to_string());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn add_local(&self, id: NodeId, raft_addr: String, learner: bool) -> Outcome {
        if id == 0 {
            return Outcome::Failed("node ids are positive".into());
        }
        // Ask the node for its client address; it may not be reachable yet.
        self.inner.net.set_addr(id, &raft_addr);
        let described = self
            .inner
            .net
            .call(id, &Request::Describe, Duration::from_secs(2))
            .await;
        let node = match described {
            Ok(Reply::Describe(n)) => Node {
                raft_addr: raft_addr.clone(),
                client_addr: n.client_addr,
            },
            _ => Node {
                raft_addr,
                client_addr: String::new(),
            },
        };
        let raft = &self.inner.raft;
        let addr = node.raft_addr.clone();
        match self
            .membership_outcome(|| raft.add_learner(id, node.clone(), false))
            .await
        {
            Outcome::Done => {}
            other => return other,
        }
        if learner {
            return Outcome::Done;
        }
        // A voter that has not caught up would slow every commit: it votes once replication
        // to it has reached the leader's log as it is now (openraft's own wait for this has
        // no limit: a node that is not running held CLUSTER ADD forever).
        let target = raft.metrics().borrow_watched().last_log_index;
        let wait = self.inner.cfg.catch_up_wait;
        let caught_up = raft
            .wait(Some(wait))
            .metrics(
                |m| {
                    let matched = m.replication.as_ref().and_then(|r| r.get(&id));
                    matched.is_some_and(|l| l.map(|l| l.index) >= target)
                },
                "the new node caught up",
            )
            .await;
        if caught_up.is_err() {
            return Outcome::Failed(format!(
                "node {id} was added as a learner but has not caught up within {}s (is it \
                 running at {addr}?): it stays a learner; CLUSTER ADD it again once it is up, \
                 or CLUSTER REMOVE it",
                wait.as_secs()
            ));
        }
        self.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])))
            .await
    }

    async fn remove_local(&self, id: NodeId) -> Outcome {
        let membership = self.membership();
        let voter = membership.voter_ids().any(|v| v == id);
        let known = membership.get_node(&id).is_some();
        if !known {
            return Outcome::Failed(format!("node {id} is not a member"));
        }
        let change = if voter {
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        self.change_membership(change).await
    }

    async fn lead_local(&self, id: NodeId) -> Outcome {
        if id == self.id() {
            return Outcome::Done;
        }
        let is_voter = self.membership().voter_ids().any(|v| v == id);
        if !is_voter {
            return Outcome::Failed(format!("node {id} is not a voter"));
        }
        if let Err(e) = self.inner.raft.trigger().transfer_leader(id).await {
            return Outcome::Failed(e.to_string());
        }
        let waited = self
            .inner
            .raft
            .wait(Some(self.inner.cfg.leader_wait * 2))
            .metrics(|m| m.current_leader == Some(id), "leadership transferred")
            .await;
        match waited {
            Ok(_) => Outcome::Done,
            Err(e) => Outcome::Failed(format!("node {id} did not take over: {e}")),
        }
    }
}
