//! [`Applier`] on `logkv::Store` through the engine's replication API.
//!
//! - Commands become `Store::create_bucket_at` / `drop_bucket` and
//!   `Bucket::apply_replicated` / `delete_glob_replicated` / `sweep_replicated`, at the
//!   entry's leader time, each recording the entry's log id as the bucket's replication
//!   tag in the same batch as its records ([`tag_of`]). No write waits for an fsync: the
//!   Raft log made the entry durable. The store is opened `replicated` (after an unclean
//!   stop revisions continue from the last record recovered, so re-applied entries get the
//!   same revisions as on the other nodes), with `FsyncPolicy::Never`; the engine's
//!   background thread compacts, and a replicated store's never sweeps TTLs (a follower
//!   must never expire entries on its own: the leader proposes sweeps).
//! - The **durable point** `D`, in the applied record (`sm/applied.0` / `.1`, written
//!   durably): every bucket's state through entry `D` is on disk. It is written only right
//!   after `Store::sync` with apply paused: at a membership change, at each snapshot, and on
//!   the node's maintenance tick ([`StoreApplier::persist`]). With it: the membership, the
//!   last leader time, and the store generation.
//! - **At start** the node resumes from `D`: openraft applies again the entries after it.
//!   An entry for bucket `B` whose index is at most `B`'s recovered tag survived the crash
//!   and is skipped; every later one is applied again, on exactly the state it first met
//!   (a bucket's log is the batches up to its last tag, and an entry that wrote nothing
//!   changed nothing). Bucket creation is tagged durably, a drop is durable when it
//!   returns. Raft log entries are purged only up to a snapshot, and a snapshot is taken
//!   after `Store::sync` and moves `D` to its last entry: the purged entries' state is durable.
//! - A checkpoint is `Store::checkpoint` (sealed segments and index snapshots hard-linked,
//!   the active tails copied) taken with apply paused after `Store::sync`.
//! - Installing a state creates the next **generation** directory (`gen-<n>`), opens a store
//!   there and swaps it into the [`StoreCell`] the server reads; the old store's buckets are
//!   dropped so that its watchers end (`lost`) and its directory is removed. The applied
//!   record names the generation: writing it is the install's commit point.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use logkv::{ApplyMode, FsyncPolicy, Options, Store};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::applier::{Applied, Applier};
use super::cell::StoreCell;
use super::clock::ApplyClock;
use crate::command::{Command, OpError, Response, WrittenData};
use crate::descriptors::{self, retry_engine};
use crate::fsutil::{copy_tree, invalid, sync_dir, SlotFile};
use crate::types::LogId;

const APPLIED_FILE: &str = "applied";
const LOCK_FILE: &str = "LOCK";

/// The applied record: the durable point and the generation it is in.
#[derive(Debug, Serialize, Deserialize)]
struct AppliedRecord {
    generation: u64,
    /// The durable point: everything it names is on disk.
    applied: Applied,
}

struct Inner {
    generation: u64,
    /// How far apply went (in memory; on disk only as of the last durable point).
    applied: Applied,
    /// Where the applied record goes.
    record: SlotFile,
    /// Per bucket, the index of the last entry found applied at open (its replication
    /// tag): entries up to it survived and are skipped when applied again.
    resume: BTreeMap<String, u64>,
    /// Per bucket, the leader time of the last sweep applied to it (0: none), carried in
    /// every tag: a sweep's age-out writes no record, so a restarted node redoes it at
    /// open from the newest tag (see [`tag_of`]).
    last_sweep: HashMap<String, u64>,
}

impl Inner {
    /// Writes the applied record: the durable point is `applied` (the caller made it so).
    fn save(&mut self) -> io::Result<()> {
        write_record(&mut self.record, self.generation, &self.applied)
    }
}

/// The [`Applier`] on `logkv::Store`.
pub struct StoreApplier {
    dir: PathBuf,
    options: Options,
    clock: Arc<ApplyClock>,
    cell: StoreCell,
    recovered: Applied,
    inner: Mutex<Inner>,
    /// Buckets that may hold values with a TTL (every bucket at open, then those a write
    /// with a TTL reached): what the leader proposes sweeps for.
    ttl_buckets: Mutex<std::collections::BTreeSet<String>>,
}

impl std::fmt::Debug for StoreApplier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreApplier")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn engine(e: logkv::Error) -> io::Error {
    io::Error::other(e)
}

/// Makes an engine call of the apply of entry `log_id`, again while it fails for want of
/// a file descriptor (see `crate::descriptors`).
fn retried<T>(log_id: LogId, call: impl FnMut() -> logkv::Result<T>) -> logkv::Result<T> {
    struct Applying(LogId);
    impl std::fmt::Display for Applying {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "applying entry {}", self.0)
        }
    }
    retry_engine(&Applying(log_id), call)
}

/// An engine error at apply: a deterministic outcome, or a failure of this node.
fn outcome(e: &logkv::Error) -> io::Result<OpError> {
    OpError::from_engine(e).ok_or_else(|| io::Error::other(format!("apply failed: {e}")))
}

fn gen_dir(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("gen-{generation}"))
}

/// The replication tag of an entry for one bucket: its index (big-endian, first), term
/// and leader node, then the leader time of the last sweep applied to the bucket up to
/// and including this entry (0 for none).
pub fn tag_of(log_id: LogId, last_sweep_ms: u64) -> [u8; 32] {
    let mut tag = [0u8; 32];
    tag[..8].copy_from_slice(&log_id.index.to_be_bytes());
    tag[8..16].copy_from_slice(&log_id.leader_id.term.to_be_bytes());
    tag[16..24].copy_from_slice(&log_id.leader_id.node_id.to_be_bytes());
    tag[24..].copy_from_slice(&last_sweep_ms.to_be_bytes());
    tag
}

/// The last sweep time a replication tag carries (0 in a tag without one).
fn tag_sweep_ms(tag: &[u8]) -> u64 {
    tag.get(24..32)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

/// The entry index a replication tag names.
fn tag_index(tag: &[u8]) -> io::Result<u64> {
    tag.first_chunk::<8>()
        .map(|b| u64::from_be_bytes(*b))
        .ok_or_else(|| invalid(format!("a replication tag of {} bytes", tag.len())))
}

/// Each bucket's last sweep, from its recovered tag: the age-outs of the sweeps its
/// state went through are redone (they are in no record), and the map to go on with.
fn redo_age_outs(store: &Store) -> io::Result<HashMap<String, u64>> {
    let mut out = HashMap::new();
    for (name, tag) in store.replica_tags() {
        let sweep = tag.as_deref().map_or(0, tag_sweep_ms);
        if sweep > 0 {
            store
                .bucket(&name)
                .and_then(|b| b.age_out_replicated(sweep))
                .map_err(engine)?;
            out.insert(name, sweep);
        }
    }
    Ok(out)
}

/// Each bucket's recovered tag, as the index of its entry.
fn resume_points(store: &Store) -> io::Result<BTreeMap<String, u64>> {
    let mut out = BTreeMap::new();
    for (name, tag) in store.replica_tags() {
        if let Some(tag) = tag {
            out.insert(name, tag_index(&tag)?);
        }
    }
    Ok(out)
}

impl StoreApplier {
    /// Opens the state machine's store in `dir` (the node's `sm/` directory). `options` are
    /// the engine options to open stores with; the clock, the fsync policy, replication
    /// and the background thread (compaction only) are set here.
    pub fn open(dir: impl AsRef<Path>, options: &Options) -> io::Result<StoreApplier> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir)?;
        let clock = Arc::new(ApplyClock::default());
        let options = Options {
            fsync: FsyncPolicy::Never,
            background: true,
            replicated: true,
            clock: Arc::clone(&clock) as Arc<dyn logkv::Clock>,
            ..options.clone()
        };
        let (mut record_file, saved) = SlotFile::open(&dir.join(APPLIED_FILE))?;
        let record: Option<AppliedRecord> = match saved {
            Some(b) => Some(postcard::from_bytes(&b).map_err(|e| {
                invalid(format!("{}: unreadable applied record: {e}", dir.display()))
            })?),
            None => None,
        };
        let (generation, applied) = if let Some(r) = record {
            (r.generation, r.applied)
        } else {
            // A new node: an empty first generation (the record is written before
            // anything goes into it, so whatever is there is from another life).
            let fresh = gen_dir(&dir, 1);
            if fresh.exists() && std::fs::read_dir(&fresh)?.next().is_some() {
                std::fs::remove_dir_all(&fresh)?;
            }
            write_record(&mut record_file, 1, &Applied::default())?;
            (1, Applied::default())
        };
        let current = gen_dir(&dir, generation);
        if generation > 1 && !current.exists() {
            // An install makes its generation durable before the record names it.
            return Err(invalid(format!(
                "{}: the applied record names a store that is missing",
                current.display()
            )));
        }
        let store = Store::open(&current, options.clone()).map_err(engine)?;
        let resume = resume_points(&store)?;
        let last_sweep = redo_age_outs(&store)?;
        if !resume.is_empty() {
            tracing::info!(
                generation,
                durable = ?applied.log_id,
                buckets = ?resume,
                "resuming from the durable point; entries a bucket already holds are skipped"
            );
        }
        remove_other_generations(&dir, generation);
        let ttl_buckets = Mutex::new(store.bucket_names().into_iter().collect());
        Ok(StoreApplier {
            ttl_buckets,
            dir,
            options,
            clock,
            cell: StoreCell::new(store, generation),
            recovered: applied.clone(),
            inner: Mutex::new(Inner {
                generation,
                applied,
                record: record_file,
                resume,
                last_sweep,
            }),
        })
    }

    /// The cell holding the store this node serves.
    pub fn cell(&self) -> &StoreCell {
        &self.cell
    }

    /// The buckets a sweep may find something to expire or age out in: those with a max age
    /// and those a write with a TTL reached since open (all of them at open).
    pub fn sweep_candidates(&self) -> Vec<String> {
        let store = self.cell.get();
        let mut ttl = self.ttl_buckets.lock();
        ttl.retain(|b| store.bucket(b).is_ok());
        let mut out: Vec<String> = ttl.iter().cloned().collect();
        for name in store.bucket_names() {
            let has_max_age = store.bucket(&name).is_ok_and(|b| b.config().ttl.is_some());
            if has_max_age && !ttl.contains(&name) {
                out.push(name);
            }
        }
        out
    }

    /// Makes everything applied durable and moves the durable point to it (apply waits
    /// meanwhile): a restart then applies again only what came after.
    pub fn persist(&self) -> io::Result<()> {
        let mut inner = self.inner.lock();
        self.persist_locked(&mut inner)
    }

    fn persist_locked(&self, inner: &mut Inner) -> io::Result<()> {
        let store = self.cell.get();
        retry_engine(&"syncing the store", || store.sync()).map_err(engine)?;
        inner.save()
    }

    fn apply_command(
        store: &Store,
        log_id: LogId,
        now_ms: u64,
        command: &Command,
        last_sweep: &mut HashMap<String, u64>,
    ) -> io::Result<Response> {
        let name = command.bucket();
        match command {
            Command::Sweep { .. } => {
                last_sweep.insert(name.to_string(), now_ms);
            }
            Command::CreateBucket { .. } | Command::DropBucket { .. } => {
                last_sweep.remove(name);
            }
            _ => {}
        }
        let tag = tag_of(log_id, last_sweep.get(name).copied().unwrap_or(0));
        let bucket = |name: &str| store.bucket(name);
        // Each engine call that fails for want of a descriptor wrote nothing and is made
        // again (see `crate::descriptors`), so the entry is applied once, as everywhere.
        Ok(match command {
            Command::CreateBucket { bucket, config } => {
                // `Store::create_bucket_at` in its two steps, each made again alone: a
                // creation made again after its tag could not be recorded would find the
                // bucket there and answer "exists" where every other node said done.
                let created = retried(log_id, || store.create_bucket(bucket, (*config).into()));
                match created {
                    Ok(b) => {
                        retried(log_id, || {
                            if b.replica_tag().as_deref() == Some(&tag[..]) {
                                // The tag is in the log; its sync found no descriptor.
                                b.sync()
                            } else {
                                b.record_replica_tag(now_ms, &tag)
                            }
                        })
                        .map_err(engine)?;
                        Response::Done
                    }
                    Err(e) => Response::Failed(outcome(&e)?),
                }
            }
            Command::DropBucket { bucket } => match retried(log_id, || store.drop_bucket(bucket)) {
                Ok(()) => Response::Done,
                Err(e) => Response::Failed(outcome(&e)?),
            },
            Command::ConfigureBucket { .. } => Response::Failed(OpError::BadArgument(
                "changing a bucket's configuration is not supported".into(),
            )),
            Command::Write {
                bucket: name,
                atomic,
                ops,
            } => {
                let b = match bucket(name) {
                    Ok(b) => b,
                    Err(e) => return Ok(Response::Failed(outcome(&e)?)),
                };
                let ops: Vec<logkv::WriteOp> =
                    ops.iter().map(crate::command::Op::to_write_op).collect();
                let mode = if *atomic {
                    ApplyMode::Atomic
                } else {
                    ApplyMode::Each
                };
                let applied = retried(log_id, || b.apply_replicated(&ops, mode, now_ms, &tag));
                match (applied, atomic) {
                    (Ok(results), true) => {
                        let mut out = Vec::with_capacity(results.len());
                        for r in results {
                            out.push(WrittenData::from_engine(
                                &r.map_err(|e| io::Error::other(format!("apply failed: {e}")))?,
                            ));
                        }
                        Response::Atomic(Ok(out))
                    }
                    (Err(e), true) => Response::Atomic(Err(outcome(&e)?)),
                    (Ok(results), false) => {
                        let mut out = Vec::with_capacity(results.len());
                        for r in results {
                            out.push(match r {
                                Ok(w) => Ok(WrittenData::from_engine(&w)),
                                Err(e) => Err(outcome(&e)?),
                            });
                        }
                        Response::Each(out)
                    }
                    (Err(e), false) => Response::Failed(outcome(&e)?),
                }
            }
            Command::DeleteGlob { bucket: name, glob } => {
                match retried(log_id, || {
                    bucket(name).and_then(|b| b.delete_glob_replicated(glob, now_ms, &tag))
                }) {
                    Ok(n) => Response::Count(n as u64),
                    Err(e) => Response::Failed(outcome(&e)?),
                }
            }
            Command::Sweep { bucket: name } => {
                match retried(log_id, || {
                    bucket(name).and_then(|b| b.sweep_replicated(now_ms, &tag))
                }) {
                    Ok(n) => Response::Count(n as u64),
                    Err(e) => Response::Failed(outcome(&e)?),
                }
            }
        })
    }
}

fn write_record(file: &mut SlotFile, generation: u64, applied: &Applied) -> io::Result<()> {
    let record = AppliedRecord {
        generation,
        applied: applied.clone(),
    };
    let bytes = postcard::to_stdvec(&record).map_err(io::Error::other)?;
    file.write(&bytes, true)
}

fn remove_other_generations(dir: &Path, keep: u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(g) = name
            .to_str()
            .and_then(|n| n.strip_prefix("gen-"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        if g != keep {
            if let Err(e) = std::fs::remove_dir_all(entry.path()) {
                tracing::warn!(path = %entry.path().display(), "cannot remove an old store generation: {e}");
            }
        }
    }
}

impl Applier for StoreApplier {
    fn recovered(&self) -> Option<Applied> {
        Some(self.recovered.clone())
    }

    fn apply(&self, log_id: LogId, now_ms: u64, command: &Command) -> io::Result<Response> {
        let mut inner = self.inner.lock();
        let name = command.bucket();
        if inner
            .resume
            .get(name)
            .is_some_and(|&done| log_id.index <= done)
        {
            // Applied before a crash and still there (its tag survived): nobody waits for
            // its reply (a reply goes to the process that proposed it).
            return Ok(Response::Done);
        }
        let store = self.cell.get();
        self.clock.pin(now_ms);
        let result =
            StoreApplier::apply_command(&store, log_id, now_ms, command, &mut inner.last_sweep);
        self.clock.unpin();
        drop(inner);
        if let Command::Write { ops, .. } = command {
            if ops.iter().any(|o| o.ttl_ms.is_some()) {
                self.ttl_buckets.lock().insert(name.to_string());
            }
        }
        if let Err(e) = &result {
            tracing::error!(%log_id, "applying {command} failed: {e}");
        }
        result
    }

    fn set_applied(&self, applied: &Applied, durable: bool) -> io::Result<()> {
        let mut inner = self.inner.lock();
        inner.applied = applied.clone();
        if durable {
            self.persist_locked(&mut inner)?;
        }
        Ok(())
    }

    fn checkpoint(&self, dir: &Path) -> io::Result<Applied> {
        let mut inner = self.inner.lock();
        let store = self.cell.get();
        store.sync().map_err(engine)?;
        // `Store::checkpoint` makes the directory itself (never over anything).
        if dir.exists() {
            std::fs::remove_dir(dir)?;
        }
        store.checkpoint(dir).map_err(engine)?;
        // Everything applied is durable now: the durable point moves here, at or past
        // the snapshot (so the Raft log purged up to it is never needed again).
        inner.save()?;
        Ok(inner.applied.clone())
    }

    fn install(&self, from: Option<&Path>, applied: &Applied) -> io::Result<()> {
        let mut inner = self.inner.lock();
        let generation = inner.generation + 1;
        let target = gen_dir(&self.dir, generation);
        // Until the commit point, each attempt starts over: one that ran out of file
        // descriptors (a copy, or the store's open, holds several) is made again once
        // they are free; openraft stops the node on a failed install.
        let store = descriptors::retry_io(&"installing a snapshot", || {
            if target.exists() {
                std::fs::remove_dir_all(&target)?;
            }
            match from {
                Some(src) => {
                    copy_tree(src, &target, &[LOCK_FILE])?;
                }
                None => std::fs::create_dir_all(&target)?,
            }
            let store = Store::open(&target, self.options.clone()).map_err(engine)?;
            store.sync().map_err(engine)?;
            sync_dir(&self.dir)?;
            Ok(store)
        })?;
        // The commit point: from here on a restart opens the new generation.
        write_record(&mut inner.record, generation, applied)?;
        // A snapshot may hold entries past its last log id (one built while a batch of
        // entries was being applied): those its buckets' tags cover are skipped.
        let resume = resume_points(&store)?;
        let last_sweep = redo_age_outs(&store)?;
        let old = self.cell.replace(store, generation);
        inner.generation = generation;
        inner.applied = applied.clone();
        inner.resume = resume;
        inner.last_sweep = last_sweep;
        drop(inner);
        // End the old store's watchers (a dropped bucket's watch ends); its files go with it.
        for name in old.bucket_names() {
            if name != logkv::DEFAULT_BUCKET {
                let _ = old.drop_bucket(&name);
            }
        }
        let old_dir = old.dir().to_path_buf();
        drop(old);
        if let Err(e) = std::fs::remove_dir_all(&old_dir) {
            tracing::warn!(path = %old_dir.display(), "cannot remove the replaced store: {e}");
        }
        Ok(())
    }
}
