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
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod command;
mod fsutil;
pub mod raftlog;
pub mod sm;
pub mod types;

pub use command::{Command, Op, Proposal, Response};
pub use types::{Node, NodeId, TypeConfig};
