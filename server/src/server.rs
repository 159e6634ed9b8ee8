//! Binding, protected mode, the accept loop, the connection limit and graceful shutdown.

use std::future::Future;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use logkv::{Options, Store};
use logkv_cluster::StoreCell;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, error, info, warn};

use crate::client_memory::ClientMemory;
use crate::config::ServerConfig;
use crate::connection;
use crate::durability::Syncers;
use crate::pump::Pumps;
use crate::server_error::ServerError;
use crate::shared::{Shared, Stats};
use crate::tls::{self, Transport};

/// A server bound to its address with its store open, not yet accepting.
pub struct Server {
    listener: TcpListener,
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    tls: Option<TlsAcceptor>,
    /// The HTTP gateway's listener and address, with `--http-listen`.
    http: Option<(TcpListener, SocketAddr)>,
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

/// Resolves a listen address and applies protected mode: a non-loopback address needs a
/// password or `--unprotected`. The same rule for the RESP port and the HTTP gateway.
fn protected(config: &ServerConfig, listen: &str) -> Result<SocketAddr, ServerError> {
    let addrs = resolve(listen)?;
    if config.password.is_none()
        && !config.unprotected
        && !addrs.iter().all(|a| a.ip().is_loopback())
    {
        return Err(ServerError::Unprotected {
            addr: listen.to_string(),
        });
    }
    Ok(addrs[0])
}

/// What to tell the operator when the gateway, plain HTTP, listens beyond loopback with a
/// password set: the password crosses the network in clear text (and the data, which TLS
/// on the RESP port says should not).
fn plain_gateway_warning(config: &ServerConfig, addr: SocketAddr) -> Option<String> {
    if addr.ip().is_loopback() || config.password.is_none() {
        return None;
    }
    let tls = if config.tls.is_some() {
        " (unlike the RESP port, which serves TLS)"
    } else {
        ""
    };
    Some(format!(
        "the HTTP gateway on {addr} is plain HTTP{tls}: the password in each request's \
         Authorization header, and the data, cross the network unencrypted; keep \
         --http-listen on loopback or put a TLS proxy in front of it"
    ))
}

fn bind_listener(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), ServerError> {
    let listener = listen(addr).map_err(|source| ServerError::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| ServerError::Bind { addr, source })?;
    Ok((listener, local))
}

/// Accepts on the gateway's listener; never completes without one.
async fn accept_http(
    http: Option<&(TcpListener, SocketAddr)>,
) -> std::io::Result<(TcpStream, SocketAddr)> {
    match http {
        Some((listener, _)) => listener.accept().await,
        None => std::future::pending().await,
    }
}

/// The backup directory, created if missing, as an absolute path; it must not lie inside
/// the data directory (a backup under `buckets/` would pass for a bucket there).
fn backup_dir(dir: &Path, data_dir: &Path) -> Result<PathBuf, ServerError> {
    let fail = |reason: String| ServerError::BackupDir {
        dir: dir.to_path_buf(),
        reason,
    };
    // Made durable: a backup is renamed into it, and only that rename is synced.
    logkv::fsutil::create_dir_all_durable(&logkv::io::Storage::os(), dir)
        .map_err(|e| fail(e.to_string()))?;
    let dir = dir.canonicalize().map_err(|e| fail(e.to_string()))?;
    let data = data_dir.canonicalize().map_err(|e| fail(e.to_string()))?;
    if dir.starts_with(&data) {
        return Err(fail(format!(
            "it is inside the data directory {}; put backups beside it (the same file \
             system lets them share the data's files)",
            data.display()
        )));
    }
    Ok(dir)
}

impl Server {
    /// Checks protected mode, opens the store (on a cluster node: starts the node, which
    /// opens it) and binds the listening sockets.
    pub async fn bind(mut config: ServerConfig) -> Result<Server, ServerError> {
        let addr = protected(&config, &config.listen)?;
        let http_addr = match &config.http_listen {
            Some(listen) => Some(protected(&config, listen)?),
            None => None,
        };
        if let Some(warning) = http_addr.and_then(|a| plain_gateway_warning(&config, a)) {
            warn!("{warning}");
        }
        if let Some(c) = &config.cluster {
            protected(&config, &c.raft_listen)?;
            if config.repair {
                return Err(ServerError::Cluster(
                    "--repair does not apply to a cluster node: a damaged node is rebuilt from \
                     the others (see docs/CLUSTER.md)"
                        .into(),
                ));
            }
        }
        // Certificates before the store: a bad file is reported without touching the data.
        let tls = config.tls.as_ref().map(tls::load).transpose()?;
        let (listener, local_addr) = bind_listener(addr)?;
        let http = http_addr.map(bind_listener).transpose()?;
        let (stores, cluster) = if config.cluster.is_some() {
            // The client listener first: its address is what the node advertises by default.
            let node = crate::cluster::start(&config, local_addr).await?;
            (node.store().clone(), Some(node))
        } else {
            (StoreCell::new(open_store(&config).await?, 0), None)
        };
        // After the store: the data directory exists now, to be compared with.
        if let Some(dir) = &config.backup_dir {
            config.backup_dir = Some(backup_dir(dir, &config.data_dir)?);
        }
        let client_memory = Arc::new(ClientMemory::new(config.max_client_memory));
        let shared = Arc::new(Shared {
            stores,
            cluster,
            config,
            client_memory,
            stats: Stats::new(),
            pumps: Pumps::new(),
            syncers: Syncers::default(),
            metrics: crate::metrics::Metrics::new(crate::command::verb_names()),
            health: crate::health::Health::default(),
        });
        if shared.cluster.is_some() {
            crate::cluster::watch_store_changes(&shared);
        }
        Ok(Server {
            listener,
            local_addr,
            shared,
            tls,
            http,
        })
    }

    /// The address actually bound (with the port the OS picked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address the HTTP gateway is bound to, with `--http-listen`.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(|(_, addr)| *addr)
    }

    /// Accepts connections until `shutdown` completes; then stops accepting, lets the
    /// connections finish the requests they have read (for at most the configured grace),
    /// syncs the store and closes it (which releases the directory lock).
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
        let Server {
            listener,
            local_addr,
            shared,
            tls,
            http,
        } = self;
        info!(
            data_dir = %shared.config.data_dir.display(),
            fsync = ?shared.config.fsync,
            auth = shared.config.password.is_some(),
            tls = tls.is_some(),
            client_certificates = shared.config.tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
            "listening on {local_addr}"
        );
        let (stop_tx, stop_rx) = watch::channel(false);
        let gateway = http.as_ref().map(|(_, addr)| {
            info!(
                allowed_hosts = ?shared.config.http_allowed_hosts,
                cors_origins = ?shared.config.http_cors_origins,
                "HTTP gateway listening on {addr}"
            );
            crate::http::router(&Arc::new(crate::http::Gateway::new(
                Arc::clone(&shared),
                stop_rx.clone(),
            )))
        });
        let mut tasks = JoinSet::new();
        tokio::pin!(shutdown);
        // A cluster node whose Raft stopped on a storage error serves nothing more: the
        // server shuts down as for a signal, and exits with the error (fail-stop).
        let mut node_failed = Box::pin(crate::cluster::failed(shared.cluster.clone()));
        let mut stopped_node = None;
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                why = &mut node_failed => {
                    error!(
                        "the cluster node stopped: {why}; shutting down (restart it, or \
                         replace it from the others: see docs/CLUSTER.md)"
                    );
                    stopped_node = Some(why);
                    break;
                }
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Err(e) = done {
                        if e.is_panic() {
                            error!("a connection task panicked: {e}");
                        }
                    }
                }
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => admit(&shared, tls.as_ref(), &mut tasks, &stop_rx, stream, peer),
                    Err(e) => accept_failed(&e).await,
                },
                accepted = accept_http(http.as_ref()) => match (accepted, &gateway) {
                    (Ok((stream, peer)), Some(router)) => {
                        admit_http(&shared, router, &mut tasks, &stop_rx, stream, peer);
                    }
                    (Err(e), _) => accept_failed(&e).await,
                    (Ok(_), None) => {}
                },
            }
        }

        drop(node_failed);
        shared.health.stopping();
        info!(
            connections = shared.stats.connections.load(Ordering::Relaxed),
            "shutting down: no longer accepting connections"
        );
        drop(listener);
        drop(http);
        drop(gateway);
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
        let closed = close(shared).await;
        match stopped_node {
            Some(why) => {
                if let Err(e) = closed {
                    error!("{e}");
                }
                Err(crate::cluster::stopped_error(&why))
            }
            None => closed,
        }
    }
}

/// After the connections: stops the watch pumps, the syncers and the cluster node, waits
/// for the blocking jobs, then syncs the store and closes it.
async fn close(shared: Arc<Shared>) -> Result<(), ServerError> {
    shared.pumps.shutdown();
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

/// Opens the single node's store, logging what recovery cut or repair skipped.
async fn open_store(config: &ServerConfig) -> Result<Store, ServerError> {
    let opts = Options {
        fsync: config.fsync,
        repair: config.repair,
        max_read_bytes: config.max_read_bytes(),
        ..Options::default()
    };
    let dir = config.data_dir.clone();
    let opened = tokio::task::spawn_blocking(move || Store::open(&dir, opts)).await;
    let store = match opened {
        Ok(Ok(store)) => store,
        Ok(Err(source)) => {
            let hint = match source {
                logkv::Error::Locked(_) => {
                    " (is another logkv-server running on this directory? stop it or pick \
                     another --data-dir)"
                }
                logkv::Error::Corrupt { .. } => {
                    " (start with --repair to keep every valid record and log what is \
                     skipped)"
                }
                _ => "",
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
            warn!(
                bucket = %bucket,
                truncated_bytes = report.truncated_bytes,
                whole_records_dropped = report.dropped_records,
                "recovery cut the unsynced tail of the log (a crash or power loss)"
            );
        }
        for skipped in &report.skipped {
            warn!(
                bucket = %bucket,
                file = %skipped.path.display(),
                offset = skipped.offset,
                bytes = skipped.bytes,
                reason = %skipped.reason,
                "repair skipped a damaged region"
            );
        }
    }
    Ok(store)
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
    tls: Option<&TlsAcceptor>,
    tasks: &mut JoinSet<()>,
    stop: &watch::Receiver<bool>,
    mut stream: TcpStream,
    peer: SocketAddr,
) {
    let max = shared.config.max_connections;
    // RESP and HTTP connections together count against --max-connections.
    let open = shared.stats.connections.fetch_add(1, Ordering::AcqRel)
        + shared.stats.http_connections.load(Ordering::Acquire);
    if open >= max {
        shared.stats.connections.fetch_sub(1, Ordering::AcqRel);
        warn!(%peer, max, "connection refused: max number of clients reached");
        if tls.is_some() {
            // Plain text before the handshake would reach a TLS client as a handshake
            // failure: the connection is closed without a word (dropped here).
            return;
        }
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
    let tls = tls.cloned();
    let fut = async move {
        debug!(id, %peer, "connection opened");
        let shared = Arc::clone(&guard.0);
        if let Err(e) = stream.set_nodelay(true) {
            debug!(id, %peer, "connection error: {e}");
            return;
        }
        let io = match Transport::accept(stream, tls.as_ref()).await {
            Ok(io) => io,
            Err(e) => {
                // A plain-text client on the TLS port, a bad or missing client certificate,
                // a handshake that never ends: the connection is closed.
                warn!(id, %peer, "TLS handshake failed, connection closed: {e}");
                return;
            }
        };
        if let Err(e) = connection::serve(shared, io, peer, id, buffers, stop).await {
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

/// Counts an HTTP connection for as long as its task lives.
struct HttpGuard(Arc<Shared>);

impl Drop for HttpGuard {
    fn drop(&mut self) {
        self.0.stats.http_connections.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn accept_failed(e: &std::io::Error) {
    // Typically EMFILE/ENFILE: back off instead of spinning.
    error!("accept failed: {e}");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Answers an HTTP connection the server has no room for: 503 `BUSY` in the gateway's JSON
/// shape (as a RESP client gets `-ERR max number of clients reached`), then the connection
/// is closed once the client has sent its request (closing on unread bytes would reset the
/// connection and could discard the answer before the client reads it). A second at most.
async fn refuse_http(mut stream: TcpStream) {
    use tokio::io::AsyncReadExt;
    const BODY: &str = r#"{"error":"BUSY","message":"max number of clients reached"}"#;
    let reply = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(reply.as_bytes()).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<(), std::io::Error>(())
    })
    .await;
}

/// Starts an HTTP connection task, or closes the connection when the server is full
/// (RESP and HTTP connections together count against --max-connections).
fn admit_http(
    shared: &Arc<Shared>,
    router: &axum::Router,
    tasks: &mut JoinSet<()>,
    stop: &watch::Receiver<bool>,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let stats = &shared.stats;
    let open = stats.http_connections.fetch_add(1, Ordering::AcqRel)
        + stats.connections.load(Ordering::Acquire);
    let guard = HttpGuard(Arc::clone(shared));
    if open >= shared.config.max_connections {
        warn!(%peer, "HTTP connection refused: max number of clients reached");
        // Not counted while it is answered, as a refused RESP connection.
        drop(guard);
        tokio::spawn(refuse_http(stream));
        return;
    }
    let id = stats.next_conn_id.fetch_add(1, Ordering::Relaxed);
    let (buffers, task) = shared.client_memory.register(id, peer);
    let fut = crate::http::serve_connection(
        router.clone(),
        stream,
        peer,
        buffers,
        shared.config.http_timeout,
        stop.clone(),
    );
    task.set(tasks.spawn(async move {
        fut.await;
        drop(guard);
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_gateway_beyond_loopback_with_a_password_is_warned_about() {
        let mut config = ServerConfig::new("data");
        let lan: SocketAddr = "192.0.2.7:7380".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:7380".parse().unwrap();
        // No password: protected mode already refuses a non-loopback address, unless
        // --unprotected says the network is trusted.
        assert_eq!(plain_gateway_warning(&config, lan), None);
        config.password = Some("secret".into());
        assert_eq!(plain_gateway_warning(&config, local), None);
        let warning = plain_gateway_warning(&config, lan).unwrap();
        assert!(warning.contains("192.0.2.7:7380") && warning.contains("unencrypted"));
        assert!(!warning.contains("serves TLS"));
        config.tls = Some(crate::tls::TlsFiles {
            cert: "c.pem".into(),
            key: "k.pem".into(),
            client_ca: None,
        });
        let warning = plain_gateway_warning(&config, lan).unwrap();
        assert!(warning.contains("which serves TLS"), "{warning}");
    }
}
