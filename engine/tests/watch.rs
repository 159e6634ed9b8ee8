//! Watches: options, patterns, resume, loss after compaction, expiry, and
//! exactly-once delivery with writers running while the watch starts.

use std::time::Duration;

use logkv::{
    Bucket, BucketConfig, Error, FsyncPolicy, ManualClock, Op, Options, Store, Watch, WatchEvent,
    WatchOptions,
};

fn opts() -> Options {
    Options {
        background: false,
        fsync: FsyncPolicy::Never,
        segment_size: 16 * 1024,
        ..Default::default()
    }
}

/// Events until the watch has nothing more right now.
fn drain(w: &mut Watch) -> Vec<WatchEvent> {
    let mut out = Vec::new();
    while let Some(ev) = w.try_next().unwrap() {
        out.push(ev);
    }
    out
}

/// `(key, revision, op, delta)` of entry events; `Ready` as ("READY", 0, ..).
fn summary(events: &[WatchEvent]) -> Vec<(String, u64, Op, u64)> {
    events
        .iter()
        .map(|e| match e {
            WatchEvent::Entry(e) => (e.key.clone(), e.revision, e.op, e.delta),
            WatchEvent::Ready => ("READY".into(), 0, Op::Put, 0),
            WatchEvent::Lost { first_retained } => ("LOST".into(), *first_retained, Op::Put, 0),
        })
        .collect()
}

fn setup(history: u8) -> (tempfile::TempDir, Store, Bucket) {
    setup_with(BucketConfig {
        history,
        ..Default::default()
    })
}

/// A store in a new directory with one bucket, "w", configured as `config`.
fn setup_with(config: BucketConfig) -> (tempfile::TempDir, Store, Bucket) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), opts()).unwrap();
    let b = store.create_bucket("w", config).unwrap();
    (dir, store, b)
}

#[test]
fn initial_latest_values_then_ready_then_live() {
    let (_d, _s, b) = setup(3);
    b.put("a.1", "x").unwrap(); // 1
    b.put("a.2", "y").unwrap(); // 2
    b.put("a.1", "z").unwrap(); // 3
    b.delete("a.2").unwrap(); // 4
    b.put("b.1", "other").unwrap(); // 5
    let mut w = b.watch("a.*", WatchOptions::default()).unwrap();
    let ev = drain(&mut w);
    assert_eq!(
        summary(&ev),
        vec![
            ("a.1".into(), 3, Op::Put, 1),
            ("a.2".into(), 4, Op::Del, 0),
            ("READY".into(), 0, Op::Put, 0)
        ]
    );
    match &ev[0] {
        WatchEvent::Entry(e) => assert_eq!(e.value, "z"),
        other => panic!("{other:?}"),
    }
    b.put("a.3", "new").unwrap(); // 6
    b.put("b.2", "no").unwrap(); // 7
    b.purge("a.1").unwrap(); // 8
    assert_eq!(
        summary(&drain(&mut w)),
        vec![
            ("a.3".into(), 6, Op::Put, 0),
            ("a.1".into(), 8, Op::Purge, 0)
        ]
    );
}

#[test]
fn initial_bytes_are_what_the_undelivered_initial_entries_hold() {
    let (_d, _s, b) = setup(1);
    for i in 0..1000 {
        b.put(&format!("k.{i:04}"), "v").unwrap();
    }
    let mut w = b.watch(">", WatchOptions::default()).unwrap();
    let full = w.initial_bytes();
    // Each of the 1,000 keys: its 6 bytes and an entry of a list, no value.
    assert!((1000 * 30..1000 * 200).contains(&full), "{full}");
    for _ in 0..500 {
        w.try_next().unwrap().unwrap();
    }
    let half = w.initial_bytes();
    assert!(half < full && half >= full - 500 * 6, "{half} of {full}");
    drain(&mut w);
    assert_eq!(w.initial_bytes(), 0);
    // Updates only: no initial data.
    let updates = WatchOptions {
        updates_only: true,
        ..Default::default()
    };
    let live = b.watch(">", updates).unwrap();
    assert_eq!(live.initial_bytes(), 0);
}

#[test]
fn a_watch_whose_initial_list_passes_its_limit_is_refused() {
    let (_d, _s, b) = setup(1);
    for i in 0..100 {
        b.put(&format!("k.{i:03}"), "v").unwrap();
    }
    let limited = |max: usize| WatchOptions {
        max_initial_bytes: Some(max),
        ..Default::default()
    };
    let whole = b
        .watch(">", WatchOptions::default())
        .unwrap()
        .initial_bytes();
    match b.watch(">", limited(1000)) {
        Err(Error::WatchTooLarge { bytes, max: 1000 }) => assert!(bytes > 1000, "{bytes}"),
        other => panic!("{other:?}"),
    }
    // Within the limit (the list's spare room is not counted against it), a narrower
    // pattern, and updates only all start.
    let mut w = b.watch(">", limited(whole)).unwrap();
    assert_eq!(drain(&mut w).len(), 101);
    assert!(b.watch("k.001", limited(1000)).is_ok());
    let updates = WatchOptions {
        updates_only: true,
        ..limited(0)
    };
    assert!(b.watch(">", updates).is_ok());
}

#[test]
fn options_alone_and_combined() {
    let (_d, _s, b) = setup(5);
    b.put("k", "1").unwrap(); // 1
    b.put("k", "2").unwrap(); // 2
    b.delete("k").unwrap(); // 3
    b.put("j", "j1").unwrap(); // 4

    let mut hist = b
        .watch(
            ">",
            WatchOptions {
                include_history: true,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(
        summary(&drain(&mut hist))
            .iter()
            .map(|s| (s.1, s.3))
            .collect::<Vec<_>>(),
        vec![(1, 3), (2, 2), (3, 1), (4, 0), (0, 0)]
    );

    let mut nodel = b
        .watch(
            ">",
            WatchOptions {
                ignore_deletes: true,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(
        summary(&drain(&mut nodel)),
        vec![("j".into(), 4, Op::Put, 0), ("READY".into(), 0, Op::Put, 0)]
    );

    let mut meta = b
        .watch(
            "j",
            WatchOptions {
                meta_only: true,
                ..Default::default()
            },
        )
        .unwrap();
    match drain(&mut meta).first() {
        Some(WatchEvent::Entry(e)) => {
            assert_eq!(e.key, "j");
            assert!(e.value.is_empty(), "meta only has no value");
            assert!(e.created_ms > 0);
        }
        other => panic!("{other:?}"),
    }

    let mut upd = b
        .watch(
            ">",
            WatchOptions {
                updates_only: true,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(
        summary(&drain(&mut upd)),
        vec![("READY".into(), 0, Op::Put, 0)]
    );

    let mut combo = b
        .watch(
            ">",
            WatchOptions {
                include_history: true,
                ignore_deletes: true,
                meta_only: true,
                ..Default::default()
            },
        )
        .unwrap();
    let ev = drain(&mut combo);
    assert_eq!(
        ev.iter()
            .filter(|e| matches!(e, WatchEvent::Entry(_)))
            .count(),
        3
    );
    assert!(ev.iter().all(|e| match e {
        WatchEvent::Entry(e) => e.value.is_empty() && e.op == Op::Put,
        _ => true,
    }));

    b.put("k", "3").unwrap(); // 5
    b.delete("j").unwrap(); // 6
    assert_eq!(
        summary(&drain(&mut upd)),
        vec![("k".into(), 5, Op::Put, 0), ("j".into(), 6, Op::Del, 0)]
    );
    assert_eq!(
        summary(&drain(&mut nodel)),
        vec![("k".into(), 5, Op::Put, 0)]
    );
    let live = drain(&mut meta);
    assert_eq!(summary(&live), vec![("j".into(), 6, Op::Del, 0)]);
}

#[test]
fn pattern_rules() {
    let (_d, _s, b) = setup(1);
    let mut star = b
        .watch(
            "a.*",
            WatchOptions {
                updates_only: true,
                ..Default::default()
            },
        )
        .unwrap();
    let mut tail = b
        .watch(
            "a.>",
            WatchOptions {
                updates_only: true,
                ..Default::default()
            },
        )
        .unwrap();
    let mut exact = b
        .watch(
            "a",
            WatchOptions {
                updates_only: true,
                ..Default::default()
            },
        )
        .unwrap();
    for k in ["a", "a.b", "a.b.c", "ab", "b.a"] {
        b.put(k, "v").unwrap();
    }
    let keys = |w: &mut Watch| -> Vec<String> {
        drain(w)
            .into_iter()
            .filter_map(|e| match e {
                WatchEvent::Entry(e) => Some(e.key),
                _ => None,
            })
            .collect()
    };
    assert_eq!(keys(&mut star), vec!["a.b"]);
    assert_eq!(keys(&mut tail), vec!["a.b", "a.b.c"]);
    assert_eq!(keys(&mut exact), vec!["a"]);
    assert!(matches!(
        b.watch("a.>.b", WatchOptions::default()),
        Err(Error::BadKey(_))
    ));
}

#[test]
fn resume_from_revision_has_no_gap() {
    let (_d, _s, b) = setup(10);
    for i in 0..5 {
        b.put(&format!("x.{i}"), "v").unwrap();
    }
    let mut w = b.watch("x.>", WatchOptions::default()).unwrap();
    let mut seen: Vec<u64> = Vec::new();
    for ev in drain(&mut w) {
        if let WatchEvent::Entry(e) = ev {
            seen.push(e.revision);
        }
    }
    b.put("x.5", "v").unwrap();
    if let Some(WatchEvent::Entry(e)) = w.try_next().unwrap() {
        seen.push(e.revision);
    }
    drop(w); // disconnect
    for i in 6..10 {
        b.put(&format!("x.{i}"), "v").unwrap();
    }
    let last = *seen.last().unwrap();
    let mut w = b
        .watch(
            "x.>",
            WatchOptions {
                from_revision: Some(last + 1),
                ..Default::default()
            },
        )
        .unwrap();
    b.put("x.10", "live").unwrap();
    for ev in drain(&mut w) {
        if let WatchEvent::Entry(e) = ev {
            assert_eq!(e.delta, 0, "resumed entries are not initial data");
            seen.push(e.revision);
        }
    }
    assert_eq!(seen, (1..=11).collect::<Vec<u64>>());
}

#[test]
fn slow_watcher_gets_lost_after_compaction() {
    let (_d, _s, b) = setup(1);
    b.put("k.0", "v").unwrap();
    let mut w = b.watch(">", WatchOptions::default()).unwrap();
    assert_eq!(drain(&mut w).len(), 2);
    for round in 0..20u32 {
        for k in 0..50u32 {
            b.put(&format!("k.{k}"), format!("{round}-{}", "p".repeat(100)))
                .unwrap();
        }
    }
    // The watcher has not read anything of that; compaction drops most of it.
    b.compact().unwrap();
    let mut got = Vec::new();
    loop {
        match w.try_next() {
            Ok(Some(ev)) => got.push(ev),
            Ok(None) => panic!("the watch should end with Lost, got {} events", got.len()),
            Err(Error::Closed) => break,
            Err(e) => panic!("{e}"),
        }
    }
    let last = got.last().unwrap();
    assert!(
        matches!(last, WatchEvent::Lost { first_retained } if *first_retained > 2),
        "{last:?}"
    );
    // Revisions before the loss arrived in order without gaps.
    let revs: Vec<u64> = got
        .iter()
        .filter_map(|e| match e {
            WatchEvent::Entry(e) => Some(e.revision),
            _ => None,
        })
        .collect();
    assert!(revs.windows(2).all(|w| w[1] == w[0] + 1));
}

#[test]
fn expiry_is_seen_as_a_delete() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000_000);
    let store = Store::open(
        dir.path(),
        Options {
            clock: std::sync::Arc::new(clock.clone()),
            ..opts()
        },
    )
    .unwrap();
    let b = store.default_bucket().unwrap();
    b.put_with_ttl("session", "s", Duration::from_millis(500))
        .unwrap();
    let mut w = b
        .watch(
            "session",
            WatchOptions {
                updates_only: true,
                ..Default::default()
            },
        )
        .unwrap();
    drain(&mut w);
    clock.advance(501);
    assert_eq!(b.sweep_expired().unwrap(), 1);
    assert_eq!(
        summary(&drain(&mut w)),
        vec![("session".into(), 2, Op::Del, 0)]
    );
}

#[test]
fn blocking_receive_and_timeout() {
    let (_d, _s, b) = setup(1);
    let mut w = b.watch(">", WatchOptions::default()).unwrap();
    assert_eq!(w.recv().unwrap(), WatchEvent::Ready);
    assert_eq!(w.recv_timeout(Duration::from_millis(20)).unwrap(), None);
    let writer = {
        let b = b.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            b.put("late", "v").unwrap()
        })
    };
    match w.recv().unwrap() {
        WatchEvent::Entry(e) => assert_eq!(e.key, "late"),
        other => panic!("{other:?}"),
    }
    writer.join().unwrap();
}

#[test]
fn dropped_bucket_ends_its_watches() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), opts()).unwrap();
    let b = store
        .create_bucket("gone", BucketConfig::default())
        .unwrap();
    let mut w = b.watch(">", WatchOptions::default()).unwrap();
    assert_eq!(w.recv().unwrap(), WatchEvent::Ready);
    let waiter = std::thread::spawn(move || w.recv());
    std::thread::sleep(Duration::from_millis(20));
    store.drop_bucket("gone").unwrap();
    assert!(matches!(waiter.join().unwrap(), Err(Error::Closed)));
}

/// Every revision matching the pattern arrives exactly once, ascending, even
/// with writers running while watches start.
#[test]
fn exactly_once_with_concurrent_writers() {
    const WRITERS: u64 = 3;
    const PER: u64 = 1500;
    let (_d, _s, b) = setup(64);
    let writers: Vec<_> = (0..WRITERS)
        .map(|t| {
            let b = b.clone();
            std::thread::spawn(move || {
                for i in 0..PER {
                    let key = format!(
                        "{}.{}",
                        if i % 3 == 0 { "skip" } else { "m" },
                        (t * PER + i) % 97
                    );
                    if i % 10 == 9 {
                        b.delete(&key).unwrap();
                    } else {
                        b.put(&key, format!("{t}-{i}")).unwrap();
                    }
                }
            })
        })
        .collect();
    // Start watches while the writers run, a few at different moments.
    let mut watches = Vec::new();
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(3));
        watches.push(
            b.watch(
                "m.*",
                WatchOptions {
                    include_history: true,
                    ..Default::default()
                },
            )
            .unwrap(),
        );
    }
    for w in writers {
        w.join().unwrap();
    }
    let total = b.status().unwrap().last_revision;
    assert_eq!(total, WRITERS * PER);
    let history = b.history("m.*").unwrap();
    for mut w in watches {
        let mut revs = Vec::new();
        let mut ready = false;
        loop {
            match w.recv_timeout(Duration::from_millis(200)).unwrap() {
                Some(WatchEvent::Entry(e)) => {
                    assert!(e.key.starts_with("m."), "{}", e.key);
                    revs.push(e.revision);
                }
                Some(WatchEvent::Ready) => ready = true,
                Some(WatchEvent::Lost { .. }) => panic!("lost"),
                None => break,
            }
        }
        assert!(ready);
        assert!(
            revs.windows(2).all(|p| p[0] < p[1]),
            "ascending, no duplicates"
        );
        // Everything retained at the start plus everything after: in particular
        // every matching revision still in history now was delivered.
        for e in &history {
            assert!(
                revs.binary_search(&e.revision).is_ok(),
                "revision {} missing",
                e.revision
            );
        }
        // And after the first delivered revision, no matching write was skipped.
        let first = revs[0];
        let after: Vec<u64> = b
            .history("m.*")
            .unwrap()
            .iter()
            .map(|e| e.revision)
            .filter(|r| *r >= first)
            .collect();
        assert!(after.iter().all(|r| revs.contains(r)));
    }
}

/// Events until the watch has nothing more right now, or has ended, read
/// borrowed and copied out.
fn drain_ref(w: &mut Watch) -> Vec<WatchEvent> {
    let mut out = Vec::new();
    loop {
        match w.try_next_ref() {
            Ok(Some(ev)) => out.push(ev.to_event()),
            Ok(None) | Err(Error::Closed) => return out,
            Err(e) => panic!("{e}"),
        }
    }
}

/// As [`drain`], but stops at the end of the watch instead of failing.
fn drain_to_end(w: &mut Watch) -> Vec<WatchEvent> {
    let mut out = Vec::new();
    loop {
        match w.try_next() {
            Ok(Some(ev)) => out.push(ev),
            Ok(None) | Err(Error::Closed) => return out,
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn borrowed_events_are_the_owned_ones() {
    // A bucket TTL, so that entries carry an expiry.
    let (_d, _s, b) = setup_with(BucketConfig {
        history: 2,
        ttl: Some(Duration::from_secs(60)),
        ..Default::default()
    });
    for k in 0..20u32 {
        b.put(&format!("a.{k}"), format!("first-{k}")).unwrap();
    }
    b.delete("a.3").unwrap();
    let variants = [
        WatchOptions::default(),
        WatchOptions {
            include_history: true,
            ..Default::default()
        },
        WatchOptions {
            meta_only: true,
            ..Default::default()
        },
        WatchOptions {
            from_revision: Some(5),
            ignore_deletes: true,
            ..Default::default()
        },
    ];
    let mut pairs: Vec<(Watch, Watch)> = variants
        .iter()
        .map(|o| {
            (
                b.watch("a.>", o.clone()).unwrap(),
                b.watch("a.>", o.clone()).unwrap(),
            )
        })
        .collect();
    let mut seen = vec![0usize; pairs.len()];
    // Live writes across several segments (16 KiB each), with deletes and
    // purges and one key outside the pattern, read in between.
    for round in 0..6u32 {
        for k in 0..40u32 {
            b.put(&format!("a.{k}"), format!("{round}-{}", "v".repeat(200)))
                .unwrap();
        }
        b.delete("a.1").unwrap();
        b.purge("a.2").unwrap();
        b.put("b.1", "outside").unwrap();
        for (i, (owned, borrowed)) in pairs.iter_mut().enumerate() {
            let a = drain(owned);
            assert_eq!(a, drain_ref(borrowed), "variant {i}, round {round}");
            seen[i] += a.len();
        }
    }
    assert!(seen.iter().all(|&n| n > 6 * 40), "{seen:?}");
    // Compaction removes records the watches have not read: both end alike.
    overwrite_and_compact(&b);
    for (i, (owned, borrowed)) in pairs.iter_mut().enumerate() {
        let a = drain_to_end(owned);
        assert!(
            matches!(a.last(), Some(WatchEvent::Lost { .. })),
            "variant {i}: {:?}",
            a.last()
        );
        assert_eq!(a, drain_ref(borrowed), "variant {i} after compaction");
    }
}

#[test]
fn a_step_one_watch_took_is_what_another_would_read() {
    let config = BucketConfig {
        history: 2,
        ttl: Some(Duration::from_secs(60)),
        ..Default::default()
    };
    let (_d, store, b) = setup_with(config);
    // A twin bucket given the same writes: its watches stand at the same marks as `b`'s,
    // so only the bucket tells them apart.
    let twin = store.create_bucket("twin", config).unwrap();
    let both = [&b, &twin];
    for k in 0..10u32 {
        for x in both {
            x.put(&format!("a.{k}"), format!("first-{k}")).unwrap();
        }
    }
    let variants = [
        WatchOptions::default(),
        WatchOptions {
            meta_only: true,
            ..Default::default()
        },
        WatchOptions {
            ignore_deletes: true,
            include_history: true,
            ..Default::default()
        },
    ];
    for (i, o) in variants.iter().enumerate() {
        let watch = |pattern: &str| b.watch(pattern, o.clone()).unwrap();
        // Two watches that take turns leading, and one that always reads for itself.
        let (mut first, mut second, mut control) = (watch("a.>"), watch("a.>"), watch("a.>"));
        assert_eq!(
            first.mark(),
            None,
            "variant {i}: not live before its initial data"
        );
        let initial = drain(&mut control);
        assert_eq!(drain(&mut first), initial);
        assert_eq!(drain(&mut second), initial);
        // Watches that read differently, or another bucket, may not take the step, though
        // they stand at the same mark.
        let flipped = |change: fn(&mut WatchOptions)| {
            let mut o = o.clone();
            change(&mut o);
            b.watch("a.>", o).unwrap()
        };
        let mut others = [
            watch("a.1"),
            flipped(|o| o.meta_only = !o.meta_only),
            flipped(|o| o.ignore_deletes = !o.ignore_deletes),
            twin.watch("a.>", o.clone()).unwrap(),
        ];
        let mut behind = watch("a.>");
        for w in others.iter_mut().chain([&mut behind]) {
            drain(w);
        }
        let mut behind_control = watch("a.>");
        drain(&mut behind_control);
        // Live writes across several segments (16 KiB each), with deletes, purges and a
        // key outside the pattern.
        for round in 0..8u32 {
            for x in both {
                for k in 0..30u32 {
                    x.put(&format!("a.{k}"), format!("{round}-{}", "v".repeat(200)))
                        .unwrap();
                }
                x.delete("a.1").unwrap();
                x.purge("a.2").unwrap();
                x.put("b.1", "outside").unwrap();
            }
            let (leader, follower) = if round % 2 == 0 {
                (&mut first, &mut second)
            } else {
                (&mut second, &mut first)
            };
            let from = leader.mark().expect("a live watch has a mark");
            let events = drain(leader);
            assert_eq!(events, drain(&mut control), "variant {i}, round {round}");
            assert!(!events.is_empty());
            let step = leader.step_since(from).expect("the leader moved");
            assert!(
                leader.step_since(leader.mark().unwrap()).is_none(),
                "no step where it has not moved"
            );
            for (n, w) in others.iter_mut().enumerate() {
                assert_eq!(w.mark(), Some(from), "variant {i}, other watch {n}");
                assert!(!w.follow(&step), "variant {i}, other watch {n}");
                assert_eq!(w.mark(), Some(from), "a refused step leaves it in place");
                let own = drain(w);
                assert!(!own.is_empty(), "variant {i}, other watch {n}");
            }
            if round == 0 {
                assert_eq!(behind.mark(), Some(from));
            } else {
                // It has read nothing since round 0: it stands behind the step.
                assert!(
                    !behind.follow(&step),
                    "variant {i}: a watch behind the step"
                );
            }
            assert!(follower.follow(&step), "variant {i}, round {round}");
            assert_eq!(follower.mark(), leader.mark());
            assert!(drain(follower).is_empty(), "the follower read them already");
        }
        assert_eq!(drain(&mut behind), drain(&mut behind_control));
        ends_without_a_step(both, &mut first);
    }
}

/// Compaction removes records `w` has not read: it ends (`lost`) and takes no step.
/// Both buckets get the same writes and are compacted alike (they stay twins).
fn ends_without_a_step(both: [&Bucket; 2], w: &mut Watch) {
    for x in both {
        overwrite_and_compact(x);
    }
    let from = w.mark().unwrap();
    let events = drain_to_end(w);
    assert!(matches!(events.last(), Some(WatchEvent::Lost { .. })));
    assert_eq!(w.mark(), None);
    assert!(w.step_since(from).is_none());
}

/// Overwrites keys `a.0` to `a.39` ten times and compacts: the records a watch that read
/// none of it would need next are gone.
fn overwrite_and_compact(b: &Bucket) {
    for round in 0..10u32 {
        for k in 0..40u32 {
            b.put(
                &format!("a.{k}"),
                format!("late-{round}-{}", "w".repeat(200)),
            )
            .unwrap();
        }
    }
    b.compact().unwrap();
}
