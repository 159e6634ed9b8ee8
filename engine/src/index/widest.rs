//! [`Widest`]: the largest value each field of a retained revision has had,
//! kept as revisions come, so that a snapshot knows its field widths (see
//! `snapshot/fields.rs`) without a walk of the whole index first.

use super::RecordRef;

/// Upper bounds of the fields of every revision the index holds: raised as
/// revisions are retained or moved, never lowered (a revision that leaves
/// keeps its bound: a snapshot then stores a field a byte wider than it
/// needs at worst). The snapshot's encoder still checks each value against
/// its width and refuses to write a file it does not fit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Widest {
    /// The longest key, in bytes.
    pub key_len: usize,
    /// The highest revision.
    pub revision: u64,
    /// The latest expiry (ms since the Unix epoch).
    pub expires_ms: u64,
    /// The highest offset in a segment.
    pub offset: u32,
    /// The longest record, in bytes.
    pub record_len: usize,
}

impl Widest {
    /// Raises the bounds to hold `r`, a revision of a key `key_len` bytes long.
    #[inline]
    pub(super) fn widen(&mut self, key_len: usize, r: &RecordRef) {
        self.key_len = self.key_len.max(key_len);
        self.revision = self.revision.max(r.revision);
        self.expires_ms = self.expires_ms.max(r.expires_ms);
        self.offset = self.offset.max(r.offset);
        self.record_len = self.record_len.max(r.len());
    }

    /// Raises the bounds to hold what `other` holds.
    pub(super) fn add(&mut self, other: &Widest) {
        self.key_len = self.key_len.max(other.key_len);
        self.revision = self.revision.max(other.revision);
        self.expires_ms = self.expires_ms.max(other.expires_ms);
        self.offset = self.offset.max(other.offset);
        self.record_len = self.record_len.max(other.record_len);
    }
}
