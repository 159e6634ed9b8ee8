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
