//! How a Raft entry is stored: one record of the engine's log format per entry.
//!
//! The record (framing, checksum with the segment's salt: `logkv::log::record`) is a PUT
//! whose key is the entry's index as 8 big-endian bytes, whose revision is the index + 1
//! (revisions rise in log order and start above 0, and openraft's first index is 0), with
//! no creation or expiry time. Its value is the entry: `index u64 | term u64 | leader node
//! u64 | kind u8 | payload`, little-endian, the payload being nothing (blank), a proposal in
//! the command format (normal) or the membership in postcard (membership).

use openraft::entry::RaftEntry;
use openraft::EntryPayload;

use crate::command::{decode_proposal, encode_proposal};
use crate::fsutil::invalid;
use crate::types::{Entry, LogId, Membership};

/// Bytes of a stored entry before its payload.
const FIXED: usize = 25;

const KIND_BLANK: u8 = 0;
const KIND_NORMAL: u8 = 1;
const KIND_MEMBERSHIP: u8 = 2;

/// The record key of the entry at `index`.
pub fn key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// The record revision of the entry at `index`.
pub fn revision(index: u64) -> u64 {
    index + 1
}

/// Appends the stored form of `entry` to `out`.
pub fn encode_entry(entry: &Entry, out: &mut Vec<u8>) -> std::io::Result<()> {
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
    Ok(())
}

/// The log id at the start of a stored entry.
pub fn stored_log_id(stored: &[u8]) -> std::io::Result<LogId> {
    let word = |at: usize| -> std::io::Result<u64> {
        stored
            .get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
            .ok_or_else(|| invalid("short stored entry"))
    };
    Ok(LogId::new(
        openraft::impls::leader_id_adv::LeaderId {
            term: word(8)?,
            node_id: word(16)?,
        },
        word(0)?,
    ))
}

/// Decodes a stored entry.
pub fn decode_entry(stored: &[u8]) -> std::io::Result<Entry> {
    let log_id = stored_log_id(stored)?;
    let kind = *stored
        .get(FIXED - 1)
        .ok_or_else(|| invalid("short stored entry"))?;
    let payload = stored.get(FIXED..).unwrap_or_default();
    let payload: EntryPayload<crate::command::Proposal, u64, crate::types::Node> = match kind {
        KIND_BLANK => EntryPayload::Blank,
        KIND_NORMAL => {
            EntryPayload::Normal(decode_proposal(payload).map_err(|e| invalid(e.to_string()))?)
        }
        KIND_MEMBERSHIP => {
            let m: Membership = postcard::from_bytes(payload)
                .map_err(|e| invalid(format!("membership entry: {e}")))?;
            EntryPayload::Membership(m)
        }
        other => return Err(invalid(format!("unknown entry kind {other}"))),
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
            payload: EntryPayload::Normal(Proposal::new(5, Command::Sweep { bucket: "b".into() })),
        };
        let blank = Entry {
            log_id: id(1, 1, 0),
            payload: EntryPayload::Blank,
        };
        for entry in [normal, blank] {
            let mut buf = Vec::new();
            encode_entry(&entry, &mut buf).unwrap();
            assert_eq!(stored_log_id(&buf).unwrap(), entry.log_id);
            assert_eq!(decode_entry(&buf).unwrap(), entry);
            assert!(decode_entry(&buf[..FIXED - 1]).is_err(), "short");
            let mut bad = buf.clone();
            bad[FIXED - 1] = 9;
            assert!(decode_entry(&bad).is_err(), "unknown kind");
        }
        assert_eq!(key(0x0102), [0, 0, 0, 0, 0, 0, 1, 2]);
        assert_eq!(revision(0), 1);
    }
}
