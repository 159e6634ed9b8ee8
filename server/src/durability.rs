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

use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Receiver, Sender};
use logkv::{Bucket, DurabilityTicket};
use parking_lot::Mutex;
use tokio::sync::watch;

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
    map: Mutex<HashMap<String, Arc<Syncer>>>,
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
        if let Some(s) = map.get(bucket.name()) {
            // A bucket dropped and created again under the same name is another log.
            if s.state.bucket.is_open() {
                return Ok(Arc::clone(s));
            }
        }
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
        map.insert(bucket.name().to_string(), Arc::clone(&syncer));
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
