//! The server as a cluster node (`--node-id` and the flags with it): starting the node, and
//! the hooks the connection and the commands call when the server is one.
//!
//! - [`reads`]: the read barrier before a read (unless `READONLY`).
//!
//! The verbs that act on the node live with the other verbs: `command::proposals` (pipelined
//! writes, EXEC, BUCKET CREATE/DROP and DELGLOB become proposals, forwarded to the leader from
//! a follower, their replies back in request order) and `command::cluster` (`CLUSTER
//! INFO|ADD|REMOVE|LEADER` and INFO's `# Cluster` section).
//!
//! A server without the cluster flags never enters this module but for `CLUSTER`
//! (`-ERR not a cluster`).

pub(crate) mod reads;

use std::net::SocketAddr;
use std::sync::Arc;

use logkv_cluster::{ClusterError, ClusterNode, NodeConfig};

use crate::config::ServerConfig;
use crate::protocol::Reply;
use crate::server_error::ServerError;
use crate::shared::Shared;

/// Starts the cluster node the configuration describes; `client_addr` is the address
/// clients reach this server at.
pub(crate) async fn start(
    config: &ServerConfig,
    client_addr: SocketAddr,
) -> Result<ClusterNode, ServerError> {
    let Some(c) = &config.cluster else {
        return Err(ServerError::Cluster("not a cluster node".into()));
    };
    let mut cfg = NodeConfig::new(c.node_id, c.raft_listen.clone(), config.data_dir.clone());
    cfg.client_addr = c
        .advertise
        .clone()
        .unwrap_or_else(|| client_addr.to_string());
    cfg.initial_members = c.initial.clone();
    cfg.password = config.password.clone();
    cfg.fsync = config.fsync.into();
    cfg.store.max_read_bytes = config.max_read_bytes();
    ClusterNode::start_tcp(cfg)
        .await
        .map_err(|e| ServerError::Cluster(e.to_string()))
}

/// Wakes the watching connections whenever the node replaces its store (a snapshot was
/// installed), so that their watches end with `lost`.
pub(crate) fn watch_store_changes(shared: &Arc<Shared>) {
    let mut rx = shared.stores.subscribe();
    let weak = Arc::downgrade(shared);
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let Some(shared) = weak.upgrade() else { return };
            shared.pumps.wake_everyone();
        }
    });
}

/// Completes when `node`'s Raft stops on an error (a storage failure), with the reason;
/// never without a node, or while it runs.
pub(crate) async fn failed(node: Option<ClusterNode>) -> String {
    match node {
        Some(node) => node.failed().await,
        None => std::future::pending().await,
    }
}

/// What the server exits with after its node stopped on `why`.
pub(crate) fn stopped_error(why: &str) -> ServerError {
    ServerError::NodeStopped(why.to_string())
}

/// The reply for a cluster failure: `-NOLEADER` (nothing was applied; retry), `-INDOUBT`
/// (the outcome is unknown; check with ENTRY), `-TOOLARGE` (a write over one replicated
/// entry's limit; nothing was applied) or `-ERR`.
pub(crate) fn error_reply(e: &ClusterError) -> Reply {
    match e {
        ClusterError::NoLeader(m) => Reply::err("NOLEADER", m.clone()),
        ClusterError::InDoubt(m) => Reply::err("INDOUBT", m.clone()),
        ClusterError::TooLarge { .. } => Reply::err("TOOLARGE", e.to_string()),
        ClusterError::Failed(m) => Reply::err("ERR", m.clone()),
    }
}
