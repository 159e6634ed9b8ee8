//! [`Proposal`]: what one log entry carries, shared and encoded once.
//!
//! A proposal is immutable once made. It is held behind an `Arc`, so the Raft log's cache of
//! recent entries and each follower's replication stream share one copy, and it keeps its
//! encoded form (a version byte, then postcard) from the first time it is needed: the Raft
//! log stores those bytes and the nodes send each other the same bytes, so an entry is
//! serialized once on the leader and decoded once on each follower.

use std::fmt;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{shared, Command, OpKind};

/// Version byte in front of every serialized [`Proposal`].
pub const COMMAND_FORMAT: u8 = 1;

/// A log entry's application payload: a command and the leader's clock when it was proposed
/// (the time every node applies it at: `created`, TTL expiries, age-outs). Cloning shares it.
#[derive(Clone)]
pub struct Proposal(Arc<Inner>);

struct Inner {
    time_ms: u64,
    command: Arc<Command>,
    /// [`encode_proposal`]'s bytes, made on first use (or kept from decoding: a slice of
    /// the buffer it came in, see [`decode_shared_proposal`]).
    encoded: OnceLock<Bytes>,
}

/// The fields in their serialized order (postcard writes a struct as its fields in order).
#[derive(Serialize)]
struct BodyRef<'a> {
    time_ms: u64,
    command: &'a Command,
}

#[derive(Deserialize)]
struct Body {
    time_ms: u64,
    command: Command,
}

impl Proposal {
    /// `command`, proposed at `time_ms` (the leader's wall clock, ms since the Unix epoch).
    pub fn new(time_ms: u64, command: Command) -> Proposal {
        Proposal::shared(time_ms, Arc::new(command))
    }

    /// [`Proposal::new`] with a command shared with its caller (who may propose it again).
    pub fn shared(time_ms: u64, command: Arc<Command>) -> Proposal {
        Proposal(Arc::new(Inner {
            time_ms,
            command,
            encoded: OnceLock::new(),
        }))
    }

    /// The leader's wall clock when it was proposed, ms since the Unix epoch.
    pub fn time_ms(&self) -> u64 {
        self.0.time_ms
    }

    /// What to do.
    pub fn command(&self) -> &Command {
        &self.0.command
    }

    /// The serialized form: [`COMMAND_FORMAT`], then postcard. Made once.
    pub fn encoded(&self) -> Result<&[u8], FormatError> {
        if let Some(bytes) = self.0.encoded.get() {
            return Ok(bytes);
        }
        let mut out = Vec::with_capacity(encoded_size_hint(self.command()));
        out.push(COMMAND_FORMAT);
        let body = BodyRef {
            time_ms: self.0.time_ms,
            command: self.command(),
        };
        out = postcard::to_extend(&body, out)?;
        Ok(self.0.encoded.get_or_init(|| Bytes::from(out)))
    }
}

/// Most bytes one proposal may encode to (counted as the encoder sizes its buffer: keys,
/// values and their varints): one replicated entry must fit one frame between nodes with
/// room for the request around it (a larger one could never be sent, and the leader would
/// retry it forever while every later write waited behind it).
pub const MAX_PROPOSAL_BYTES: usize = crate::net::frame::MAX_FRAME - (4 << 20);

/// About the bytes a command encodes to, so that the buffer is allocated once, not doubled
/// from empty through a group's megabyte: keys and values, and the varints around them.
/// Never less than the encoding takes, so it is also what [`MAX_PROPOSAL_BYTES`] is
/// checked against.
pub(crate) fn encoded_size_hint(command: &Command) -> usize {
    /// The format byte, the time, the variant, the flag and the op count.
    const FIXED: usize = 32;
    /// At most: the variant and its revision or CAS value's length, the key's and the
    /// value's lengths, the TTL and the flag (varints of up to 10 bytes each).
    const PER_OP: usize = 1 + 10 + 10 + 10 + 11 + 1;
    let named = |bucket: &str| bucket.len() + 10 + FIXED;
    match command {
        Command::Write { bucket, ops, .. } => ops
            .iter()
            .map(|o| {
                let expected = match &o.kind {
                    OpKind::Cas(Some(v)) => v.len(),
                    _ => 0,
                };
                o.key.len() + o.value.len() + expected + PER_OP
            })
            .sum::<usize>()
            .saturating_add(named(bucket)),
        Command::DeleteGlob { bucket, glob } => named(bucket) + glob.len() + 10,
        other => named(other.bucket()) + 64,
    }
}

impl PartialEq for Proposal {
    fn eq(&self, other: &Proposal) -> bool {
        self.0.time_ms == other.0.time_ms && self.0.command == other.0.command
    }
}

impl Eq for Proposal {}

impl fmt::Debug for Proposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proposal")
            .field("time_ms", &self.0.time_ms)
            .field("command", &self.0.command)
            .finish()
    }
}

impl fmt::Display for Proposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} @{}", self.0.command, self.0.time_ms)
    }
}

/// On the wire a proposal is one byte string: its [`Proposal::encoded`] form.
impl Serialize for Proposal {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.encoded().map_err(serde::ser::Error::custom)?)
    }
}

impl<'de> Deserialize<'de> for Proposal {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Proposal, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Proposal;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an encoded proposal")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Proposal, E> {
                decode_proposal(v).map_err(E::custom)
            }
            fn visit_borrowed_bytes<E: serde::de::Error>(
                self,
                v: &'de [u8],
            ) -> Result<Proposal, E> {
                match shared::share(v) {
                    Some(bytes) => decode_shared_proposal(bytes),
                    None => decode_proposal(v),
                }
                .map_err(E::custom)
            }
        }
        d.deserialize_bytes(Visitor)
    }
}

/// A stored or received command that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// Empty input.
    #[error("empty command")]
    Empty,
    /// A version this build does not know.
    #[error("command format {0} is not supported (this build reads {COMMAND_FORMAT})")]
    Version(u8),
    /// The bytes do not decode.
    #[error("undecodable command: {0}")]
    Decode(#[from] postcard::Error),
}

/// Appends a proposal's serialized form (the format version, then postcard) to `out`.
pub fn encode_proposal(p: &Proposal, out: &mut Vec<u8>) -> Result<(), FormatError> {
    out.extend_from_slice(p.encoded()?);
    Ok(())
}

/// Reads a proposal written by [`encode_proposal`]; it keeps a copy of `bytes` as its
/// encoded form.
pub fn decode_proposal(bytes: &[u8]) -> Result<Proposal, FormatError> {
    decode_shared_proposal(Bytes::copy_from_slice(bytes))
}

/// [`decode_proposal`] without a copy: the proposal keeps `bytes` as its encoded form, and
/// its writes' values are slices of it (or of the larger buffer being decoded, see
/// [`shared::decode_within`]).
pub fn decode_shared_proposal(bytes: Bytes) -> Result<Proposal, FormatError> {
    let (&version, _) = bytes.split_first().ok_or(FormatError::Empty)?;
    if version != COMMAND_FORMAT {
        return Err(FormatError::Version(version));
    }
    let Body { time_ms, command } = shared::decode_within(&bytes, |b| {
        postcard::from_bytes(b.get(1..).unwrap_or_default())
    })?;
    Ok(Proposal(Arc::new(Inner {
        time_ms,
        command: Arc::new(command),
        encoded: OnceLock::from(bytes),
    })))
}
