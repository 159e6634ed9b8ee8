//! The keys of a version 3 or 4 snapshot: fixed-width little-endian fields,
//! their widths chosen per snapshot (the fewest bytes that hold the bounds
//! the index keeps of its fields, see [`Widest`]), so that decoding a field
//! is one 8-byte load and a mask, not a loop over varint bytes, and encoding
//! one an 8-byte store. Version 3 keys ascend; version 4 keys come in the
//! order of the index's slab (no walk in key order to write them).
//!
//! Per key: bytes shared with the previous key and the length of the rest
//! (`key` bytes each), the rest, a u8 count of revisions, then per revision
//! oldest first: revision, effective expiry, segment index, offset and
//! `record length << 2 | op` in their widths. A width of 0 means the field is
//! 0 in every revision (no expiry anywhere, a single segment).

use super::Sink;
use crate::index::{copy_bytes, RecordRef, Widest};
use crate::key::MAX_KEY_LEN;
use crate::log::record::Op;

/// Bytes of each field, in the order they are stored after the tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Widths {
    /// Shared and rest lengths of a key: 1 or 2.
    key: usize,
    revision: usize,
    expiry: usize,
    segment: usize,
    offset: usize,
    len_op: usize,
}

/// The fields of one stored revision, as numbers.
struct Fields {
    revision: u64,
    expiry: u64,
    segment: u64,
    offset: u64,
    len_op: u64,
}

impl Fields {
    fn of(r: &RecordRef, segment: u32) -> Fields {
        Fields {
            revision: r.revision,
            expiry: r.expires_ms,
            segment: u64::from(segment),
            offset: u64::from(r.offset),
            len_op: (r.len() as u64) << 2 | r.op() as u64,
        }
    }
}

/// Fewest bytes that hold `v` (0 for 0).
fn bytes_for(v: u64) -> usize {
    (64 - v.leading_zeros() as usize).div_ceil(8)
}

/// The low `width` bytes of a u64 (`width` at most 8).
fn mask(width: usize) -> u64 {
    match width {
        0 => 0,
        8.. => u64::MAX,
        w => (1u64 << (8 * w)) - 1,
    }
}

/// `width` bytes (at most 8) at `at` in `buf` as a little-endian number: an
/// 8-byte load when the buffer has them (the caller checked that the field
/// itself is in bounds), masked.
#[inline]
fn load(buf: &[u8], at: usize, width: usize) -> u64 {
    let eight = buf
        .get(at..)
        .and_then(|s| s.first_chunk::<8>())
        .map_or_else(|| load_near_end(buf, at), |b| u64::from_le_bytes(*b));
    eight & mask(width)
}

/// [`load`] within the last 8 bytes of the buffer.
#[cold]
fn load_near_end(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    for (d, s) in b.iter_mut().zip(buf.get(at..).unwrap_or_default()) {
        *d = *s;
    }
    u64::from_le_bytes(b)
}

/// Appends the low `width` bytes of `v` (an 8-byte store, then the length
/// cut back); fails if `v` does not fit them.
#[inline]
fn put(out: &mut Vec<u8>, v: u64, width: usize) -> Result<(), &'static str> {
    if v > mask(width) {
        return Err("a field wider than its width");
    }
    let at = out.len();
    out.extend_from_slice(&v.to_le_bytes());
    out.truncate(at + width);
    Ok(())
}

impl Widths {
    /// The widths for an index whose fields are bounded by `widest`, in a
    /// snapshot listing `segments` segments (a revision in a segment the
    /// list does not hold is stored with index `segments`, which makes the
    /// snapshot unusable at load).
    pub fn bounding(widest: &Widest, segments: u32) -> Widths {
        Widths {
            key: if widest.key_len > 255 { 2 } else { 1 },
            revision: bytes_for(widest.revision),
            expiry: bytes_for(widest.expires_ms),
            segment: bytes_for(u64::from(segments)),
            offset: bytes_for(u64::from(widest.offset)),
            len_op: bytes_for((widest.record_len as u64) << 2 | 3),
        }
    }

    /// Appends the widths (6 bytes).
    #[allow(clippy::cast_possible_truncation, reason = "every width is at most 8")]
    pub fn write(&self, out: &mut Vec<u8>) {
        for w in [
            self.key,
            self.revision,
            self.expiry,
            self.segment,
            self.offset,
            self.len_op,
        ] {
            out.push(w as u8);
        }
    }

    /// Reads widths written by [`Widths::write`], checking each is possible.
    pub fn read(b: [u8; 6]) -> Result<Widths, &'static str> {
        let [key, revision, expiry, segment, offset, len_op] = b.map(usize::from);
        let ok = matches!(key, 1 | 2)
            && revision <= 8
            && expiry <= 8
            && segment <= 4
            && offset <= 4
            && len_op <= 4;
        if !ok {
            return Err("bad field widths");
        }
        Ok(Widths {
            key,
            revision,
            expiry,
            segment,
            offset,
            len_op,
        })
    }

    fn revision_bytes(&self) -> usize {
        self.revision + self.expiry + self.segment + self.offset + self.len_op
    }

    /// Appends one key: `shared` bytes with the key before, then the rest of
    /// `key` and its revisions (`segment_of` gives a revision's index in the
    /// snapshot's list). Fails if a field does not fit its width.
    pub fn put_key(
        &self,
        out: &mut Vec<u8>,
        key: &[u8],
        shared: usize,
        revs: &[RecordRef],
        segment_of: impl Fn(u32) -> u32,
    ) -> Result<(), &'static str> {
        let rest = key.get(shared..).unwrap_or_default();
        let count = u8::try_from(revs.len()).map_err(|_| "more than 255 revisions of one key")?;
        // Room for the whole key at once (8 bytes of slack for the last store).
        out.reserve(2 * self.key + rest.len() + 1 + revs.len() * self.revision_bytes() + 8);
        put(out, shared as u64, self.key)?;
        put(out, rest.len() as u64, self.key)?;
        out.extend_from_slice(rest);
        out.push(count);
        for r in revs {
            let f = Fields::of(r, segment_of(r.slot));
            put(out, f.revision, self.revision)?;
            put(out, f.expiry, self.expiry)?;
            put(out, f.segment, self.segment)?;
            put(out, f.offset, self.offset)?;
            put(out, f.len_op, self.len_op)?;
        }
        Ok(())
    }
}

/// The keys of a version 3 or 4 snapshot.
pub(super) struct FixedKeys<'a> {
    /// The whole file: fields are loaded 8 bytes at a time, past a part's end
    /// where they can (and masked).
    pub bytes: &'a [u8],
    pub widths: Widths,
    /// Number of segments the snapshot lists.
    pub segments: usize,
    /// Whether the keys ascend (version 3), checked as they are decoded;
    /// version 4's come in any order (the build checks for a key twice).
    pub ascending: bool,
}

impl FixedKeys<'_> {
    /// Decodes `count` keys from `bytes[from..to]` (exactly) into `sink`.
    pub fn decode(
        &self,
        from: usize,
        to: usize,
        count: usize,
        sink: &mut impl Sink,
    ) -> Result<(), &'static str> {
        let buf = self.bytes;
        let w = self.widths;
        let per_revision = w.revision_bytes();
        // Whether `n` more bytes from `at` stay inside the part.
        let fits = |at: usize, n: usize| at.checked_add(n).is_some_and(|end| end <= to);
        let mut at = from;
        let mut key = [0u8; MAX_KEY_LEN];
        let mut key_len = 0;
        let mut revs = Vec::new();
        for _ in 0..count {
            if !fits(at, 2 * w.key) {
                return Err("truncated");
            }
            #[allow(clippy::cast_possible_truncation, reason = "two bytes at most")]
            let (shared, rest_len) = (
                load(buf, at, w.key) as usize,
                load(buf, at + w.key, w.key) as usize,
            );
            at += 2 * w.key;
            if shared > key_len || shared + rest_len > MAX_KEY_LEN || !fits(at, rest_len) {
                return Err("bad key lengths");
            }
            let rest = buf.get(at..at + rest_len).ok_or("truncated")?;
            at += rest_len;
            if self.ascending && !sink.is_empty() {
                // Keys must ascend: the first byte after the shared part
                // decides (a full comparison otherwise), as in version 2.
                let old = key.get(shared..key_len).unwrap_or_default();
                let ascends = match (old.first(), rest.first()) {
                    (Some(o), Some(n)) if o != n => n > o,
                    (None, Some(_)) => true,
                    _ => rest > old,
                };
                if !ascends {
                    return Err("keys out of order");
                }
            }
            key_len = shared + rest_len;
            copy_bytes(key.get_mut(shared..key_len).ok_or("bad key lengths")?, rest);
            let n = usize::from(*buf.get(at).filter(|_| fits(at, 1)).ok_or("truncated")?);
            at += 1;
            if !fits(at, n * per_revision) {
                return Err("truncated");
            }
            revs.clear();
            for _ in 0..n {
                let revision = load(buf, at, w.revision);
                at += w.revision;
                let expires = load(buf, at, w.expiry);
                at += w.expiry;
                let segment = load(buf, at, w.segment);
                at += w.segment;
                let offset = load(buf, at, w.offset);
                at += w.offset;
                let len_op = load(buf, at, w.len_op);
                at += w.len_op;
                #[allow(
                    clippy::cast_possible_truncation,
                    reason = "masked to 2 bits; the segment index to at most 4 bytes and checked against the list"
                )]
                let (op, segment) = (
                    Op::from_u8((len_op & 3) as u8).ok_or("bad op")?,
                    segment as u32,
                );
                let len = len_op >> 2;
                if segment as usize >= self.segments || len >= 1 << 30 {
                    return Err("revision out of range");
                }
                #[allow(clippy::cast_possible_truncation, reason = "below 2^30, checked above")]
                revs.push(RecordRef::new(
                    revision,
                    expires,
                    // The slot recovery gives the segment at position
                    // `segment` when it opens the log (see `Snapshot::apply`).
                    segment + 1,
                    offset,
                    len as usize,
                    op,
                ));
            }
            sink.push_key(key.get(..key_len).unwrap_or_default(), &revs)?;
        }
        if at != to {
            return Err("trailing bytes");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widths_are_the_fewest_bytes() {
        assert_eq!(bytes_for(0), 0);
        assert_eq!(bytes_for(1), 1);
        assert_eq!(bytes_for(255), 1);
        assert_eq!(bytes_for(256), 2);
        assert_eq!(bytes_for(u64::MAX), 8);
        for w in 0..=8 {
            let v = mask(w);
            assert_eq!(bytes_for(v), w);
            let mut buf = Vec::new();
            put(&mut buf, v, w).unwrap();
            assert_eq!(buf.len(), w);
            // Read back at the very end of a buffer (no 8 bytes to load) and inside one.
            assert_eq!(load(&buf, 0, w), v);
            buf.extend_from_slice(&[0xAB; 8]);
            assert_eq!(load(&buf, 0, w), v);
        }
    }

    #[test]
    fn impossible_widths_are_refused() {
        assert!(Widths::read([1, 8, 8, 4, 4, 4]).is_ok());
        assert!(Widths::read([1, 0, 0, 0, 0, 0]).is_ok());
        for bad in [
            [0, 1, 1, 1, 1, 1],
            [3, 1, 1, 1, 1, 1],
            [1, 9, 1, 1, 1, 1],
            [1, 1, 9, 1, 1, 1],
            [1, 1, 1, 5, 1, 1],
            [1, 1, 1, 1, 5, 1],
            [1, 1, 1, 1, 1, 5],
        ] {
            assert_eq!(Widths::read(bad), Err("bad field widths"), "{bad:?}");
        }
    }
}
