//! A cluster node: its Raft log, state machine, links and Raft, the tasks around them, and
//! what the server asks of it ([`client`]: writes, linearizable reads, membership).

pub mod client;
mod group;
mod info;
mod serve;

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::errors::{Fatal, InitializeError, RaftError};
use openraft::{Config, SnapshotPolicy};
use parking_lot::Mutex;
use tokio::task::JoinHandle;

pub use client::ClusterError;
pub use info::{ClusterInfo, MemberInfo};

use crate::net::raft_client::NetworkFactory;
use crate::net::{Network, Transport};
use crate::raftlog::{FsyncMode, LogOptions, LogStore};
use crate::sm::snapshot::SnapshotStore;
use crate::sm::store_applier::StoreApplier;
use crate::sm::{StateMachine, StoreCell};
use crate::types::{Node, NodeId, TypeConfig};

/// The Raft handle of a node (its type names the state machine, so it lives here, above
/// both the types and the state machine).
pub type Raft = openraft::Raft<TypeConfig, StateMachine>;

/// Raft timing, in ms.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Leader heartbeat period.
    pub heartbeat_ms: u64,
    /// Shortest election timeout.
    pub election_min_ms: u64,
    /// Longest election timeout.
    pub election_max_ms: u64,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            heartbeat_ms: 100,
            election_min_ms: 500,
            election_max_ms: 1000,
        }
    }
}

/// Everything a node needs to start.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's id (positive, never reused).
    pub id: NodeId,
    /// The address other nodes reach this one at (`--raft-listen`).
    pub raft_addr: String,
    /// The address clients reach this one at (`--advertise`, else `--listen`).
    pub client_addr: String,
    /// The first members, id → raft address (`--initial-cluster`); empty for a node that
    /// waits to be added with `CLUSTER ADD`.
    pub initial_members: BTreeMap<NodeId, String>,
    /// The node's directory (`raft/`, `sm/`, `snapshots/` in it).
    pub data_dir: PathBuf,
    /// Authenticates the nodes to each other.
    pub password: Option<String>,
    /// When a Raft log append is acknowledged.
    pub fsync: FsyncMode,
    /// Engine options for the store (clock, fsync and background are set by the node).
    pub store: logkv::Options,
    /// Raft timing.
    pub timing: Timing,
    /// Entries between snapshots.
    pub snapshot_every: u64,
    /// Raft log segment size.
    pub segment_size: u64,
    /// How long a write may wait for its outcome before it is reported in doubt.
    pub write_timeout: Duration,
    /// How long a request waits for a leader (or its lease) before NOLEADER.
    pub leader_wait: Duration,
    /// How often the leader proposes TTL sweeps.
    pub sweep_interval: Duration,
    /// How long `CLUSTER ADD` waits for a new node to catch up as a learner before it makes
    /// it a voter (past it the node stays a learner and the command fails, saying so).
    pub catch_up_wait: Duration,
}

impl NodeConfig {
    /// A configuration with the defaults for everything but the node's identity.
    pub fn new(
        id: NodeId,
        raft_addr: impl Into<String>,
        data_dir: impl Into<PathBuf>,
    ) -> NodeConfig {
        let raft_addr = raft_addr.into();
        NodeConfig {
            id,
            client_addr: String::new(),
            raft_addr,
            initial_members: BTreeMap::new(),
            data_dir: data_dir.into(),
            password: None,
            fsync: FsyncMode::Always,
            store: logkv::Options::default(),
            timing: Timing::default(),
            snapshot_every: 100_000,
            segment_size: 64 << 20,
            write_timeout: Duration::from_secs(10),
            leader_wait: Duration::from_secs(3),
            sweep_interval: Duration::from_secs(1),
            catch_up_wait: Duration::from_secs(60),
        }
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data directory.
    #[error("cluster data in {dir}: {source}")]
    Io {
        /// The directory.
        dir: PathBuf,
        /// What failed.
        #[source]
        source: io::Error,
    },
    /// Raft refused to start.
    #[error("raft: {0}")]
    Raft(String),
    /// The raft address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

pub(crate) struct NodeInner {
    pub(crate) cfg: NodeConfig,
    pub(crate) raft: Raft,
    pub(crate) net: Arc<Network>,
    pub(crate) sm: StateMachine,
    pub(crate) applier: Arc<StoreApplier>,
    group: group::Grouper,
    log: LogStore,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// A running cluster node. Cheap to clone.
#[derive(Clone)]
pub struct ClusterNode {
    pub(crate) inner: Arc<NodeInner>,
}

impl std::fmt::Debug for ClusterNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterNode")
            .field("id", &self.inner.cfg.id)
            .finish_non_exhaustive()
    }
}

fn raft_config(cfg: &NodeConfig) -> Result<Arc<Config>, StartError> {
    let config = Config {
        cluster_name: "logkv".into(),
        heartbeat_interval: cfg.timing.heartbeat_ms,
        election_timeout_min: cfg.timing.election_min_ms,
        election_timeout_max: cfg.timing.election_max_ms,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.snapshot_every),
        // Keep enough log for a follower that is installing a (whole-store) snapshot.
        max_in_snapshot_log_to_keep: cfg.snapshot_every.min(10_000),
        install_snapshot_timeout: 60_000,
        // A node cut off and back does not disrupt the leader with a higher term.
        enable_pre_vote: Some(true),
        // The committed hint is not fsynced: a restarted leader must not serve from it
        // without an election (openraft#1511).
        enable_leader_restore: Some(false),
        ..Config::default()
    };
    config
        .validate()
        .map(Arc::new)
        .map_err(|e| StartError::Raft(e.to_string()))
}

impl ClusterNode {
    /// Starts a node whose links come from `transport`. The caller accepts incoming links
    /// (see [`ClusterNode::start_tcp`] for TCP).
    pub async fn start(
        cfg: NodeConfig,
        transport: Arc<dyn Transport>,
    ) -> Result<ClusterNode, StartError> {
        let dir = cfg.data_dir.clone();
        let io_err = |source: io::Error| StartError::Io {
            dir: dir.clone(),
            source,
        };
        let log = LogStore::open(
            dir.join("raft"),
            LogOptions {
                fsync: cfg.fsync,
                segment_size: cfg.segment_size,
                ..LogOptions::default()
            },
        )
        .map_err(io_err)?;
        let (applier, snapshots) = {
            let d = dir.clone();
            let opts = cfg.store.clone();
            tokio::task::spawn_blocking(move || {
                let a = StoreApplier::open(d.join("sm"), &opts)?;
                let s = SnapshotStore::open(d.join("snapshots"))?;
                Ok::<_, io::Error>((a, s))
            })
            .await
            .map_err(|e| io_err(io::Error::other(e)))?
            .map_err(io_err)?
        };
        let applier = Arc::new(applier);
        let sm = {
            let a = Arc::clone(&applier) as Arc<dyn crate::sm::Applier>;
            tokio::task::spawn_blocking(move || StateMachine::open(a, snapshots))
                .await
                .map_err(|e| io_err(io::Error::other(e)))?
                .map_err(io_err)?
        };
        let net = Network::new(cfg.id, cfg.password.as_deref(), transport);
        for (id, addr) in &cfg.initial_members {
            net.set_addr(*id, addr);
        }
        let raft = Raft::new(
            cfg.id,
            raft_config(&cfg)?,
            NetworkFactory::new(Arc::clone(&net)),
            log.clone(),
            sm.clone(),
        )
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?;
        let node = ClusterNode {
            inner: Arc::new(NodeInner {
                cfg,
                raft,
                net: Arc::clone(&net),
                sm,
                applier,
                group: group::Grouper::default(),
                log,
                tasks: Mutex::new(Vec::new()),
            }),
        };
        net.set_handler(Arc::new(serve::NodeHandler::new(&node)));
        node.initialize().await?;
        node.spawn_tasks();
        Ok(node)
    }

    /// Binds `cfg.raft_addr` and starts a node on TCP.
    pub async fn start_tcp(cfg: NodeConfig) -> Result<ClusterNode, StartError> {
        let addr = cfg.raft_addr.clone();
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|source| StartError::Listen {
                addr: addr.clone(),
                source,
            })?;
        let node = ClusterNode::start(cfg, Arc::new(crate::net::TcpTransport)).await?;
        let accept = tokio::spawn(crate::net::serve_tcp(
            listener,
            Arc::downgrade(&node.inner.net),
        ));
        node.inner.tasks.lock().push(accept);
        Ok(node)
    }

    /// Forms the cluster from the initial members, once (etcd's convention: every node gets
    /// the same list; a node that already has a membership is left as it is).
    async fn initialize(&self) -> Result<(), StartError> {
        let cfg = &self.inner.cfg;
        if cfg.initial_members.is_empty() {
            return Ok(());
        }
        let raft = &self.inner.raft;
        if raft
            .is_initialized()
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?
        {
            return Ok(());
        }
        let members: BTreeMap<NodeId, Node> = cfg
            .initial_members
            .iter()
            .map(|(id, addr)| {
                (
                    *id,
                    Node {
                        raft_addr: addr.clone(),
                        client_addr: String::new(),
                    },
                )
            })
            .collect();
        match raft.initialize(members).await {
            Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(StartError::Raft(e.to_string())),
        }
    }

    fn spawn_tasks(&self) {
        let mut tasks = self.inner.tasks.lock();
        tasks.push(tokio::spawn(address_book(Arc::downgrade(&self.inner))));
        tasks.push(tokio::spawn(announce(Arc::downgrade(&self.inner))));
        tasks.push(tokio::spawn(sweeper(Arc::downgrade(&self.inner))));
        tasks.push(tokio::spawn(durable_point(Arc::downgrade(&self.inner))));
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.inner.cfg.id
    }

    /// The store this node serves (replaced when a snapshot is installed).
    pub fn store(&self) -> &StoreCell {
        self.inner.applier.cell()
    }

    /// The Raft handle (tests and diagnostics).
    pub fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    /// The links (tests).
    pub fn network(&self) -> &Arc<Network> {
        &self.inner.net
    }

    /// fdatasync calls of the Raft log.
    pub fn log_fsyncs(&self) -> u64 {
        self.inner.log.fsyncs()
    }

    /// Whether the node stopped on a fatal error (a failed disk), or was shut down: it
    /// serves nothing more. Its proposals and reads are refused at once
    /// ([`ClusterError::NoLeader`], nothing applied), and so are snapshots sent to it; a
    /// server exits when this happens (see [`ClusterNode::failed`]).
    pub fn failure(&self) -> Option<String> {
        match &self.inner.raft.metrics().borrow_watched().running_state {
            Ok(()) => None,
            Err(e) => Some(e.to_string()),
        }
    }

    /// Completes once the node's Raft stops on an error (a storage failure, a panic), with
    /// the reason; never if it runs on or is shut down ([`ClusterNode::shutdown`]).
    pub async fn failed(&self) -> String {
        let mut rx = self.inner.raft.metrics();
        // Read once more after Raft is gone: its last word.
        let mut gone = false;
        loop {
            if let Err(e) = &rx.borrow_watched().running_state {
                if !matches!(e, Fatal::Stopped) {
                    return e.to_string();
                }
            }
            if gone {
                return std::future::pending().await;
            }
            gone = rx.changed().await.is_err();
        }
    }

    /// Stops the node: Raft, links, background tasks; syncs the log.
    pub async fn shutdown(&self) {
        for t in self.inner.tasks.lock().drain(..) {
            t.abort();
        }
        if let Err(e) = self.inner.raft.shutdown().await {
            tracing::warn!("raft shutdown: {e}");
        }
        self.inner.net.shutdown();
        if let Err(e) = self.inner.log.close() {
            tracing::error!("closing the Raft log: {e}");
        }
        let applier = Arc::clone(&self.inner.applier);
        let _ = tokio::task::spawn_blocking(move || applier.cell().get().sync()).await;
    }
}

/// Keeps the links' address book in line with the membership.
async fn address_book(node: std::sync::Weak<NodeInner>) {
    let Some(mut rx) = node.upgrade().map(|n| n.raft.metrics()) else {
        return;
    };
    loop {
        let Some(n) = node.upgrade() else { return };
        {
            let m = rx.borrow_watched();
            for (id, info) in m.membership_config.membership().nodes() {
                n.net.set_addr(*id, &info.raft_addr);
            }
        }
        drop(n);
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Makes sure the membership holds this node's own addresses (the initial members are
/// recorded without client addresses, identically on every node).
async fn announce(node: std::sync::Weak<NodeInner>) {
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Some(n) = node.upgrade() else { return };
        let recorded = {
            let m = n.raft.metrics();
            let m = m.borrow_watched();
            m.membership_config
                .membership()
                .get_node(&n.cfg.id)
                .cloned()
        };
        let Some(recorded) = recorded else { continue };
        // The raft address stays what the others were given (it may be a proxy's).
        let me = Node {
            raft_addr: recorded.raft_addr.clone(),
            client_addr: n.cfg.client_addr.clone(),
        };
        if recorded == me || me.client_addr.is_empty() {
            drop(n);
            tokio::time::sleep(Duration::from_secs(5)).await;
            continue;
        }
        let c = ClusterNode { inner: n };
        if let Err(e) = c.set_node(c.id(), me).await {
            tracing::debug!("recording this node's addresses: {e}");
        }
    }
}

/// The leader proposes TTL sweeps: followers never expire entries on their own, so
/// every node writes the same DEL markers at the same revisions.
async fn sweeper(node: std::sync::Weak<NodeInner>) {
    loop {
        let interval = match node.upgrade() {
            Some(n) => n.cfg.sweep_interval,
            None => return,
        };
        tokio::time::sleep(interval).await;
        let Some(n) = node.upgrade() else { return };
        let c = ClusterNode { inner: n };
        if !c.is_leader() {
            continue;
        }
        for bucket in c.inner.applier.sweep_candidates() {
            if let Err(e) = c
                .propose_as_leader(crate::command::Command::Sweep { bucket })
                .await
            {
                tracing::debug!("sweep not proposed: {e}");
                break;
            }
        }
    }
}

/// Moves the durable point up to what is applied now and then: the store synced, a restart
/// re-applies only what follows (the engine's background thread compacts the buckets).
async fn durable_point(node: std::sync::Weak<NodeInner>) {
    loop {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let Some(n) = node.upgrade() else { return };
        let applier = Arc::clone(&n.applier);
        drop(n);
        let done = tokio::task::spawn_blocking(move || applier.persist()).await;
        if let Ok(Err(e)) = done {
            tracing::error!("the durable point could not be moved: {e}");
        }
    }
}
