//! What the state machine needs from the store: the seam between Raft and the engine.
//!
//! [`Applier`] is what the state machine needs; [`super::store_applier::StoreApplier`]
//! implements it on the engine's replication API (a replicated batch applied at the
//! leader's time with its Raft log id recorded atomically per bucket, and
//! `Store::checkpoint`).

use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::command::{Command, Response};
use crate::types::{LogId, StoredMembership};

/// How far a node's state goes: the last entry applied, the membership last applied, and
/// the leader time of the last entry (times never go backwards at apply).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The last entry applied.
    pub log_id: Option<LogId>,
    /// The last membership applied, with the log id of its entry.
    pub membership: StoredMembership,
    /// The time of the last entry applied (ms since the epoch).
    pub time_ms: u64,
}

/// Applies commands to a store and keeps what is needed to resume after a crash.
///
/// Calls come one at a time, in log order, from the state machine.
pub trait Applier: Send + Sync + 'static {
    /// The point the state resumes from, as found at open: openraft applies the entries
    /// after it again (the applier skips what it still holds); `None` if the state cannot
    /// be trusted (the caller then installs the latest snapshot or the empty state).
    fn recovered(&self) -> Option<Applied>;

    /// Applies the command of entry `log_id` at time `now_ms`. A deterministic outcome (a
    /// precondition, a missing bucket) is a [`Response`]; an `Err` is a failure of this
    /// node's disk and stops the node.
    fn apply(&self, log_id: LogId, now_ms: u64, command: &Command) -> io::Result<Response>;

    /// Records that the state is the result of `applied` (after a batch of entries, blank and
    /// membership entries included). `durable`: the state and this point must survive a
    /// power cut now (a membership change); otherwise the applier makes them durable when
    /// it sees fit, and a restart resumes from the last durable point.
    fn set_applied(&self, applied: &Applied, durable: bool) -> io::Result<()>;

    /// Writes a consistent, durable copy of the state into the new directory `dir`; returns
    /// what that state is the result of (as last recorded by [`Applier::set_applied`]),
    /// which is durable too from then on (openraft purges the Raft log up to it).
    fn checkpoint(&self, dir: &Path) -> io::Result<Applied>;

    /// Replaces the state by the copy in `dir` (`None`: the empty state), which is the result
    /// of `applied`. Watchers of the replaced state end with `lost`.
    fn install(&self, dir: Option<&Path>, applied: &Applied) -> io::Result<()>;
}
