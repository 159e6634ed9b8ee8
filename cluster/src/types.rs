//! The openraft type configuration: node ids, what a member is, what an entry carries.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::command::{Proposal, Response};

/// A node's id: a positive integer given with `--node-id`, never reused once removed.
pub type NodeId = u64;

/// What the membership records about a member: where its peers reach it (`raft_addr`) and
/// where clients do (`client_addr`, what `CLUSTER INFO` reports as `leader_addr`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// The node-to-node address (`--raft-listen`).
    pub raft_addr: String,
    /// The client address (`--advertise`, else `--listen`); empty when not known yet.
    pub client_addr: String,
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "raft {} client {}", self.raft_addr, self.client_addr)
    }
}

openraft::declare_raft_types!(
    /// The Raft types of a logkv cluster: entries carry a [`Proposal`], applying one gives a
    /// [`Response`], members are [`Node`]s. Everything else is openraft's default: u64 node
    /// ids and terms, `leader_id_adv` leader ids, tokio.
    pub TypeConfig:
        D = Proposal,
        R = Response,
        Node = Node,
);

/// Short name of the type configuration inside the crate.
pub(crate) type C = TypeConfig;

/// A log id (leader id + index).
pub type LogId = openraft::type_config::alias::LogIdOf<TypeConfig>;
/// A vote.
pub type Vote = openraft::type_config::alias::VoteOf<TypeConfig>;
/// A log entry.
pub type Entry = openraft::type_config::alias::EntryOf<TypeConfig>;
/// A membership as stored with the log id of the entry that set it.
pub type StoredMembership = openraft::type_config::alias::StoredMembershipOf<TypeConfig>;
/// A membership (voters, learners, their nodes).
pub type Membership = openraft::Membership<NodeId, Node>;
/// What a snapshot is of.
pub type SnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<TypeConfig>;
