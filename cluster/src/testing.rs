//! An in-memory network for in-process clusters in tests: nodes dial each other by address
//! through a router that can cut, refuse (partitions) and delay links. The nodes run their
//! real link code (handshake, frames) over in-memory byte streams. Also sample Raft log
//! entries for the log's tests ([`log_id`], [`sample_entry`]).

use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::net::{BoxedStream, Network, Transport};
use crate::types::NodeId;

#[derive(Default)]
struct State {
    /// Listening nodes by address.
    nodes: HashMap<String, (NodeId, Weak<Network>)>,
    /// Pairs that cannot reach each other (both orders stored).
    blocked: HashSet<(NodeId, NodeId)>,
    /// Extra latency per direction.
    delay: HashMap<(NodeId, NodeId), Duration>,
    /// Open links: their ends and a switch that cuts them.
    links: Vec<(NodeId, NodeId, watch::Sender<bool>)>,
}

/// The router. Cheap to clone.
#[derive(Clone, Default)]
pub struct MemNet {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for MemNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemNet").finish_non_exhaustive()
    }
}

impl MemNet {
    /// An empty router.
    pub fn new() -> MemNet {
        MemNet::default()
    }

    /// What nodes dial with.
    pub fn transport(&self) -> Arc<dyn Transport> {
        Arc::new(self.clone())
    }

    /// Makes node `id` reachable at `addr`.
    pub fn listen(&self, addr: &str, id: NodeId, net: &Arc<Network>) {
        self.state
            .lock()
            .nodes
            .insert(addr.to_string(), (id, Arc::downgrade(net)));
    }

    /// Makes `addr` unreachable (a stopped node) and cuts its links.
    pub fn unlisten(&self, addr: &str) {
        let mut st = self.state.lock();
        if let Some((id, _)) = st.nodes.remove(addr) {
            cut_where(&mut st, |a, b| a == id || b == id);
        }
    }

    /// Splits the nodes in two groups that cannot reach each other; cuts their links.
    pub fn partition(&self, a: &[NodeId], b: &[NodeId]) {
        let mut st = self.state.lock();
        for x in a {
            for y in b {
                st.blocked.insert((*x, *y));
                st.blocked.insert((*y, *x));
            }
        }
        let blocked = st.blocked.clone();
        cut_where(&mut st, |x, y| blocked.contains(&(x, y)));
    }

    /// Removes every partition.
    pub fn heal(&self) {
        self.state.lock().blocked.clear();
    }

    /// Adds `d` of latency to every byte from `from` to `to` (new links).
    pub fn delay(&self, from: NodeId, to: NodeId, d: Duration) {
        self.state.lock().delay.insert((from, to), d);
    }

    /// Cuts every open link (they are dialed again when needed).
    pub fn cut_all(&self) {
        cut_where(&mut self.state.lock(), |_, _| true);
    }
}

fn cut_where(st: &mut State, pred: impl Fn(NodeId, NodeId) -> bool) {
    st.links.retain(|(a, b, cut)| {
        if pred(*a, *b) {
            let _ = cut.send(true);
            false
        } else {
            !cut.is_closed()
        }
    });
}

impl Transport for MemNet {
    fn dial<'a>(&'a self, from: NodeId, addr: &'a str) -> BoxFuture<'a, io::Result<BoxedStream>> {
        Box::pin(async move {
            let (to, target, there, back, cut) = {
                let mut st = self.state.lock();
                let (to, target) = st.nodes.get(addr).cloned().ok_or_else(|| {
                    io::Error::new(io::ErrorKind::ConnectionRefused, "nobody listens there")
                })?;
                if st.blocked.contains(&(from, to)) {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionRefused,
                        "partitioned",
                    ));
                }
                let there = st.delay.get(&(from, to)).copied().unwrap_or_default();
                let back = st.delay.get(&(to, from)).copied().unwrap_or_default();
                let (cut, _) = watch::channel(false);
                st.links.push((from, to, cut.clone()));
                (to, target, there, back, cut)
            };
            let target = target
                .upgrade()
                .ok_or_else(|| io::Error::new(io::ErrorKind::ConnectionRefused, "node stopped"))?;
            let (client, relay_a) = tokio::io::duplex(1 << 20);
            let (relay_b, server) = tokio::io::duplex(1 << 20);
            let (ar, aw) = tokio::io::split(relay_a);
            let (br, bw) = tokio::io::split(relay_b);
            tokio::spawn(pump(ar, bw, there, cut.subscribe()));
            tokio::spawn(pump(br, aw, back, cut.subscribe()));
            tokio::spawn(async move {
                if let Err(e) = target.accept(Box::new(server)).await {
                    tracing::debug!(from, to, "in-memory link refused: {e}");
                }
            });
            Ok(Box::new(client) as BoxedStream)
        })
    }
}

async fn pump<R, W>(mut r: R, mut w: W, delay: Duration, mut cut: watch::Receiver<bool>)
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = tokio::select! {
            _ = cut.changed() => return,
            r = r.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if *cut.borrow() {
            return;
        }
        if w.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// The log id of the entry at `index` written by node 1 in `term`.
pub fn log_id(term: u64, index: u64) -> crate::types::LogId {
    crate::types::LogId::new(
        openraft::impls::leader_id_adv::LeaderId { term, node_id: 1 },
        index,
    )
}

/// A normal entry at `index` in `term`, its size varying with the index (0 to 39 bytes more).
pub fn sample_entry(term: u64, index: u64) -> crate::types::Entry {
    let pad = "x".repeat(usize::try_from(index % 40).unwrap_or(0));
    crate::types::Entry {
        log_id: log_id(term, index),
        payload: openraft::EntryPayload::Normal(crate::command::Proposal::new(
            index,
            crate::command::Command::Sweep {
                bucket: format!("bucket-{term}-{index}-{pad}"),
            },
        )),
    }
}
