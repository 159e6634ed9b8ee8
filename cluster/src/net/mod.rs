//! Node-to-node links: one authenticated, framed, checksummed byte stream per pair of
//! nodes, carrying Raft's messages, snapshots and forwarded client requests both ways.
//!
//! Either side dials when it needs the peer and has no link. If both dial at once, the link
//! dialed by the lower id wins on both sides (the other is retired after a grace period),
//! so a pair settles on one link. Streams come from a [`Transport`]: TCP in a server, an
//! in-memory router in tests ([`crate::testing`]).

pub mod frame;
pub mod handshake;
pub mod link;
pub mod message;
pub mod raft_client;

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::future::BoxFuture;
use parking_lot::{Mutex, RwLock};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

pub use link::{CallError, Chunk, Link};
use message::{Reply, Request};

use crate::sm::snapshot::SnapshotInfo;
use crate::types::{NodeId, Vote};

/// How long dialing and the handshake may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A byte stream to a peer.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

/// A boxed byte stream.
pub type BoxedStream = Box<dyn Stream>;

/// Makes byte streams to peers.
pub trait Transport: Send + Sync + 'static {
    /// Opens a stream from node `from` to the node listening at `addr`.
    fn dial<'a>(&'a self, from: NodeId, addr: &'a str) -> BoxFuture<'a, io::Result<BoxedStream>>;
}

/// TCP.
#[derive(Debug, Default, Clone, Copy)]
pub struct TcpTransport;

impl Transport for TcpTransport {
    fn dial<'a>(&'a self, _from: NodeId, addr: &'a str) -> BoxFuture<'a, io::Result<BoxedStream>> {
        Box::pin(async move {
            let s = tokio::net::TcpStream::connect(addr).await?;
            s.set_nodelay(true)?;
            Ok(Box::new(s) as BoxedStream)
        })
    }
}

/// What a node does with the requests that reach it.
pub trait Handler: Send + Sync + 'static {
    /// Serves a request from `from`.
    fn handle(&self, from: NodeId, req: Request) -> BoxFuture<'static, Reply>;
    /// Receives a snapshot whose files arrive as `chunks`.
    fn snapshot(
        &self,
        from: NodeId,
        vote: Vote,
        info: SnapshotInfo,
        chunks: mpsc::Receiver<Chunk>,
    ) -> BoxFuture<'static, Reply>;
}

/// A node's links.
pub struct Network {
    me: NodeId,
    secret: Option<Vec<u8>>,
    transport: Arc<dyn Transport>,
    handler: RwLock<Option<Arc<dyn Handler>>>,
    links: Mutex<HashMap<NodeId, Arc<Link>>>,
    dialing: Mutex<HashMap<NodeId, Arc<tokio::sync::Mutex<()>>>>,
    addrs: Mutex<HashMap<NodeId, String>>,
    closed: AtomicBool,
    me_weak: Weak<Network>,
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("me", &self.me)
            .finish_non_exhaustive()
    }
}

impl Network {
    /// The links of node `me`; `password` authenticates the nodes to each other.
    pub fn new(me: NodeId, password: Option<&str>, transport: Arc<dyn Transport>) -> Arc<Network> {
        Arc::new_cyclic(|weak| Network {
            me,
            secret: password.map(|p| p.as_bytes().to_vec()),
            transport,
            handler: RwLock::new(None),
            links: Mutex::new(HashMap::new()),
            dialing: Mutex::new(HashMap::new()),
            addrs: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
            me_weak: weak.clone(),
        })
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.me
    }

    /// Sets what serves incoming requests.
    pub fn set_handler(&self, handler: Arc<dyn Handler>) {
        *self.handler.write() = Some(handler);
    }

    fn handler(&self) -> Option<Arc<dyn Handler>> {
        self.handler.read().clone()
    }

    /// Records where `peer` listens.
    pub fn set_addr(&self, peer: NodeId, addr: &str) {
        if peer == self.me || addr.is_empty() {
            return;
        }
        let mut addrs = self.addrs.lock();
        if addrs.get(&peer).map(String::as_str) != Some(addr) {
            addrs.insert(peer, addr.to_string());
        }
    }

    /// The link to `peer`, dialing it if there is none.
    pub async fn link(&self, peer: NodeId) -> Result<Arc<Link>, CallError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(CallError::NotSent("the node is shutting down".into()));
        }
        if let Some(l) = self.live_link(peer) {
            return Ok(l);
        }
        let gate = Arc::clone(self.dialing.lock().entry(peer).or_default());
        let _dialing = gate.lock().await;
        if let Some(l) = self.live_link(peer) {
            return Ok(l);
        }
        let addr = self
            .addrs
            .lock()
            .get(&peer)
            .cloned()
            .ok_or_else(|| CallError::NotSent(format!("no address known for node {peer}")))?;
        let dialed = tokio::time::timeout(CONNECT_TIMEOUT, async {
            let mut s = self.transport.dial(self.me, &addr).await?;
            handshake::dial(&mut s, self.me, Some(peer), self.secret.as_deref())
                .await
                .map_err(io::Error::other)?;
            Ok::<_, io::Error>(s)
        })
        .await;
        let stream = match dialed {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(CallError::NotSent(format!("node {peer} at {addr}: {e}"))),
            Err(_) => {
                return Err(CallError::NotSent(format!(
                    "node {peer} at {addr}: no link within {CONNECT_TIMEOUT:?}"
                )))
            }
        };
        let link = Link::start(stream, peer, self.me, self.me_weak.clone());
        Ok(self.register(link))
    }

    fn live_link(&self, peer: NodeId) -> Option<Arc<Link>> {
        self.links
            .lock()
            .get(&peer)
            .filter(|l| l.is_alive())
            .cloned()
    }

    /// Keeps one link per peer: a new one replaces the old unless the old was dialed by the
    /// lower id and the new one was not.
    fn register(&self, link: Arc<Link>) -> Arc<Link> {
        if self.closed.load(Ordering::Acquire) {
            link.close();
            return link;
        }
        let lower = self.me.min(link.peer);
        let mut links = self.links.lock();
        match links.get(&link.peer).cloned() {
            Some(old) if old.is_alive() && old.dialer == lower && link.dialer != lower => {
                drop(links);
                link.retire();
                old
            }
            old => {
                links.insert(link.peer, Arc::clone(&link));
                drop(links);
                if let Some(old) = old {
                    old.retire();
                }
                link
            }
        }
    }

    /// Forgets a link that closed.
    fn forget(&self, link: &Arc<Link>) {
        let mut links = self.links.lock();
        if links.get(&link.peer).is_some_and(|l| Arc::ptr_eq(l, link)) {
            links.remove(&link.peer);
        }
    }

    /// Authenticates an incoming stream and makes it the link to its node.
    pub async fn accept(self: &Arc<Self>, mut stream: BoxedStream) -> io::Result<NodeId> {
        let peer = tokio::time::timeout(
            CONNECT_TIMEOUT,
            handshake::accept(&mut stream, self.me, self.secret.as_deref()),
        )
        .await
        .map_err(|_| io::Error::other("handshake timed out"))?
        .map_err(io::Error::other)?;
        let link = Link::start(stream, peer, peer, Arc::downgrade(self));
        self.register(link);
        Ok(peer)
    }

    /// Sends `req` to `peer` and waits for its reply.
    pub async fn call(
        &self,
        peer: NodeId,
        req: &Request,
        timeout: Duration,
    ) -> Result<Reply, CallError> {
        let link = self.link(peer).await?;
        link.call(req, timeout).await
    }

    /// Closes every link; no new one is made.
    pub fn shutdown(&self) {
        self.closed.store(true, Ordering::Release);
        for (_, l) in self.links.lock().drain() {
            l.close();
        }
    }

    /// Closes the link to `peer` if there is one (tests).
    pub fn drop_link(&self, peer: NodeId) {
        if let Some(l) = self.links.lock().remove(&peer) {
            l.close();
        }
    }
}

/// Accepts TCP connections on `listener` for `net` until the listener fails or `net` is
/// dropped.
pub async fn serve_tcp(listener: tokio::net::TcpListener, net: Weak<Network>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::error!("raft listener: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(n) = net.upgrade() else { return };
        if n.closed.load(Ordering::Acquire) {
            return;
        }
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            if let Err(e) = n.accept(Box::new(stream)).await {
                tracing::warn!(%peer, "refused a node link: {e}");
            }
        });
    }
}
