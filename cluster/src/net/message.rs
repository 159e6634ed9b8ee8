//! What nodes ask each other, and what they answer (postcard inside [`super::frame`]s).

use std::sync::Arc;

use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};

use crate::command::{Command, Response};
use crate::sm::snapshot::SnapshotInfo;
use crate::types::{Node, NodeId, Vote, C};

/// A request on a link.
#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    /// Raft `AppendEntries` (and heartbeats).
    Append(AppendEntriesRequest<C>),
    /// Raft `RequestVote`.
    Vote(VoteRequest<C>),
    /// Raft pre-vote.
    PreVote(VoteRequest<C>),
    /// Leadership handed to the receiver.
    TransferLeader(TransferLeaderRequest<C>),
    /// A snapshot follows as the request's byte stream (its files in `info` order).
    Snapshot {
        /// The sender's vote.
        vote: Vote,
        /// What the snapshot is.
        info: SnapshotInfo,
    },
    /// For the leader: a client's write or an administrative change.
    Forward(Forward),
    /// The node's own description (its client address).
    Describe,
}

/// What a follower asks the leader for on behalf of a client.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Forward {
    /// Propose this command (the leader stamps its time). Shared: the node that forwards it
    /// keeps it for a retry without copying it.
    Write(Arc<Command>),
    /// A read index: the log index a linearizable read must wait for.
    ReadIndex,
    /// Add a node (as a learner, then a voter unless `learner`).
    Add {
        /// The node's id.
        id: NodeId,
        /// Its raft address.
        raft_addr: String,
        /// Stay a learner.
        learner: bool,
    },
    /// Remove a node.
    Remove {
        /// The node's id.
        id: NodeId,
    },
    /// Hand leadership to a node.
    Lead {
        /// The node's id.
        id: NodeId,
    },
    /// Record a member's addresses.
    SetNode {
        /// The node's id.
        id: NodeId,
        /// Its addresses.
        node: Node,
    },
}

/// The outcome of a forwarded request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Applied with this response, at this log index.
    Applied {
        /// The response.
        response: Response,
        /// The entry's index.
        index: u64,
    },
    /// A read index.
    ReadIndex(u64),
    /// Done (an administrative change).
    Done,
    /// The receiver is not the leader; nothing was proposed.
    NotLeader(Option<NodeId>),
    /// No leader or no quorum now; nothing was proposed.
    NoLeader(String),
    /// Proposed, but whether it was applied is unknown.
    InDoubt(String),
    /// Refused (an administrative change that is not possible).
    Failed(String),
}

/// A reply on a link.
#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    /// To [`Request::Append`].
    Append(Result<AppendEntriesResponse<C>, String>),
    /// To [`Request::Vote`] and [`Request::PreVote`].
    Vote(Result<VoteResponse<C>, String>),
    /// To [`Request::TransferLeader`].
    TransferLeader(Result<TransferLeaderResponse<C>, String>),
    /// To [`Request::Snapshot`].
    Snapshot(Result<SnapshotResponse<C>, String>),
    /// To [`Request::Forward`].
    Forward(Outcome),
    /// To [`Request::Describe`].
    Describe(Node),
    /// The request could not be served (the node is starting or stopping).
    Unavailable(String),
}
