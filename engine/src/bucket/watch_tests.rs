//! Watches at the edges: a write made visible by another writer's call that then
//! failed, and a watch resumed where the bucket has no history. Both found by review.

use crate::{BucketConfig, FsyncPolicy, Options, Store, WatchEvent, WatchOptions, WriteOp};

fn options(fsync: FsyncPolicy) -> Options {
    Options {
        background: false,
        fsync,
        ..Options::default()
    }
}

/// Under `always`, writer A's batch is durable (the server's syncer ran its fsync) and
/// a refused write of B makes it visible before A's own publish. B's call returned
/// without waking the change listeners (the server's watch pump), and A's publish then
/// found nothing left to do: the server's watchers did not hear of A's write.
#[test]
fn a_refused_write_that_publishes_another_wakes_the_listeners() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), options(FsyncPolicy::Always)).unwrap();
    let b = store.default_bucket().unwrap();
    let listener = b.change_listener();
    let (_, ticket) = b.write_each(&[WriteOp::put("k", "1")]).unwrap();
    while listener.try_recv().is_ok() {}
    b.core().log.sync().unwrap();
    let (refused, _) = b.write_each(&[WriteOp::create("k", "2")]).unwrap();
    assert!(refused[0].is_err());
    b.wait_durable(ticket).unwrap();
    assert!(listener.try_recv().is_ok(), "the listeners were told");
}

/// A client that saw revisions up to 9 of a bucket since dropped and created again
/// resumes with FROM 10: it got the new bucket's revision 2 as the continuation of
/// its history. Past every revision the bucket gave out, the watch is `lost`.
#[test]
fn a_watch_resumed_past_every_revision_given_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), options(FsyncPolicy::Always)).unwrap();
    let b = store.create_bucket("b", BucketConfig::default()).unwrap();
    for i in 0..9 {
        b.put("k", format!("old{i}")).unwrap();
    }
    store.drop_bucket("b").unwrap();
    let b = store.create_bucket("b", BucketConfig::default()).unwrap();
    b.put("x", "new1").unwrap();
    let from = |rev| WatchOptions {
        from_revision: Some(rev),
        ..WatchOptions::default()
    };
    let mut resumed = b.watch(">", from(10)).unwrap();
    b.put("x", "new2").unwrap();
    let first = resumed.try_next().unwrap();
    assert!(
        matches!(first, Some(WatchEvent::Lost { .. })),
        "resumed past the end: {first:?}"
    );
    // FROM the next revision to be given is no gap: it waits for it.
    let mut next = b.watch(">", from(3)).unwrap();
    assert_eq!(next.try_next().unwrap(), Some(WatchEvent::Ready));
    b.put("x", "new3").unwrap();
    assert!(
        matches!(next.try_next().unwrap(), Some(WatchEvent::Entry(e)) if e.revision == 3),
        "the continuation"
    );
}

/// A watch takes the published end under the index lock and looks its segment up after.
/// A compaction in between replaced that segment with an output of the same `seq`, and
/// the watch read the output at the end's offset in the old one: past revisions it had
/// not seen, it reported `lost` (with other record sizes, a record boundary it could not
/// decode). From a review.
#[test]
fn a_watch_whose_segment_is_compacted_as_it_starts_misses_nothing() {
    const VALUE: &[u8] = &[b'v'; 50];
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        segment_size: 4096,
        ..options(FsyncPolicy::Never)
    };
    let store = Store::open(dir.path(), opts).unwrap();
    let b = store.default_bucket().unwrap();
    for i in 0..20 {
        b.put(&format!("a{i:02}"), VALUE).unwrap();
    }
    let writer = b.clone();
    super::watch::tests::set_before_cursor(move || {
        // Revisions 21..=30 overwrite 1..=10, in the same segment; the pass seals it
        // and rewrites it without them.
        for i in 0..10 {
            writer.put(&format!("a{i:02}"), VALUE).unwrap();
        }
        let report = writer.compact().unwrap();
        assert_eq!(report.records_dropped, 10, "{report:?}");
    });
    let live = WatchOptions {
        updates_only: true,
        ..WatchOptions::default()
    };
    let mut w = b.watch(">", live).unwrap();
    assert_eq!(w.try_next().unwrap(), Some(WatchEvent::Ready));
    for rev in 21..=30 {
        match w.try_next().unwrap() {
            Some(WatchEvent::Entry(e)) => assert_eq!(e.revision, rev),
            other => panic!("revision {rev}: {other:?}"),
        }
    }
    assert_eq!(w.try_next().unwrap(), None);
}
