//! The newest entries of the Raft log, kept in memory.
//!
//! Right after an append, openraft reads the same entries back: to send them to each
//! follower and to apply them. Served from here they are clones of shared proposals (see
//! `command::proposal`) instead of records read and decoded once per reader. Bounded by count
//! and by their encoded bytes; older entries are read from the segments.

use std::collections::VecDeque;

use openraft::EntryPayload;

use crate::types::Entry;

/// At most this many entries.
const MAX_ENTRIES: usize = 8192;
/// At most this many bytes of encoded proposals.
const MAX_BYTES: usize = 32 << 20;
/// What a blank or membership entry counts for.
const OTHER_BYTES: usize = 64;

/// The newest entries, a suffix of the log without a gap.
#[derive(Default)]
pub(super) struct Recent {
    entries: VecDeque<Entry>,
    bytes: usize,
}

fn size(e: &Entry) -> usize {
    match &e.payload {
        EntryPayload::Normal(p) => p.encoded().map_or(OTHER_BYTES, <[u8]>::len),
        _ => OTHER_BYTES,
    }
}

impl Recent {
    /// How many it holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Adds `appended`, which follow the newest held (the log's end), dropping the oldest
    /// past the bounds.
    pub fn push(&mut self, appended: &[Entry]) {
        for e in appended {
            self.bytes += size(e);
            self.entries.push_back(e.clone());
        }
        while self.entries.len() > MAX_ENTRIES || self.bytes > MAX_BYTES {
            let Some(e) = self.entries.pop_front() else {
                break;
            };
            self.bytes -= size(&e);
        }
    }

    /// Clones of the held entries at positions `range` (0 is the oldest held).
    pub fn range(&self, range: std::ops::Range<usize>) -> impl Iterator<Item = Entry> + '_ {
        self.entries.range(range).cloned()
    }

    /// Drops the entries at index `cut` and after (the log was truncated there).
    pub fn keep_below(&mut self, cut: u64) {
        while self.entries.back().is_some_and(|e| e.log_id.index >= cut) {
            if let Some(e) = self.entries.pop_back() {
                self.bytes -= size(&e);
            }
        }
    }

    /// Drops the entries up to index `last` included (the log was purged through it).
    pub fn drop_through(&mut self, last: u64) {
        while self.entries.front().is_some_and(|e| e.log_id.index <= last) {
            if let Some(e) = self.entries.pop_front() {
                self.bytes -= size(&e);
            }
        }
    }
}
