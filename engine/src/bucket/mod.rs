//! One bucket: its log, its index, its revision counter, and every read and
//! write on it.
//!
//! [`BucketCore`] is a bucket's shared state; each concern of it is a file:
//!
//! | file | what it does |
//! |---|---|
//! | `open.rs` | opens a bucket directory: replays its log into a fresh index (from the index snapshot on, when one matches) |
//! | `read.rs` | point reads: one key, one revision, its TTL |
//! | `write/` | the write path: plan (checks against the index and the earlier writes of the call) → encode (records, one append) → apply (index, watch hub) |
//! | `pending.rs` | under `FsyncPolicy::Always`, appended writes that become visible once durable |
//! | `lost.rs` | under `interval`/`never`, revisions skipped after an unclean stop, so none seen is given again |
//! | `query.rs` | reads and deletes over many keys: keys, history, search, scan, delete by glob |
//! | `maintenance.rs` | the TTL sweep, aging out, the index snapshot, counters and status |
//! | `compact.rs` | compaction |
//! | `checkpoint.rs` | the files of a copy of the bucket as of one revision, for a checkpoint |
//! | `watch.rs` | watches: cursors reading the log |
//! | `handle.rs` | [`Bucket`](handle::Bucket), the public handle |
//!
//! The fields of [`BucketCore`] are private to this module and its files; the
//! rest of the crate (the store) calls methods.

mod checkpoint;
pub(crate) mod compact;
pub(crate) mod handle;
mod lost;
mod maintenance;
mod open;
mod pending;
pub(crate) mod query;
mod read;
#[cfg(test)]
mod replica_tests;
#[cfg(test)]
mod test_util;
pub(crate) mod watch;
#[cfg(test)]
mod watch_tests;
mod write;

use std::any::Any;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::clock::Clock;
use crate::config::BucketConfig;
use crate::error::{Error, Result};
use crate::index::{Index, RecordRef};
use crate::log::segment::SegmentId;
use crate::log::{Appender, Log};
use crate::watch_hub::WatchHub;

pub(crate) use open::Recovered;

/// What a bucket handle or a watch holds to keep the store open (its
/// directory lock, its background thread) for as long as it lives.
pub(crate) type KeepStoreOpen = Arc<dyn Any + Send + Sync>;

/// The writer's state, under one lock: appends and revision numbers are serial.
struct Writer {
    /// Where the next append goes.
    app: Appender,
    /// The revision the next write gets.
    next_rev: u64,
    /// Encoded records of the write in progress (reused).
    buf: Vec<u8>,
    /// Records the write in progress retired from the index (reused).
    removed: Vec<RecordRef>,
    /// Writes in the log, not visible until durable (`FsyncPolicy::Always`).
    pending: pending::Pending,
    /// The revisions the last open skipped are recorded in the active
    /// segment's mark only: `lost.revs` is written before the log leaves it
    /// ([`BucketCore::file_lost_revisions`]).
    lost_unfiled: bool,
}

/// Compaction counters kept since open.
#[derive(Default)]
struct CompactionStats {
    /// Passes that rewrote at least one segment.
    passes: AtomicU64,
    /// Bytes of disk given back.
    reclaimed: AtomicU64,
}

/// A bucket's shared state.
pub(crate) struct BucketCore {
    /// Unique among the buckets this process opened (see [`handle::Bucket::id`]).
    id: u64,
    name: Arc<str>,
    config: BucketConfig,
    dir: PathBuf,
    log: Log,
    index: RwLock<Index>,
    /// The replication tag of the last visible batch that carried one (see
    /// `Bucket::apply_replicated`); changed under the index write lock, so an
    /// index snapshot records the tag that goes with it.
    replica_tag: Mutex<Option<Arc<[u8]>>>,
    writer: Mutex<Writer>,
    clock: Arc<dyn Clock>,
    dropped: AtomicBool,
    /// Writes become visible only once durable (`FsyncPolicy::Always`; see `pending.rs`).
    visible_when_durable: bool,
    /// A replica's bucket (`Options::replicated`): its revisions come from the
    /// replicated log, and a node behind the others has not given out yet
    /// revisions a client may have seen elsewhere.
    replicated: bool,
    /// Revisions skipped after unclean stops (see `lost.rs`).
    lost: lost::LostRevisions,
    /// The last revision whose write is visible.
    last_rev: AtomicU64,
    compaction_stats: CompactionStats,
    hub: WatchHub,
    /// Serialises compaction passes. Lock order: `compacting`, then
    /// `snapshot_state`, then `writer` (a drop takes all three).
    compacting: Mutex<()>,
    /// Why compaction stopped for the rest of this process: a pass's output
    /// was put in place but not installed (see `compact.rs`).
    compaction_halted: Mutex<Option<String>>,
    /// Segment files out of the log's table but still on disk that no file
    /// on disk supersedes any more: inputs of a pass with nothing to keep
    /// whose deletion failed, and what such inputs superseded. Every later
    /// compaction output supersedes them (see `compact.rs`).
    orphans: Mutex<Vec<SegmentId>>,
    /// Serialises builds of the index's key order (see
    /// [`BucketCore::ensure_key_order`]).
    building_order: Mutex<()>,
    /// Compact a sealed segment once this share of its bytes is dead.
    compact_dead_ratio: f64,
    /// A log smaller than this gets no index snapshot (`Options::snapshot_min_bytes`).
    snapshot_min_bytes: u64,
    /// Most bytes one read of many keys may return (`Options::max_read_bytes`; 0: no limit).
    max_read_bytes: u64,
    /// When the index snapshot was last written, and whether a compaction
    /// pass has made it stale since (see `maintenance.rs`).
    snapshot_state: Mutex<maintenance::SnapshotState>,
    /// The store's segment size: a compaction output grows no larger.
    segment_size: u64,
    /// A test hook: the compaction step at which to stop as if crashed
    /// ([`compact::CrashPoint`] as a number; 0 for none).
    #[cfg(any(test, feature = "failpoints"))]
    crash_point: std::sync::atomic::AtomicU8,
}

/// Gives every bucket opened by this process its own id.
static NEXT_BUCKET_ID: AtomicU64 = AtomicU64::new(1);

/// A new bucket id.
fn new_bucket_id() -> u64 {
    NEXT_BUCKET_ID.fetch_add(1, Ordering::Relaxed)
}

/// Effective expiry: the earlier of a per-key expiry and the bucket's max age.
fn effective_expiry(key_expires: u64, created: u64, bucket_ttl_ms: u64) -> u64 {
    match (key_expires, bucket_ttl_ms) {
        (k, 0) => k,
        (0, t) => created.saturating_add(t),
        (k, t) => k.min(created.saturating_add(t)),
    }
}

impl BucketCore {
    /// The bucket's id, unique among the buckets this process opened.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// The bucket's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The bucket's configuration.
    pub(crate) fn config(&self) -> BucketConfig {
        self.config
    }

    /// A channel that receives a (coalesced) token after every write.
    pub(crate) fn change_listener(&self) -> crossbeam_channel::Receiver<()> {
        self.hub.listen()
    }

    /// Registers a function called after every write (see [`crate::Bucket::on_change`]).
    pub(crate) fn on_change(
        &self,
        hook: impl Fn() + Send + Sync + 'static,
    ) -> crate::watch_hub::ChangeHook {
        self.hub.hook(hook)
    }

    /// Fails with [`Error::NoBucket`] once the bucket has been dropped.
    pub(crate) fn check_open(&self) -> Result<()> {
        if self.dropped.load(Ordering::Acquire) {
            return Err(Error::NoBucket(self.name.to_string()));
        }
        Ok(())
    }

    /// The time now, ms since the Unix epoch.
    fn now(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Makes every write acknowledged so far durable (and visible).
    pub(crate) fn sync(&self) -> Result<()> {
        self.log.sync()?;
        self.publish_durable();
        Ok(())
    }

    /// A clean close: everything durable, an index snapshot, and a mark that
    /// says the log was closed cleanly (neither written again if the one on
    /// disk already says so). The snapshot only spares the next open a scan:
    /// one that cannot be written (a full disk) is reported, after the mark,
    /// which it must not cost (an unclean next open would give revisions up,
    /// and a watch resumed in them would hear of a loss that never happened).
    pub(crate) fn close_clean(&self) -> Result<()> {
        self.sync()?;
        let snapshot = self.write_snapshot_if_changed();
        self.log.close_clean()?;
        snapshot
    }

    /// How long this bucket's fsyncs took.
    pub(crate) fn fsync_latencies(&self) -> crate::latency::Latencies {
        self.log.fsync_latencies()
    }

    /// Revision ranges skipped after unclean stops (see `lost.rs`).
    pub(crate) fn lost_revisions(&self) -> Vec<(u64, u64)> {
        self.lost.ranges().to_vec()
    }

    /// Whether some write is not yet durable.
    pub(crate) fn has_unsynced_writes(&self) -> bool {
        self.log.dirty()
    }

    /// Marks the bucket dropped, waits for a write, a compaction pass or an
    /// index snapshot in progress to finish, has `remove` take its directory
    /// away (none of them starts meanwhile), and ends its watches. (A pass and
    /// a snapshot write into the directory by its name, which a bucket
    /// created under the same name takes next.)
    pub(crate) fn drop_with(&self, remove: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
        let _pass = self.compacting.lock();
        let _snapshot = self.snapshot_state.lock();
        let _writer = self.writer.lock();
        remove(&self.dir)?;
        self.dropped.store(true, Ordering::Release);
        self.hub.close();
        Ok(())
    }
}
