//! openraft's network traits on [`Network`] links: what a node's Raft sends its peers.

use std::future::Future;
use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{OptionalSend, RaftNetworkFactory, RaftNetworkV2};

use super::frame::Kind;
use super::message::{Reply, Request};
use super::{CallError, Network};
use crate::sm::snapshot::SnapshotDir;
use crate::sm::Snap;
use crate::types::{Node, NodeId, Vote, C};

/// Bytes per snapshot chunk.
const CHUNK: usize = 256 << 10;

/// Makes a [`PeerClient`] per target, as openraft asks.
#[derive(Debug, Clone)]
pub struct NetworkFactory {
    net: Arc<Network>,
}

impl NetworkFactory {
    /// The factory over `net`.
    pub fn new(net: Arc<Network>) -> NetworkFactory {
        NetworkFactory { net }
    }
}

impl RaftNetworkFactory<C> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> PeerClient {
        self.net.set_addr(target, &node.raft_addr);
        PeerClient {
            net: Arc::clone(&self.net),
            target,
        }
    }
}

/// What openraft uses to reach one peer (openraft makes several; they share the link).
#[derive(Debug)]
pub struct PeerClient {
    net: Arc<Network>,
    target: NodeId,
}

fn rpc_error(e: &CallError) -> RPCError<C> {
    match e {
        // No link: back off before trying again.
        CallError::NotSent(_) => RPCError::Unreachable(Unreachable::new(e)),
        CallError::Lost(_) | CallError::Timeout(_) => RPCError::Network(NetworkError::new(e)),
    }
}

fn remote(msg: &str) -> RPCError<C> {
    // The peer's Raft is stopping or stopped: treat it as unreachable.
    RPCError::Unreachable(Unreachable::from_string(msg))
}

impl PeerClient {
    async fn call(&self, req: Request, option: &RPCOption) -> Result<Reply, RPCError<C>> {
        self.net
            .call(self.target, &req, option.hard_ttl())
            .await
            .map_err(|e| rpc_error(&e))
    }

    async fn send_snapshot(
        &self,
        vote: Vote,
        snapshot: Snap,
        timeout: Duration,
    ) -> Result<SnapshotResponse<C>, StreamingError<C>> {
        let unreachable = |e: &CallError| StreamingError::Unreachable(Unreachable::new(e));
        let link = self
            .net
            .link(self.target)
            .await
            .map_err(|e| unreachable(&e))?;
        let dir: SnapshotDir = snapshot.snapshot;
        let mut info = dir
            .info()
            .map_err(|e| StreamingError::Unreachable(Unreachable::new(&e)))?;
        info.meta = snapshot.meta;
        let req = Request::Snapshot {
            vote,
            info: info.clone(),
        };
        let payload = postcard::to_stdvec(&req)
            .map_err(|e| StreamingError::Unreachable(Unreachable::from_string(e)))?;
        let (id, rx) = link.open_call();
        let sent: Result<(), CallError> = async {
            link.send(Kind::Request, id, &payload).await?;
            let mut buf = vec![0u8; CHUNK];
            for f in &info.files {
                let path = dir.data().join(&f.path);
                let mut file = std::fs::File::open(&path)
                    .map_err(|e| CallError::NotSent(format!("{}: {e}", path.display())))?;
                loop {
                    let n = file
                        .read(&mut buf)
                        .map_err(|e| CallError::Lost(format!("{}: {e}", path.display())))?;
                    if n == 0 {
                        break;
                    }
                    link.send(Kind::Chunk, id, &buf[..n]).await?;
                }
            }
            link.send(Kind::End, id, &[]).await
        }
        .await;
        if let Err(e) = sent {
            link.cancel_call(id);
            return Err(StreamingError::Network(NetworkError::new(&e)));
        }
        match link.wait_reply(id, rx, timeout).await {
            Ok(Reply::Snapshot(Ok(r))) => Ok(r),
            Ok(Reply::Snapshot(Err(msg)) | Reply::Unavailable(msg)) => {
                Err(StreamingError::Unreachable(Unreachable::from_string(msg)))
            }
            Ok(other) => Err(StreamingError::Unreachable(Unreachable::from_string(
                format!("unexpected reply {other:?}"),
            ))),
            Err(e) => Err(StreamingError::Network(NetworkError::new(&e))),
        }
    }
}

fn unexpected(reply: &Reply) -> RPCError<C> {
    match reply {
        Reply::Unavailable(msg) => remote(msg),
        other => remote(&format!("unexpected reply {other:?}")),
    }
}

impl RaftNetworkV2<C> for PeerClient {
    type SnapshotData = SnapshotDir;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<C>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<C>, RPCError<C>> {
        match self.call(Request::Append(rpc), &option).await? {
            Reply::Append(Ok(r)) => Ok(r),
            Reply::Append(Err(msg)) => Err(remote(&msg)),
            other => Err(unexpected(&other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<C>,
        option: RPCOption,
    ) -> Result<VoteResponse<C>, RPCError<C>> {
        match self.call(Request::Vote(rpc), &option).await? {
            Reply::Vote(Ok(r)) => Ok(r),
            Reply::Vote(Err(msg)) => Err(remote(&msg)),
            other => Err(unexpected(&other)),
        }
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<C>,
        option: RPCOption,
    ) -> Result<VoteResponse<C>, RPCError<C>> {
        match self.call(Request::PreVote(rpc), &option).await? {
            Reply::Vote(Ok(r)) => Ok(r),
            Reply::Vote(Err(msg)) => Err(remote(&msg)),
            other => Err(unexpected(&other)),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snap,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<C>, StreamingError<C>> {
        let timeout = option.hard_ttl().max(Duration::from_secs(60));
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            r = self.send_snapshot(vote, snapshot, timeout) => r,
        }
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<C>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<C>, RPCError<C>> {
        match self.call(Request::TransferLeader(req), &option).await? {
            Reply::TransferLeader(Ok(r)) => Ok(r),
            Reply::TransferLeader(Err(msg)) => Err(remote(&msg)),
            other => Err(unexpected(&other)),
        }
    }
}
