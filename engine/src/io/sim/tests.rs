//! Tests of the simulated page cache.

use std::fs;

use super::*;
use crate::io::Storage;

fn setup(seed: u64) -> (tempfile::TempDir, SimFs, Storage) {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimFs::new(dir.path(), seed).unwrap();
    let storage = Storage::simulated(&sim);
    (dir, sim, storage)
}

#[test]
fn synced_data_survives_every_power_cut() {
    for seed in 0..50 {
        let (_d, sim, st) = setup(seed);
        let root = sim.root();
        st.sync_dir(&root).unwrap();
        let f = st.open(&root.join("a"), OpenMode::Create).unwrap();
        f.write_all_at(b"hello", 0).unwrap();
        f.sync_data().unwrap();
        st.sync_dir(&root).unwrap();
        f.write_all_at(b"world", 5).unwrap();
        drop(f);
        sim.restart().unwrap();
        let got = fs::read(root.join("a")).unwrap();
        assert!(got.starts_with(b"hello"), "seed {seed}: {got:?}");
        assert!(got.len() == 5 || got.len() == 10, "seed {seed}: {got:?}");
    }
}

#[test]
fn unsynced_writes_are_lost_kept_or_torn() {
    let mut seen = std::collections::HashSet::new();
    for seed in 0..200 {
        let (_d, sim, st) = setup(seed);
        let root = sim.root();
        let f = st.open(&root.join("a"), OpenMode::Create).unwrap();
        f.write_all_at(&[0; 16], 0).unwrap();
        f.sync_data().unwrap();
        st.sync_dir(&root).unwrap();
        f.write_all_at(&[7; 16], 0).unwrap();
        drop(f);
        sim.restart().unwrap();
        let got = fs::read(root.join("a")).unwrap();
        assert_eq!(got.len(), 16);
        let sevens = got.iter().take_while(|&&b| b == 7).count();
        assert!(
            got[sevens..].iter().all(|&b| b == 0),
            "seed {seed}: {got:?}"
        );
        seen.insert(sevens);
    }
    assert!(seen.contains(&0) && seen.contains(&16), "{seen:?}");
    assert!(seen.len() > 3, "no torn writes seen: {seen:?}");
}

#[test]
fn a_file_not_synced_into_its_directory_may_vanish() {
    let mut outcomes = std::collections::HashSet::new();
    for seed in 0..64 {
        let (_d, sim, st) = setup(seed);
        let root = sim.root();
        let f = st.open(&root.join("new"), OpenMode::Create).unwrap();
        f.write_all_at(b"x", 0).unwrap();
        f.sync_all().unwrap();
        drop(f);
        sim.restart().unwrap();
        outcomes.insert(root.join("new").exists());
    }
    assert_eq!(
        outcomes.len(),
        2,
        "the entry should sometimes survive, sometimes not"
    );
}

#[test]
fn an_unsynced_rename_may_be_undone_but_never_loses_the_file() {
    let mut outcomes = std::collections::HashSet::new();
    for seed in 0..64 {
        let (_d, sim, st) = setup(seed);
        let root = sim.root();
        let f = st.open(&root.join("tmp"), OpenMode::Create).unwrap();
        f.write_all_at(b"data", 0).unwrap();
        f.sync_all().unwrap();
        st.sync_dir(&root).unwrap();
        st.rename(&root.join("tmp"), &root.join("final")).unwrap();
        drop(f);
        sim.restart().unwrap();
        let tmp = root.join("tmp").exists();
        let fin = root.join("final").exists();
        assert!(tmp != fin, "seed {seed}: exactly one name survives");
        let name = if fin { "final" } else { "tmp" };
        assert_eq!(fs::read(root.join(name)).unwrap(), b"data");
        outcomes.insert(fin);
    }
    assert_eq!(outcomes.len(), 2);
}

#[test]
fn a_removed_directory_comes_back_unless_its_parent_was_synced() {
    for synced in [false, true] {
        let (_d, sim, st) = setup(3);
        let root = sim.root();
        let sub = root.join("sub");
        st.create_dir(&sub).unwrap();
        let f = st.open(&sub.join("f"), OpenMode::Create).unwrap();
        f.write_all_at(b"kept", 0).unwrap();
        f.sync_all().unwrap();
        st.sync_dir(&sub).unwrap();
        st.sync_dir(&root).unwrap();
        drop(f);
        st.rename(&sub, &root.join("doomed")).unwrap();
        st.remove_dir_all(&root.join("doomed")).unwrap();
        if synced {
            st.sync_dir(&root).unwrap();
        }
        sim.crash_now();
        sim.restart().unwrap();
        if synced {
            assert!(!sub.exists() && !root.join("doomed").exists());
        } else if sub.exists() {
            assert_eq!(fs::read(sub.join("f")).unwrap(), b"kept");
        }
    }
}

#[test]
fn a_failed_sync_is_not_repaired_by_the_next_one() {
    let mut lost = 0;
    for seed in 0..64 {
        let (_d, sim, st) = setup(seed);
        let root = sim.root();
        let f = st.open(&root.join("a"), OpenMode::Create).unwrap();
        f.write_all_at(&[0; 8], 0).unwrap();
        f.sync_data().unwrap();
        st.sync_dir(&root).unwrap();
        f.write_all_at(&[9; 8], 0).unwrap();
        sim.set_faults(SimFaults {
            sync_error_one_in: 1,
            write_error_one_in: 0,
        });
        assert!(f.sync_data().is_err());
        sim.set_faults(SimFaults::default());
        f.sync_data().unwrap(); // reports success, as Linux does
        drop(f);
        sim.restart().unwrap();
        if fs::read(root.join("a")).unwrap() != [9; 8] {
            lost += 1;
        }
    }
    assert!(
        lost > 0,
        "a failed sync should sometimes lose the data for good"
    );
}

#[test]
fn after_the_cut_nothing_changes_the_files() {
    let (_d, sim, st) = setup(1);
    let root = sim.root();
    let f = st.open(&root.join("a"), OpenMode::Create).unwrap();
    sim.crash_after(1);
    f.write_all_at(b"one", 0).unwrap();
    assert!(f.write_all_at(b"two", 3).is_err());
    assert!(sim.is_crashed());
    assert!(f.sync_data().is_err());
    assert_eq!(fs::read(root.join("a")).unwrap(), b"one");
}
