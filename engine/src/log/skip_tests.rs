//! Revisions given up after an unclean stop, recorded in the active segment's
//! mark ([`Log::skip_in_mark`]): what the marks say, and the rotation that
//! waits for [`Log::skip_recorded`].

use std::path::Path;

use super::record::{self, Op};
use super::{AfterUnclean, Appender, Log, LogConfig, Opened};
use crate::error::{Error, Result};
use crate::fsync::FsyncPolicy;
use crate::io::Storage;

fn open(dir: &Path) -> Result<Opened> {
    let cfg = LogConfig {
        segment_size: 4096,
        fsync: FsyncPolicy::Never,
        repair: false,
        storage: Storage::os(),
        mark_every: super::DEFAULT_MARK_EVERY,
        after_unclean: AfterUnclean::CallerSyncs,
    };
    Log::open(dir, cfg, &mut |_| None, &mut |_, _, _| Ok(()))
}

/// Appends one small record of revision `rev` and makes it durable.
fn put(log: &Log, app: &mut Appender, rev: u64) -> Result<()> {
    let len = record::encoded_len(1, 1) as u64;
    let salt = log.reserve(app, len, rev - 1, rev)?;
    let mut buf = Vec::new();
    record::encode(&mut buf, salt, Op::Put, 0, rev, 0, 0, b"k", b"v");
    let done = log.append(app, &buf)?;
    log.sync()?;
    log.wait_durable(done.end)
}

/// A log with two records left unclean (dropped without a clean close, its
/// writes in the page cache), reopened: the open awaits the caller's sync.
fn unclean(dir: &Path) -> Opened {
    let Opened {
        log, mut appender, ..
    } = open(dir).unwrap();
    put(&log, &mut appender, 1).unwrap();
    put(&log, &mut appender, 2).unwrap();
    drop(log);
    let opened = open(dir).unwrap();
    assert!(opened.unclean && opened.awaiting_sync && opened.eager_before);
    assert_eq!(opened.skipped_in_mark, None);
    opened
}

#[test]
fn the_mark_after_the_callers_sync_names_the_skip_and_every_later_one_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let opened = unclean(dir.path());
    let reserved = opened.reserved_through;
    let count = u32::try_from(reserved - 2).unwrap();
    opened.log.skip_in_mark(count).unwrap();
    opened.log.synced_by_caller().unwrap();
    let mark = opened.appender.active().mark().unwrap();
    assert_eq!(mark.skipped(), count, "{mark:?}");
    assert!(mark.eager() && !mark.clean());
    opened.log.recovery_recorded();
    // A kill now: the next open reads the skip back from the mark.
    drop(opened);
    let again = open(dir.path()).unwrap();
    assert_eq!(again.skipped_in_mark, Some((3, reserved)));
    again.log.synced_by_caller().unwrap();
    let kept = again.appender.active().mark().unwrap();
    assert_eq!(kept.skipped(), count, "the next open's mark: {kept:?}");
    again.log.recovery_recorded();
    // A clean close keeps it too.
    again.log.close_clean().unwrap();
    drop(again);
    let clean = open(dir.path()).unwrap();
    assert!(!clean.unclean);
    assert_eq!(clean.skipped_in_mark, Some((3, reserved)));
}

#[test]
fn the_log_leaves_the_segment_only_once_the_skip_is_recorded_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let Opened {
        log,
        mut appender,
        reserved_through,
        ..
    } = unclean(dir.path());
    assert!(log.skip_in_mark(0).is_err(), "a count of 0 is refused");
    log.skip_in_mark(5).unwrap();
    log.synced_by_caller().unwrap();
    assert!(
        log.skip_in_mark(5).is_err(),
        "too late: the mark is written"
    );
    log.recovery_recorded();
    let next = reserved_through + 1;
    let refused = put(&log, &mut appender, next);
    assert!(matches!(refused, Err(Error::Internal(_))), "{refused:?}");
    let end = appender.end();
    let cut = log.truncate(&mut appender, end);
    assert!(matches!(cut, Err(Error::Internal(_))), "{cut:?}");
    log.skip_recorded();
    put(&log, &mut appender, next).unwrap();
    let mark = appender.active().mark().unwrap();
    assert_eq!(
        mark.skipped(),
        0,
        "the new segment gave nothing up: {mark:?}"
    );
    drop(log);
    let reopened = open(dir.path()).unwrap();
    assert_eq!(reopened.skipped_in_mark, None);
}
