//! logkv-cluster: replicas of a logkv store on Raft ([openraft]).
//!
//! One Raft group holds the whole store. An entry is a store-level [`command::Command`]
//! stamped with the leader's time; every node applies the entries in log order to its own
//! `logkv::Store`, checking preconditions and assigning revisions at apply, so every node
//! ends with the same revisions and outcomes.
//!
//! - [`raftlog`]: the durable Raft log (segments of checksummed records, group commit).
//! - [`command`]: the entry format.
//! - [`sm`]: the state machine: entries applied to the store, snapshots.
//! - [`net`]: the node-to-node links.
//! - [`node`]: a running node and what the server asks of it.
//! - [`descriptors`]: storage calls that wait out a shortage of file descriptors.
//! - [`testing`]: an in-memory network that cuts, partitions and delays links, for tests.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod command;
pub mod descriptors;
mod fsutil;
pub mod net;
pub mod node;
pub mod raftlog;
pub mod sm;
pub mod testing;
pub mod types;

pub use command::{Command, Op, Proposal, Response};
pub use node::{ClusterError, ClusterInfo, ClusterNode, MemberInfo, NodeConfig, StartError};
pub use sm::StoreCell;
pub use types::{Node, NodeId, TypeConfig};
