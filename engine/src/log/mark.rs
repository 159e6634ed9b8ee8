//! The durability mark: how recovery tells a torn tail from corruption.
//!
//! Between a segment's header and its first record lie two 32-byte slots
//! ([`MARK_AREA`] bytes). After an fsync that makes the active segment
//! durable up to an offset (at most one every 50 ms, so that most fsyncs
//! flush only the page being appended to), the group-commit leader writes that offset into
//! the next slot (the slots alternate, so a write torn by a power cut leaves
//! the other one whole). The mark itself reaches the disk with the next
//! fsync, so after a crash the newest valid mark is a *lower bound* of what
//! was durable: every byte below it was synced and must read back intact.
//!
//! Recovery of the last segment therefore cuts a damaged or missing record at
//! or past the mark as a torn tail (unsynced writes may be lost, kept or torn
//! in any order by a power cut), and reports damage below it as corruption.
//!
//! A slot (all integers little-endian):
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0 | 4 | crc32 of the segment's salt, then bytes 4..32 |
//! | 4 | 4 | `MARK` |
//! | 8 | 8 | counter: raised by every mark written to this segment |
//! | 16 | 8 | offset in the segment below which everything is durable |
//! | 24 | 4 | flags: bit 0 the log was closed cleanly at this offset; bit 1 its writes were visible before they were durable (`interval`, `never`) |
//! | 28 | 4 | revisions skipped: `n > 0` says an open after an unclean stop gave up the last `n` revisions this segment reserved, up to its `reserved through` (see the bucket's `lost.rs`); 0 for none |
//!
//! In memory the two fields are one `u64` of flags (little-endian at offset
//! 24): the skipped count is its upper half ([`skipped_flags`], [`Mark::skipped`]).

/// Bytes between a segment's header and its first record.
pub const MARK_AREA: u64 = 64;
/// [`MARK_AREA`] as a length in memory.
pub const MARK_AREA_LEN: usize = 64;
const SLOT: usize = 32;
const TAG: &[u8; 4] = b"MARK";
/// Flag: the log was closed cleanly with its end at the mark.
pub const FLAG_CLEAN: u64 = 1;
/// Flag: the log's writes were visible before they were durable (fsync
/// policy `interval` or `never`), so an unclean stop may take back revisions
/// that were seen.
pub const FLAG_EAGER: u64 = 2;
/// The upper half of a mark's flags: the count of revisions skipped.
pub const SKIPPED_MASK: u64 = 0xffff_ffff << 32;

/// The flags that say an open gave up the last `count` revisions the segment
/// reserved (0: none).
pub fn skipped_flags(count: u32) -> u64 {
    u64::from(count) << 32
}

/// A decoded mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    /// Raised by every mark written to the segment; the highest valid one wins.
    pub counter: u64,
    /// Everything in the segment below this offset was durable.
    pub end: u64,
    /// [`FLAG_CLEAN`], [`FLAG_EAGER`] and [`skipped_flags`], or'ed.
    pub flags: u64,
}

impl Mark {
    /// The slot's bytes, checksummed with the segment's salt.
    pub fn encode(&self, salt: u32) -> [u8; SLOT] {
        let mut b = [0u8; SLOT];
        b[4..8].copy_from_slice(TAG);
        b[8..16].copy_from_slice(&self.counter.to_le_bytes());
        b[16..24].copy_from_slice(&self.end.to_le_bytes());
        b[24..32].copy_from_slice(&self.flags.to_le_bytes());
        let crc = checksum(salt, &b[4..]);
        b[..4].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes a slot; `None` if it is empty, torn or from elsewhere.
    pub fn decode(slot: &[u8], salt: u32) -> Option<Mark> {
        let slot: &[u8; SLOT] = slot.get(..SLOT)?.try_into().ok()?;
        let (crc, rest) = slot.split_first_chunk::<4>()?;
        if u32::from_le_bytes(*crc) != checksum(salt, rest) || rest.get(..4)? != TAG {
            return None;
        }
        let u64_at = |at: usize| {
            rest.get(at..at + 8)?
                .try_into()
                .ok()
                .map(u64::from_le_bytes)
        };
        Some(Mark {
            counter: u64_at(4)?,
            end: u64_at(12)?,
            flags: u64_at(20)?,
        })
    }

    /// The newest valid mark of a mark area.
    pub fn latest(area: &[u8], salt: u32) -> Option<Mark> {
        area.chunks_exact(SLOT)
            .filter_map(|slot| Mark::decode(slot, salt))
            .max_by_key(|m| m.counter)
    }

    /// Where in the segment the mark with `counter` is written.
    pub fn slot_offset(header_len: u64, counter: u64) -> u64 {
        header_len + (counter % 2) * SLOT as u64
    }

    /// Whether the log was closed cleanly at this mark.
    pub fn clean(&self) -> bool {
        self.flags & FLAG_CLEAN != 0
    }

    /// Whether writes were visible before they were durable when it was written.
    pub fn eager(&self) -> bool {
        self.flags & FLAG_EAGER != 0
    }

    /// How many revisions an open gave up at the end of the segment's
    /// reservation (0: none).
    pub fn skipped(&self) -> u32 {
        u32::try_from(self.flags >> 32).unwrap_or(u32::MAX)
    }
}

fn checksum(salt: u32, bytes: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&salt.to_le_bytes());
    h.update(bytes);
    h.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_round_trip_and_the_newest_valid_one_wins() {
        let a = Mark {
            counter: 7,
            end: 4096,
            flags: 0,
        };
        let b = Mark {
            counter: 8,
            end: 8192,
            flags: FLAG_CLEAN,
        };
        let mut area = [0u8; MARK_AREA_LEN];
        assert_eq!(Mark::latest(&area, 1), None, "zeros are no mark");
        area[32..].copy_from_slice(&a.encode(1));
        area[..32].copy_from_slice(&b.encode(1));
        assert_eq!(Mark::latest(&area, 1), Some(b));
        assert!(Mark::latest(&area, 1).is_some_and(|m| m.clean()));
        area[3] ^= 1; // b torn
        assert_eq!(Mark::latest(&area, 1), Some(a));
        assert_eq!(Mark::latest(&area, 2), None, "another segment's salt");
        assert_eq!(Mark::slot_offset(64, 7), 96);
        assert_eq!(Mark::slot_offset(64, 8), 64);
    }

    #[test]
    fn the_skipped_count_is_the_slots_last_four_bytes() {
        let m = Mark {
            counter: 3,
            end: 128,
            flags: FLAG_EAGER | skipped_flags(0x0100_0002),
        };
        let bytes = m.encode(9);
        assert_eq!(bytes[24..28], 2u32.to_le_bytes(), "the flags");
        assert_eq!(bytes[28..32], 0x0100_0002u32.to_le_bytes(), "the count");
        let back = Mark::decode(&bytes, 9).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.skipped(), 0x0100_0002);
        assert!(back.eager() && !back.clean());
        let plain = Mark {
            flags: FLAG_CLEAN,
            ..m
        };
        assert_eq!(Mark::decode(&plain.encode(9), 9).unwrap().skipped(), 0);
    }
}
