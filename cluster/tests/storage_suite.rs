//! openraft's own conformance suite for a log store and a state machine, run on the real
//! Raft log and the state machine over a `logkv::Store`, each case in fresh directories.

use std::sync::Arc;

use logkv_cluster::raftlog::{FsyncMode, LogOptions, LogStore};
use logkv_cluster::sm::snapshot::SnapshotStore;
use logkv_cluster::sm::store_applier::StoreApplier;
use logkv_cluster::sm::StateMachine;
use logkv_cluster::TypeConfig;
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::StorageError;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = LogStore::open(
            dir.path().join("raft"),
            LogOptions {
                fsync: FsyncMode::Always,
                segment_size: 1 << 16,
                ..LogOptions::default()
            },
        )
        .expect("open log");
        let applier =
            StoreApplier::open(dir.path().join("sm"), &logkv::Options::default()).expect("open sm");
        let snapshots = SnapshotStore::open(dir.path().join("snapshots")).expect("snapshots");
        let sm = StateMachine::open(Arc::new(applier), snapshots).expect("state machine");
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_and_state_machine_pass_openraft_suite() {
    Suite::test_all(Builder)
        .await
        .expect("openraft storage suite");
}
