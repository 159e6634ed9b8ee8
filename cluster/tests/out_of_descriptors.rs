//! A node whose process runs out of file descriptors for a moment keeps running: its
//! storage calls that found none (saving the vote or the purge point, a Raft log append
//! that starts a segment, a truncation, applying an entry, a snapshot's build, adoption
//! and install) wait for one and go on once descriptors are
//! free, instead of failing, which openraft turns into a stop for good. (The wait of the
//! appends' acknowledgement is tested in `raftlog/ack.rs` on a stand-in log.)
//!
//! Each test takes every descriptor of the process, starts the call, and gives the
//! descriptors back only once the call has paused to wait for one
//! (`descriptors::waits()` moved), so nothing depends on timing. Its own test binary: the
//! descriptor limit is the process's (the tests take turns).

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use logkv::io::Storage;
use logkv::Options;
use logkv_cluster::command::{BucketSpec, Command, Op, Response};
use logkv_cluster::descriptors;
use logkv_cluster::raftlog::{FsyncMode, LogOptions, LogStore};
use logkv_cluster::sm::snapshot::SnapshotStore;
use logkv_cluster::sm::store_applier::StoreApplier;
use logkv_cluster::sm::{Applied, Applier, StateMachine};
use logkv_cluster::testing::{log_id, sample_entry};
use logkv_cluster::types::{Entry, Vote};
use logkv_cluster::Proposal;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::{EntryPayload, RaftLogReader, RaftSnapshotBuilder};
use support::{put, write_retrying, TestCluster};

/// The tests change the process's descriptor limit: one at a time.
static TURN: Mutex<()> = Mutex::new(());

fn turn() -> std::sync::MutexGuard<'static, ()> {
    TURN.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn descriptor_limit() -> libc::rlimit {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the limit into `lim`, which lives across the call.
    let ret = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) };
    assert_eq!(ret, 0, "getrlimit");
    lim
}

fn set_descriptor_limit(lim: &libc::rlimit) {
    // SAFETY: setrlimit reads `lim`, which lives across the call.
    let ret = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, lim) };
    assert_eq!(ret, 0, "setrlimit");
}

/// Every descriptor of the process, taken (the limit lowered to a few more than are open,
/// then filled), until [`Taken::give_back`].
struct Taken {
    files: Vec<std::fs::File>,
    saved: libc::rlimit,
}

impl Taken {
    fn every_descriptor() -> Taken {
        let saved = descriptor_limit();
        let open_now = std::fs::read_dir("/proc/self/fd").expect("fds").count() as u64;
        set_descriptor_limit(&libc::rlimit {
            rlim_cur: (open_now + 16).min(saved.rlim_max),
            rlim_max: saved.rlim_max,
        });
        let mut files = Vec::new();
        let exhausted = loop {
            match std::fs::File::open("/dev/null") {
                Ok(f) => files.push(f),
                Err(e) => break e,
            }
        };
        assert_eq!(exhausted.raw_os_error(), Some(libc::EMFILE), "{exhausted}");
        Taken { files, saved }
    }

    /// The limit first, then the files: a call never finds a few descriptors free and the
    /// next one missing, as it could while the files close one by one.
    fn give_back(self) {
        set_descriptor_limit(&self.saved);
        drop(self.files);
    }
}

/// Runs `f` on a thread of its own with every descriptor of the process taken, and gives
/// them back once a storage call has paused to wait for one (or `f` returned without
/// waiting). Returns what `f` returned and whether a call waited.
fn with_every_descriptor_taken<T: Send>(f: impl FnOnce() -> T + Send) -> (T, bool) {
    let before = descriptors::waits();
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let taken = Taken::every_descriptor();
        let call = s.spawn(|| {
            let out = f();
            done.store(true, Ordering::Release);
            out
        });
        while descriptors::waits() == before && !done.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(1));
        }
        let waited = descriptors::waits() > before;
        taken.give_back();
        (call.join().expect("the call panicked"), waited)
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Appends `entries` and waits for their acknowledgement.
async fn append(log: &mut LogStore, entries: Vec<Entry>) -> std::io::Result<()> {
    use openraft::async_runtime::Oneshot;
    let (tx, rx) = openraft_rt_tokio::TokioOneshot::channel();
    log.append(entries, IOFlushed::signal(tx)).await?;
    rx.await.map_err(std::io::Error::other)?
}

/// Raft log options with segments of 4 KiB: a hundred entries take several.
fn small_segments() -> LogOptions {
    LogOptions {
        segment_size: 4096,
        ..LogOptions::default()
    }
}

/// A Raft log in `dir` with small segments holding the entries 1 to 100 of term 1.
fn log_of_100_entries(dir: &std::path::Path, rt: &tokio::runtime::Runtime) -> LogStore {
    let mut log = LogStore::open(dir, small_segments()).expect("open");
    for i in 1..=100 {
        rt.block_on(append(&mut log, vec![sample_entry(1, i)]))
            .expect("append");
    }
    log
}

/// The vote, saved while the process has no descriptor left (for the temp file, the
/// directory's sync): the save waits for one; before, it failed ("when Write Vote: ...:
/// Too many open files") and the node stopped for good.
#[test]
fn a_vote_saved_with_no_descriptor_left_waits_for_one() {
    let _turn = turn();
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime();
    let mut log = LogStore::open(dir.path(), LogOptions::default()).expect("open");
    let vote = Vote::new(3, 2);
    let (saved, waited) = with_every_descriptor_taken(|| rt.block_on(log.save_vote(&vote)));
    saved.expect("saved once a descriptor was free");
    assert!(waited, "the save waited for a descriptor");
    log.close().expect("close");
    drop(log);
    let mut log = LogStore::open(dir.path(), LogOptions::default()).expect("reopen");
    assert_eq!(rt.block_on(log.read_vote()).expect("vote"), Some(vote));
}

/// The purge point likewise.
#[test]
fn a_purge_point_saved_with_no_descriptor_left_waits_for_one() {
    let _turn = turn();
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime();
    let opts = small_segments;
    let mut log = log_of_100_entries(dir.path(), &rt);
    let (purged, waited) = with_every_descriptor_taken(|| rt.block_on(log.purge(log_id(1, 60))));
    purged.expect("purged once a descriptor was free");
    assert!(waited, "the purge waited for a descriptor");
    log.close().expect("close");
    drop(log);
    let mut log = LogStore::open(dir.path(), opts()).expect("reopen");
    let state = rt.block_on(log.get_log_state()).expect("state");
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 60)));
    let kept = rt
        .block_on(log.try_get_log_entries(0..))
        .expect("entries")
        .len();
    assert_eq!(kept, 40);
}

/// An append that must start a new segment (the entry does not fit in the active one)
/// with no descriptor left to create it: the append waits for one, and the log holds the
/// entries, each once, in order.
#[test]
fn an_append_that_starts_a_segment_with_no_descriptor_left_waits_for_one() {
    let _turn = turn();
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime();
    let opts = || LogOptions {
        fsync: FsyncMode::Always,
        segment_size: 4096,
        ..LogOptions::default()
    };
    let mut log = LogStore::open(dir.path(), opts()).expect("open");
    rt.block_on(append(&mut log, vec![sample_entry(1, 1)]))
        .expect("append");
    // Larger than a segment: the active one is sealed and a new one made for it.
    let large = Entry {
        log_id: log_id(1, 2),
        payload: EntryPayload::Normal(Proposal::new(
            2,
            Command::Sweep {
                bucket: "b".repeat(8 << 10),
            },
        )),
    };
    let (appended, waited) =
        with_every_descriptor_taken(|| rt.block_on(append(&mut log, vec![large.clone()])));
    appended.expect("appended once a descriptor was free");
    assert!(waited, "the append waited for a descriptor");
    rt.block_on(append(&mut log, vec![sample_entry(1, 3)]))
        .expect("the log goes on");
    log.close().expect("close");
    drop(log);
    let mut log = LogStore::open(dir.path(), opts()).expect("reopen");
    let entries = rt.block_on(log.try_get_log_entries(0..)).expect("entries");
    assert_eq!(entries, vec![sample_entry(1, 1), large, sample_entry(1, 3)]);
}

/// An entry whose apply must reopen its bucket's segment file (its store keeps one file
/// open, another bucket's, and the segment is full: the write seals it) with no
/// descriptor left: the apply waits for one, and the write is applied once, with the
/// revision every other node gives it; before, the apply failed and the node stopped.
#[test]
fn an_apply_that_must_reopen_a_segment_with_no_descriptor_left_waits_for_one() {
    let _turn = turn();
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = Options {
        segment_size: 16 << 10,
        storage: Storage::os().with_open_file_limit(1),
        ..Options::default()
    };
    let a = StoreApplier::open(dir.path(), &opts).expect("open");
    let spec = BucketSpec {
        history: 1,
        ttl_ms: 0,
        max_bytes: 0,
        max_value_size: 0,
    };
    let create = Command::CreateBucket {
        bucket: "c".into(),
        config: spec,
    };
    assert_eq!(
        a.apply(log_id(1, 1), 1_000, &create).expect("create"),
        Response::Done
    );
    let value = vec![b'v'; 6 << 10];
    let write_c = |v: Vec<u8>| Command::Write {
        bucket: "c".into(),
        atomic: false,
        ops: vec![Op::put("k", v)],
    };
    for i in 2..=3 {
        a.apply(log_id(1, i), 1_000, &write_c(value.clone()))
            .expect("write c");
    }
    a.apply(log_id(1, 4), 1_000, &put("d", "1"))
        .expect("write default");
    // The capture holds every segment file open, the one the cache keeps included (the
    // default bucket's): no idle file to close for c's, which is not kept.
    let store = a.cell().get();
    let pinned = store.checkpoint_source().expect("capture");
    // The third value does not fit: c's segment is sealed, through its file.
    let (applied, waited) =
        with_every_descriptor_taken(|| a.apply(log_id(1, 5), 1_000, &write_c(value.clone())));
    drop(pinned);
    let applied = applied.expect("applied once a descriptor was free");
    assert!(waited, "the apply waited for a descriptor");
    let Response::Each(results) = applied else {
        panic!("{applied:?}")
    };
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].as_ref().expect("written").revision, 3);
    let c = store.bucket("c").expect("c");
    assert_eq!(c.status().expect("status").last_revision, 3, "written once");
    assert_eq!(c.get("k").expect("get").map(|v| v.len()), Some(value.len()));
}

/// A cut of the Raft log inside a sealed segment (a new leader's entries replace the
/// tail) opens that segment's file again: with no descriptor left the truncation waits for
/// one, and the log ends at the cut, before and after a reopen.
#[test]
fn a_truncation_with_no_descriptor_left_waits_for_one() {
    let _turn = turn();
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime();
    let opts = small_segments;
    let mut log = log_of_100_entries(dir.path(), &rt);
    let (cut, waited) =
        with_every_descriptor_taken(|| rt.block_on(log.truncate_after(Some(log_id(1, 10)))));
    cut.expect("truncated once a descriptor was free");
    assert!(waited, "the truncation waited for a descriptor");
    rt.block_on(append(&mut log, vec![sample_entry(2, 11)]))
        .expect("the log goes on after the cut");
    let expected: Vec<Entry> = (1..=10)
        .map(|i| sample_entry(1, i))
        .chain([sample_entry(2, 11)])
        .collect();
    let entries = rt.block_on(log.try_get_log_entries(0..)).expect("entries");
    assert_eq!(entries, expected);
    log.close().expect("close");
    drop(log);
    let mut log = LogStore::open(dir.path(), opts()).expect("reopen");
    let entries = rt.block_on(log.try_get_log_entries(0..)).expect("entries");
    assert_eq!(entries, expected);
}

/// A snapshot built, then received and installed on another node, each with no descriptor
/// left (the checkpoint's copy and the new store's open need several, making it the one in
/// force a directory sync): each waits for descriptors, a build or an install starting
/// over, and the node that installed it holds the state.
#[test]
fn a_snapshot_built_and_installed_with_no_descriptor_left_waits_for_them() {
    let _turn = turn();
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime();
    let opts = Options::default();
    let source = Arc::new(StoreApplier::open(dir.path().join("a"), &opts).expect("open a"));
    for i in 1..=20 {
        source
            .apply(log_id(1, i), 1_000, &put(&format!("k{i}"), "v"))
            .expect("apply");
    }
    let applied = Applied {
        log_id: Some(log_id(1, 20)),
        time_ms: 1_000,
        ..Applied::default()
    };
    source.set_applied(&applied, false).expect("set applied");
    let snapshots = SnapshotStore::open(dir.path().join("a-snapshots")).expect("snapshots");
    let mut sm = StateMachine::open(source, snapshots).expect("state machine");
    let (built, waited) = with_every_descriptor_taken(|| rt.block_on(sm.build_snapshot()));
    let built = built.expect("built once descriptors were free");
    assert!(waited, "the build waited for descriptors");
    assert_eq!(built.meta.last_log_id, Some(log_id(1, 20)));
    let leftovers: Vec<String> = std::fs::read_dir(dir.path().join("a-snapshots"))
        .expect("snapshot dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "failed attempts left {leftovers:?}");

    // The receiving node makes a snapshot it was sent the one in force, then installs it.
    let received = SnapshotStore::open(dir.path().join("b-snapshots")).expect("snapshots");
    let incoming = received.scratch("incoming").expect("scratch");
    let info = built.snapshot.info().expect("info");
    incoming.write_info(&info).expect("info written");
    let (adopted, waited) = with_every_descriptor_taken(|| received.adopt(&incoming, &info));
    adopted.expect("adopted once a descriptor was free");
    assert!(waited, "the adoption waited for a descriptor");
    let (_, current) = received
        .current()
        .expect("current")
        .expect("a snapshot in force");
    assert_eq!(current.meta.last_log_id, Some(log_id(1, 20)));

    let target = StoreApplier::open(dir.path().join("b"), &opts).expect("open b");
    let data = built.snapshot.data();
    let (installed, waited) = with_every_descriptor_taken(|| target.install(Some(&data), &applied));
    installed.expect("installed once descriptors were free");
    assert!(waited, "the install waited for descriptors");
    let store = target.cell().get();
    let default = store.bucket("default").expect("default");
    for i in 1..=20 {
        assert_eq!(
            default.get(&format!("k{i}")).expect("get").as_deref(),
            Some(&b"v"[..]),
            "k{i}"
        );
    }
}

/// The reviewer's case, on three in-process nodes: every descriptor taken while the
/// leader is cut off, so the others' election must save votes with none left. Once the
/// descriptors are back, no node has stopped and the cluster takes writes.
#[test]
fn an_election_with_no_descriptor_left_stops_no_node() {
    let _turn = turn();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(election_with_no_descriptor_left());
}

async fn election_with_no_descriptor_left() {
    let c = TestCluster::start(3, 100_000).await;
    let leader = c.leader().await;
    write_retrying(c.node(leader), put("before", "1")).await;
    let others: Vec<u64> = c.nodes.keys().copied().filter(|id| *id != leader).collect();
    let before = descriptors::waits();
    let taken = Taken::every_descriptor();
    c.net.partition(&[leader], &others);
    // Until a vote save waits for a descriptor (or, without the waits, a node stops).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while descriptors::waits() == before
        && c.nodes.values().all(|n| n.failure().is_none())
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let waited = descriptors::waits() > before;
    taken.give_back();
    c.net.heal();
    for n in c.nodes.values() {
        assert_eq!(n.failure(), None, "node {}", n.id());
    }
    assert!(waited, "an election saved a vote with no descriptor left");
    let now = c.leader().await;
    write_retrying(c.node(now), put("after", "2")).await;
    c.converge().await;
    for n in c.nodes.values() {
        assert_eq!(n.failure(), None, "node {}", n.id());
    }
    c.shutdown().await;
}
