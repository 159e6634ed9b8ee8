//! Watch wake-ups: one pump thread per bucket that has watchers.
//!
//! Engine watches are pull-based: [`logkv::Watch::try_next`] never blocks, and a bucket's
//! [`logkv::Bucket::change_listener`] receives a (coalesced) token after writes. A pump
//! blocks on that channel and, for every token, wakes the connection tasks subscribed to
//! the bucket through their [`Notify`]. Each connection then pulls its own events at its
//! own pace, so the writer's cost per write is one `try_send` per watched bucket, however
//! many watchers there are, and a watcher that never reads holds nothing but its cursor.
//!
//! A pump ends when its last subscriber leaves (checked every [`IDLE_CHECK`]), when the
//! bucket is dropped (the channel disconnects), or at server shutdown.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError};
use logkv::Bucket;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tracing::{debug, error};

/// How often an idle pump checks whether it still has subscribers or must stop.
const IDLE_CHECK: Duration = Duration::from_millis(100);

/// The pumps of all watched buckets.
#[derive(Clone, Default)]
pub(crate) struct Pumps {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Live pumps by bucket name.
    map: Mutex<HashMap<String, Arc<Pump>>>,
    stop: AtomicBool,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// The pump of one bucket.
pub(crate) struct Pump {
    name: String,
    /// A handle on the bucket, to tell whether it was dropped.
    bucket: Bucket,
    subs: Mutex<Vec<Arc<Notify>>>,
    dead: AtomicBool,
}

impl Pump {
    /// Removes one subscription of `notify` (taken with [`Pumps::subscribe`]).
    pub fn unsubscribe(&self, notify: &Arc<Notify>) {
        let mut subs = self.subs.lock();
        if let Some(i) = subs.iter().position(|n| Arc::ptr_eq(n, notify)) {
            subs.swap_remove(i);
        }
    }

    fn wake_all(&self) {
        for n in self.subs.lock().iter() {
            // Stores a permit when the task is not waiting: no wake-up is lost.
            n.notify_one();
        }
    }

    /// Whether this pump still serves the live bucket of its name.
    fn alive(&self) -> bool {
        !self.dead.load(Ordering::Acquire)
            && !matches!(self.bucket.ttl("_"), Err(logkv::Error::NoBucket(_)))
    }
}

impl Pumps {
    pub fn new() -> Pumps {
        Pumps::default()
    }

    /// Subscribes `notify` to writes on `bucket`, starting the bucket's pump if needed.
    /// Subscribe before pulling from a new watch, so that no write can go unnoticed.
    pub fn subscribe(&self, bucket: &Bucket, notify: &Arc<Notify>) -> Arc<Pump> {
        let mut map = self.inner.map.lock();
        if let Some(p) = map.get(bucket.name()) {
            if p.alive() {
                p.subs.lock().push(Arc::clone(notify));
                return Arc::clone(p);
            }
        }
        let pump = Arc::new(Pump {
            name: bucket.name().to_string(),
            bucket: bucket.clone(),
            subs: Mutex::new(vec![Arc::clone(notify)]),
            dead: AtomicBool::new(false),
        });
        map.insert(pump.name.clone(), Arc::clone(&pump));
        drop(map);
        let rx = bucket.change_listener();
        let inner = Arc::clone(&self.inner);
        let p = Arc::clone(&pump);
        let spawned = std::thread::Builder::new()
            .name(format!("logkv-pump-{}", pump.name))
            .spawn(move || run(&inner, &p, &rx));
        match spawned {
            Ok(h) => {
                let mut threads = self.inner.threads.lock();
                threads.retain(|t| !t.is_finished());
                threads.push(h);
            }
            Err(e) => {
                // Watches still work, but only wake on other events; say so loudly.
                error!(bucket = %pump.name, "could not start a watch pump thread: {e}");
            }
        }
        pump
    }

    /// Wakes every connection that watches anything (the store was replaced: their
    /// watches end).
    pub fn wake_everyone(&self) {
        let pumps: Vec<Arc<Pump>> = self.inner.map.lock().values().cloned().collect();
        for p in pumps {
            p.wake_all();
        }
    }

    /// Stops every pump and waits for the threads (blocking).
    pub fn shutdown(&self) {
        self.inner.stop.store(true, Ordering::Release);
        let threads = std::mem::take(&mut *self.inner.threads.lock());
        for t in threads {
            let _ = t.join();
        }
        self.inner.map.lock().clear();
    }
}

fn run(inner: &Inner, pump: &Arc<Pump>, rx: &Receiver<()>) {
    debug!(bucket = %pump.name, "watch pump started");
    loop {
        if inner.stop.load(Ordering::Acquire) {
            break;
        }
        match rx.recv_timeout(IDLE_CHECK) {
            Ok(()) => pump.wake_all(),
            Err(RecvTimeoutError::Timeout) => {
                let mut map = inner.map.lock();
                if pump.subs.lock().is_empty() {
                    pump.dead.store(true, Ordering::Release);
                    if map.get(&pump.name).is_some_and(|p| Arc::ptr_eq(p, pump)) {
                        map.remove(&pump.name);
                    }
                    break;
                }
            }
            Err(RecvTimeoutError::Disconnected) => {
                // The bucket was dropped: its watches end; let their connections see it.
                let mut map = inner.map.lock();
                pump.dead.store(true, Ordering::Release);
                if map.get(&pump.name).is_some_and(|p| Arc::ptr_eq(p, pump)) {
                    map.remove(&pump.name);
                }
                drop(map);
                pump.wake_all();
                break;
            }
        }
    }
    debug!(bucket = %pump.name, "watch pump stopped");
}
