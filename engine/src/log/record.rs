//! Record framing: the unit written to a segment.
//!
//! Every record is a fixed 32-byte header followed by the key and the value.
//! All integers are little-endian. The layout (also in `docs/FORMAT.md`):
//!
//! | offset | size | field                                                        |
//! |-------:|-----:|--------------------------------------------------------------|
//! | 0      | 4    | crc32 (IEEE, crc32fast) of the segment's salt (4 bytes) then bytes 4..end of the record |
//! | 4      | 1    | record format version, 1                                     |
//! | 5      | 1    | kind: bits 0-1 op (1 PUT, 2 DEL, 3 PURGE; 0 in a tag record), bit 2 `BATCH_MORE`, bit 3 `BATCH_CONT`, bit 4 `TAG`, other bits 0 |
//! | 6      | 2    | key length (1..=1024)                                        |
//! | 8      | 4    | value length                                                 |
//! | 12     | 8    | revision                                                     |
//! | 20     | 6    | created, ms since the Unix epoch (48 bits)                   |
//! | 26     | 6    | expires, ms since the Unix epoch (48 bits), 0 for none       |
//! | 32     | k    | key bytes                                                    |
//! | 32+k   | v    | value bytes                                                  |
//!
//! An all-zero header marks the end of the written part of a segment
//! (segments are pre-written with zeros).
//!
//! A **tag record** (kind bit 4, op bits 0) is not an entry: its key bytes are
//! an opaque replication tag (1..=[`MAX_TAG_LEN`] bytes; the cluster's Raft log
//! id), its value is empty, its revision is the bucket's last revision when it
//! was written (informative: tag records are outside the rising-revision rule)
//! and its created time the batch's. It ends the atomic batch a replicated
//! apply wrote, so the tag is in the log exactly when the batch is.
//!
//! The checksum starts with the segment's random salt (from its header), so
//! bytes that merely look like a record — a record stored inside a value, a
//! copy of another log — never pass as a record of this segment.

/// Length of the fixed record header.
pub const HEADER_LEN: usize = 32;
/// Largest time a header holds (48 bits of ms: past the year 10000).
pub const MAX_TIME_MS: u64 = (1 << 48) - 1;
/// The record format version written by this build.
pub const RECORD_VERSION: u8 = 1;
/// Flag (in the kind byte): another record of the same atomic batch follows this one.
pub const FLAG_BATCH_MORE: u8 = 4;
/// Flag (in the kind byte): this record continues a batch (it is not its first).
pub const FLAG_BATCH_CONT: u8 = 8;
const FLAGS: u8 = FLAG_BATCH_MORE | FLAG_BATCH_CONT;
/// Flag (in the kind byte): a tag record (op bits 0), not an entry.
pub const FLAG_TAG: u8 = 16;
/// Longest replication tag a tag record holds.
pub const MAX_TAG_LEN: usize = 255;
/// Longest key the format accepts.
pub const MAX_KEY_LEN: usize = 1024;
/// Longest value the format accepts (the engine's own limit is lower or equal).
pub const MAX_VALUE_LEN: usize = 256 << 20;

/// The operation a record carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// A value was stored.
    Put = 1,
    /// A delete marker: the key has no value; earlier history is kept.
    Del = 2,
    /// A purge marker: the key has no value and earlier history is dropped.
    Purge = 3,
}

impl Op {
    /// Decodes the op byte.
    pub fn from_u8(b: u8) -> Option<Op> {
        match b {
            1 => Some(Op::Put),
            2 => Some(Op::Del),
            3 => Some(Op::Purge),
            _ => None,
        }
    }

    /// The protocol name of the op.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Put => "PUT",
            Op::Del => "DEL",
            Op::Purge => "PURGE",
        }
    }
}

/// The decoded fixed fields of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    /// PUT, DEL or PURGE (for a tag record, see [`RecordHeader::is_tag`],
    /// `Op::Put`, meaning nothing).
    pub op: Op,
    /// Flag bits (`FLAG_BATCH_MORE`, `FLAG_TAG` …), as in the kind byte.
    pub flags: u8,
    /// Key length.
    pub key_len: u16,
    /// Value length.
    pub value_len: u32,
    /// Bucket revision.
    pub revision: u64,
    /// Creation time, ms since the epoch.
    pub created_ms: u64,
    /// Per-key expiry, ms since the epoch, 0 for none.
    pub expires_ms: u64,
}

impl RecordHeader {
    /// Total encoded length of the record this header describes.
    pub fn record_len(&self) -> usize {
        HEADER_LEN + self.key_len as usize + self.value_len as usize
    }

    /// Whether another record of the same batch follows.
    pub fn batch_more(&self) -> bool {
        self.flags & FLAG_BATCH_MORE != 0
    }

    /// Whether this record continues a batch begun by an earlier record.
    pub fn batch_cont(&self) -> bool {
        self.flags & FLAG_BATCH_CONT != 0
    }

    /// Whether this is a tag record (its key is a replication tag; not an entry).
    pub fn is_tag(&self) -> bool {
        self.flags & FLAG_TAG != 0
    }

    /// Whether this record may continue a batch whose last record has revision
    /// `previous`: the next revision, or a tag record (outside the revision rules).
    pub fn continues(&self, previous: u64) -> bool {
        self.is_tag() || self.revision == previous + 1
    }
}

/// A record borrowed from a segment (or any buffer).
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    /// The fixed fields.
    pub header: RecordHeader,
    /// The key.
    pub key: &'a [u8],
    /// The value.
    pub value: &'a [u8],
}

/// Why bytes at a position are not a valid record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// Fewer bytes remain than the header or the lengths it declares.
    Truncated,
    /// A header field holds a value this version never writes.
    BadHeader,
    /// The checksum does not match.
    BadChecksum,
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Invalid::Truncated => "truncated record",
            Invalid::BadHeader => "invalid record header",
            Invalid::BadChecksum => "record checksum mismatch",
        })
    }
}

/// What [`decode`] found at the start of a buffer.
#[derive(Debug, Clone, Copy)]
pub enum Decoded<'a> {
    /// A valid record.
    Record(Record<'a>),
    /// The end of written data: an all-zero header, or no bytes at all.
    End,
    /// Bytes that are not a valid record.
    Invalid(Invalid),
}

/// Encoded length of a record with these key and value lengths.
pub fn encoded_len(key_len: usize, value_len: usize) -> usize {
    HEADER_LEN + key_len + value_len
}

/// The checksum of a record body (bytes 4..end) in a segment with this salt.
pub fn checksum(salt: u32, body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&salt.to_le_bytes());
    h.update(body);
    h.finalize()
}

/// Appends one encoded record to `out`.
///
/// The caller guarantees `key.len()` is `1..=MAX_KEY_LEN` and `value.len() <= MAX_VALUE_LEN`.
/// Times past [`MAX_TIME_MS`] are stored as `MAX_TIME_MS`.
#[allow(clippy::too_many_arguments)]
#[inline]
pub fn encode(
    out: &mut Vec<u8>,
    salt: u32,
    op: Op,
    flags: u8,
    revision: u64,
    created_ms: u64,
    expires_ms: u64,
    key: &[u8],
    value: &[u8],
) {
    debug_assert!(!key.is_empty() && key.len() <= MAX_KEY_LEN);
    debug_assert!(value.len() <= MAX_VALUE_LEN);
    let kind = op as u8 | (flags & FLAGS);
    encode_kind(
        out, salt, kind, revision, created_ms, expires_ms, key, value,
    );
}

/// Appends one tag record carrying `tag` to `out` (`flags`: the batch flags;
/// `revision`: the bucket's last revision; `created_ms`: the batch's time).
///
/// The caller guarantees `tag.len()` is `1..=MAX_TAG_LEN`.
pub fn encode_tag(
    out: &mut Vec<u8>,
    salt: u32,
    flags: u8,
    revision: u64,
    created_ms: u64,
    tag: &[u8],
) {
    debug_assert!(!tag.is_empty() && tag.len() <= MAX_TAG_LEN);
    let kind = FLAG_TAG | (flags & FLAGS);
    encode_kind(out, salt, kind, revision, created_ms, 0, tag, &[]);
}

/// Appends one record with this kind byte to `out`.
#[allow(clippy::too_many_arguments)]
#[allow(
    clippy::cast_possible_truncation,
    reason = "the key and value lengths fit their fields by the callers' guarantee (checked in debug builds)"
)]
#[allow(
    clippy::indexing_slicing,
    reason = "`out[start..]` is the record just appended: at least HEADER_LEN bytes"
)]
#[inline]
fn encode_kind(
    out: &mut Vec<u8>,
    salt: u32,
    kind: u8,
    revision: u64,
    created_ms: u64,
    expires_ms: u64,
    key: &[u8],
    value: &[u8],
) {
    let start = out.len();
    out.reserve(encoded_len(key.len(), value.len()));
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&[RECORD_VERSION, kind]);
    out.extend_from_slice(&(key.len() as u16).to_le_bytes());
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(&revision.to_le_bytes());
    out.extend_from_slice(&created_ms.min(MAX_TIME_MS).to_le_bytes()[..6]);
    out.extend_from_slice(&expires_ms.min(MAX_TIME_MS).to_le_bytes()[..6]);
    out.extend_from_slice(key);
    out.extend_from_slice(value);
    let crc = checksum(salt, &out[start + 4..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Makes an encoded record a batch of its own (clears both batch flags) and
/// checksums it for a segment with `salt`. Compaction copies records this way.
/// A slice shorter than a record header is left as it is.
pub fn make_standalone(record: &mut [u8], salt: u32) {
    let Some((crc, body)) = record.split_first_chunk_mut::<4>() else {
        return;
    };
    if let Some(kind) = body.get_mut(1) {
        *kind &= !FLAGS;
    }
    *crc = checksum(salt, body).to_le_bytes();
}

/// A little-endian unsigned integer of at most 8 bytes.
fn uint_le(bytes: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    for (to, from) in a.iter_mut().zip(bytes) {
        *to = *from;
    }
    u64::from_le_bytes(a)
}

/// Decodes the header fields without checking the checksum.
pub fn parse_header(buf: &[u8]) -> Result<RecordHeader, Invalid> {
    let Some(h) = buf.first_chunk::<HEADER_LEN>() else {
        return Err(Invalid::Truncated);
    };
    let kind = h[5];
    let tag = kind & FLAG_TAG != 0;
    let op_bits = kind & 3;
    let op = if tag {
        // A tag record has no op (bits 0), no value and no expiry.
        (op_bits == 0).then_some(Op::Put)
    } else {
        Op::from_u8(op_bits)
    }
    .ok_or(Invalid::BadHeader)?;
    let flags = kind & (FLAGS | FLAG_TAG);
    let key_len = u16::from_le_bytes([h[6], h[7]]);
    let value_len = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    let max_key = if tag { MAX_TAG_LEN } else { MAX_KEY_LEN };
    if h[4] != RECORD_VERSION
        || kind & !(3 | FLAGS | FLAG_TAG) != 0
        || key_len == 0
        || usize::from(key_len) > max_key
        || (tag && (value_len != 0 || h[26..32] != [0; 6]))
        || usize::try_from(value_len).map_or(true, |v| v > MAX_VALUE_LEN)
    {
        return Err(Invalid::BadHeader);
    }
    Ok(RecordHeader {
        op,
        flags,
        key_len,
        value_len,
        revision: uint_le(&h[12..20]),
        created_ms: uint_le(&h[20..26]),
        expires_ms: uint_le(&h[26..32]),
    })
}

/// Decodes the record at the start of `buf`, verifying its checksum against
/// the salt of the segment it is in.
pub fn decode(buf: &[u8], salt: u32) -> Decoded<'_> {
    let head = buf.get(..HEADER_LEN).unwrap_or(buf);
    if head.iter().all(|&b| b == 0) {
        // Zeros (or nothing) where a header would start: the end of written data.
        // A short all-zero remainder is also the end: nothing was written there.
        return Decoded::End;
    }
    let header = match parse_header(buf) {
        Ok(h) => h,
        Err(e) => return Decoded::Invalid(e),
    };
    let Some((stored, body)) = buf
        .get(..header.record_len())
        .and_then(<[u8]>::split_first_chunk::<4>)
    else {
        return Decoded::Invalid(Invalid::Truncated);
    };
    if checksum(salt, body) != u32::from_le_bytes(*stored) {
        return Decoded::Invalid(Invalid::BadChecksum);
    }
    // The record is at least a header long (`record_len`): the split points exist.
    let Some((key, value)) = body
        .get(HEADER_LEN - 4..)
        .and_then(|kv| kv.split_at_checked(usize::from(header.key_len)))
    else {
        return Decoded::Invalid(Invalid::Truncated);
    };
    Decoded::Record(Record { header, key, value })
}

/// Finds the first offset after `from` in `buf` where a valid record starts.
///
/// Used by recovery to tell a torn tail (nothing valid follows) from corruption
/// in the middle, and by repair to resume after a damaged region.
pub fn find_next_valid(buf: &[u8], from: usize, salt: u32) -> Option<usize> {
    let mut at = from;
    while let Some(rest) = buf.get(at..).filter(|rest| rest.len() >= HEADER_LEN) {
        // Cheap filter on the version and op bytes before the checksum.
        if let &[_, _, _, _, version, kind, ..] = rest {
            if version == RECORD_VERSION
                && (Op::from_u8(kind & 3).is_some() || kind & FLAG_TAG != 0)
                && matches!(decode(rest, salt), Decoded::Record(_))
            {
                return Some(at);
            }
        }
        at += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const SALT: u32 = 0x5EED_CAFE;

    fn one(op: Op, key: &[u8], value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode(&mut out, SALT, op, 0, 42, 1_700_000_000_000, 7, key, value);
        out
    }

    #[test]
    fn round_trip_every_op() {
        for op in [Op::Put, Op::Del, Op::Purge] {
            let buf = one(op, b"a.b", b"value");
            assert_eq!(buf.len(), encoded_len(3, 5));
            match decode(&buf, SALT) {
                Decoded::Record(r) => {
                    assert_eq!(r.header.op, op);
                    assert_eq!(r.header.revision, 42);
                    assert_eq!(r.header.created_ms, 1_700_000_000_000);
                    assert_eq!(r.header.expires_ms, 7);
                    assert_eq!(r.key, b"a.b");
                    assert_eq!(r.value, b"value");
                    assert!(!r.header.batch_more());
                }
                other => panic!("expected a record, got {other:?}"),
            }
        }
    }

    #[test]
    fn batch_flags_round_trip_and_standalone_keeps_checksum_valid() {
        let mut buf = Vec::new();
        encode(
            &mut buf,
            SALT,
            Op::Put,
            FLAG_BATCH_MORE | FLAG_BATCH_CONT,
            1,
            2,
            0,
            b"k",
            b"v",
        );
        match decode(&buf, SALT) {
            Decoded::Record(r) => assert!(r.header.batch_more() && r.header.batch_cont()),
            other => panic!("{other:?}"),
        }
        make_standalone(&mut buf, SALT);
        assert!(
            matches!(decode(&buf, SALT), Decoded::Record(r) if !r.header.batch_more() && !r.header.batch_cont())
        );
    }

    #[test]
    fn tag_records_round_trip_and_are_found_after_garbage() {
        let mut buf = vec![0xAB; 5];
        encode_tag(
            &mut buf,
            SALT,
            FLAG_BATCH_CONT,
            9,
            1_700_000_000_000,
            b"\x01tag",
        );
        match decode(&buf[5..], SALT) {
            Decoded::Record(r) => {
                assert!(r.header.is_tag() && r.header.batch_cont() && !r.header.batch_more());
                assert_eq!(
                    (r.header.revision, r.header.created_ms),
                    (9, 1_700_000_000_000)
                );
                assert_eq!((r.key, r.value), (&b"\x01tag"[..], &b""[..]));
            }
            other => panic!("expected a tag record, got {other:?}"),
        }
        assert_eq!(find_next_valid(&buf, 0, SALT), Some(5));
        // An entry's op bits with the tag flag, or a value, are not a tag record.
        let mut bad = buf[5..].to_vec();
        bad[5] |= 1;
        assert!(matches!(parse_header(&bad), Err(Invalid::BadHeader)));
        let mut bad = buf[5..].to_vec();
        bad[8] = 1;
        assert!(matches!(parse_header(&bad), Err(Invalid::BadHeader)));
        // make_standalone keeps the tag flag.
        let mut copy = buf[5..].to_vec();
        make_standalone(&mut copy, SALT);
        assert!(
            matches!(decode(&copy, SALT), Decoded::Record(r) if r.header.is_tag() && !r.header.batch_cont())
        );
    }

    #[test]
    fn zeros_are_the_end() {
        assert!(matches!(decode(&[], SALT), Decoded::End));
        assert!(matches!(decode(&[0; 100], SALT), Decoded::End));
        assert!(matches!(decode(&[0; 3], SALT), Decoded::End));
    }

    #[test]
    fn every_truncation_is_invalid_never_a_record() {
        let buf = one(Op::Put, b"key", b"some value");
        for cut in 1..buf.len() {
            match decode(&buf[..cut], SALT) {
                Decoded::Record(_) => panic!("truncated at {cut} decoded as a record"),
                Decoded::End | Decoded::Invalid(_) => {}
            }
        }
    }

    #[test]
    fn every_bit_flip_is_detected() {
        let buf = one(Op::Put, b"key", b"some value");
        for byte in 0..buf.len() {
            for bit in 0..8 {
                let mut bad = buf.clone();
                bad[byte] ^= 1 << bit;
                assert!(
                    !matches!(decode(&bad, SALT), Decoded::Record(_)),
                    "flip of byte {byte} bit {bit} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn a_record_is_only_valid_in_a_segment_with_its_salt() {
        let buf = one(Op::Put, b"k", b"v");
        assert!(matches!(decode(&buf, SALT), Decoded::Record(_)));
        assert!(matches!(
            decode(&buf, SALT ^ 1),
            Decoded::Invalid(Invalid::BadChecksum)
        ));
        // A record stored inside a value is just bytes in another segment.
        let mut outer = Vec::new();
        encode(&mut outer, SALT ^ 1, Op::Put, 0, 9, 1, 0, b"blob", &buf);
        assert_eq!(find_next_valid(&outer, 1, SALT ^ 1), None);
    }

    #[test]
    fn find_next_valid_skips_garbage() {
        let mut buf = vec![0xAB; 17];
        let rec = one(Op::Put, b"k", b"v");
        buf.extend_from_slice(&rec);
        assert_eq!(find_next_valid(&buf, 0, SALT), Some(17));
        assert_eq!(find_next_valid(&buf, 18, SALT), None);
    }
}
