//! Real `logkv-server` processes on loopback forming a 3-node cluster: SIGKILL of the
//! leader under concurrent writers, partitions made by a TCP proxy, and a history checker
//! (linearizability per key, identical revisions, watch streams prefixes of each other),
//! and a node stopped by a storage error exiting.
//!
//! CI runs short versions. `LOGKV_CLUSTER_KILLS=20` (and `LOGKV_CLUSTER_ROUNDS`) run longer
//! ones by hand; their figures are in docs/RELIABILITY.md.

#[path = "../common/mod.rs"]
mod common;

mod checker;
mod history;
mod kills;
mod nodes;
mod proxy;
mod stopped;

/// A count from the environment, or `default`.
pub fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
