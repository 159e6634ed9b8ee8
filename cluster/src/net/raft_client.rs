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
use openraft::{EntryPayload, OptionalSend, RaftNetworkFactory, RaftNetworkV2};

use super::frame::Kind;
use super::message::{Reply, Request};
use super::{CallError, Network};
use crate::sm::snapshot::SnapshotDir;
use crate::sm::Snap;
use crate::types::{Entry, LogId, Node, NodeId, Vote, C};

/// Bytes per snapshot chunk.
const CHUNK: usize = 256 << 10;

/// Most bytes of entries one `AppendEntries` carries (one entry goes alone whatever its
/// size, up to a proposal's limit). openraft sends up to 300 entries at a time whatever
/// their size, with a heartbeat interval to answer: a follower catching up on large writes
/// got requests that could not be sent in time, or at all (over a frame's limit), and
/// never caught up. Small requests also keep heartbeats, which share the link, on time.
const APPEND_BYTES: usize = 4 << 20;

/// The rate an `AppendEntries` is given time for beyond openraft's timeout, in bytes per
/// second: a large one takes longer to send, decode and write than a heartbeat interval.
const APPEND_RATE: u64 = 20 << 20;

/// What an entry takes in an `AppendEntries` frame, at most.
fn wire_size(entry: &Entry) -> usize {
    /// The log id, the payload's variant and its length.
    const AROUND: usize = 64;
    match &entry.payload {
        EntryPayload::Normal(p) => p.encoded().map_or(0, <[u8]>::len) + AROUND,
        // A membership names every node: small.
        EntryPayload::Membership(_) | EntryPayload::Blank => 4096,
    }
}

/// Cuts `entries` to the longest prefix within [`APPEND_BYTES`] (at least one entry, which
/// a proposal's limit keeps within a frame). Returns the bytes kept, and the log id of the
/// last entry kept when some were cut: what the peer then matches up to.
fn fit_in_request(entries: &mut Vec<Entry>) -> (usize, Option<LogId>) {
    let mut total = 0usize;
    let mut keep = 0;
    for e in entries.iter() {
        let size = wire_size(e);
        if keep > 0 && total.saturating_add(size) > APPEND_BYTES {
            break;
        }
        total = total.saturating_add(size);
        keep += 1;
    }
    if keep >= entries.len() {
        return (total, None);
    }
    entries.truncate(keep);
    (total, entries.last().map(|e| e.log_id))
}

/// openraft's timeout for an `AppendEntries` of `bytes`, plus their time at [`APPEND_RATE`].
fn append_timeout(option: &RPCOption, bytes: usize) -> Duration {
    let rate = Duration::from_millis(u64::try_from(bytes).unwrap_or(u64::MAX) * 1000 / APPEND_RATE);
    option.hard_ttl() + rate
}

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
    async fn call(&self, req: Request, timeout: Duration) -> Result<Reply, RPCError<C>> {
        self.net
            .call(self.target, &req, timeout)
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
            // The receiver learns at once that nothing more comes (else it waits for the
            // rest until its idle timeout), and drops what it has written.
            let _ = link
                .send(Kind::End, id, format!("the sender gave up: {e}").as_bytes())
                .await;
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
        mut rpc: AppendEntriesRequest<C>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<C>, RPCError<C>> {
        // Too much for one request (a follower catching up on large writes): the first part
        // now, openraft sends the rest next.
        let (bytes, sent_up_to) = fit_in_request(&mut rpc.entries);
        let timeout = append_timeout(&option, bytes);
        match self.call(Request::Append(rpc), timeout).await? {
            Reply::Append(Ok(AppendEntriesResponse::Success)) if sent_up_to.is_some() => {
                Ok(AppendEntriesResponse::PartialSuccess(sent_up_to))
            }
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
        match self.call(Request::Vote(rpc), option.hard_ttl()).await? {
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
        match self.call(Request::PreVote(rpc), option.hard_ttl()).await? {
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
        match self
            .call(Request::TransferLeader(req), option.hard_ttl())
            .await?
        {
            Reply::TransferLeader(Ok(r)) => Ok(r),
            Reply::TransferLeader(Err(msg)) => Err(remote(&msg)),
            other => Err(unexpected(&other)),
        }
    }
}
