//! Power cuts on the Raft log: its files sit on the engine's simulated page cache
//! (`logkv::io::SimFs`, feature `failpoints`), which at a cut loses, keeps or tears every
//! write not yet synced and may undo unsynced directory changes.
//!
//! Each run appends entries (term 1), truncates back to a random index (the cut itself
//! sometimes hit by the power cut), appends replacements (term 2), some acknowledged and
//! some not, sometimes purges a prefix (the purge sometimes hit by the power cut), and cuts
//! the power. After the restart the log must hold every acknowledged entry past the purge
//! point, no truncated entry once the truncate returned, a prefix of what was not
//! acknowledged, and no gap (the first entry follows the purge point); the vote must be the
//! one saved; and the log must go on.
//!
//! `LOGKV_SIM_RUNS` sets the number of runs (default 40); the seed of a failure is printed.

use std::io;

use logkv::io::{SimFs, Storage};
use logkv_cluster::raftlog::{FsyncMode, LogOptions, LogStore};
use logkv_cluster::testing::{log_id as id, sample_entry as entry};
use logkv_cluster::types::{Entry, Vote};
use openraft::async_runtime::Oneshot;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::RaftLogReader;

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

fn options(storage: &Storage) -> LogOptions {
    LogOptions {
        fsync: FsyncMode::Always,
        segment_size: 4096,
        storage: storage.clone(),
    }
}

/// Appends and waits for the acknowledgement (the entries are durable when it returns).
async fn append_acked(log: &mut LogStore, entries: Vec<Entry>) -> io::Result<()> {
    let (tx, rx) = openraft_rt_tokio::TokioOneshot::channel();
    log.append(entries, IOFlushed::signal(tx)).await?;
    rx.await.map_err(io::Error::other)?
}

/// Appends without waiting for the acknowledgement.
async fn append_unacked(log: &mut LogStore, entries: Vec<Entry>) -> io::Result<()> {
    let (tx, _rx) = openraft_rt_tokio::TokioOneshot::channel();
    log.append(entries, IOFlushed::signal(tx)).await
}

async fn contents(log: &mut LogStore) -> Vec<(u64, u64)> {
    log.try_get_log_entries(0..)
        .await
        .expect("read the log")
        .iter()
        .map(|e| (e.log_id.index, e.log_id.leader_id.term))
        .collect()
}

/// Appends `from..to` of `term` in batches of 1 to 5, acknowledged.
async fn fill(log: &mut LogStore, rng: &mut Rng, term: u64, from: u64, to: u64) {
    let mut at = from;
    while at < to {
        let n = (1 + rng.below(5)).min(to - at);
        let batch = (at..at + n).map(|i| entry(term, i)).collect();
        append_acked(log, batch).await.expect("append");
        at += n;
    }
}

/// One run: see the module documentation.
async fn run(seed: u64) {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let root = tempfile::tempdir().expect("tempdir");
    let sim = SimFs::new(root.path(), seed).expect("sim");
    let storage = Storage::simulated(&sim);
    let dir = sim.root().join("raft");
    let mut log = LogStore::open(&dir, options(&storage)).expect("open");
    let first_len = 30 + rng.below(90);
    fill(&mut log, &mut rng, 1, 0, first_len).await;
    let vote = Vote::new(2, 1);
    log.save_vote(&vote).await.expect("vote");
    let keep = rng.below(first_len);
    // The power may go during the truncate.
    let cut_inside = rng.below(3) == 0;
    if cut_inside {
        sim.crash_after(rng.below(8));
    }
    let truncated = log.truncate_after(Some(id(1, keep))).await.is_ok();
    // Expected after the restart: what must be there, then what may be (in order).
    let mut must: Vec<(u64, u64)> = (0..=keep).map(|i| (i, 1)).collect();
    let mut may: Vec<(u64, u64)> = Vec::new();
    if !truncated {
        // A truncate cut short may leave a prefix of what it was cutting.
        may = (keep + 1..first_len).map(|i| (i, 1)).collect();
    } else if !cut_inside && rng.below(3) > 0 {
        let acked = rng.below(20);
        fill(&mut log, &mut rng, 2, keep + 1, keep + 1 + acked).await;
        must.extend((keep + 1..keep + 1 + acked).map(|i| (i, 2)));
        let unacked = rng.below(4);
        let from = keep + 1 + acked;
        append_unacked(
            &mut log,
            (from..from + unacked).map(|i| entry(2, i)).collect(),
        )
        .await
        .expect("append");
        may = (from..from + unacked).map(|i| (i, 2)).collect();
    }
    // A purge of acknowledged entries, the power sometimes going during it.
    let mut purged = None;
    if !cut_inside && rng.below(3) == 0 {
        let upto = id(1, rng.below(keep + 1));
        let cut_purge = rng.below(2) == 0;
        if cut_purge {
            sim.crash_after(rng.below(8));
        }
        let done = log.purge(upto).await.is_ok();
        purged = (done || cut_purge).then_some((upto, done));
    }
    sim.crash_now();
    drop(log);
    sim.restart().expect("restart");

    let mut log = LogStore::open(&dir, options(&storage)).expect("reopen after the power cut");
    let state = log.get_log_state().await.expect("log state");
    match purged {
        Some((upto, true)) => assert_eq!(state.last_purged_log_id, Some(upto), "seed {seed}"),
        Some((upto, false)) => assert!(
            state.last_purged_log_id.is_none_or(|p| p == upto),
            "seed {seed}: {state:?}"
        ),
        None => assert_eq!(state.last_purged_log_id, None, "seed {seed}"),
    }
    if let Some(p) = state.last_purged_log_id {
        must.retain(|(i, _)| *i > p.index);
        may.retain(|(i, _)| *i > p.index);
    }
    let got = contents(&mut log).await;
    if let (Some(p), Some(first)) = (state.last_purged_log_id, got.first()) {
        assert_eq!(
            first.0,
            p.index + 1,
            "seed {seed}: a gap after the purge point"
        );
    }
    assert!(
        got.len() >= must.len() && got[..must.len()] == must[..],
        "seed {seed}: an acknowledged entry is missing or changed (kept {keep}, truncated {truncated}): {got:?}"
    );
    let rest = &got[must.len()..];
    assert!(
        rest.len() <= may.len() && rest == &may[..rest.len()],
        "seed {seed}: after the acknowledged entries, {rest:?} is not a prefix of {may:?} \
         (a truncated entry came back, or a gap)"
    );
    assert_eq!(
        log.read_vote().await.expect("vote"),
        Some(vote),
        "seed {seed}"
    );
    // The log goes on from where it is.
    let next = got.last().map_or_else(
        || state.last_purged_log_id.map_or(0, |p| p.index + 1),
        |(i, _)| i + 1,
    );
    append_acked(&mut log, vec![entry(3, next)])
        .await
        .expect("append after the restart");
    log.close().expect("close");
    drop(log);
    let mut log = LogStore::open(&dir, options(&storage)).expect("reopen");
    let again = contents(&mut log).await;
    assert_eq!(again.last(), Some(&(next, 3)), "seed {seed}");
    assert_eq!(again.len(), got.len() + 1, "seed {seed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cuts_after_truncates_and_appends_keep_every_acknowledged_entry() {
    let runs: u64 = std::env::var("LOGKV_SIM_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    for seed in 0..runs {
        run(seed).await;
    }
}
