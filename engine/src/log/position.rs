//! Positions in a bucket's log.

/// A position in a bucket's log: the sequence number of a segment (its place
/// in the log) and a byte offset in that segment.
///
/// Positions order as the log does, across segments: a later segment's
/// positions are all greater than an earlier one's, and a compaction output
/// keeps the `seq` of the first segment it replaces. Durability waits and
/// watch cursors compare positions; nothing does arithmetic on them.
///
/// Held as one `u64`, `seq` in the high 32 bits and the offset in the low 32
/// (record offsets are 32-bit), so that the watch hub can publish one in an
/// atomic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct LogPos(u64);

impl LogPos {
    /// Offset `offset` of the segment whose sequence number is `seq`.
    pub fn new(seq: u64, offset: u64) -> LogPos {
        debug_assert!(
            u32::try_from(offset).is_ok(),
            "segment offset {offset} over 32 bits"
        );
        LogPos((seq << 32) | offset)
    }

    /// The sequence number of the segment.
    pub fn seq(self) -> u64 {
        self.0 >> 32
    }

    /// The byte offset in the segment.
    pub fn offset(self) -> u64 {
        self.0 & u64::from(u32::MAX)
    }

    /// The packed form, for an atomic.
    pub(crate) fn to_bits(self) -> u64 {
        self.0
    }

    /// A position from its packed form ([`LogPos::to_bits`]).
    pub(crate) fn from_bits(bits: u64) -> LogPos {
        LogPos(bits)
    }
}

#[cfg(test)]
mod tests {
    use super::LogPos;

    #[test]
    fn positions_order_by_segment_then_offset() {
        let a = LogPos::new(1, 4000);
        let b = LogPos::new(2, 64);
        assert!(a < b);
        assert!(LogPos::new(2, 63) < b);
        assert_eq!((b.seq(), b.offset()), (2, 64));
        assert_eq!(LogPos::from_bits(b.to_bits()), b);
        assert!(LogPos::default() < a, "the default is before every record");
    }
}
