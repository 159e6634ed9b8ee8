//! Helpers for the bucket's unit tests on a store with a manual clock.

use std::sync::Arc;
use std::time::Duration;

use crate::{BucketConfig, Error, FsyncPolicy, ManualClock, Options, Store};

/// Options for a store on `clock`, with no background work.
pub(crate) fn manual_options(clock: &ManualClock) -> Options {
    Options {
        background: false,
        fsync: FsyncPolicy::Never,
        clock: Arc::new(clock.clone()),
        ..Default::default()
    }
}

/// A bucket keeping two revisions per key, with a max age of `ttl_ms`.
pub(crate) fn aged_config(ttl_ms: u64) -> BucketConfig {
    BucketConfig {
        history: 2,
        ttl: Some(Duration::from_millis(ttl_ms)),
        ..Default::default()
    }
}

/// The latest revision of `key` in bucket `b` as a writer sees it: what the
/// WRONGREV of a DEL REV at an impossible revision says.
pub(crate) fn writers_latest(store: &Store, key: &str) -> u64 {
    match store.bucket("b").unwrap().delete_at(key, 999) {
        Err(Error::WrongRevision { latest, .. }) => latest,
        other => panic!("expected WRONGREV, got {other:?}"),
    }
}
