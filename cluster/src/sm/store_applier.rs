//! [`Applier`] on today's public engine API. **Interim**: what the engine's replication API
//! replaces (see docs/CLUSTER.md, "What the engine will provide").
//!
//! - Commands become `Store::create_bucket` / `drop_bucket` and `Bucket::write_each` /
//!   `write_nowait` / `delete_glob_nowait` / `sweep_expired`, with the store's clock pinned
//!   to the entry's leader time. The store is opened without an fsync policy of its own
//!   (`FsyncPolicy::Never`: the Raft log is what makes a write durable) and without its
//!   background thread (a follower must never sweep TTLs on its own; the leader proposes
//!   sweeps).
//! - After each batch of entries an **applied record** is written (atomically; durably for
//!   bucket creation and removal and membership changes): the last applied log id, the
//!   membership, the last time, and a fingerprint of the store — each bucket's last
//!   revision. At open the store is trusted only if its buckets and their last revisions
//!   are exactly those of the record (bucket logs are prefixes, so equal last revisions mean
//!   equal contents). Otherwise (a crash between a bucket write and the record, or a power
//!   cut that kept one and not the other) the state is rebuilt from the latest snapshot and
//!   the Raft log. The engine API will record the log id in each bucket's own batch instead.
//! - A checkpoint is a copy of the store directory taken with apply paused after
//!   `Store::sync` (the engine's `Store::checkpoint` will hard-link sealed segments).
//! - Installing a state creates the next **generation** directory (`gen-<n>`), opens a store
//!   there and swaps it into the [`StoreCell`] the server reads; the old store's buckets are
//!   dropped so that its watchers end (`lost`) and its directory is removed.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use logkv::{FsyncPolicy, Options, Store};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::applier::{Applied, Applier};
use super::cell::StoreCell;
use super::clock::ApplyClock;
use crate::command::{Command, OpError, Response, WrittenData};
use crate::fsutil::{copy_tree, invalid, read_checked, write_atomic, SlotFile};
use crate::types::LogId;

const CURRENT_FILE: &str = "current";
const APPLIED_FILE: &str = "applied";
const LOCK_FILE: &str = "LOCK";

#[derive(Debug, Serialize, Deserialize)]
struct AppliedRecord {
    generation: u64,
    applied: Applied,
    buckets: BTreeMap<String, u64>,
}

struct Inner {
    generation: u64,
    applied: Applied,
    /// Where the applied record goes, rewritten after every batch.
    record: SlotFile,
    /// Each bucket's last revision after the last command applied.
    buckets: BTreeMap<String, u64>,
}

/// The interim [`Applier`] on `logkv::Store`.
pub struct StoreApplier {
    dir: PathBuf,
    options: Options,
    clock: Arc<ApplyClock>,
    cell: StoreCell,
    recovered: Option<Applied>,
    inner: Mutex<Inner>,
    /// Held by checkpoints and compaction so that no file disappears during a copy.
    files: Mutex<()>,
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

/// An engine error at apply: a deterministic outcome, or a failure of this node.
fn outcome(e: &logkv::Error) -> io::Result<OpError> {
    OpError::from_engine(e).ok_or_else(|| io::Error::other(format!("apply failed: {e}")))
}

fn gen_dir(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("gen-{generation}"))
}

fn fingerprint(store: &Store) -> io::Result<BTreeMap<String, u64>> {
    let mut out = BTreeMap::new();
    for name in store.bucket_names() {
        let b = store.bucket(&name).map_err(engine)?;
        out.insert(name, b.stats().last_revision);
    }
    Ok(out)
}

impl StoreApplier {
    /// Opens the state machine's store in `dir` (the node's `sm/` directory). `options` are
    /// the engine options to open stores with; the clock, the fsync policy and the
    /// background thread are set here.
    pub fn open(dir: impl AsRef<Path>, options: &Options) -> io::Result<StoreApplier> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir)?;
        let clock = Arc::new(ApplyClock::default());
        let options = Options {
            fsync: FsyncPolicy::Never,
            background: false,
            replicated: true,
            clock: Arc::clone(&clock) as Arc<dyn logkv::Clock>,
            ..options.clone()
        };
        let current: Option<u64> = match read_checked(&dir.join(CURRENT_FILE))? {
            Some(b) => Some(postcard::from_bytes(&b).map_err(|e| invalid(e.to_string()))?),
            None => None,
        };
        let (mut record_file, saved) = SlotFile::open(&dir.join(APPLIED_FILE))?;
        let (generation, store, recovered, buckets, applied) = match current {
            None => {
                let store = Store::open(gen_dir(&dir, 1), options.clone()).map_err(engine)?;
                let buckets = fingerprint(&store)?;
                let applied = Applied::default();
                write_record(&mut record_file, 1, &applied, &buckets, true)?;
                write_current(&dir, 1)?;
                (1, store, Some(applied.clone()), buckets, applied)
            }
            Some(g) => {
                let store = Store::open(gen_dir(&dir, g), options.clone()).map_err(engine)?;
                let buckets = fingerprint(&store)?;
                let record: Option<AppliedRecord> =
                    saved.and_then(|b| postcard::from_bytes(&b).ok());
                match record {
                    Some(r) if r.generation == g && r.buckets == buckets => {
                        (g, store, Some(r.applied.clone()), buckets, r.applied)
                    }
                    _ => {
                        tracing::warn!(
                            generation = g,
                            "the store does not match its applied record (a crash between a \
                             write and its record): it is rebuilt from the latest snapshot and \
                             the Raft log"
                        );
                        (g, store, None, buckets, Applied::default())
                    }
                }
            }
        };
        remove_other_generations(&dir, generation);
        let ttl_buckets = Mutex::new(store.bucket_names().into_iter().collect());
        Ok(StoreApplier {
            ttl_buckets,
            dir,
            options,
            clock,
            cell: StoreCell::new(store, generation),
            recovered,
            inner: Mutex::new(Inner {
                generation,
                applied,
                record: record_file,
                buckets,
            }),
            files: Mutex::new(()),
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

    /// Compacts the buckets whose dead bytes pass half of what they hold (the engine's
    /// background thread does this when it runs; here it is off, see the module doc).
    pub fn compact_if_needed(&self) -> io::Result<usize> {
        let _files = self.files.lock();
        let store = self.cell.get();
        let mut passes = 0;
        for name in store.bucket_names() {
            let Ok(b) = store.bucket(&name) else { continue };
            let s = b.stats();
            let total = s.bytes + s.dead_bytes;
            if s.segments > 1 && total > 0 && s.dead_bytes * 2 > total {
                b.compact().map_err(engine)?;
                passes += 1;
            }
        }
        Ok(passes)
    }

    fn apply_command(store: &Store, command: &Command) -> io::Result<Response> {
        let bucket = |name: &str| store.bucket(name);
        Ok(match command {
            Command::CreateBucket { bucket, config } => {
                match store.create_bucket(bucket, (*config).into()) {
                    Ok(_) => Response::Done,
                    Err(e) => Response::Failed(outcome(&e)?),
                }
            }
            Command::DropBucket { bucket } => match store.drop_bucket(bucket) {
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
                if *atomic {
                    match b.write_nowait(&ops) {
                        Ok((written, _)) => Response::Atomic(Ok(written
                            .iter()
                            .map(WrittenData::from_engine)
                            .collect())),
                        Err(e) => Response::Atomic(Err(outcome(&e)?)),
                    }
                } else {
                    match b.write_each(&ops) {
                        Ok((results, _)) => {
                            let mut out = Vec::with_capacity(results.len());
                            for r in results {
                                out.push(match r {
                                    Ok(w) => Ok(WrittenData::from_engine(&w)),
                                    Err(e) => Err(outcome(&e)?),
                                });
                            }
                            Response::Each(out)
                        }
                        Err(e) => Response::Failed(outcome(&e)?),
                    }
                }
            }
            Command::DeleteGlob { bucket: name, glob } => {
                match bucket(name).and_then(|b| b.delete_glob_nowait(glob)) {
                    Ok((n, _)) => Response::Count(n as u64),
                    Err(e) => Response::Failed(outcome(&e)?),
                }
            }
            Command::Sweep { bucket: name } => match bucket(name).and_then(|b| b.sweep_expired()) {
                Ok(n) => Response::Count(n as u64),
                Err(e) => Response::Failed(outcome(&e)?),
            },
        })
    }
}

fn write_record(
    file: &mut SlotFile,
    generation: u64,
    applied: &Applied,
    buckets: &BTreeMap<String, u64>,
    durable: bool,
) -> io::Result<()> {
    let record = AppliedRecord {
        generation,
        applied: applied.clone(),
        buckets: buckets.clone(),
    };
    let bytes = postcard::to_stdvec(&record).map_err(io::Error::other)?;
    file.write(&bytes, durable)
}

fn write_current(dir: &Path, generation: u64) -> io::Result<()> {
    let bytes = postcard::to_stdvec(&generation).map_err(io::Error::other)?;
    write_atomic(&dir.join(CURRENT_FILE), &bytes, true)
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
        self.recovered.clone()
    }

    fn apply(&self, log_id: LogId, now_ms: u64, command: &Command) -> io::Result<Response> {
        let mut inner = self.inner.lock();
        let store = self.cell.get();
        self.clock.pin(now_ms);
        let result = StoreApplier::apply_command(&store, command);
        self.clock.unpin();
        let name = command.bucket();
        if let Command::Write { ops, .. } = command {
            if ops.iter().any(|o| o.ttl_ms.is_some()) {
                self.ttl_buckets.lock().insert(name.to_string());
            }
        }
        match store.bucket(name) {
            Ok(b) => {
                inner
                    .buckets
                    .insert(name.to_string(), b.stats().last_revision);
            }
            Err(_) => {
                inner.buckets.remove(name);
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
        let inner = &mut *inner;
        write_record(
            &mut inner.record,
            inner.generation,
            applied,
            &inner.buckets,
            durable,
        )
    }

    fn checkpoint(&self, dir: &Path) -> io::Result<Applied> {
        let _files = self.files.lock();
        let inner = self.inner.lock();
        let store = self.cell.get();
        store.sync().map_err(engine)?;
        copy_tree(store.dir(), dir, &[LOCK_FILE])?;
        Ok(inner.applied.clone())
    }

    fn install(&self, from: Option<&Path>, applied: &Applied) -> io::Result<()> {
        let _files = self.files.lock();
        let mut inner = self.inner.lock();
        let generation = inner.generation + 1;
        let target = gen_dir(&self.dir, generation);
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
        let buckets = fingerprint(&store)?;
        write_record(&mut inner.record, generation, applied, &buckets, true)?;
        write_current(&self.dir, generation)?;
        let old = self.cell.replace(store, generation);
        inner.generation = generation;
        inner.applied = applied.clone();
        inner.buckets = buckets;
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
