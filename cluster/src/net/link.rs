//! One link to a peer: a byte stream carrying every request and reply between two nodes in
//! both directions, each tagged with the request id of the side that asked.
//!
//! A writer task drains a queue of encoded frames (writing what is queued in one go); a
//! reader task routes replies to their callers, byte-stream chunks to their receivers, and
//! runs each incoming request on its own task so that a slow one (a vote waiting on the
//! disk) never holds up the others.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::frame::{self, Frame, Kind};
use super::message::{Reply, Request};
use super::Network;
use crate::command::shared::decode_within;
use crate::types::NodeId;

/// Frames queued for the writer at most (then senders wait).
const QUEUE: usize = 1024;
/// Chunks of an incoming byte stream buffered at most.
const CHUNKS: usize = 16;
/// How long a link replaced by another stays open for what is in flight on it.
const RETIRE_AFTER: Duration = Duration::from_secs(5);
/// Written frame buffers a link keeps for its next frames, at most.
const SPARE_BUFFERS: usize = 4;
/// A buffer larger than this is freed, not kept.
const SPARE_MAX: usize = 8 << 20;

/// A piece of a request's byte stream.
#[derive(Debug)]
pub enum Chunk {
    /// Bytes.
    Data(Vec<u8>),
    /// The end of the stream.
    End,
    /// The sender gave up (a file it could not read): why. An end frame with a payload.
    Abort(String),
}

/// Why a call got no reply.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// Nothing was sent (no link could be made, or it was down before the request left).
    #[error("not sent: {0}")]
    NotSent(String),
    /// Sent, but the link failed before the reply came: the request may have been served.
    #[error("no reply: {0}")]
    Lost(String),
    /// Sent, and no reply within the time allowed.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
}

/// A link to one peer.
pub struct Link {
    /// The peer.
    pub peer: NodeId,
    /// Which side dialed it.
    pub dialer: NodeId,
    out: mpsc::Sender<Vec<u8>>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Frame>>>,
    streams: Mutex<HashMap<u64, mpsc::Sender<Chunk>>>,
    next_id: AtomicU64,
    alive: AtomicBool,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Buffers of frames already written, emptied, for the next frames: an append of
    /// thousands of writes is a frame of megabytes, and a fresh buffer for each (grown by
    /// doubling) costs page faults and the kernel's zeroing of new pages every time.
    spare: Mutex<Vec<Vec<u8>>>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("peer", &self.peer)
            .field("dialer", &self.dialer)
            .field("alive", &self.is_alive())
            .finish_non_exhaustive()
    }
}

impl Link {
    /// Starts the link's tasks on an authenticated stream.
    pub fn start<S>(stream: S, peer: NodeId, dialer: NodeId, net: Weak<Network>) -> Arc<Link>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (r, w) = tokio::io::split(stream);
        let (tx, rx) = mpsc::channel(QUEUE);
        let link = Arc::new(Link {
            peer,
            dialer,
            out: tx,
            pending: Mutex::new(HashMap::new()),
            streams: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            alive: AtomicBool::new(true),
            tasks: Mutex::new(Vec::new()),
            spare: Mutex::new(Vec::new()),
        });
        let writer = tokio::spawn(write_loop(w, rx, Arc::downgrade(&link)));
        let reader = tokio::spawn(read_loop(
            BufReader::with_capacity(1 << 16, r),
            Arc::downgrade(&link),
            net,
        ));
        link.tasks.lock().extend([writer, reader]);
        link
    }

    /// Whether the link still works.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// Closes the link: its calls in flight fail, its tasks stop.
    pub fn close(&self) {
        self.alive.store(false, Ordering::Release);
        self.pending.lock().clear();
        self.streams.lock().clear();
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
    }

    /// Closes the link after a grace period (it was replaced by another to the same peer).
    pub fn retire(self: &Arc<Self>) {
        let link = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(RETIRE_AFTER).await;
            link.close();
        });
    }

    /// An empty buffer for a frame: a spare one if there is one.
    fn buffer(&self) -> Vec<u8> {
        self.spare.lock().pop().unwrap_or_default()
    }

    /// Keeps `buf`, written, for a later frame (unless enough are kept or it is too large).
    fn recycle(&self, mut buf: Vec<u8>) {
        if buf.capacity() > SPARE_MAX {
            return;
        }
        buf.clear();
        let mut spare = self.spare.lock();
        if spare.len() < SPARE_BUFFERS {
            spare.push(buf);
        }
    }

    /// Queues a frame.
    pub async fn send(&self, kind: Kind, id: u64, payload: &[u8]) -> Result<(), CallError> {
        let mut buf = self.buffer();
        frame::encode(kind, id, payload, &mut buf)
            .map_err(|e| CallError::NotSent(e.to_string()))?;
        self.queue(buf).await
    }

    /// Queues an encoded frame.
    async fn queue(&self, frame: Vec<u8>) -> Result<(), CallError> {
        if !self.is_alive() {
            return Err(CallError::NotSent("link closed".into()));
        }
        self.out
            .send(frame)
            .await
            .map_err(|_| CallError::NotSent("link closed".into()))
    }

    /// A fresh request id with the receiver its reply will come to.
    pub fn open_call(&self) -> (u64, oneshot::Receiver<Frame>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().insert(id, tx);
        (id, rx)
    }

    /// Forgets a call that is given up.
    pub fn cancel_call(&self, id: u64) {
        self.pending.lock().remove(&id);
    }

    /// Sends `req` and waits for its reply for at most `timeout`.
    pub async fn call(&self, req: &Request, timeout: Duration) -> Result<Reply, CallError> {
        let (id, rx) = self.open_call();
        // Serialized straight into its frame.
        let frame = frame::encode_with(Kind::Request, id, self.buffer(), |buf| {
            postcard::to_extend(req, buf).map_err(io::Error::other)
        });
        let sent = match frame {
            Ok(f) => self.queue(f).await,
            Err(e) => Err(CallError::NotSent(e.to_string())),
        };
        if let Err(e) = sent {
            self.cancel_call(id);
            return Err(e);
        }
        self.wait_reply(id, rx, timeout).await
    }

    /// Waits for the reply of call `id`.
    pub async fn wait_reply(
        &self,
        id: u64,
        rx: oneshot::Receiver<Frame>,
        timeout: Duration,
    ) -> Result<Reply, CallError> {
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(frame)) => postcard::from_bytes(&frame.payload)
                .map_err(|e| CallError::Lost(format!("undecodable reply: {e}"))),
            Ok(Err(_)) => Err(CallError::Lost("the link closed".into())),
            Err(_) => {
                self.cancel_call(id);
                Err(CallError::Timeout(timeout))
            }
        }
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut w: W,
    mut rx: mpsc::Receiver<Vec<u8>>,
    link: Weak<Link>,
) {
    while let Some(mut batch) = rx.recv().await {
        let owner = link.upgrade();
        // What else is queued goes in the same write (a frame alone is written as it is).
        while batch.len() < (1 << 20) {
            match rx.try_recv() {
                Ok(more) => {
                    batch.extend_from_slice(&more);
                    if let Some(l) = &owner {
                        l.recycle(more);
                    }
                }
                Err(_) => break,
            }
        }
        if let Err(e) = w.write_all(&batch).await {
            tracing::debug!("link write failed: {e}");
            break;
        }
        if let Some(l) = &owner {
            l.recycle(batch);
        }
    }
    if let Some(l) = link.upgrade() {
        l.close();
    }
}

async fn read_loop<R: AsyncRead + Unpin>(mut r: R, link: Weak<Link>, net: Weak<Network>) {
    let why = loop {
        let frame = match frame::read(&mut r).await {
            Ok(f) => f,
            Err(e) => break e,
        };
        let Some(l) = link.upgrade() else {
            return;
        };
        if let Err(e) = route(&l, &net, frame).await {
            break e;
        }
    };
    if let Some(l) = link.upgrade() {
        if why.kind() != io::ErrorKind::UnexpectedEof {
            tracing::debug!(peer = l.peer, "link closed: {why}");
        }
        l.close();
        if let Some(n) = net.upgrade() {
            n.forget(&l);
        }
    }
}

async fn route(link: &Arc<Link>, net: &Weak<Network>, frame: Frame) -> io::Result<()> {
    match frame.kind {
        Kind::Reply => {
            let waiter = link.pending.lock().remove(&frame.id);
            if let Some(tx) = waiter {
                let _ = tx.send(frame);
            }
        }
        Kind::Request => {
            // Decoded sharing the frame's buffer: proposals and values are slices of it.
            let payload = bytes::Bytes::from(frame.payload);
            let req: Request =
                decode_within(&payload, |b| postcard::from_bytes(b)).map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("undecodable request: {e}"),
                    )
                })?;
            let Some(net) = net.upgrade() else {
                return Ok(());
            };
            let handler = net.handler();
            let id = frame.id;
            let peer = link.peer;
            let reply_to = Arc::clone(link);
            let work = match (handler, req) {
                (None, _) => Box::pin(async { Reply::Unavailable("the node is starting".into()) })
                    as futures_util::future::BoxFuture<'static, Reply>,
                (Some(h), Request::Snapshot { vote, info }) => {
                    let (tx, rx) = mpsc::channel(CHUNKS);
                    link.streams.lock().insert(id, tx);
                    h.snapshot(peer, vote, info, rx)
                }
                (Some(h), req) => h.handle(peer, req),
            };
            tokio::spawn(async move {
                let reply = work.await;
                match postcard::to_stdvec(&reply) {
                    Ok(bytes) => {
                        let _ = reply_to.send(Kind::Reply, id, &bytes).await;
                    }
                    Err(e) => tracing::error!("cannot encode a reply: {e}"),
                }
                reply_to.streams.lock().remove(&id);
            });
        }
        Kind::Chunk | Kind::End => {
            let tx = link.streams.lock().get(&frame.id).cloned();
            if let Some(tx) = tx {
                let chunk = match frame.kind {
                    Kind::End if frame.payload.is_empty() => Chunk::End,
                    Kind::End => Chunk::Abort(String::from_utf8_lossy(&frame.payload).into_owned()),
                    _ => Chunk::Data(frame.payload),
                };
                // A receiver that gave up simply drops the rest.
                let _ = tx.send(chunk).await;
            }
        }
        other => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unexpected {other:?} frame on an open link"),
            ))
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits (yielding) until the link keeps `n` written buffers.
    async fn kept(link: &Link, n: usize) {
        for _ in 0..10_000 {
            if link.spare.lock().len() == n {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("the link kept {} buffers, not {n}", link.spare.lock().len());
    }

    #[tokio::test]
    async fn a_reused_buffer_carries_only_its_new_frame() {
        let (ours, mut theirs) = tokio::io::duplex(64);
        let link = Link::start(ours, 2, 1, Weak::new());
        let big = vec![0xAA; 100_000];
        link.send(Kind::Reply, 1, &big).await.unwrap();
        let f = frame::read(&mut theirs).await.unwrap();
        assert!((f.kind, f.id) == (Kind::Reply, 1) && f.payload == big);
        kept(&link, 1).await;
        // The next frames go into that buffer: each arrives as itself, nothing left over.
        link.send(Kind::Reply, 2, b"abc").await.unwrap();
        let f = frame::read(&mut theirs).await.unwrap();
        assert_eq!(
            (f.kind, f.id, &f.payload[..]),
            (Kind::Reply, 2, &b"abc"[..])
        );
        link.send(Kind::End, 3, b"").await.unwrap();
        let f = frame::read(&mut theirs).await.unwrap();
        assert_eq!((f.kind, f.id, f.payload.len()), (Kind::End, 3, 0));
        // A buffer over the size kept is freed, not kept.
        kept(&link, 1).await;
        let huge = vec![0x55; SPARE_MAX + 1];
        link.send(Kind::Chunk, 4, &huge).await.unwrap();
        let f = frame::read(&mut theirs).await.unwrap();
        assert!(f.payload == huge);
        // Written after the large one was dealt with, then kept.
        link.send(Kind::Reply, 5, b"z").await.unwrap();
        assert_eq!(frame::read(&mut theirs).await.unwrap().id, 5);
        kept(&link, 1).await;
        assert!(
            link.spare.lock().iter().all(|b| b.capacity() <= SPARE_MAX),
            "the large buffer was freed"
        );
        link.close();
    }
}
