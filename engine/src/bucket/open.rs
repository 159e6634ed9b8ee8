//! Opening a bucket: its log replayed into a fresh index, from the index
//! snapshot on when one matches the log.

use std::cell::RefCell;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use super::lost::LostRevisions;
use super::pending::Pending;
use super::{effective_expiry, BucketCore, CompactionStats, Writer};
use crate::config::{BucketConfig, Options};
use crate::error::Result;
use crate::fsync::FsyncPolicy;
use crate::index::{Index, RecordRef};
use crate::io::Storage;
use crate::log::recovery::{RecoveryReport, Start};
use crate::log::segment::Segment;
use crate::log::{Log, LogConfig, Opened};
use crate::snapshot::{self, Snapshot};
use crate::watch_hub::WatchHub;

/// A bucket's log read back, and the index it describes.
struct Replayed {
    opened: Opened,
    index: Index,
    /// The last revision the bucket gave out.
    last_revision: u64,
    /// The replication tag of the last tag record (or of the index snapshot).
    tag: Option<Arc<[u8]>>,
    /// The index came from the snapshot alone: no record lay after it.
    snapshot_only: bool,
}

impl BucketCore {
    /// Opens a bucket directory, replaying its log into a fresh index.
    pub(crate) fn open(
        dir: &Path,
        name: &str,
        config: BucketConfig,
        opts: &Options,
    ) -> Result<(BucketCore, RecoveryReport)> {
        let Replayed {
            opened,
            index,
            last_revision: last,
            tag,
            snapshot_only,
        } = replay(dir, name, &config, opts)?;
        let end = opened.appender.end();
        let mut skipped = LostRevisions::load(dir)?;
        let mut next_rev = last.max(skipped.highest()) + 1;
        if opened.unclean
            && opened.eager_before
            && !opts.replicated
            && opened.reserved_through >= next_rev
        {
            // Writes were visible before they were durable, and the stop was
            // unclean: revisions up to the reservation may have been seen and
            // lost. They are never given again. (A replica's are applied again
            // with the same revisions by its replication log.)
            tracing::warn!(
                bucket = name,
                first = next_rev,
                last = opened.reserved_through,
                "unclean stop: revisions that may have been seen and then lost are skipped"
            );
            skipped.add(&opts.storage, dir, next_rev, opened.reserved_through)?;
            next_rev = opened.reserved_through + 1;
        }
        // The counter stands past what it skipped: the bucket's last revision
        // is the last one given out, whether its write survived or not.
        let last = next_rev - 1;
        let core = BucketCore {
            id: super::new_bucket_id(),
            name: Arc::from(name),
            config,
            dir: dir.to_path_buf(),
            log: opened.log,
            index: RwLock::new(index),
            replica_tag: Mutex::new(tag),
            writer: Mutex::new(Writer {
                app: opened.appender,
                next_rev,
                buf: Vec::new(),
                removed: Vec::new(),
                pending: Pending::default(),
            }),
            visible_when_durable: opts.fsync == FsyncPolicy::Always,
            lost: skipped,
            clock: Arc::clone(&opts.clock),
            dropped: AtomicBool::new(false),
            last_rev: AtomicU64::new(last),
            compaction_stats: CompactionStats::default(),
            hub: WatchHub::new(end, last),
            compacting: Mutex::new(()),
            compact_dead_ratio: opts.compact_dead_ratio,
            snapshot_min_bytes: opts.snapshot_min_bytes,
            snapshot_state: Mutex::new(super::maintenance::SnapshotState::default()),
            segment_size: opts.segment_size,
            #[cfg(any(test, feature = "failpoints"))]
            crash_point: std::sync::atomic::AtomicU8::new(0),
        };
        if snapshot_only && !opened.unclean {
            // The snapshot file is what a clean close would write again.
            core.note_snapshot_current();
        }
        // Entries past the bucket's max age leave the index now, as they would have
        // had the store stayed open (the same rule the sweeper applies). Not in a
        // replica: its ages out happen at the sweeps its replication log applies, at
        // the leader's time, never at this node's clock (which would age out more than
        // the other nodes did, for good); the next sweep applied does it.
        if !opts.replicated {
            core.age_out(core.now())?;
        }
        Ok((core, opened.report))
    }
}

/// Opens the log in `dir` and rebuilds the index from it: from the index
/// snapshot when it matches the log, then every record after the snapshot.
fn replay(dir: &Path, name: &str, config: &BucketConfig, opts: &Options) -> Result<Replayed> {
    let index = RefCell::new(Index::default());
    let mut max_rev = 0;
    let mut removed = Vec::new();
    let history = usize::from(config.history);
    let ttl = config.ttl_ms();
    let log_cfg = LogConfig {
        segment_size: opts.segment_size,
        fsync: opts.fsync,
        repair: opts.repair,
        storage: opts.storage.clone(),
        mark_every: opts.durability_mark_interval,
    };
    let storage = opts.storage.clone();
    let mut snap = usable_snapshot(&storage, dir, name, opts.repair)?;
    let mut snap_rev = 0;
    // What the snapshot retains per segment, and the records applied after it.
    let mut snap_live = None;
    // A snapshot in the current format was used (an older one is written again
    // at close whatever happens).
    let mut snap_used = false;
    let mut replayed = 0u64;
    let mut stale = false;
    // The newest replication tag: the snapshot's, then each tag record read after it.
    let tag: RefCell<Option<Arc<[u8]>>> = RefCell::new(None);
    let mut start = |segs: &[Arc<Segment>]| {
        let mut s = snap.take()?;
        let last = s.last_revision;
        let snap_tag = s.tag.take();
        let current_format = s.current_format;
        let applied = s.apply(segs, history, &mut index.borrow_mut());
        match applied {
            Ok(applied) => {
                let (segment, offset) = applied.resume;
                snap_live = applied.live;
                snap_used = current_format;
                snap_rev = last;
                *tag.borrow_mut() = snap_tag.map(Arc::from);
                Some(Start {
                    segment,
                    offset,
                    revision: last,
                })
            }
            Err(why) => {
                tracing::warn!(bucket = name, reason = %why, "index snapshot is stale; scanning the whole log");
                *index.borrow_mut() = Index::default();
                stale = true;
                None
            }
        }
    };
    let opened = Log::open(
        dir,
        log_cfg,
        &mut start,
        &mut |seg: &Arc<Segment>, offset, rec| {
            let h = &rec.header;
            if h.is_tag() {
                *tag.borrow_mut() = Some(Arc::from(rec.key));
                return Ok(());
            }
            let expires = effective_expiry(h.expires_ms, h.created_ms, ttl);
            let at = RecordRef::new(h.revision, expires, seg.slot, offset, h.record_len(), h.op);
            index.borrow_mut().apply(rec.key, at, history, &mut removed);
            removed.clear();
            replayed += 1;
            max_rev = max_rev.max(h.revision);
            Ok(())
        },
    )?;
    if stale {
        snapshot::remove(&storage, dir)?;
    }
    let mut index = index.into_inner();
    let sizes = opened
        .log
        .segments()
        .iter()
        .map(|s| (s.slot, s.data_end().saturating_sub(s.data_start)))
        .collect();
    match snap_live {
        // Nothing changed the index after the snapshot: its counts hold.
        Some(live) if replayed == 0 => {
            index.set_dead_from_live(&sizes, |slot| live.get(&slot).copied().unwrap_or(0));
        }
        _ => index.recompute_dead(&sizes),
    }
    let last_revision = max_rev.max(opened.watermark).max(snap_rev);
    // No record at all after the snapshot (a tag record counts: it moves the end).
    let snapshot_only = snap_used && opened.report.records == 0;
    Ok(Replayed {
        opened,
        index,
        last_revision,
        tag: tag.into_inner(),
        snapshot_only,
    })
}

/// The index snapshot of the bucket in `dir`, if it has one that can be
/// read; one that cannot is removed (and the whole log is scanned).
fn usable_snapshot(
    storage: &Storage,
    dir: &Path,
    name: &str,
    repair: bool,
) -> Result<Option<Snapshot>> {
    if repair {
        // Repair may cut the log below a snapshot's end: never trust one after it.
        snapshot::remove(storage, dir)?;
        return Ok(None);
    }
    match snapshot::load(dir) {
        Ok(s) => Ok(s),
        Err(why) => {
            tracing::warn!(bucket = name, reason = %why, "index snapshot unusable; scanning the whole log");
            snapshot::remove(storage, dir)?;
            Ok(None)
        }
    }
}
