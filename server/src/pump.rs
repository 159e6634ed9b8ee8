//! Watch wake-ups: one pump task per bucket that has watchers.
//!
//! Engine watches are pull-based: [`logkv::Watch::try_next`] never blocks. A pump
//! registers a hook with the bucket ([`logkv::Bucket::on_change`]) that the writer calls
//! after its writes become visible; the hook only wakes the pump, a task on the server's
//! runtime (no thread of its own), and the pump calls each [`Subscriber`] of the bucket.
//! A subscriber pulls its own events at its own pace, so the writer's cost per write is one
//! wake-up per watched bucket, however many watchers there are, and a watcher that never
//! reads holds nothing but its cursor. Writes that arrive while the pump runs are coalesced
//! into its next round.
//!
//! A connection that is idle when the pump comes (nothing to write, nothing to run) is
//! served by the pump itself: its events are pulled and written to its socket right there,
//! one connection after another (a large round split into shares, up to four per core), without
//! waking the connection's task (`session/watches.rs`). With a thousand watchers this is
//! most of the difference: the sends go out back to back, as Redis sends its pub/sub
//! messages, instead of one task wake-up, poll and re-arm apiece. The watchers that read
//! alike share one encoding of the events ([`SendBuf`]). Anyone else is woken and pulls
//! (a busy connection, a TLS one, an HTTP event stream).
//!
//! A pump serves one bucket, told apart by [`Bucket::id`], not by its name: a bucket dropped
//! and created again, or the `default` bucket of a store that replaced another (a cluster
//! node that installed a snapshot), gets a pump of its own, hooked to it.
//!
//! A pump ends when its last subscriber leaves, when the bucket is dropped (the hook is
//! called once more and the pump finds the bucket gone), or at server shutdown.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use logkv::Bucket;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tracing::{debug, error};

use crate::protocol::RespVersion;

thread_local! {
    /// Subscribers of the pumps that writers on this thread woke (see [`woken_here`]).
    static WOKEN_HERE: Cell<u64> = const { Cell::new(0) };
}

/// How many subscribers the pumps that writes made visible on this thread woke have
/// had, added up over every wake-up so far: a connection that compares it before and
/// after its requests knows how many watchers they woke (under `always` a write is
/// made visible, and its pump woken, by whichever thread syncs it, so this counts only
/// the writes visible at once).
pub(crate) fn woken_here() -> u64 {
    WOKEN_HERE.with(Cell::get)
}

/// Subscribers served per turn of the pump before it lets other tasks run.
const TURN: usize = 64;
/// Subscribers per share of a large delivery: a round with at least twice as many is split
/// into shares that run at the same time, one on the pump's task and the others on the
/// blocking pool, at most [`SHARES_PER_CORE`] per core.
const SHARE: usize = 128;
/// Shares per core a large delivery may run at once. More sending threads than cores
/// batch the receivers' side: a receiving thread woken by a send waits behind the other
/// senders instead of preempting a lone one, and drains more sockets per wake-up (S5 on
/// 2 cores, 1,000 watchers: the bench's receivers woke 17-36 thousand times per 505,000
/// events with 7-16 shares against 42-133 thousand with 2, and the p99 to the last
/// watcher fell from 5.3-7.3 ms to 4.3-5.0 in alternated runs).
const SHARES_PER_CORE: usize = 4;
/// Scratch capacity a pump keeps between rounds.
const SCRATCH_KEEP: usize = 64 * 1024;

/// What one sending thread keeps across the subscribers of one delivery.
#[derive(Default)]
pub(crate) struct SendBuf {
    /// Where a subscriber's frames are encoded before they are written.
    pub scratch: Vec<u8>,
    pub frames: FrameCache,
}

impl SendBuf {
    /// Ends a delivery.
    fn finish(&mut self) {
        self.frames.clear();
        if self.scratch.capacity() > SCRATCH_KEEP {
            self.scratch = Vec::new();
        }
    }
}

/// The frames of the last few watches in a delivery that read new events (at most
/// [`SHARED_KINDS`]). A watch that stands where one of them stood and reads the same way
/// sends its bytes and takes the same step ([`logkv::Watch::follow`]) instead of reading
/// and encoding the same events again: a thousand watchers of one bucket cost one
/// encoding per kind of watcher, as a pub/sub message is framed once for all its
/// subscribers.
#[derive(Default)]
pub(crate) struct FrameCache {
    kept: Vec<SharedFrames>,
    /// Which of `kept` the next new frames replace once it is full.
    replace_next: usize,
    /// Frames kept, and taken by another watch, in this delivery.
    kept_count: usize,
    taken_count: usize,
}

/// Frames a sending thread keeps in one delivery before it stops when none was taken
/// (every watcher reads differently: copying their frames would be work for nothing).
const KEEP_UNTAKEN: usize = 16;

/// How many watchers' frames one sending thread keeps for the others of a delivery: the
/// kinds of watcher (pattern, options, RESP version, ...) it tells apart at once.
const SHARED_KINDS: usize = 4;

impl FrameCache {
    /// The first kept frames `take` accepts (and acts on), counted as taken.
    pub fn take(&mut self, mut take: impl FnMut(&SharedFrames) -> bool) -> Option<&SharedFrames> {
        let found = self.kept.iter().find(|f| take(f))?;
        self.taken_count += 1;
        Some(found)
    }

    /// Keeps `frames` for the next subscribers of this delivery, in place of the oldest
    /// kept once [`SHARED_KINDS`] are.
    pub fn keep(&mut self, frames: SharedFrames) {
        self.kept_count += 1;
        if self.kept.len() < SHARED_KINDS {
            self.kept.push(frames);
        } else {
            let i = self.replace_next % SHARED_KINDS;
            self.replace_next = i + 1;
            self.kept[i] = frames;
        }
    }

    /// Whether frames are still worth keeping in this delivery: some kept frames were
    /// taken, or too few were kept yet to tell.
    pub fn keeping(&self) -> bool {
        self.taken_count > 0 || self.kept_count < KEEP_UNTAKEN
    }

    /// Forgets every frame: they hold a segment of the log, which compaction may want to
    /// remove before the next delivery.
    fn clear(&mut self) {
        *self = FrameCache::default();
    }
}

/// One watch's frames for one step through the log, and what else they depend on (the
/// step covers the bucket and how the watch reads, `METAONLY` included; a watch of a
/// replaced store ends before it could take or leave frames).
pub(crate) struct SharedFrames {
    pub step: logkv::WatchStep,
    /// The watch id the frames carry.
    pub id: u64,
    pub version: RespVersion,
    /// Entries below this revision were left out (a cluster node's `FROM`).
    pub skip_below: u64,
    pub bytes: Vec<u8>,
}

/// What a pump calls after writes to its bucket.
pub(crate) trait Subscriber: Send + Sync {
    /// New writes may be waiting: deliver them now if that can be done without waiting
    /// (`buf` is the sending thread's, kept across the subscribers of a delivery), or wake
    /// whoever pulls them.
    fn woken(&self, buf: &mut SendBuf);
    /// Wake whoever pulls (the bucket was dropped, the store replaced, the pump ends).
    fn nudge(&self);
}

/// A plain wake-up: whoever awaits the [`Notify`] pulls.
impl Subscriber for Notify {
    fn woken(&self, _buf: &mut SendBuf) {
        // Stores a permit when the task is not waiting: no wake-up is lost.
        self.notify_one();
    }

    fn nudge(&self) {
        self.notify_one();
    }
}

/// The cores a large delivery may use at once.
fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES
        .get_or_init(|| std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get))
}

/// How many shares a delivery to `subscribers` is split into on `cores` cores: one per
/// [`SHARE`] subscribers, at least one, at most [`SHARES_PER_CORE`] per core.
fn shares(subscribers: usize, cores: usize) -> usize {
    (subscribers / SHARE).clamp(1, SHARES_PER_CORE * cores.max(1))
}

/// Whether `a` is the subscriber `b` (by address: the same object).
fn same(a: &Arc<dyn Subscriber>, b: &dyn Subscriber) -> bool {
    std::ptr::addr_eq(Arc::as_ptr(a), std::ptr::from_ref(b))
}

/// The pumps of all watched buckets.
#[derive(Clone, Default)]
pub(crate) struct Pumps {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Live pumps by bucket id ([`Bucket::id`]).
    map: Mutex<HashMap<u64, Arc<Pump>>>,
    stop: AtomicBool,
}

/// The pump of one bucket.
pub(crate) struct Pump {
    name: String,
    /// The bucket's [`Bucket::id`], its key in the map.
    id: u64,
    /// A handle on the bucket, to tell whether it was dropped.
    bucket: Bucket,
    subs: Mutex<Vec<Arc<dyn Subscriber>>>,
    /// How many `subs` holds, set under its lock: what the writers' hook counts
    /// ([`woken_here`]) without taking the lock a delivery holds while it copies the list.
    sub_count: AtomicU64,
    /// Set (under the map lock) once the pump has left the map: it takes no subscriber more.
    dead: AtomicBool,
    /// Woken by the bucket's writers (through the hook), by the last unsubscribe, and at
    /// shutdown.
    wake: Notify,
    pumps: Weak<Inner>,
}

impl Pump {
    /// Removes one subscription of `sub` (taken with [`Pumps::subscribe`]); the last one
    /// ends the pump.
    pub fn unsubscribe(&self, sub: &dyn Subscriber) {
        // The map lock first, as in `subscribe`: a pump found alive there gets its
        // subscriber before it can be ended here.
        let inner = self.pumps.upgrade();
        let mut map = inner.as_ref().map(|i| i.map.lock());
        let mut subs = self.subs.lock();
        if let Some(i) = subs.iter().position(|n| same(n, sub)) {
            subs.swap_remove(i);
            self.sub_count.store(subs.len() as u64, Ordering::Relaxed);
        }
        if subs.is_empty() && !self.dead.swap(true, Ordering::AcqRel) {
            drop(subs);
            if let Some(map) = map.as_mut() {
                if map
                    .get(&self.id)
                    .is_some_and(|p| std::ptr::eq(Arc::as_ptr(p), self))
                {
                    map.remove(&self.id);
                }
            }
            self.wake.notify_one();
        }
    }

    /// Wakes every subscriber, delivering nothing.
    fn nudge_all(&self) {
        for s in self.subs.lock().iter() {
            s.nudge();
        }
    }

    /// Calls every subscriber after writes, [`TURN`] at a time (other tasks run between).
    /// `batch` and `buf` are the pump's buffers, kept between rounds.
    ///
    /// A round of 256 subscribers or more is split ([`shares`]): the sends of one event to a
    /// thousand sockets are a thousand system calls, each of which also runs the receiver's
    /// side of loopback TCP, so spreading them over the cores shortens the time to the last
    /// watcher. The other shares run on the blocking pool and the pump waits for them.
    async fn deliver(&self, batch: &mut Vec<Arc<dyn Subscriber>>, buf: &mut SendBuf) {
        // A copy of the list: subscribers come and go (under this lock) while it is served.
        batch.extend(self.subs.lock().iter().cloned());
        let per = batch.len().div_ceil(shares(batch.len(), cores()));
        let mut others = Vec::new();
        while batch.len() > per {
            let share = batch.split_off((batch.len() - per).max(per));
            others.push(tokio::task::spawn_blocking(move || {
                let mut buf = SendBuf::default();
                for s in &share {
                    s.woken(&mut buf);
                }
            }));
        }
        for (i, s) in batch.iter().enumerate() {
            if i > 0 && i % TURN == 0 {
                tokio::task::yield_now().await;
            }
            s.woken(buf);
        }
        buf.finish();
        for share in others {
            if let Err(e) = share.await {
                error!(bucket = %self.name, "a share of a watch delivery failed: {e}");
            }
        }
        batch.clear();
    }

    /// Whether this pump still serves its bucket (it was not ended, the bucket not dropped).
    fn alive(&self) -> bool {
        !self.dead.load(Ordering::Acquire) && !self.bucket_dropped()
    }

    fn bucket_dropped(&self) -> bool {
        !self.bucket.is_open()
    }
}

impl Pumps {
    pub fn new() -> Pumps {
        Pumps::default()
    }

    /// Subscribes `sub` to writes on `bucket`, starting the bucket's pump if needed (the
    /// pump of that very bucket: another bucket of the same name, dropped since or in a
    /// replaced store, has its own).
    /// Subscribe before pulling from a new watch, so that no write can go unnoticed.
    /// Called from a task of the server's runtime (the pump is spawned on it).
    pub fn subscribe(&self, bucket: &Bucket, sub: Arc<dyn Subscriber>) -> Arc<Pump> {
        let mut map = self.inner.map.lock();
        if let Some(p) = map.get(&bucket.id()) {
            if p.alive() {
                let mut subs = p.subs.lock();
                subs.push(sub);
                p.sub_count.store(subs.len() as u64, Ordering::Relaxed);
                drop(subs);
                return Arc::clone(p);
            }
            // The bucket was dropped: that pump ends on its own.
            p.dead.store(true, Ordering::Release);
            p.wake.notify_one();
        }
        let pump = Arc::new(Pump {
            name: bucket.name().to_string(),
            id: bucket.id(),
            bucket: bucket.clone(),
            subs: Mutex::new(vec![sub]),
            sub_count: AtomicU64::new(1),
            dead: AtomicBool::new(false),
            wake: Notify::new(),
            pumps: Arc::downgrade(&self.inner),
        });
        map.insert(pump.id, Arc::clone(&pump));
        drop(map);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let hook = {
                    let p = Arc::clone(&pump);
                    bucket.on_change(move || {
                        let subs = p.sub_count.load(Ordering::Relaxed);
                        WOKEN_HERE.with(|n| n.set(n.get().wrapping_add(subs)));
                        p.wake.notify_one();
                    })
                };
                let inner = Arc::clone(&self.inner);
                let p = Arc::clone(&pump);
                rt.spawn(async move { run(&inner, &p, hook).await });
            }
            Err(e) => {
                // Watches still work, but only wake on other events; say so loudly.
                error!(bucket = %pump.name, "could not start a watch pump: {e}");
            }
        }
        pump
    }

    /// How many subscribers the pumps of the buckets named `bucket` have (0 without a pump).
    #[cfg(test)]
    pub fn subscribers(&self, bucket: &str) -> usize {
        self.inner
            .map
            .lock()
            .values()
            .filter(|p| p.name == bucket)
            .map(|p| p.subs.lock().len())
            .sum()
    }

    /// Wakes every connection that watches anything (the store was replaced: their
    /// watches end).
    pub fn wake_everyone(&self) {
        let pumps: Vec<Arc<Pump>> = self.inner.map.lock().values().cloned().collect();
        for p in pumps {
            p.nudge_all();
        }
    }

    /// Stops every pump (their tasks end at their next wake-up, which this gives them).
    pub fn shutdown(&self) {
        self.inner.stop.store(true, Ordering::Release);
        let pumps = std::mem::take(&mut *self.inner.map.lock());
        for p in pumps.values() {
            p.dead.store(true, Ordering::Release);
            p.wake.notify_one();
        }
    }
}

/// A pump's task: every wake-up from the bucket's hook calls the subscribers, until the
/// pump is ended. The hook is unregistered when the task returns, and the subscribers left
/// are woken a last time.
async fn run(inner: &Inner, pump: &Pump, hook: logkv::ChangeHook) {
    debug!(bucket = %pump.name, "watch pump started");
    let mut batch = Vec::new();
    let mut buf = SendBuf::default();
    loop {
        pump.wake.notified().await;
        if inner.stop.load(Ordering::Acquire) || pump.dead.load(Ordering::Acquire) {
            break;
        }
        if pump.bucket_dropped() {
            // Its watches end; let their connections see it.
            let mut map = inner.map.lock();
            pump.dead.store(true, Ordering::Release);
            if map
                .get(&pump.id)
                .is_some_and(|p| std::ptr::eq(Arc::as_ptr(p), pump))
            {
                map.remove(&pump.id);
            }
            break;
        }
        pump.deliver(&mut batch, &mut buf).await;
    }
    drop(hook);
    // Whoever still subscribes pulls once more and finds its watch ended (a dropped
    // bucket) or its connection stopping.
    pump.nudge_all();
    debug!(bucket = %pump.name, "watch pump stopped");
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Frames of a watch of `bucket` that read one new write (`id` tells them apart).
    fn frames(bucket: &Bucket, id: u64) -> SharedFrames {
        let mut w = bucket
            .watch(">", logkv::WatchOptions::default())
            .expect("watch");
        while w.try_next().expect("initial").is_some() {}
        let from = w.mark().expect("live");
        bucket.put("k", "v").expect("put");
        while w.try_next().expect("live").is_some() {}
        SharedFrames {
            step: w.step_since(from).expect("moved"),
            id,
            version: RespVersion::Resp2,
            skip_below: 0,
            bytes: vec![u8::try_from(id).expect("small id")],
        }
    }

    /// A write made visible at once adds the subscribers of the pump it wakes to the
    /// count of the thread that wrote it, and only to that thread's: a connection tells
    /// from it how many watchers its requests woke.
    #[test]
    fn writes_count_the_watchers_they_wake_on_their_own_thread() {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = logkv::Options {
            fsync: logkv::FsyncPolicy::Never,
            ..logkv::Options::default()
        };
        let store = logkv::Store::open(dir.path(), opts).expect("open");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let bucket = store.bucket(logkv::DEFAULT_BUCKET).expect("default");
            let before = woken_here();
            bucket.put("k", "v").expect("put");
            assert_eq!(woken_here(), before, "no pump: nothing woken");
            let pumps = Pumps::new();
            let subs: Vec<Arc<Notify>> = (0..3).map(|_| Arc::new(Notify::new())).collect();
            let taken: Vec<Arc<Pump>> = subs
                .iter()
                .map(|n| pumps.subscribe(&bucket, Arc::clone(n) as Arc<dyn Subscriber>))
                .collect();
            let before = woken_here();
            bucket.put("k", "w").expect("put");
            assert_eq!(woken_here() - before, 3, "one write, three watchers");
            let elsewhere = bucket.clone();
            let there = std::thread::spawn(move || {
                let before = woken_here();
                elsewhere.put("k", "x").expect("put");
                woken_here() - before
            })
            .join()
            .expect("writer thread");
            assert_eq!(there, 3, "counted on the writer's thread");
            assert_eq!(woken_here() - before, 3, "and not on this one");
            taken[0].unsubscribe(&*subs[0]);
            let before = woken_here();
            bucket.put("k", "y").expect("put");
            assert_eq!(woken_here() - before, 2, "one watcher left");
            for (pump, sub) in taken.iter().zip(&subs).skip(1) {
                pump.unsubscribe(&**sub);
            }
        });
    }

    /// Two stores' `default` buckets (a cluster node's store and the one a snapshot install
    /// put in its place) each get a pump of their own, woken by their own writes. Before,
    /// a pump was found by the bucket's name: the second subscriber joined the first
    /// store's pump, hooked to the first store's bucket, and a write to the second store
    /// never woke it.
    #[test]
    fn buckets_of_one_name_in_two_stores_each_get_their_own_pump() {
        let (_dirs, stores, rt) = crate::testing::two_stores();
        rt.block_on(async {
            let buckets = stores
                .each_ref()
                .map(|s| s.bucket(logkv::DEFAULT_BUCKET).expect("default"));
            let pumps = Pumps::new();
            let subs = [Arc::new(Notify::new()), Arc::new(Notify::new())];
            let taken: Vec<Arc<Pump>> = buckets
                .iter()
                .zip(&subs)
                .map(|(b, n)| pumps.subscribe(b, Arc::clone(n) as Arc<dyn Subscriber>))
                .collect();
            assert!(
                !Arc::ptr_eq(&taken[0], &taken[1]),
                "the second store's default bucket joined the first store's pump"
            );
            assert_eq!(pumps.subscribers(logkv::DEFAULT_BUCKET), 2);
            for (i, (bucket, sub)) in buckets.iter().zip(&subs).enumerate() {
                bucket.put("k", "v").expect("put");
                tokio::time::timeout(Duration::from_secs(60), sub.notified())
                    .await
                    .unwrap_or_else(|_| panic!("a write to store {i} woke no subscriber"));
            }
            for (pump, sub) in taken.iter().zip(&subs) {
                pump.unsubscribe(&**sub);
            }
            assert_eq!(pumps.subscribers(logkv::DEFAULT_BUCKET), 0);
        });
    }

    #[test]
    fn large_deliveries_are_split_into_shares_up_to_four_per_core() {
        assert_eq!(shares(0, 2), 1, "nobody: the pump's own share");
        assert_eq!(shares(SHARE * 2 - 1, 2), 1, "too few for two shares");
        assert_eq!(shares(SHARE * 2, 2), 2);
        assert_eq!(shares(1_000, 2), 7, "S5's thousand watchers");
        assert_eq!(shares(100_000, 2), 8, "at most four per core");
        assert_eq!(shares(100_000, 16), 64);
        assert_eq!(
            shares(100_000, 0),
            SHARES_PER_CORE,
            "no core count: one core"
        );
    }

    #[test]
    fn a_send_buf_keeps_the_latest_kinds_and_stops_when_none_is_taken() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = logkv::Store::open(dir.path(), logkv::Options::default()).expect("open");
        let bucket = store
            .create_bucket("b", logkv::BucketConfig::default())
            .expect("bucket");
        let mut buf = SendBuf::default();
        let cache = &mut buf.frames;
        for id in 0..6 {
            assert!(cache.keeping(), "frame {id}");
            cache.keep(frames(&bucket, id));
        }
        // The two oldest were replaced, in order.
        let ids: Vec<u64> = cache.kept.iter().map(|f| f.id).collect();
        assert_eq!(ids, [4, 5, 2, 3]);
        for id in 6..KEEP_UNTAKEN as u64 {
            cache.keep(frames(&bucket, id));
        }
        assert!(!cache.keeping(), "{KEEP_UNTAKEN} kept and none taken");
        assert!(cache.take(|f| f.id == 99).is_none(), "none accepted");
        assert!(
            !cache.keeping(),
            "a search that takes nothing counts for nothing"
        );
        assert_eq!(cache.take(|f| f.id == 13).map(|f| f.id), Some(13));
        assert!(cache.keeping(), "one was taken: others may be");
        buf.finish();
        assert!(
            buf.frames.kept.is_empty(),
            "a delivery's frames end with it"
        );
        assert!(buf.frames.keeping());
    }
}
