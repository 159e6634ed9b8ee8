//! Per-connection state: RESP version, current bucket, authentication, the MULTI queue,
//! watches, the writes of the pipeline not applied yet, and the durability their replies
//! wait for.
//!
//! Commands act on a [`Session`]; the session knows nothing of them.

mod multi;
mod watches;

use std::net::SocketAddr;
use std::sync::Arc;

use logkv::Bucket;
use logkv_cluster::Op;

pub(crate) use multi::MultiQueue;
pub(crate) use watches::{Watches, MAX_WATCHES};

use crate::durability::PendingDurability;
use crate::encode::{self, engine_error, WriteShape};
use crate::metrics::LocalMetrics;
use crate::protocol::RespVersion;
use crate::shared::Shared;

/// A parsed write: the engine's operation and how its result is shown. What a write verb
/// becomes, whether it runs at once, joins the pipeline's batch or waits in MULTI.
#[derive(Debug)]
pub(crate) struct Write {
    /// The engine's `WriteOp` in the form a replicated command carries it.
    pub op: Op,
    pub shape: WriteShape,
}

pub(crate) struct Session {
    pub shared: Arc<Shared>,
    pub id: u64,
    pub peer: SocketAddr,
    /// The RESP version of the replies.
    pub version: RespVersion,
    /// The current bucket (`USE`).
    pub bucket: Bucket,
    /// Whether the client may run commands (always, without a password).
    pub authed: bool,
    /// The transaction being queued, between MULTI and EXEC / DISCARD.
    pub multi: Option<MultiQueue>,
    pub watches: Watches,
    /// What the replies not sent yet wait for.
    pub durability: PendingDurability,
    /// Commands run since the last time they were added to the server's counter.
    pub commands: u64,
    /// Where in the output buffer the last command's own reply starts (after
    /// the replies of queued writes it applied first).
    pub reply_start: usize,
    /// Writes of the current pipeline not applied yet: consecutive writes go to
    /// the engine together (`write_each`: one lock hold, one append); anything
    /// else that replies first applies them, so replies keep request order.
    pending: Vec<Write>,
    /// On a cluster node: batches of pipelined writes to propose, each with the position in
    /// the output where its replies go (see `crate::command::proposals`).
    pub deferred: Vec<(Vec<Write>, usize)>,
    /// On a cluster node: `READONLY` (local reads) is on.
    pub readonly: bool,
    /// On a cluster node: a read barrier was passed after the last request was received
    /// and the last write settled, so reads now are linearizable without another.
    pub fenced: bool,
    /// The store generation `bucket` belongs to, or an older one (a generation read before
    /// the bucket was looked up: the store is replaced before its generation is raised).
    /// An older one only makes [`Session::with_bucket`] look the bucket up once more.
    generation: u64,
    /// The batch's requests, by verb, not yet added to the server's metrics.
    pub metrics: LocalMetrics,
}

impl Session {
    /// The store generation the session's bucket belongs to, or an older one (see the
    /// field).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// A session on `bucket`, of the store of generation `generation` (read before the
    /// bucket was looked up: see [`Session::with_bucket`]).
    pub fn new(
        shared: Arc<Shared>,
        id: u64,
        peer: SocketAddr,
        bucket: Bucket,
        generation: u64,
    ) -> Session {
        let authed = shared.config.password.is_none();
        let durability = PendingDurability::new(shared.config.fsync);
        let watches = Watches::new(Arc::clone(&shared));
        Session {
            deferred: Vec::new(),
            readonly: false,
            fenced: false,
            generation,
            shared,
            id,
            peer,
            version: RespVersion::default(),
            bucket,
            authed,
            multi: None,
            watches,
            durability,
            commands: 0,
            reply_start: 0,
            pending: Vec::new(),
            metrics: LocalMetrics::new(),
        }
    }

    /// Bytes of keys and values queued in MULTI.
    pub fn multi_bytes(&self) -> usize {
        self.multi.as_ref().map_or(0, MultiQueue::bytes)
    }

    /// Runs `f` on the current bucket; if the bucket was dropped and a bucket of the same
    /// name exists again, switches to it and runs `f` once more.
    pub fn with_bucket<T>(
        &mut self,
        mut f: impl FnMut(&Bucket) -> logkv::Result<T>,
    ) -> logkv::Result<T> {
        if self.shared.cluster.is_some() {
            let generation = self.shared.store_generation();
            if generation != self.generation {
                // The node installed a snapshot: the same bucket in the new store.
                self.bucket = self.shared.store().bucket(self.bucket.name())?;
                self.generation = generation;
            }
        }
        match f(&self.bucket) {
            Err(logkv::Error::NoBucket(name)) => match self.shared.store().bucket(&name) {
                Ok(fresh) if name == self.bucket.name() => {
                    self.bucket = fresh;
                    f(&self.bucket)
                }
                _ => Err(logkv::Error::NoBucket(name)),
            },
            other => other,
        }
    }

    /// The current bucket, checked to be open (following a drop and re-create of the same
    /// name), for work that runs later or elsewhere.
    pub fn live_bucket(&mut self) -> logkv::Result<Bucket> {
        self.with_bucket(|b| b.ttl("_").map(|_| ()))?;
        Ok(self.bucket.clone())
    }

    /// Queues one write of the pipeline; [`Session::apply_pending`] applies it
    /// (visible before any later command runs, durable before the reply is sent).
    pub fn queue_write(&mut self, write: Write) {
        self.pending.push(write);
    }

    /// Applies the queued writes in one engine call and encodes their replies. On a cluster
    /// node they are set aside to be proposed (`crate::command::proposals::settle`), their
    /// replies to be inserted here.
    pub fn apply_pending(&mut self, out: &mut Vec<u8>) {
        if self.pending.is_empty() {
            return;
        }
        if self.shared.cluster.is_some() {
            let writes = std::mem::take(&mut self.pending);
            self.deferred.push((writes, out.len()));
            return;
        }
        let mut writes = std::mem::take(&mut self.pending);
        let ops: Vec<logkv::WriteOp> = writes.iter().map(|w| w.op.to_write_op()).collect();
        let version = self.version;
        match self.with_bucket(|b| b.write_each(&ops)) {
            Ok((results, ticket)) => {
                self.durability.note(&self.bucket, ticket);
                for (write, result) in writes.iter().zip(results) {
                    match result {
                        Ok(w) => encode::written(out, version, &w, write.shape),
                        Err(e) => {
                            self.shared.health.observe(&e);
                            engine_error(&e).encode(version, out);
                        }
                    }
                }
            }
            Err(e) => {
                self.shared.health.observe(&e);
                let reply = engine_error(&e);
                for _ in &writes {
                    reply.encode(version, out);
                }
            }
        }
        writes.clear();
        self.pending = writes;
    }
}
