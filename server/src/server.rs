//! Binding, protected mode, the accept loop, the connection limit and graceful shutdown.

use std::future::Future;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use logkv::{Options, Store};
use logkv_cluster::{ClusterNode, StoreCell};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

use crate::client_memory::ClientMemory;
use crate::config::ServerConfig;
use crate::connection;
use crate::durability::Syncers;
use crate::pump::Pumps;
use crate::shared::{Shared, Stats};

/// Why the server could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A non-loopback listen address without a password (protected mode).
    #[error(
        "refusing to listen on {addr} without a password: it is not a loopback address, so anyone \
         who can reach it could read and change all data. Set a password with --password <secret> \
         or the LOGKV_PASSWORD environment variable (clients then send AUTH <secret>), listen on \
         127.0.0.1, or pass --unprotected if this network is trusted"
    )]
    Unprotected {
        /// The address asked for.
        addr: String,
    },
    /// The listen address is not `host:port` or does not resolve.
    #[error("invalid --listen address {addr:?}: {reason}")]
    BadAddress {
        /// The address asked for.
        addr: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The data directory could not be opened.
    #[error("cannot open the data directory {}: {source}{hint}", dir.display())]
    Store {
        /// The directory.
        dir: PathBuf,
        /// The engine's error.
        #[source]
        source: logkv::Error,
        /// Extra advice for the user.
        hint: &'static str,
    },
    /// Binding the listening socket failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The final sync at shutdown failed.
    #[error("final sync at shutdown failed: {0}")]
    Sync(#[source] logkv::Error),
    /// The cluster node could not start.
    #[error("cannot start the cluster node: {0}")]
    Cluster(String),
}

/// A server bound to its address with its store open, not yet accepting.
pub struct Server {
    listener: TcpListener,
    local_addr: SocketAddr,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

/// Binds, serves until `shutdown` completes, then shuts down gracefully.
pub async fn run(
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    Server::bind(config).await?.serve(shutdown).await
}

fn resolve(listen: &str) -> Result<Vec<SocketAddr>, ServerError> {
    let bad = |reason: String| ServerError::BadAddress {
        addr: listen.to_string(),
        reason,
    };
    let addrs: Vec<SocketAddr> = listen
        .to_socket_addrs()
        .map_err(|e| bad(format!("{e} (expected host:port, e.g. 127.0.0.1:7379)")))?
        .collect();
    if addrs.is_empty() {
        return Err(bad("it resolves to no address".into()));
    }
    Ok(addrs)
}

impl Server {
    /// Checks protected mode, opens the store and binds the listening socket.
    pub async fn bind(config: ServerConfig) -> Result<Server, ServerError> {
        let addrs = resolve(&config.listen)?;
        if config.password.is_none()
            && !config.unprotected
            && !addrs.iter().all(|a| a.ip().is_loopback())
        {
            return Err(ServerError::Unprotected {
                addr: config.listen.clone(),
            });
        }
        if let Some(c) = &config.cluster {
            let raft = resolve(&c.raft_listen)?;
            if config.password.is_none()
                && !config.unprotected
                && !raft.iter().all(|a| a.ip().is_loopback())
            {
                return Err(ServerError::Unprotected {
                    addr: c.raft_listen.clone(),
                });
            }
            return Server::bind_cluster(config, addrs[0]).await;
        }
        let opts = Options {
            fsync: config.fsync,
            ..Options::default()
        };
        let dir = config.data_dir.clone();
        let opened = tokio::task::spawn_blocking(move || Store::open(&dir, opts)).await;
        let store = match opened {
            Ok(Ok(store)) => store,
            Ok(Err(source)) => {
                let hint = if matches!(source, logkv::Error::Locked(_)) {
                    " (is another logkv-server running on this directory? stop it or pick \
                     another --data-dir)"
                } else {
                    ""
                };
                return Err(ServerError::Store {
                    dir: config.data_dir.clone(),
                    source,
                    hint,
                });
            }
            Err(join) => std::panic::resume_unwind(join.into_panic()),
        };
        for (bucket, report) in store.recovery_reports() {
            if report.truncated_bytes > 0 {
                warn!(bucket = %bucket, truncated_bytes = report.truncated_bytes, "recovery dropped a torn tail");
            }
        }
        let addr = addrs[0];
        let (listener, local_addr) = bind_listener(addr)?;
        Ok(Server::assemble(
            listener,
            local_addr,
            config,
            StoreCell::new(store, 0),
            None,
        ))
    }

    /// A cluster node: the client listener first (its address is what the node advertises
    /// by default), then the node, whose store the server serves.
    async fn bind_cluster(config: ServerConfig, addr: SocketAddr) -> Result<Server, ServerError> {
        let (listener, local_addr) = bind_listener(addr)?;
        let node = crate::cluster::start(&config, local_addr).await?;
        let stores = node.store().clone();
        let server = Server::assemble(listener, local_addr, config, stores, Some(node));
        crate::cluster::watch_store_changes(&server.shared);
        Ok(server)
    }

    fn assemble(
        listener: TcpListener,
        local_addr: SocketAddr,
        config: ServerConfig,
        stores: StoreCell,
        cluster: Option<ClusterNode>,
    ) -> Server {
        let client_memory = Arc::new(ClientMemory::new(config.max_client_memory));
        let shared = Arc::new(Shared {
            stores,
            cluster,
            config,
            client_memory,
            stats: Stats::new(),
            pumps: Pumps::new(),
            syncers: Syncers::default(),
        });
        Server {
            listener,
            local_addr,
            shared,
        }
    }

    /// The address actually bound (with the port the OS picked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Accepts connections until `shutdown` completes; then stops accepting, lets the
    /// connections finish the requests they have read (for at most the configured grace),
    /// syncs the store and closes it (which releases the directory lock).
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
        let Server {
            listener,
            local_addr,
            shared,
        } = self;
        info!(
            data_dir = %shared.config.data_dir.display(),
            fsync = ?shared.config.fsync,
            auth = shared.config.password.is_some(),
            "listening on {local_addr}"
        );
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Err(e) = done {
                        if e.is_panic() {
                            error!("a connection task panicked: {e}");
                        }
                    }
                }
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => admit(&shared, &mut tasks, &stop_rx, stream, peer),
                    Err(e) => {
                        // Typically EMFILE/ENFILE: back off instead of spinning.
                        error!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }

        info!(
            connections = shared.stats.connections.load(Ordering::Relaxed),
            "shutting down: no longer accepting connections"
        );
        drop(listener);
        let _ = stop_tx.send(true);
        let grace = shared.config.shutdown_grace;
        let drained =
            tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            warn!(
                left = tasks.len(),
                "connections still busy after {grace:?}: closing them"
            );
            tasks.shutdown().await;
        }
        let pumps = shared.pumps.clone();
        let _ = tokio::task::spawn_blocking(move || pumps.shutdown()).await;
        let keep = Arc::clone(&shared);
        let _ = tokio::task::spawn_blocking(move || keep.syncers.shutdown()).await;
        if let Some(node) = &shared.cluster {
            node.shutdown().await;
        }
        // Blocking jobs (fsync waits, DELGLOB...) hold a reference until they return.
        let deadline = Instant::now() + Duration::from_secs(30);
        while Arc::strong_count(&shared) > 1 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let synced = tokio::task::spawn_blocking(move || {
            let result = shared.store().sync();
            drop(shared);
            result
        })
        .await;
        match synced {
            Ok(Ok(())) => {
                info!("store synced and closed; bye");
                Ok(())
            }
            Ok(Err(e)) => Err(ServerError::Sync(e)),
            Err(join) => std::panic::resume_unwind(join.into_panic()),
        }
    }
}

fn bind_listener(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), ServerError> {
    let listener = listen(addr).map_err(|source| ServerError::Bind { addr, source })?;
    let local_addr = listener
        .local_addr()
        .map_err(|source| ServerError::Bind { addr, source })?;
    Ok((listener, local_addr))
}

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    // A deep backlog: thousands of clients may connect at once.
    socket.listen(4096)
}

/// Starts a connection task, or turns the client away when the server is full.
fn admit(
    shared: &Arc<Shared>,
    tasks: &mut JoinSet<()>,
    stop: &watch::Receiver<bool>,
    mut stream: TcpStream,
    peer: SocketAddr,
) {
    let max = shared.config.max_connections;
    let open = shared.stats.connections.fetch_add(1, Ordering::AcqRel);
    if open >= max {
        shared.stats.connections.fetch_sub(1, Ordering::AcqRel);
        warn!(%peer, max, "connection refused: max number of clients reached");
        tokio::spawn(async move {
            let reply = b"-ERR max number of clients reached\r\n";
            let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(reply)).await;
        });
        return;
    }
    let guard = ConnGuard(Arc::clone(shared));
    let stop = stop.clone();
    let id = shared.stats.next_conn_id.fetch_add(1, Ordering::Relaxed);
    let (buffers, task) = shared.client_memory.register(id, peer);
    let fut = async move {
        debug!(id, %peer, "connection opened");
        let shared = Arc::clone(&guard.0);
        if let Err(e) = connection::serve(shared, stream, peer, id, buffers, stop).await {
            debug!(id, %peer, "connection error: {e}");
        }
        debug!(id, %peer, "connection closed");
        drop(guard);
    };
    task.set(tasks.spawn(fut));
}

/// Counts a connection for as long as its task lives (also when it is aborted).
struct ConnGuard(Arc<Shared>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.stats.connections.fetch_sub(1, Ordering::AcqRel);
    }
}
