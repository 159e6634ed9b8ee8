//! The keys of version 1 and 2 snapshots (LEB128 varints), still read at
//! open; snapshots are written in version 3 (`fields.rs`).

use super::{Reader, Sink};
use crate::index::RecordRef;
use crate::log::record::Op;

impl Reader<'_> {
    fn varint(&mut self) -> Result<u64, &'static str> {
        let rest = self.buf.get(self.at..).unwrap_or_default();
        let mut v = 0u64;
        for (i, &b) in rest.iter().take(10).enumerate() {
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                self.at += i + 1;
                return Ok(v);
            }
        }
        Err(if rest.len() < 10 {
            "truncated"
        } else {
            "varint too long"
        })
    }

    /// A varint that counts something held in memory.
    fn count(&mut self) -> Result<usize, &'static str> {
        usize::try_from(self.varint()?).map_err(|_| "count out of range")
    }
}

/// The keys of a version 1 or 2 snapshot's body.
pub(super) struct VarintKeys<'a> {
    pub body: &'a [u8],
    /// Number of segments the snapshot lists.
    pub segments: usize,
}

impl VarintKeys<'_> {
    /// Decodes `count` keys from `body[from..to]` (exactly) into `sink`.
    pub fn decode(
        &self,
        from: usize,
        to: usize,
        count: usize,
        sink: &mut impl Sink,
    ) -> Result<(), &'static str> {
        let mut r = Reader {
            buf: self.body.get(..to).ok_or("truncated")?,
            at: from,
        };
        let mut key: Vec<u8> = Vec::new();
        let mut revs = Vec::new();
        for _ in 0..count {
            let shared = r.count()?;
            let rest = r.count()?;
            if shared > key.len() || shared + rest > crate::key::MAX_KEY_LEN {
                return Err("bad key lengths");
            }
            let rest = r.take(rest)?;
            // Keys must ascend. The writer shares as much as it can, so the first
            // byte after the shared part decides (a full comparison otherwise).
            let ascends = match (key.get(shared), rest.first()) {
                (Some(old), Some(new)) if old != new => new > old,
                (None, Some(_)) => true,
                _ => rest > key.get(shared..).unwrap_or_default(),
            };
            if !ascends && !sink.is_empty() {
                return Err("keys out of order");
            }
            key.truncate(shared);
            key.extend_from_slice(rest);
            let n = usize::from(r.u8()?);
            revs.clear();
            for _ in 0..n {
                let revision = r.varint()?;
                let expires = r.varint()?;
                let seg = u32::try_from(r.varint()?).map_err(|_| "bad segment")?;
                let offset = u32::try_from(r.varint()?).map_err(|_| "bad offset")?;
                let len_op = r.varint()?;
                let op = Op::from_u8((len_op & 3) as u8).ok_or("bad op")?;
                let len = usize::try_from(len_op >> 2).map_err(|_| "bad length")?;
                if seg as usize >= self.segments || len >= 1 << 30 {
                    return Err("revision out of range");
                }
                revs.push(RecordRef::new(
                    revision,
                    expires,
                    // The slot recovery gives the segment at position `seg`
                    // when it opens the log (from 1, in log order): no remap then.
                    seg + 1,
                    u64::from(offset),
                    len,
                    op,
                ));
            }
            sink.push_key(&key, &revs)?;
        }
        if r.at != to {
            return Err("trailing bytes");
        }
        Ok(())
    }
}
