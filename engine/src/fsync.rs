//! The fsync policy: when written bytes are made durable. Group commit, which
//! carries it out, is part of the log (`log/group_commit.rs`).

use std::time::Duration;

/// When written bytes are made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// A write returns only once it is on stable storage; concurrent writers share fsyncs.
    Always,
    /// A background task syncs at this interval (like Redis `appendfsync everysec`).
    Interval(Duration),
    /// The store never syncs on its own; [`crate::Store::sync`] and close still do.
    Never,
}
