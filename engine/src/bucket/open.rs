//! Opening a bucket: its log replayed into a fresh index, from the index
//! snapshot on when one matches the log. After an unclean stop, what recovery
//! read is made durable before the bucket is served: by the open itself (a
//! bucket opened alone), or by the store, which syncs the file system once for
//! all its buckets ([`Recovered`]).

use std::cell::RefCell;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use super::lost::LostRevisions;
use super::pending::Pending;
use super::{effective_expiry, BucketCore, CompactionStats, Writer};
use crate::config::{BucketConfig, Options};
use crate::error::{Error, Result};
use crate::fsync::FsyncPolicy;
use crate::index::{Index, RecordRef};
use crate::io::Storage;
use crate::log::recovery::{RecoveryReport, Start};
use crate::log::segment::Segment;
use crate::log::{AfterUnclean, Log, LogConfig, Opened};
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

/// A bucket read back from disk and not yet served. After an unclean stop,
/// what recovery read (and the revisions it skipped) may wait for the store
/// to sync the file system, once for all its buckets ([`AfterUnclean::CallerSyncs`]).
pub(crate) struct Recovered {
    core: BucketCore,
    report: RecoveryReport,
    /// Revisions skipped by this open (first, last), for the store's log line.
    skipped: Option<(u64, u64)>,
    awaiting: Awaiting,
}

/// What a recovered bucket waits for before it is served.
enum Awaiting {
    /// Nothing: its open made everything durable itself, or the stop was clean.
    Nothing,
    /// The file system's sync of what recovery read.
    DataSync,
    /// The file system's sync of the mark (which holds the revisions skipped).
    MarkSync,
}

impl Awaiting {
    fn name(&self) -> &'static str {
        match self {
            Awaiting::Nothing => "nothing",
            Awaiting::DataSync => "the sync of what recovery read",
            Awaiting::MarkSync => "the sync of its mark",
        }
    }
}

impl Recovered {
    /// Whether the store must sync the file system of this bucket's directory,
    /// then call [`Recovered::data_synced`], then sync it again.
    pub(crate) fn awaits_sync(&self) -> bool {
        matches!(self.awaiting, Awaiting::DataSync)
    }

    /// What recovery found.
    pub(crate) fn report(&self) -> &RecoveryReport {
        &self.report
    }

    /// The bucket's directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.core.dir
    }

    /// Revisions this open skipped (see `lost.rs`), if any.
    pub(crate) fn skipped(&self) -> Option<(u64, u64)> {
        self.skipped
    }

    /// The store has synced the file system since this bucket was recovered:
    /// writes the log's mark (with the revisions skipped, if any) for the
    /// store's next sync of the file system.
    pub(crate) fn data_synced(&mut self) -> Result<()> {
        if !matches!(self.awaiting, Awaiting::DataSync) {
            return Err(self.out_of_turn("the data synced"));
        }
        self.core.log.synced_by_caller()?;
        self.awaiting = Awaiting::MarkSync;
        Ok(())
    }

    /// The store has synced the file system again since
    /// [`Recovered::data_synced`]: the mark is durable.
    pub(crate) fn marks_synced(&mut self) -> Result<()> {
        if !matches!(self.awaiting, Awaiting::MarkSync) {
            return Err(self.out_of_turn("the mark synced"));
        }
        self.core.log.recovery_recorded();
        self.awaiting = Awaiting::Nothing;
        Ok(())
    }

    fn out_of_turn(&self, step: &str) -> Error {
        Error::Internal(format!(
            "bucket {}: told {step} while it awaited {}",
            self.core.name,
            self.awaiting.name()
        ))
    }

    /// The bucket, ready to serve: entries past its max age leave the index
    /// now. Fails if the bucket still awaits a sync of the store's.
    pub(crate) fn finish(self, opts: &Options) -> Result<(BucketCore, RecoveryReport)> {
        if !matches!(self.awaiting, Awaiting::Nothing) {
            return Err(self.out_of_turn("to serve"));
        }
        let core = self.core;
        // Entries past the bucket's max age leave the index now, as they would have
        // had the store stayed open (the same rule the sweeper applies). Not in a
        // replica: its ages out happen at the sweeps its replication log applies, at
        // the leader's time, never at this node's clock (which would age out more than
        // the other nodes did, for good); the next sweep applied does it.
        if !opts.replicated {
            core.age_out(core.now())?;
        }
        Ok((core, self.report))
    }
}

impl BucketCore {
    /// Opens a bucket directory, replaying its log into a fresh index; after
    /// an unclean stop it makes what it read durable itself.
    pub(crate) fn open(
        dir: &Path,
        name: &str,
        config: BucketConfig,
        opts: &Options,
    ) -> Result<(BucketCore, RecoveryReport)> {
        let recovered = BucketCore::recover(dir, name, config, opts, AfterUnclean::OpenSyncs)?;
        if let Some((first, last)) = recovered.skipped {
            tracing::warn!(
                bucket = name,
                first,
                last,
                "unclean stop: revisions that may have been seen and then lost are skipped"
            );
        }
        recovered.finish(opts)
    }

    /// Replays a bucket directory's log into a fresh index. Under
    /// [`AfterUnclean::CallerSyncs`], what an unclean stop left is made
    /// durable by the caller (see [`Recovered`]).
    pub(crate) fn recover(
        dir: &Path,
        name: &str,
        config: BucketConfig,
        opts: &Options,
        after_unclean: AfterUnclean,
    ) -> Result<Recovered> {
        let Replayed {
            opened,
            index,
            last_revision: last,
            tag,
            snapshot_only,
        } = replay(dir, name, &config, opts, after_unclean)?;
        let end = opened.appender.end();
        let mut lost_list = LostRevisions::load(dir)?;
        // An earlier open's skip, still recorded only in the active segment's mark.
        let mut lost_unfiled = false;
        if let Some((first, last)) = opened.skipped_in_mark {
            lost_list.note(first, last);
            lost_unfiled = true;
        }
        let mut next_rev = last.max(lost_list.highest()) + 1;
        let mut skipped = None;
        let reserved = opened.reserved_through;
        if opened.unclean && opened.eager_before && !opts.replicated && reserved >= next_rev {
            // Writes were visible before they were durable, and the stop was
            // unclean: revisions up to the reservation may have been seen and
            // lost. They are never given again. (A replica's are applied again
            // with the same revisions by its replication log.)
            tracing::debug!(
                bucket = name,
                first = next_rev,
                last = reserved,
                "unclean stop: revisions that may have been seen and then lost are skipped"
            );
            skipped = Some((next_rev, reserved));
            // Recorded in the mark the store's sync makes durable, when the
            // store syncs and the count fits (it always does: a segment
            // reserves 2^24 revisions past its first batch); else in
            // `lost.revs`, durable now.
            let in_mark = u32::try_from(reserved - next_rev + 1)
                .ok()
                .filter(|_| opened.awaiting_sync);
            if let Some(count) = in_mark {
                opened.log.skip_in_mark(count)?;
                lost_list.note(next_rev, reserved);
                lost_unfiled = true;
            } else {
                lost_list.add(&opts.storage, dir, next_rev, reserved)?;
            }
            next_rev = reserved + 1;
        }
        let awaiting = if opened.awaiting_sync {
            Awaiting::DataSync
        } else {
            if opened.unclean && skipped.is_none() {
                // The list this open read may be the page cache's only.
                LostRevisions::sync_file(&opts.storage, dir)?;
            }
            // What this open skipped is durable in `lost.revs` (or nothing was).
            opened.log.recovery_recorded();
            Awaiting::Nothing
        };
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
                lost_unfiled,
            }),
            visible_when_durable: opts.fsync == FsyncPolicy::Always,
            replicated: opts.replicated,
            lost: lost_list,
            clock: Arc::clone(&opts.clock),
            dropped: AtomicBool::new(false),
            last_rev: AtomicU64::new(last),
            compaction_stats: CompactionStats::default(),
            hub: WatchHub::new(end, last),
            compacting: Mutex::new(()),
            compaction_halted: Mutex::new(None),
            orphans: Mutex::new(Vec::new()),
            building_order: Mutex::new(()),
            compact_dead_ratio: opts.compact_dead_ratio,
            snapshot_min_bytes: opts.snapshot_min_bytes,
            max_read_bytes: opts.max_read_bytes,
            snapshot_state: Mutex::new(super::maintenance::SnapshotState::default()),
            segment_size: opts.segment_size,
            #[cfg(any(test, feature = "failpoints"))]
            crash_point: std::sync::atomic::AtomicU8::new(0),
        };
        if snapshot_only && !opened.unclean {
            // The snapshot file is what a clean close would write again.
            core.note_snapshot_current();
        }
        Ok(Recovered {
            core,
            report: opened.report,
            skipped,
            awaiting,
        })
    }
}

/// Opens the log in `dir` and rebuilds the index from it: from the index
/// snapshot when it matches the log, then every record after the snapshot.
fn replay(
    dir: &Path,
    name: &str,
    config: &BucketConfig,
    opts: &Options,
    after_unclean: AfterUnclean,
) -> Result<Replayed> {
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
        after_unclean,
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
            index
                .borrow_mut()
                .apply(rec.key, at, h.created_ms, history, &mut removed);
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
