//! The bytes of the Raft log: segment headers and entry records.
//!
//! A segment file is a 32-byte header (`magic | version u32 | first index u64 | crc32 of the
//! 20 bytes before | padding`) followed by records. A record is `body length u32 | crc32 of
//! the body u32 | body`, all little-endian; the body is `index u64 | term u64 | leader node
//! u64 | kind u8 | payload`, the payload being nothing (blank), a proposal in the command
//! format (normal) or the membership in postcard (membership). A zero length marks the end:
//! the space after the last record is zero-filled ahead of the writer.

use openraft::entry::RaftEntry;
use openraft::EntryPayload;

use crate::command::{decode_proposal, encode_proposal};
use crate::types::{Entry, LogId, Membership};

/// First bytes of every segment file.
pub const MAGIC: &[u8; 8] = b"LKVRAFT\0";
/// Segment format version.
pub const VERSION: u32 = 1;
/// Bytes of the segment header.
pub const HEADER_LEN: usize = 32;
/// Bytes of a record's length and checksum.
pub const FRAME_LEN: usize = 8;
/// Bytes of a record body before the payload.
const BODY_FIXED: usize = 25;
/// Largest record body accepted when reading (a length past it is damage).
pub const MAX_BODY: usize = 1 << 30;

const KIND_BLANK: u8 = 0;
const KIND_NORMAL: u8 = 1;
const KIND_MEMBERSHIP: u8 = 2;

/// The header of a segment that starts at `first_index`.
pub fn encode_header(first_index: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..20].copy_from_slice(&first_index.to_le_bytes());
    let crc = crc32fast::hash(&h[..20]);
    h[20..24].copy_from_slice(&crc.to_le_bytes());
    h
}

/// The first index a segment header names, or why it is not a header.
pub fn decode_header(h: &[u8]) -> Result<u64, &'static str> {
    let h = h
        .get(..HEADER_LEN)
        .ok_or("file shorter than a segment header")?;
    if &h[..8] != MAGIC {
        return Err("not a Raft log segment (bad magic)");
    }
    let crc = u32::from_le_bytes(h[20..24].try_into().map_err(|_| "short header")?);
    if crc != crc32fast::hash(&h[..20]) {
        return Err("segment header fails its checksum");
    }
    if u32::from_le_bytes(h[8..12].try_into().map_err(|_| "short header")?) != VERSION {
        return Err("unsupported segment version");
    }
    Ok(u64::from_le_bytes(
        h[12..20].try_into().map_err(|_| "short header")?,
    ))
}

/// Appends the record of `entry` to `out`; returns its length.
pub fn encode_entry(entry: &Entry, out: &mut Vec<u8>) -> std::io::Result<usize> {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_LEN]);
    let id = entry.log_id;
    out.extend_from_slice(&id.index.to_le_bytes());
    out.extend_from_slice(&id.leader_id.term.to_le_bytes());
    out.extend_from_slice(&id.leader_id.node_id.to_le_bytes());
    match &entry.payload {
        EntryPayload::Blank => out.push(KIND_BLANK),
        EntryPayload::Normal(p) => {
            out.push(KIND_NORMAL);
            encode_proposal(p, out).map_err(std::io::Error::other)?;
        }
        EntryPayload::Membership(m) => {
            out.push(KIND_MEMBERSHIP);
            let bytes = postcard::to_stdvec(m).map_err(std::io::Error::other)?;
            out.extend_from_slice(&bytes);
        }
    }
    let body_len = out.len() - start - FRAME_LEN;
    let len = u32::try_from(body_len)
        .ok()
        .filter(|l| (*l as usize) <= MAX_BODY)
        .ok_or_else(|| {
            std::io::Error::other(format!("log entry of {body_len} bytes is too large"))
        })?;
    let crc = crc32fast::hash(&out[start + FRAME_LEN..]);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(out.len() - start)
}

/// What is at an offset of a segment.
#[derive(Debug)]
pub enum Framed<'a> {
    /// A record whose checksum matches: its body and its total length.
    Record(&'a [u8], usize),
    /// Zeros: the end of the written records.
    End,
    /// A torn or damaged record.
    Bad(&'static str),
}

/// Reads the record framing at the start of `buf`.
pub fn frame(buf: &[u8]) -> Framed<'_> {
    let Some((head, rest)) = buf.split_first_chunk::<FRAME_LEN>() else {
        return if buf.iter().all(|b| *b == 0) {
            Framed::End
        } else {
            Framed::Bad("torn record header")
        };
    };
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if len == 0 && crc == 0 {
        return Framed::End;
    }
    if !(BODY_FIXED..=MAX_BODY).contains(&len) {
        return Framed::Bad("impossible record length");
    }
    let Some(body) = rest.get(..len) else {
        return Framed::Bad("torn record (shorter than its length)");
    };
    if crc32fast::hash(body) != crc {
        return Framed::Bad("record fails its checksum");
    }
    Framed::Record(body, FRAME_LEN + len)
}

/// The log id at the start of a record body (checked by [`frame`]).
pub fn body_log_id(body: &[u8]) -> std::io::Result<LogId> {
    let word = |at: usize| -> std::io::Result<u64> {
        body.get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
            .ok_or_else(|| crate::fsutil::invalid("short record body"))
    };
    Ok(LogId::new(
        openraft::impls::leader_id_adv::LeaderId {
            term: word(8)?,
            node_id: word(16)?,
        },
        word(0)?,
    ))
}

/// Decodes a record body (checked by [`frame`]) into the entry.
pub fn decode_entry(body: &[u8]) -> std::io::Result<Entry> {
    let log_id = body_log_id(body)?;
    let kind = *body
        .get(24)
        .ok_or_else(|| crate::fsutil::invalid("short record body"))?;
    let payload = body.get(BODY_FIXED..).unwrap_or_default();
    let payload: EntryPayload<crate::command::Proposal, u64, crate::types::Node> = match kind {
        KIND_BLANK => EntryPayload::Blank,
        KIND_NORMAL => EntryPayload::Normal(
            decode_proposal(payload).map_err(|e| crate::fsutil::invalid(e.to_string()))?,
        ),
        KIND_MEMBERSHIP => {
            let m: Membership = postcard::from_bytes(payload)
                .map_err(|e| crate::fsutil::invalid(format!("membership entry: {e}")))?;
            EntryPayload::Membership(m)
        }
        other => {
            return Err(crate::fsutil::invalid(format!(
                "unknown entry kind {other}"
            )))
        }
    };
    Ok(<Entry as RaftEntry>::new(log_id, payload))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Command, Proposal};

    fn id(term: u64, node: u64, index: u64) -> LogId {
        LogId::new(
            openraft::impls::leader_id_adv::LeaderId {
                term,
                node_id: node,
            },
            index,
        )
    }

    #[test]
    fn entries_round_trip() {
        let normal = Entry {
            log_id: id(3, 2, 17),
            payload: EntryPayload::Normal(Proposal {
                time_ms: 5,
                command: Command::Sweep { bucket: "b".into() },
            }),
        };
        let blank = Entry {
            log_id: id(1, 1, 1),
            payload: EntryPayload::Blank,
        };
        let mut buf = Vec::new();
        let n1 = encode_entry(&normal, &mut buf).unwrap();
        let n2 = encode_entry(&blank, &mut buf).unwrap();
        assert_eq!(buf.len(), n1 + n2);
        let Framed::Record(body, len) = frame(&buf) else {
            panic!("a record")
        };
        assert_eq!(len, n1);
        assert_eq!(decode_entry(body).unwrap(), normal);
        assert_eq!(body_log_id(body).unwrap(), id(3, 2, 17));
        let Framed::Record(body, _) = frame(&buf[n1..]) else {
            panic!("a record")
        };
        assert_eq!(decode_entry(body).unwrap(), blank);
        assert!(matches!(frame(&[0u8; 20]), Framed::End));
        assert!(matches!(frame(&[]), Framed::End));
        let mut torn = buf[..n1 - 1].to_vec();
        assert!(matches!(frame(&torn), Framed::Bad(_)));
        torn = buf.clone();
        torn[12] ^= 1;
        assert!(matches!(frame(&torn), Framed::Bad(_)));
    }

    #[test]
    fn headers() {
        let h = encode_header(42);
        assert_eq!(decode_header(&h), Ok(42));
        let mut bad = h;
        bad[13] ^= 1;
        assert!(decode_header(&bad).is_err());
        assert!(decode_header(&h[..10]).is_err());
    }
}
