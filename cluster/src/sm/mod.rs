//! The Raft state machine: entries applied to the store through an [`Applier`], snapshots
//! as directories ([`snapshot`]).
//!
//! Entries are applied in log order, in batches on a blocking thread (the engine's calls are
//! synchronous). Each command is applied at its entry's leader time, never earlier than the
//! previous entry's (a new leader's clock may be behind), so every node applies at the same
//! times. After each batch the applier is told how far the state goes; it makes that its
//! durable point at once when the batch changed the membership, and otherwise now and then
//! (see [`store_applier`]). A restart resumes from the durable point: openraft applies the
//! later entries again, and the applier skips what its buckets still hold.

pub mod applier;
pub mod cell;
pub mod clock;
pub mod snapshot;
pub mod store_applier;

use std::io;
use std::sync::Arc;

use futures_util::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine, Snapshot};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use parking_lot::Mutex;

pub use applier::{Applied, Applier};
pub use cell::StoreCell;
use snapshot::{manifest, SnapshotDir, SnapshotInfo, SnapshotStore};

use crate::command::Response;
use crate::descriptors;
use crate::types::{LogId, SnapshotMeta, StoredMembership, C};

/// Entries applied per blocking call at most.
const APPLY_BATCH: usize = 1024;

struct Shared {
    applier: Arc<dyn Applier>,
    snapshots: SnapshotStore,
    applied: Mutex<Applied>,
}

/// The state machine of a node (cheap to clone: clones share everything).
#[derive(Clone)]
pub struct StateMachine {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for StateMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachine")
            .field("applied", &*self.shared.applied.lock())
            .finish_non_exhaustive()
    }
}

fn joined<T>(r: Result<io::Result<T>, tokio::task::JoinError>) -> io::Result<T> {
    r.map_err(|e| io::Error::other(format!("state machine task failed: {e}")))?
}

impl StateMachine {
    /// The state machine over `applier`, with its snapshots in `snapshots`. An applier
    /// whose state cannot be trusted after a crash (none of this crate's) is rebuilt from
    /// the latest snapshot (or from empty) here; openraft then re-applies the log after it.
    pub fn open(applier: Arc<dyn Applier>, snapshots: SnapshotStore) -> io::Result<StateMachine> {
        let state = if let Some(trusted) = applier.recovered() {
            trusted
        } else if let Some((dir, info)) = snapshots.current()? {
            let from_snapshot = info.applied();
            applier.install(Some(&dir.data()), &from_snapshot)?;
            from_snapshot
        } else {
            applier.install(None, &Applied::default())?;
            Applied::default()
        };
        Ok(StateMachine {
            shared: Arc::new(Shared {
                applier,
                snapshots,
                applied: Mutex::new(state),
            }),
        })
    }

    /// A new directory to receive a snapshot in.
    pub fn scratch(&self) -> io::Result<SnapshotDir> {
        self.shared.snapshots.scratch("incoming")
    }

    /// How far the state goes.
    pub fn applied(&self) -> Applied {
        self.shared.applied.lock().clone()
    }

    /// Applies a batch on the calling (blocking) thread; returns the responses.
    fn apply_batch(&self, batch: Vec<EntryResponder<C>>) -> io::Result<()> {
        let mut applied = self.shared.applied.lock().clone();
        let mut durable = false;
        let mut replies = Vec::new();
        for (entry, responder) in batch {
            let log_id = entry.log_id;
            let response = match entry.payload {
                EntryPayload::Blank => Response::Done,
                EntryPayload::Normal(p) => {
                    applied.time_ms = applied.time_ms.max(p.time_ms());
                    self.shared
                        .applier
                        .apply(log_id, applied.time_ms, p.command())?
                }
                EntryPayload::Membership(m) => {
                    applied.membership = StoredMembership::new(Some(log_id), m);
                    durable = true;
                    Response::Done
                }
            };
            applied.log_id = Some(log_id);
            if let Some(r) = responder {
                replies.push((r, response));
            }
        }
        self.shared.applier.set_applied(&applied, durable)?;
        *self.shared.applied.lock() = applied;
        for (r, response) in replies {
            r.send(response);
        }
        Ok(())
    }

    /// Builds a snapshot of the state. A build that ran out of file descriptors (a copy
    /// holds a few at once) is made again from the start once they are free, for up to
    /// [`descriptors::PATIENCE`]: openraft stops the node on a failed build.
    fn build(&self) -> io::Result<Snap> {
        // The directories of failed attempts, removed when descriptors allow (a removal
        // reads the directory); a restart removes what is left (`SnapshotStore::open`).
        let mut failed: Vec<SnapshotDir> = Vec::new();
        let built = descriptors::retry_io(&"building a snapshot", || {
            failed.retain(|d| std::fs::remove_dir_all(&d.path).is_err() && d.path.exists());
            let scratch = self.shared.snapshots.scratch("tmp")?;
            let built = self.build_in(&scratch);
            if built.is_err() {
                // Gone already if the failure came after it was adopted.
                failed.push(scratch);
            }
            built
        });
        for d in failed {
            let _ = std::fs::remove_dir_all(&d.path);
        }
        built
    }

    fn build_in(&self, scratch: &SnapshotDir) -> io::Result<Snap> {
        let applied = self.shared.applier.checkpoint(&scratch.data())?;
        let info = SnapshotInfo {
            meta: SnapshotMeta {
                last_log_id: applied.log_id,
                last_membership: applied.membership.clone(),
            },
            time_ms: applied.time_ms,
            files: manifest(&scratch.data())?,
        };
        scratch.write_info(&info)?;
        let (dir, info) = self.shared.snapshots.adopt_built(scratch, &info)?;
        Ok(Snapshot {
            meta: info.meta,
            snapshot: dir,
        })
    }
}

/// A snapshot of this state machine.
pub type Snap = openraft::type_config::alias::SnapshotOf<C, SnapshotDir>;

impl RaftSnapshotBuilder<C> for StateMachine {
    type SnapshotData = SnapshotDir;

    async fn build_snapshot(&mut self) -> Result<Snap, io::Error> {
        let sm = self.clone();
        joined(tokio::task::spawn_blocking(move || sm.build()).await)
    }
}

impl RaftStateMachine<C> for StateMachine {
    type SnapshotData = SnapshotDir;
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let a = self.shared.applied.lock();
        Ok((a.log_id, a.membership.clone()))
    }

    async fn apply<S>(&mut self, mut entries: S) -> Result<(), io::Error>
    where
        S: Stream<Item = Result<EntryResponder<C>, io::Error>> + Unpin + OptionalSend,
    {
        let mut batch = Vec::new();
        loop {
            let next = entries.try_next().await?;
            let done = next.is_none();
            if let Some(item) = next {
                batch.push(item);
            }
            if batch.len() >= APPLY_BATCH || (done && !batch.is_empty()) {
                let sm = self.clone();
                let work = std::mem::take(&mut batch);
                joined(tokio::task::spawn_blocking(move || sm.apply_batch(work)).await)?;
            }
            if done {
                return Ok(());
            }
        }
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotDir,
    ) -> Result<(), io::Error> {
        let sm = self.clone();
        let meta = meta.clone();
        joined(
            tokio::task::spawn_blocking(move || {
                let mut info = snapshot.info()?;
                info.meta = meta;
                let current = sm.shared.snapshots.current()?;
                let dir = match current {
                    Some((dir, _)) if dir == snapshot => dir,
                    _ => sm.shared.snapshots.adopt(&snapshot, &info)?,
                };
                let applied = info.applied();
                sm.shared.applier.install(Some(&dir.data()), &applied)?;
                *sm.shared.applied.lock() = applied;
                Ok(())
            })
            .await,
        )
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snap>, io::Error> {
        Ok(self
            .shared
            .snapshots
            .current()?
            .map(|(dir, info)| Snapshot {
                meta: info.meta,
                snapshot: dir,
            }))
    }
}
