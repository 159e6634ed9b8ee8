//! Step 3 of a write: apply. Under the index write lock the appended records
//! enter the index (retention, dead-byte accounting) and the new log end is
//! published to the watch hub: from that moment readers and watchers see the
//! writes.

use std::sync::atomic::Ordering;

use super::plan::PlannedWrite;
use crate::bucket::{effective_expiry, BucketCore, Writer};
use crate::index::RecordRef;
use crate::log::Appended;

impl BucketCore {
    /// Applies `writes`, appended (created at `now`) where `appended` says,
    /// to the index, and publishes them.
    pub(super) fn apply_appended(
        &self,
        w: &mut Writer,
        writes: &[PlannedWrite<'_>],
        appended: Appended,
        now: u64,
    ) {
        let Writer {
            removed, next_rev, ..
        } = w;
        let history = usize::from(self.config.history);
        let ttl = self.config.ttl_ms();
        let mut ix = self.index.write();
        let mut offset = appended.offset;
        for write in writes {
            let len = write.encoded_len();
            let expires = effective_expiry(write.key_expires_ms, now, ttl);
            let at = RecordRef::new(
                write.revision,
                expires,
                appended.slot,
                offset,
                len,
                write.op,
            );
            ix.apply(write.key.as_bytes(), at, history, removed);
            offset += len as u64;
        }
        removed.clear();
        *next_rev += writes.len() as u64;
        let last = *next_rev - 1;
        self.last_rev.store(last, Ordering::Release);
        self.hub.publish(appended.end, last);
    }
}
