//! Per-connection state: protocol version, current bucket, authentication, the MULTI
//! queue, watches, and the durability tickets of the writes not yet acknowledged.

use std::net::SocketAddr;
use std::sync::Arc;

use logkv::{Bucket, DurabilityTicket, FsyncPolicy};

use crate::command::txn::Multi;
use crate::command::watch::Watches;
use crate::protocol::Reply;
use crate::server::Shared;

/// Work that may block (fsync, disk-wide scans): run on the blocking pool, then encode.
pub(crate) type BlockingJob = Box<dyn FnOnce() -> Reply + Send + 'static>;

/// What the connection does after a command.
pub(crate) enum Flow {
    /// The reply is in the output buffer; go on.
    Continue,
    /// Run this job off the event loop and encode the reply it returns.
    Blocking(BlockingJob),
    /// The reply is in the output buffer; send it and close the connection.
    Close,
}

pub(crate) struct Session {
    pub shared: Arc<Shared>,
    pub id: u64,
    pub peer: SocketAddr,
    /// RESP version of the replies: 2 or 3.
    pub proto: u8,
    /// The current bucket (`USE`).
    pub bucket: Bucket,
    /// Whether the client may run commands (always, without a password).
    pub authed: bool,
    pub multi: Option<Multi>,
    pub watches: Watches,
    /// Per bucket, the largest durability ticket of the writes whose replies are not sent
    /// yet. Empty unless the fsync policy is `always`.
    pub tickets: Vec<(Bucket, DurabilityTicket)>,
    /// Commands run since the last time they were added to the server's counter.
    pub commands: u64,
    /// Writes of the current pipeline not applied yet: consecutive writes go to
    /// the engine together (`write_each`: one lock hold, one append); anything
    /// else that replies first applies them, so replies keep request order.
    pub pending: Vec<crate::command::kv::WriteCmd>,
    /// Where in the output buffer the last command's own reply starts (after
    /// the replies of queued writes it applied first).
    pub reply_start: usize,
    wait_durable: bool,
}

impl Session {
    pub fn new(shared: Arc<Shared>, id: u64, peer: SocketAddr, bucket: Bucket) -> Session {
        let authed = shared.config.password.is_none();
        let wait_durable = shared.config.fsync == FsyncPolicy::Always;
        let watches = Watches::new(Arc::clone(&shared));
        Session {
            shared,
            id,
            peer,
            proto: 2,
            bucket,
            authed,
            multi: None,
            watches,
            tickets: Vec::new(),
            commands: 0,
            pending: Vec::new(),
            reply_start: 0,
            wait_durable,
        }
    }

    /// Remembers that the replies about to be sent need the current bucket's log durable
    /// up to `ticket`.
    pub fn note_current_ticket(&mut self, ticket: DurabilityTicket) {
        if !self.wait_durable || ticket == DurabilityTicket::default() {
            return;
        }
        let name = self.bucket.name();
        match self.tickets.iter_mut().find(|(b, _)| b.name() == name) {
            Some((_, t)) => *t = (*t).max(ticket),
            None => self.tickets.push((self.bucket.clone(), ticket)),
        }
    }

    /// Runs `f` on the current bucket; if the bucket was dropped and a bucket of the same
    /// name exists again, switches to it and runs `f` once more.
    pub fn with_bucket<T>(
        &mut self,
        mut f: impl FnMut(&Bucket) -> logkv::Result<T>,
    ) -> logkv::Result<T> {
        match f(&self.bucket) {
            Err(logkv::Error::NoBucket(name)) => match self.shared.store.bucket(&name) {
                Ok(fresh) if name == self.bucket.name() => {
                    self.bucket = fresh;
                    f(&self.bucket)
                }
                _ => Err(logkv::Error::NoBucket(name)),
            },
            other => other,
        }
    }
}
