//! A connection's watches and the delivery of their events.
//!
//! A connection's watches are engine [`Watch`]es: cursors into the bucket's log that are
//! pulled with `try_next()` (never blocking). The connection subscribes to the bucket's pump
//! ([`crate::pump`]) and events are pulled only while the pending output is below a
//! high-water mark: a client that does not read stops being pulled for, so it never blocks
//! writers nor grows the server's memory (the log is the buffer).
//!
//! Who pulls depends on what the connection is doing when the pump comes:
//! - **parked** (waiting for input with nothing to write, on plain TCP): the pump pulls
//!   and writes the frames to the socket itself, without blocking (a copy of the socket
//!   taken at the first park). The connection's task is not woken at all. If the socket
//!   takes less than everything, or more events wait than one delivery takes, the rest is
//!   stashed, the park ends and the connection is woken: it writes the stash first, then
//!   pulls on by itself.
//! - otherwise (busy, a TLS connection): the pump wakes the connection's task, which pulls
//!   before its next wait.
//!
//! Every pull, by the pump or by the connection, goes through one lock and one set of
//! cursors, and the connection ends the park (taking the stash) before it writes anything
//! else, so the frames keep their order and none is sent twice.

use std::io::Write as _;
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use logkv::{Bucket, Error, Watch, WatchEventRef, WatchOptions};
use parking_lot::Mutex;
use tokio::sync::futures::Notified;
use tokio::sync::Notify;
use tracing::warn;

use crate::encode;
use crate::protocol::RespVersion;
use crate::pump::{FrameCache, Pump, SendBuf, SharedFrames, Subscriber};
use crate::shared::Shared;

/// Most watches one connection may hold.
pub(crate) const MAX_WATCHES: usize = 1024;

/// Most bytes one delivery by the pump pulls for one connection (the rest is left to the
/// connection itself).
const DIRECT_MAX: usize = 64 * 1024;

struct Slot {
    id: u64,
    /// The store generation the watch reads (a cluster node that installs a snapshot
    /// replaces its store: the watch then ends with `lost`).
    generation: u64,
    /// On a cluster node, the watch's `FROM` revision: a node behind the one the client
    /// resumes from still applies the revisions before it, which the client has seen.
    skip_below: u64,
    watch: Watch,
    with_value: bool,
    pump: Arc<Pump>,
    ended: bool,
}

/// A connection's watches (its session holds this handle; the pumps hold the [`Outlet`]).
pub(crate) struct Watches {
    outlet: Arc<Outlet>,
}

/// What the pumps of the watched buckets hold of a connection: its cursors, how to wake it
/// and, while it is parked, its socket.
pub(crate) struct Outlet {
    shared: Arc<Shared>,
    /// Wakes the connection's task.
    notify: Notify,
    /// The number of watches (read on every request, so kept outside the lock).
    count: AtomicUsize,
    state: Mutex<State>,
}

struct State {
    list: Vec<Slot>,
    next_id: u64,
    /// Where the next pull starts (round robin between watches).
    start: usize,
    /// Set while the connection is parked: the RESP version to encode in.
    parked: Option<RespVersion>,
    /// A copy of the connection's socket (plain TCP), taken at the first park.
    socket: Option<TcpStream>,
    /// Whether the copy was asked for (once: a TLS connection has none, and a failed
    /// attempt, already logged, is not repeated at every park).
    socket_tried: bool,
    /// Bytes a delivery by the pump could not write; the connection writes them first.
    stash: Vec<u8>,
}

impl Watches {
    pub fn new(shared: Arc<Shared>) -> Watches {
        Watches {
            outlet: Arc::new(Outlet {
                shared,
                notify: Notify::new(),
                count: AtomicUsize::new(0),
                state: Mutex::new(State {
                    list: Vec::new(),
                    next_id: 1,
                    start: 0,
                    parked: None,
                    socket: None,
                    socket_tried: false,
                    stash: Vec::new(),
                }),
            }),
        }
    }

    /// Whether any watch is active.
    pub fn active(&self) -> bool {
        self.len() > 0
    }

    /// How many watches are active.
    pub fn len(&self) -> usize {
        self.outlet.count.load(Ordering::Relaxed)
    }

    /// The memory the watches' initial data not yet sent holds (a watch of a large bucket
    /// lists its keys at once: see [`Watch::initial_bytes`]); it counts against the client
    /// memory budget with the connection's buffers.
    pub fn initial_bytes(&self) -> usize {
        if !self.active() {
            return 0;
        }
        let st = self.outlet.state.lock();
        st.list.iter().map(|slot| slot.watch.initial_bytes()).sum()
    }

    /// Completes when a pump wakes the connection.
    pub fn notified(&self) -> Notified<'_> {
        self.outlet.notify.notified()
    }

    /// Starts watching `pattern` on `bucket`; returns the new watch's id. Its events
    /// (initial data first) are pulled right after the reply.
    ///
    /// `generation` is the store generation read before `bucket` was looked up: a store
    /// replaced since (a cluster node installing a snapshot, perhaps while the watch lists
    /// its initial data) ends the watch with `lost` at its first pull. Read after, it could
    /// be the new store's while the watch reads the old one, and the watch would never end.
    pub fn add(
        &mut self,
        bucket: &Bucket,
        generation: u64,
        pattern: &str,
        mut opts: WatchOptions,
    ) -> logkv::Result<u64> {
        let outlet = &self.outlet;
        let shared = &outlet.shared;
        let mut st = outlet.state.lock();
        // Subscribe before the watch takes its snapshot: a write in between still wakes us.
        let me: Arc<dyn Subscriber> = Arc::clone(outlet) as Arc<dyn Subscriber>;
        let pump = shared.pumps.subscribe(bucket, me);
        let with_value = !opts.meta_only;
        let skip_below = if shared.cluster.is_some() {
            opts.from_revision.unwrap_or(0)
        } else {
            0
        };
        // A list of initial data larger than the whole budget would have the connection
        // closed once made: refused while it is made instead.
        opts.max_initial_bytes = Some(shared.client_memory.budget());
        let watch = match bucket.watch(pattern, opts) {
            Ok(w) => w,
            Err(e) => {
                pump.unsubscribe(&**outlet);
                return Err(e);
            }
        };
        #[cfg(test)]
        tests::after_watch_created();
        let id = st.next_id;
        st.next_id += 1;
        st.list.push(Slot {
            id,
            generation,
            skip_below,
            watch,
            with_value,
            pump,
            ended: false,
        });
        outlet.count.store(st.list.len(), Ordering::Relaxed);
        shared.stats.watchers.fetch_add(1, Ordering::Relaxed);
        outlet.notify.notify_one();
        Ok(id)
    }

    /// Ends the watch `id`, if there is one.
    pub fn remove_id(&mut self, id: u64) {
        let mut st = self.outlet.state.lock();
        if let Some(i) = st.list.iter().position(|s| s.id == id) {
            st.remove(&self.outlet, i);
        }
    }

    /// Ends every watch.
    pub fn clear(&mut self) {
        let mut st = self.outlet.state.lock();
        while let Some(last) = st.list.len().checked_sub(1) {
            st.remove(&self.outlet, last);
        }
    }

    /// Pulls events into `out` until every watch is drained or `out` reaches `high_water`.
    /// Returns true when it stopped at the high-water mark (more may be waiting).
    pub fn pull(&mut self, version: RespVersion, out: &mut Vec<u8>, high_water: usize) -> bool {
        self.outlet
            .state
            .lock()
            .pull(&self.outlet, version, out, high_water, None)
    }

    /// The connection is about to wait for input with nothing to write and every watch
    /// drained: until [`Watches::unpark`], pumps may write its events to `socket` themselves.
    /// `socket` makes the copy of the connection's socket (asked for once; `None` for TLS).
    /// Returns false when the connection cannot be parked (no socket): pumps then wake it.
    pub fn park(&self, version: RespVersion, socket: impl FnOnce() -> Option<TcpStream>) -> bool {
        let mut st = self.outlet.state.lock();
        if !st.socket_tried {
            st.socket_tried = true;
            st.socket = socket();
        }
        if st.socket.is_none() {
            return false;
        }
        st.parked = Some(version);
        true
    }

    /// Ends the park: what a pump could not write is appended to `out` (empty while
    /// parked), to be written before anything else. Returns true if there was some (the
    /// connection should then pull on).
    pub fn unpark(&self, out: &mut Vec<u8>) -> bool {
        let mut st = self.outlet.state.lock();
        st.parked = None;
        if st.stash.is_empty() {
            return false;
        }
        out.append(&mut st.stash);
        st.stash = Vec::new();
        true
    }
}

impl State {
    fn remove(&mut self, outlet: &Outlet, idx: usize) {
        let slot = self.list.remove(idx);
        slot.pump.unsubscribe(outlet);
        outlet.count.store(self.list.len(), Ordering::Relaxed);
        outlet.shared.stats.watchers.fetch_sub(1, Ordering::Relaxed);
    }

    /// See [`Watches::pull`]. With `shared` (a pump's delivery), a watch that stands
    /// where the watch of the shared frames stood sends those frames instead of reading
    /// its events, and a watch that reads new events leaves its frames there for the next.
    fn pull(
        &mut self,
        outlet: &Outlet,
        version: RespVersion,
        out: &mut Vec<u8>,
        high_water: usize,
        mut shared: Option<&mut FrameCache>,
    ) -> bool {
        let n = self.list.len();
        let mut full = false;
        let generation = outlet.shared.store_generation();
        for step in 0..n {
            let idx = (self.start + step) % n;
            let slot = &mut self.list[idx];
            if slot.ended {
                continue;
            }
            if slot.generation != generation {
                encode_lost(out, version, slot.id, 0);
                slot.ended = true;
                continue;
            }
            let mut mark = None;
            if let Some(cache) = shared.as_deref_mut() {
                let taken = cache.take(|f| {
                    out.len() + f.bytes.len() <= high_water
                        && f.fit(slot, version)
                        && slot.watch.follow(&f.step)
                });
                if let Some(frames) = taken {
                    out.extend_from_slice(&frames.bytes);
                }
                mark = slot.watch.mark();
            }
            let read_from = out.len();
            loop {
                if out.len() >= high_water {
                    full = true;
                    break;
                }
                // Borrowed: the entry is encoded straight from the log, not copied first.
                match slot.watch.try_next_ref() {
                    Ok(None) => break,
                    Ok(Some(WatchEventRef::Entry(e))) if e.revision < slot.skip_below => {}
                    Ok(Some(ev)) => {
                        if encode_event(out, version, slot.id, slot.with_value, &ev) {
                            slot.ended = true;
                            break;
                        }
                    }
                    Err(e) => {
                        if !matches!(e, Error::Closed) {
                            warn!(watch = slot.id, "watch failed: {e}");
                        }
                        // The bucket was dropped (or the log failed): the watch ends.
                        encode_lost(out, version, slot.id, 0);
                        slot.ended = true;
                        break;
                    }
                }
            }
            if let (Some(cache), Some(from)) = (shared.as_deref_mut(), mark) {
                if out.len() > read_from && !slot.ended && cache.keeping() {
                    if let Some(step) = slot.watch.step_since(from) {
                        cache.keep(SharedFrames {
                            step,
                            id: slot.id,
                            version,
                            skip_below: slot.skip_below,
                            bytes: out[read_from..].to_vec(),
                        });
                    }
                }
            }
            if full {
                self.start = (idx + 1) % n;
                break;
            }
        }
        let mut i = 0;
        while i < self.list.len() {
            if self.list[i].ended {
                self.remove(outlet, i);
            } else {
                i += 1;
            }
        }
        full
    }

    /// A pump's delivery to a parked connection: pulls into `scratch` and writes it to the
    /// socket without waiting. Returns false when the connection must be woken (it is not
    /// parked, or something is left for it to write or pull).
    fn deliver(&mut self, outlet: &Outlet, buf: &mut SendBuf) -> bool {
        let Some(version) = self.parked else {
            return false;
        };
        let SendBuf { scratch, frames } = buf;
        scratch.clear();
        let more = self.pull(outlet, version, scratch, DIRECT_MAX, Some(frames));
        let sent = match self.socket.as_mut() {
            Some(socket) => write_some(socket, scratch),
            None => 0,
        };
        if !more && sent == scratch.len() {
            return true;
        }
        self.stash.extend_from_slice(&scratch[sent..]);
        self.parked = None;
        false
    }
}

/// Writes what the socket takes now of `bytes` (a non-blocking socket); returns how much.
/// An error leaves the rest to the connection, whose own write then reports it.
fn write_some(socket: &mut TcpStream, bytes: &[u8]) -> usize {
    let mut sent = 0;
    while sent < bytes.len() {
        match socket.write(&bytes[sent..]) {
            Ok(0) => break,
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    sent
}

impl SharedFrames {
    /// Whether these frames are the ones `slot` would send, given the same events
    /// (whether values are sent follows `METAONLY`, which the step checks).
    fn fit(&self, slot: &Slot, version: RespVersion) -> bool {
        self.id == slot.id && self.version == version && self.skip_below == slot.skip_below
    }
}

impl Subscriber for Outlet {
    fn woken(&self, buf: &mut SendBuf) {
        // A connection busy with its state (pulling, parking, unparking) is woken instead:
        // the pump never waits for a connection.
        if let Some(mut st) = self.state.try_lock() {
            if st.deliver(self, buf) {
                return;
            }
        }
        self.notify.notify_one();
    }

    fn nudge(&self) {
        self.notify.notify_one();
    }
}

impl Drop for Watches {
    fn drop(&mut self) {
        self.clear();
        // No pump writes to this connection's socket any more.
        let mut st = self.outlet.state.lock();
        st.parked = None;
        st.socket = None;
    }
}

fn encode_lost(out: &mut Vec<u8>, version: RespVersion, id: u64, first_retained: u64) {
    encode::push(out, version, 4);
    encode::bulk(out, b"watch");
    encode::uint(out, id);
    encode::bulk(out, b"lost");
    encode::uint(out, first_retained);
}

/// Appends one watch frame; returns true if the watch has ended.
fn encode_event(
    out: &mut Vec<u8>,
    version: RespVersion,
    id: u64,
    with_value: bool,
    ev: &WatchEventRef<'_>,
) -> bool {
    match ev {
        WatchEventRef::Entry(e) => {
            encode::push(out, version, 3);
            encode::bulk(out, b"watch");
            encode::uint(out, id);
            encode::entry_ref(out, version, e, with_value);
            false
        }
        WatchEventRef::Ready => {
            encode::push(out, version, 3);
            encode::bulk(out, b"watch");
            encode::uint(out, id);
            encode::bulk(out, b"ready");
            false
        }
        WatchEventRef::Lost { first_retained } => {
            encode_lost(out, version, id, *first_retained);
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::session::Session;

    /// How long a wake-up that must come is waited for.
    const DEADLINE: Duration = Duration::from_secs(60);

    thread_local! {
        /// Run once by the next [`Watches::add`] on this thread, right after the engine's
        /// watch is made (where a long initial listing takes its time).
        static AFTER_WATCH_CREATED: RefCell<Option<Box<dyn FnOnce()>>> =
            const { RefCell::new(None) };
    }

    pub(super) fn after_watch_created() {
        let hook = AFTER_WATCH_CREATED.with(|h| h.borrow_mut().take());
        if let Some(hook) = hook {
            hook();
        }
    }

    /// The state of a server serving `store` (opened in `dir`) as generation 0, as a unit
    /// test's gateway has it.
    fn shared(dir: &std::path::Path, store: logkv::Store) -> Arc<Shared> {
        let (gateway, _stop) = crate::http::Gateway::for_tests(dir, store);
        Arc::clone(&gateway.shared)
    }

    /// A connection's session on the store served now, as a new connection makes it.
    fn session(shared: &Arc<Shared>, id: u64) -> Session {
        let generation = shared.store_generation();
        let bucket = shared.store().default_bucket().expect("default");
        let peer = "127.0.0.1:1".parse().expect("addr");
        Session::new(Arc::clone(shared), id, peer, bucket, generation)
    }

    /// Runs one command; its reply.
    fn run(s: &mut Session, args: &[&str]) -> Vec<u8> {
        let args: Vec<Bytes> = args
            .iter()
            .map(|a| Bytes::copy_from_slice(a.as_bytes()))
            .collect();
        let mut out = Vec::new();
        let flow = crate::command::execute(s, &args, &mut out);
        assert!(matches!(flow, crate::command::Flow::Continue));
        out
    }

    /// Pulls every event waiting.
    fn pull_all(s: &mut Session) -> Vec<u8> {
        let mut out = Vec::new();
        while s.watches.pull(RespVersion::Resp2, &mut out, usize::MAX) {}
        out
    }

    /// The store is replaced (as a cluster node replaces it when it installs a snapshot)
    /// while a WATCH is being set up: the watch, made on the replaced store, ends with
    /// `lost` at its first pull. A new connection's watch of the new store's `default`
    /// bucket, made while the old watch still subscribes to the old store's, gets the new
    /// store's writes. Before, the WATCH recorded the generation read after the watch was
    /// made, the new store's: the watch went on reading the replaced store and never ended.
    #[test]
    fn a_store_replaced_while_a_watch_is_set_up_ends_that_watch() {
        let (dirs, [old, new], rt) = crate::testing::two_stores();
        rt.block_on(async {
            let shared = shared(dirs[0].path(), old);
            let mut first = session(&shared, 1);
            let cell = shared.stores.clone();
            AFTER_WATCH_CREATED.with(|h| {
                *h.borrow_mut() = Some(Box::new(move || {
                    drop(cell.replace(new, 1));
                }));
            });
            assert_eq!(run(&mut first, &["WATCH", ">"]), b":1\r\n");
            assert_eq!(shared.store_generation(), 1, "the hook replaced the store");

            let mut second = session(&shared, 2);
            assert_eq!(run(&mut second, &["WATCH", ">"]), b":1\r\n");
            // The wake-up a new watch gives its connection, taken before the write.
            tokio::time::timeout(DEADLINE, second.watches.notified())
                .await
                .expect("a new watch wakes its connection");
            let mut ready = Vec::new();
            encode_event(
                &mut ready,
                RespVersion::Resp2,
                1,
                true,
                &WatchEventRef::Ready,
            );
            assert_eq!(pull_all(&mut second), ready);
            shared
                .store()
                .default_bucket()
                .expect("default")
                .put("k", "v")
                .expect("put");
            tokio::time::timeout(DEADLINE, second.watches.notified())
                .await
                .expect("a write to the new store woke its watcher");
            let events = pull_all(&mut second);
            assert!(
                events.windows(7).any(|w| w == b"$1\r\nk\r\n")
                    && events.windows(7).any(|w| w == b"$1\r\nv\r\n"),
                "the write is delivered: {}",
                String::from_utf8_lossy(&events)
            );

            let mut lost = Vec::new();
            encode_lost(&mut lost, RespVersion::Resp2, 1, 0);
            assert_eq!(
                pull_all(&mut first),
                lost,
                "the watch of the replaced store ends at once"
            );
            assert!(!first.watches.active());
        });
    }

    #[test]
    fn frames() {
        let mut out = Vec::new();
        assert!(!encode_event(
            &mut out,
            RespVersion::Resp3,
            7,
            true,
            &WatchEventRef::Ready
        ));
        assert_eq!(out, b">3\r\n$5\r\nwatch\r\n:7\r\n$5\r\nready\r\n");
        out.clear();
        let lost = WatchEventRef::Lost { first_retained: 42 };
        assert!(
            encode_event(&mut out, RespVersion::Resp2, 7, true, &lost),
            "lost ends the watch"
        );
        assert_eq!(out, b"*4\r\n$5\r\nwatch\r\n:7\r\n$4\r\nlost\r\n:42\r\n");
        out.clear();
        encode_lost(&mut out, RespVersion::Resp3, 1, 0);
        assert_eq!(out, b">4\r\n$5\r\nwatch\r\n:1\r\n$4\r\nlost\r\n:0\r\n");
    }
}
