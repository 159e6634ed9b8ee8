//! Step 2 of a write: encode. The planned writes become records in the
//! writer's buffer and reach the log with one append: room is reserved first
//! (which may rotate to a new segment and fixes the checksum salt), then the
//! whole buffer is written at the end of the active segment.

use super::plan::PlannedWrite;
use super::WriteMode;
use crate::bucket::{BucketCore, Writer};
use crate::error::Result;
use crate::log::record::{self, FLAG_BATCH_CONT, FLAG_BATCH_MORE};
use crate::log::Appended;

impl BucketCore {
    /// Encodes `writes` (created at `now`) and appends them to the log with
    /// one write; returns where they landed. With a replication `tag`, every
    /// record is one atomic batch that a tag record ends.
    pub(super) fn append_records(
        &self,
        w: &mut Writer,
        writes: &[PlannedWrite<'_>],
        mode: WriteMode,
        now: u64,
        tag: Option<&[u8]>,
    ) -> Result<Appended> {
        // Revisions the last open skipped reach `lost.revs` before the log can
        // leave the segment whose mark holds them.
        self.file_lost_revisions(w)?;
        let Writer {
            app, buf, next_rev, ..
        } = w;
        buf.clear();
        let tag_len = tag.map_or(0, |t| record::encoded_len(t.len(), 0));
        let total: usize = writes.iter().map(PlannedWrite::encoded_len).sum::<usize>() + tag_len;
        let (mode, count) = match tag {
            Some(_) => (WriteMode::Batch, writes.len() + 1),
            None => (mode, writes.len()),
        };
        // A new segment's header records the last revision given out before these.
        // The first write that is visible before it is durable clears a clean mark.
        self.log.clear_clean_mark()?;
        let last_revision = *next_rev + writes.len() as u64 - 1;
        let salt = self
            .log
            .reserve(app, total as u64, *next_rev - 1, last_revision)?;
        for (j, write) in writes.iter().enumerate() {
            record::encode(
                buf,
                salt,
                write.op,
                batch_flags(mode, j, count),
                write.revision,
                now,
                write.key_expires_ms,
                write.key.as_bytes(),
                &write.value,
            );
        }
        if let Some(tag) = tag {
            let flags = batch_flags(mode, writes.len(), count);
            record::encode_tag(buf, salt, flags, last_revision, now, tag);
        }
        self.log.append(app, buf)
    }
}

/// The batch flags of record `index` of `count`. An atomic batch chains its
/// records (`BATCH_MORE` on all but the last, `BATCH_CONT` on all but the
/// first), so that recovery applies all of them or none; independent writes
/// are batches of one.
fn batch_flags(mode: WriteMode, index: usize, count: usize) -> u8 {
    match mode {
        WriteMode::Batch => {
            let followed = if index + 1 < count {
                FLAG_BATCH_MORE
            } else {
                0
            };
            followed | if index > 0 { FLAG_BATCH_CONT } else { 0 }
        }
        WriteMode::Each => 0,
    }
}
