//! Group commit across connections, the way Redis's event loop does it.
//!
//! With `--fsync always` a reply may go out only once the writes it reports
//! are durable. Each bucket written to gets one syncer thread. A connection
//! posts its durability ticket (the log position just past its writes), kicks
//! the syncer, and awaits the syncer's broadcast of the durable position: no
//! thread per waiting connection. The syncer takes the highest ticket posted
//! and makes the log durable up to it with one group-commit fsync; writes that
//! arrive meanwhile are covered by the next one. So one fsync serves every
//! connection that wrote while the previous one ran.
//!
//! A durability ticket comes from the engine's `write_each` / `write_nowait` and is used
//! only in this file: a session notes it in its [`PendingDurability`], and the connection
//! has that waited for before it sends the replies.

use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Receiver, Sender};
use logkv::{Bucket, DurabilityTicket, FsyncPolicy};
use parking_lot::Mutex;
use tokio::sync::watch;

/// The durability that the replies about to be sent depend on: per bucket, the largest
/// ticket of the writes whose replies are not sent yet. Stays empty unless the fsync
/// policy is `always`.
pub(crate) struct PendingDurability {
    wait_for_fsync: bool,
    tickets: Vec<(Bucket, DurabilityTicket)>,
}

impl PendingDurability {
    /// Nothing pending, under `policy`.
    pub fn new(policy: FsyncPolicy) -> PendingDurability {
        PendingDurability {
            wait_for_fsync: policy == FsyncPolicy::Always,
            tickets: Vec::new(),
        }
    }

    /// Remembers that the replies about to be sent need `bucket`'s log durable up to
    /// `ticket` (as returned by the engine's `write_each` / `write_nowait`).
    pub fn note(&mut self, bucket: &Bucket, ticket: DurabilityTicket) {
        if !self.wait_for_fsync || ticket == DurabilityTicket::default() {
            return;
        }
        // By the bucket's identity: one dropped and created again under its name is another.
        let id = bucket.id();
        match self.tickets.iter_mut().find(|(b, _)| b.id() == id) {
            Some((_, t)) => *t = (*t).max(ticket),
            None => self.tickets.push((bucket.clone(), ticket)),
        }
    }

    /// Whether some reply waits for durability.
    pub fn is_empty(&self) -> bool {
        self.tickets.is_empty()
    }

    /// Waits until every noted write is durable (each bucket's syncer fsyncs for every
    /// connection waiting at once), then forgets them, also when it fails.
    pub async fn wait(&mut self, syncers: &Syncers) -> Result<(), String> {
        let mut result = Ok(());
        for (bucket, ticket) in &self.tickets {
            result = syncers.wait(bucket, *ticket).await;
            if result.is_err() {
                break;
            }
        }
        self.tickets.clear();
        result
    }
}

/// What the syncer of a bucket has made durable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Durable {
    /// Every ticket up to this is durable.
    up_to: DurabilityTicket,
    /// The fsync that failed; every later wait fails with it.
    failed: Option<String>,
}

/// What a syncer thread and its waiters share.
struct State {
    bucket: Bucket,
    /// The highest ticket a connection waits for.
    requested: Mutex<DurabilityTicket>,
    durable: watch::Sender<Durable>,
}

/// The syncer of one bucket: the thread ends when the last handle (and with
/// it the kick sender) is gone.
struct Syncer {
    state: Arc<State>,
    kick: Sender<()>,
}

/// The syncers of every bucket, started on first use.
#[derive(Default)]
pub(crate) struct Syncers {
    /// By bucket id: a bucket dropped and created again under its name is another log.
    map: Mutex<HashMap<u64, Arc<Syncer>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Syncers {
    /// Waits until the writes of `bucket` up to `ticket` are durable.
    pub async fn wait(&self, bucket: &Bucket, ticket: DurabilityTicket) -> Result<(), String> {
        let syncer = self.syncer(bucket)?;
        let mut rx = syncer.state.durable.subscribe();
        {
            let mut requested = syncer.state.requested.lock();
            *requested = (*requested).max(ticket);
        }
        // A full channel already holds a kick the syncer has not taken yet.
        let _ = syncer.kick.try_send(());
        let done = rx
            .wait_for(|d| d.up_to >= ticket || d.failed.is_some())
            .await
            .map_err(|_| "the syncer stopped (server shutting down)".to_string())?;
        match &done.failed {
            Some(why) if done.up_to < ticket => Err(why.clone()),
            _ => Ok(()),
        }
    }

    fn syncer(&self, bucket: &Bucket) -> Result<Arc<Syncer>, String> {
        let mut map = self.map.lock();
        if let Some(s) = map.get(&bucket.id()) {
            return Ok(Arc::clone(s));
        }
        // Syncers of dropped buckets end with their last handle.
        map.retain(|_, s| s.state.bucket.is_open());
        let (kick, kicked) = bounded(1);
        let state = Arc::new(State {
            bucket: bucket.clone(),
            requested: Mutex::new(DurabilityTicket::default()),
            durable: watch::Sender::new(Durable::default()),
        });
        let worker = Arc::clone(&state);
        let handle = std::thread::Builder::new()
            .name(format!("logkv-sync-{}", bucket.name()))
            .spawn(move || run(&worker, &kicked))
            .map_err(|e| format!("cannot start a syncer thread: {e}"))?;
        self.threads.lock().push(handle);
        let syncer = Arc::new(Syncer { state, kick });
        map.insert(bucket.id(), Arc::clone(&syncer));
        Ok(syncer)
    }

    /// Stops every syncer and waits for them (at shutdown, after the connections).
    pub fn shutdown(&self) {
        self.map.lock().clear();
        for h in self.threads.lock().drain(..) {
            let _ = h.join();
        }
    }
}

fn run(state: &State, kicked: &Receiver<()>) {
    let mut done = DurabilityTicket::default();
    while kicked.recv().is_ok() {
        let target = *state.requested.lock();
        if target <= done {
            continue;
        }
        // One group-commit fsync covers everything written so far, including
        // writes whose connections have not posted their ticket yet.
        match state.bucket.wait_durable(target) {
            Ok(()) => {
                done = target;
                state.durable.send_modify(|d| d.up_to = d.up_to.max(target));
            }
            Err(e) => {
                state
                    .durable
                    .send_modify(|d| d.failed = Some(e.to_string()));
                return;
            }
        }
    }
}
