//! The state every connection task shares: the store, the configuration, the counters
//! INFO shows, the watch pumps, the durability syncers, the client-memory budget, the
//! request metrics and the health.

use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::Arc;
use std::time::Instant;

use logkv::Store;
use logkv_cluster::{ClusterNode, StoreCell};

use crate::client_memory::ClientMemory;
use crate::config::ServerConfig;
use crate::durability::Syncers;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::pump::Pumps;

/// Counters shown by `INFO`.
#[derive(Debug)]
pub(crate) struct Stats {
    pub started: Instant,
    /// Open client connections (RESP port).
    pub connections: AtomicUsize,
    /// Open HTTP gateway connections.
    pub http_connections: AtomicUsize,
    /// Requests executed since start.
    pub commands: AtomicU64,
    /// Active watches over all connections (RESP watches and SSE streams).
    pub watchers: AtomicUsize,
    /// Source of connection ids.
    pub next_conn_id: AtomicU64,
}

/// What every connection task shares.
pub(crate) struct Shared {
    /// The store served: fixed on a single node; on a cluster node, replaced when a
    /// snapshot is installed (see [`Shared::store`]).
    pub stores: StoreCell,
    /// The cluster node, when the server is one.
    pub cluster: Option<ClusterNode>,
    pub config: ServerConfig,
    pub stats: Stats,
    pub pumps: Pumps,
    pub syncers: Syncers,
    /// What the connections hold in their buffers, against `--max-client-memory`.
    pub client_memory: Arc<ClientMemory>,
    /// Request counts and latency histograms.
    pub metrics: Metrics,
    /// Serving, shutting down, or failed.
    pub health: Health,
}

impl Shared {
    /// The store served now.
    pub fn store(&self) -> Store {
        self.stores.get()
    }

    /// The generation of the store served (raised when a cluster node installs a snapshot).
    pub fn store_generation(&self) -> u64 {
        self.stores.generation()
    }
}

impl Stats {
    /// Counters at zero, started now.
    pub fn new() -> Stats {
        Stats {
            started: Instant::now(),
            connections: AtomicUsize::new(0),
            http_connections: AtomicUsize::new(0),
            commands: AtomicU64::new(0),
            watchers: AtomicUsize::new(0),
            next_conn_id: AtomicU64::new(1),
        }
    }
}
