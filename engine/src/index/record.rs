//! [`RecordRef`]: where one retained record is, and what reads filter on.

use crate::log::record::Op;

/// The index's reference to one retained record of a key: where the record
/// is in the log (segment slot, offset, length) and what reads filter on
/// without reading it (revision, op, expiry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef {
    /// The bucket revision of the record.
    pub revision: u64,
    /// When this entry stops being visible (per-key TTL or bucket max age), ms; 0 for never.
    pub expires_ms: u64,
    /// Slot of the segment holding the record (see [`crate::log::segment::Segment::slot`]).
    pub slot: u32,
    /// Offset of the record in that segment.
    pub offset: u32,
    /// Record length (30 bits) and op (2 bits).
    len_op: u32,
    /// In the index: the 1-based slot of the key's older revisions in the
    /// history slab, 0 for none. Unused elsewhere.
    pub(super) older: u32,
}

impl RecordRef {
    /// A revision at `offset` of segment `slot`, `len` bytes long. The
    /// caller guarantees `offset` fits 32 bits (segments are at most 4 GiB)
    /// and `len` 30 bits (a record is at most a key, a 256 MiB value and a
    /// header).
    #[allow(
        clippy::cast_possible_truncation,
        reason = "offset and len are in range by the caller's guarantee (checked in debug builds)"
    )]
    pub fn new(
        revision: u64,
        expires_ms: u64,
        slot: u32,
        offset: u64,
        len: usize,
        op: Op,
    ) -> RecordRef {
        debug_assert!(len < 1 << 30 && u32::try_from(offset).is_ok());
        RecordRef {
            revision,
            expires_ms,
            slot,
            offset: offset as u32,
            len_op: (len as u32) << 2 | op as u32,
            older: 0,
        }
    }

    /// Length of the record in the log.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        (self.len_op >> 2) as usize
    }

    /// The op of the record.
    pub fn op(&self) -> Op {
        match self.len_op & 3 {
            1 => Op::Put,
            2 => Op::Del,
            _ => Op::Purge,
        }
    }

    /// Whether the entry has expired at `now_ms`.
    pub fn expired(&self, now_ms: u64) -> bool {
        self.expires_ms != 0 && self.expires_ms <= now_ms
    }

    /// Whether this is a value (a PUT) that has expired at `now_ms`: unseen,
    /// and dropped from its key's retained entries when the key's next entry
    /// is applied (see `Index::apply`).
    pub fn expired_value(&self, now_ms: u64) -> bool {
        self.op() == Op::Put && self.expired(now_ms)
    }

    /// Whether this is a value (a PUT) visible at `now_ms`.
    pub fn live(&self, now_ms: u64) -> bool {
        self.op() == Op::Put && !self.expired(now_ms)
    }

    /// The reference without the index's link to older revisions.
    pub(super) fn bare(mut self) -> RecordRef {
        self.older = 0;
        self
    }
}
