//! What a log entry carries: a store-level command stamped with the leader's time, and what
//! applying it gives back.
//!
//! Every command names its bucket (bucket creation and removal included) and applying one
//! touches that bucket only, so a later version can run one Raft group per bucket with the
//! same entries. Commands are applied in log order on every node; preconditions are checked
//! and revisions assigned at apply, so outcomes and revisions are the same everywhere.
//!
//! The serialized form (postcard, after a version byte, see [`encode_proposal`]) is what the
//! Raft log stores and what the nodes send each other.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

mod proposal;
pub mod shared;
pub(crate) use proposal::encoded_size_hint;
pub use proposal::{
    decode_proposal, decode_shared_proposal, encode_proposal, FormatError, Proposal,
    COMMAND_FORMAT, MAX_PROPOSAL_BYTES,
};

/// A store-level command. Each one concerns a single bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// `BUCKET CREATE`.
    CreateBucket {
        /// The bucket.
        bucket: String,
        /// Its configuration.
        config: BucketSpec,
    },
    /// `BUCKET DROP`.
    DropBucket {
        /// The bucket.
        bucket: String,
    },
    /// A change of a bucket's configuration. Reserved in the format: the engine has no API
    /// for it yet, so applying it answers `BADARG` on every node alike.
    ConfigureBucket {
        /// The bucket.
        bucket: String,
        /// The new configuration.
        config: BucketSpec,
    },
    /// Writes to one bucket: an atomic batch (MULTI/EXEC: all or none) or independent writes
    /// (a pipeline: each succeeds or fails on its own, in order).
    Write {
        /// The bucket.
        bucket: String,
        /// All or none.
        atomic: bool,
        /// The writes, in order.
        ops: Vec<Op>,
    },
    /// `DELGLOB`: a DEL marker for every live key matching the glob at apply.
    DeleteGlob {
        /// The bucket.
        bucket: String,
        /// The glob.
        glob: String,
    },
    /// TTL expiries and age-outs as of the entry's time: DEL markers for expired values,
    /// entries past the bucket's max age dropped. Proposed by the leader only.
    Sweep {
        /// The bucket.
        bucket: String,
    },
}

impl Command {
    /// The bucket the command concerns.
    pub fn bucket(&self) -> &str {
        match self {
            Command::CreateBucket { bucket, .. }
            | Command::DropBucket { bucket }
            | Command::ConfigureBucket { bucket, .. }
            | Command::Write { bucket, .. }
            | Command::DeleteGlob { bucket, .. }
            | Command::Sweep { bucket } => bucket,
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::CreateBucket { bucket, .. } => write!(f, "create bucket {bucket}"),
            Command::DropBucket { bucket } => write!(f, "drop bucket {bucket}"),
            Command::ConfigureBucket { bucket, .. } => write!(f, "configure bucket {bucket}"),
            Command::Write {
                bucket,
                atomic,
                ops,
            } => {
                let how = if *atomic { "atomic" } else { "each" };
                write!(f, "{} writes ({how}) to {bucket}", ops.len())
            }
            Command::DeleteGlob { bucket, glob } => write!(f, "delete {glob:?} in {bucket}"),
            Command::Sweep { bucket } => write!(f, "sweep {bucket}"),
        }
    }
}

/// A bucket's configuration as a command carries it (the engine's `BucketConfig`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketSpec {
    /// Revisions kept per key.
    pub history: u8,
    /// Max age of entries in ms, 0 for none.
    pub ttl_ms: u64,
    /// Max bytes, 0 for unlimited.
    pub max_bytes: u64,
    /// Max value size, 0 for unlimited.
    pub max_value_size: u64,
}

impl From<logkv::BucketConfig> for BucketSpec {
    fn from(c: logkv::BucketConfig) -> BucketSpec {
        BucketSpec {
            history: c.history,
            ttl_ms: c.ttl_ms(),
            max_bytes: c.max_bytes,
            max_value_size: c.max_value_size,
        }
    }
}

impl From<BucketSpec> for logkv::BucketConfig {
    fn from(s: BucketSpec) -> logkv::BucketConfig {
        logkv::BucketConfig {
            history: s.history,
            ttl: (s.ttl_ms > 0).then(|| Duration::from_millis(s.ttl_ms)),
            max_bytes: s.max_bytes,
            max_value_size: s.max_value_size,
        }
    }
}

/// The precondition of one write (the engine's `WriteOp` kinds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpKind {
    /// PUT.
    Put,
    /// CREATE: only if the key has no live value.
    Create,
    /// UPDATE: only if this is the key's latest revision.
    Update(u64),
    /// CAS: only if the current value is this (or, with `None`, there is none).
    Cas(Option<Bytes>),
    /// DEL, with `DEL key REV n` the revision it must be.
    Delete(Option<u64>),
    /// PURGE.
    Purge,
    /// REVERT to this revision.
    Revert(u64),
}

/// One write as a command carries it: what the server parses a write verb into, and what
/// becomes a `logkv::WriteOp` at apply ([`Op::to_write_op`]). Built with the same
/// constructors as `WriteOp`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// The precondition.
    pub kind: OpKind,
    /// The key.
    pub key: String,
    /// The value (empty for DEL, PURGE, REVERT). Decoded from a shared buffer, a slice of
    /// it ([`shared`]).
    #[serde(deserialize_with = "shared::bytes")]
    pub value: Bytes,
    /// The value's time to live in ms.
    pub ttl_ms: Option<u64>,
    /// Return the key's previous live entry.
    pub return_previous: bool,
}

impl Op {
    fn new(kind: OpKind, key: impl Into<String>, value: Bytes) -> Op {
        Op {
            kind,
            key: key.into(),
            value,
            ttl_ms: None,
            return_previous: false,
        }
    }

    /// See `logkv::WriteOp::put`.
    pub fn put(key: impl Into<String>, value: impl Into<Bytes>) -> Op {
        Op::new(OpKind::Put, key, value.into())
    }

    /// See `logkv::WriteOp::create`.
    pub fn create(key: impl Into<String>, value: impl Into<Bytes>) -> Op {
        Op::new(OpKind::Create, key, value.into())
    }

    /// See `logkv::WriteOp::update`.
    pub fn update(key: impl Into<String>, value: impl Into<Bytes>, revision: u64) -> Op {
        Op::new(OpKind::Update(revision), key, value.into())
    }

    /// See `logkv::WriteOp::cas`.
    pub fn cas(key: impl Into<String>, new: impl Into<Bytes>, expected: Option<Bytes>) -> Op {
        Op::new(OpKind::Cas(expected), key, new.into())
    }

    /// See `logkv::WriteOp::delete`.
    pub fn delete(key: impl Into<String>) -> Op {
        Op::new(OpKind::Delete(None), key, Bytes::new())
    }

    /// See `logkv::WriteOp::delete_at`.
    pub fn delete_at(key: impl Into<String>, revision: u64) -> Op {
        Op::new(OpKind::Delete(Some(revision)), key, Bytes::new())
    }

    /// See `logkv::WriteOp::purge`.
    pub fn purge(key: impl Into<String>) -> Op {
        Op::new(OpKind::Purge, key, Bytes::new())
    }

    /// See `logkv::WriteOp::revert`.
    pub fn revert(key: impl Into<String>, revision: u64) -> Op {
        Op::new(OpKind::Revert(revision), key, Bytes::new())
    }

    /// See `logkv::WriteOp::with_ttl`.
    #[must_use]
    pub fn with_ttl(mut self, ttl: Duration) -> Op {
        self.ttl_ms = Some(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
        self
    }

    /// See `logkv::WriteOp::returning_previous`.
    #[must_use]
    pub fn returning_previous(mut self) -> Op {
        self.return_previous = true;
        self
    }

    /// The key written.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Bytes of key and value.
    pub fn size(&self) -> usize {
        self.key.len() + self.value.len()
    }

    /// The engine's operation.
    pub fn to_write_op(&self) -> logkv::WriteOp {
        let key = self.key.clone();
        let value = self.value.clone();
        let mut op = match &self.kind {
            OpKind::Put => logkv::WriteOp::put(key, value),
            OpKind::Create => logkv::WriteOp::create(key, value),
            OpKind::Update(rev) => logkv::WriteOp::update(key, value, *rev),
            OpKind::Cas(expected) => logkv::WriteOp::cas(key, value, expected.clone()),
            OpKind::Delete(None) => logkv::WriteOp::delete(key),
            OpKind::Delete(Some(rev)) => logkv::WriteOp::delete_at(key, *rev),
            OpKind::Purge => logkv::WriteOp::purge(key),
            OpKind::Revert(rev) => logkv::WriteOp::revert(key, *rev),
        };
        if let Some(ms) = self.ttl_ms {
            op = op.with_ttl(Duration::from_millis(ms));
        }
        if self.return_previous {
            op = op.returning_previous();
        }
        op
    }
}

/// What applying a command gave: the same on every node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Done, nothing to report (bucket created or dropped, blank and membership entries).
    Done,
    /// Independent writes: each one's result, in order.
    Each(Vec<Result<WrittenData, OpError>>),
    /// An atomic batch: every write's result, or the failure that stopped it all.
    Atomic(Result<Vec<WrittenData>, OpError>),
    /// A count (keys deleted by DELGLOB, markers written by a sweep).
    Count(u64),
    /// The command failed as a whole (no such bucket, bucket exists, bad argument).
    Failed(OpError),
}

/// The result of one write (the engine's `Written`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrittenData {
    /// The revision the write got.
    pub revision: u64,
    /// The key's previous live entry, when asked for.
    pub previous: Option<EntryData>,
}

impl WrittenData {
    /// From the engine's result.
    pub fn from_engine(w: &logkv::Written) -> WrittenData {
        WrittenData {
            revision: w.revision,
            previous: w.previous.as_ref().map(EntryData::from_engine),
        }
    }

    /// The engine's result.
    pub fn to_engine(&self) -> logkv::Written {
        logkv::Written {
            revision: self.revision,
            previous: self.previous.as_ref().map(EntryData::to_engine),
        }
    }
}

/// An entry (the engine's `Entry`), as a write's previous value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryData {
    /// The bucket.
    pub bucket: String,
    /// The key.
    pub key: String,
    /// The value.
    pub value: Bytes,
    /// Its revision.
    pub revision: u64,
    /// When it was written, ms since the epoch.
    pub created_ms: u64,
    /// PUT, DEL or PURGE, as the engine's `Op::as_str`.
    pub op: String,
    /// When it expires, 0 for never.
    pub expires_ms: u64,
}

impl EntryData {
    /// From the engine's entry.
    pub fn from_engine(e: &logkv::Entry) -> EntryData {
        EntryData {
            bucket: e.bucket.to_string(),
            key: e.key.clone(),
            value: e.value.clone(),
            revision: e.revision,
            created_ms: e.created_ms,
            op: e.op.as_str().to_string(),
            expires_ms: e.expires_ms,
        }
    }

    /// The engine's entry.
    pub fn to_engine(&self) -> logkv::Entry {
        let op = match self.op.as_str() {
            "DEL" => logkv::Op::Del,
            "PURGE" => logkv::Op::Purge,
            _ => logkv::Op::Put,
        };
        logkv::Entry {
            bucket: Arc::from(self.bucket.as_str()),
            key: self.key.clone(),
            value: self.value.clone(),
            revision: self.revision,
            created_ms: self.created_ms,
            op,
            delta: 0,
            expires_ms: self.expires_ms,
        }
    }
}

/// An outcome of applying a command that is the same on every node (a precondition, a
/// missing bucket, a bad argument): the engine's error variants that are not about this
/// node's disk. Any other engine error at apply stops the node instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum OpError {
    /// See `logkv::Error::NotFound`.
    #[error("not found")]
    NotFound,
    /// See `logkv::Error::Exists`.
    #[error("key exists")]
    Exists,
    /// See `logkv::Error::WrongRevision`.
    #[error("expected {expected}, latest {latest}")]
    WrongRevision {
        /// Expected revision.
        expected: u64,
        /// Latest revision.
        latest: u64,
    },
    /// See `logkv::Error::Mismatch`.
    #[error("current value does not match")]
    Mismatch,
    /// See `logkv::Error::NoBucket`.
    #[error("no such bucket: {0}")]
    NoBucket(String),
    /// See `logkv::Error::BucketExists`.
    #[error("bucket exists: {0}")]
    BucketExists(String),
    /// See `logkv::Error::BadKey`.
    #[error("invalid key: {0}")]
    BadKey(String),
    /// See `logkv::Error::BadBucket`.
    #[error("invalid bucket name: {0}")]
    BadBucket(String),
    /// See `logkv::Error::BadArgument`.
    #[error("invalid argument: {0}")]
    BadArgument(String),
    /// See `logkv::Error::TooLarge`.
    #[error("value of {size} bytes exceeds the bucket's max value size of {max}")]
    TooLarge {
        /// The value's size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// See `logkv::Error::Full`.
    #[error("bucket is full: {used} + {adding} bytes would exceed max bytes {max}")]
    Full {
        /// Bytes held.
        used: u64,
        /// Bytes the write adds.
        adding: u64,
        /// The limit.
        max: u64,
    },
    /// See `logkv::Error::Batch`.
    #[error("batch write {index} failed: {source}")]
    Batch {
        /// The failed write's position.
        index: u64,
        /// Why it failed.
        source: Box<OpError>,
    },
    /// See `logkv::Error::Config`.
    #[error("configuration error: {0}")]
    Config(String),
}

impl OpError {
    /// The deterministic outcome an engine error stands for, or `None` for an error of this
    /// node (I/O, corruption, a closed store): those must stop the node, not become a reply.
    pub fn from_engine(e: &logkv::Error) -> Option<OpError> {
        use logkv::Error as E;
        Some(match e {
            E::NotFound => OpError::NotFound,
            E::Exists => OpError::Exists,
            E::WrongRevision { expected, latest } => OpError::WrongRevision {
                expected: *expected,
                latest: *latest,
            },
            E::Mismatch => OpError::Mismatch,
            E::NoBucket(b) => OpError::NoBucket(b.clone()),
            E::BucketExists(b) => OpError::BucketExists(b.clone()),
            E::BadKey(k) => OpError::BadKey(k.clone()),
            E::BadBucket(b) => OpError::BadBucket(b.clone()),
            E::BadArgument(a) => OpError::BadArgument(a.clone()),
            E::TooLarge { size, max } => OpError::TooLarge {
                size: *size as u64,
                max: *max as u64,
            },
            E::Full { used, adding, max } => OpError::Full {
                used: *used,
                adding: *adding,
                max: *max,
            },
            E::Batch { index, source } => OpError::Batch {
                index: *index as u64,
                source: Box::new(OpError::from_engine(source)?),
            },
            E::Config(c) => OpError::Config(c.clone()),
            _ => return None,
        })
    }

    /// The engine error it stands for (what the server encodes as a reply).
    pub fn to_engine(&self) -> logkv::Error {
        use logkv::Error as E;
        match self {
            OpError::NotFound => E::NotFound,
            OpError::Exists => E::Exists,
            OpError::WrongRevision { expected, latest } => E::WrongRevision {
                expected: *expected,
                latest: *latest,
            },
            OpError::Mismatch => E::Mismatch,
            OpError::NoBucket(b) => E::NoBucket(b.clone()),
            OpError::BucketExists(b) => E::BucketExists(b.clone()),
            OpError::BadKey(k) => E::BadKey(k.clone()),
            OpError::BadBucket(b) => E::BadBucket(b.clone()),
            OpError::BadArgument(a) => E::BadArgument(a.clone()),
            OpError::TooLarge { size, max } => E::TooLarge {
                size: usize::try_from(*size).unwrap_or(usize::MAX),
                max: usize::try_from(*max).unwrap_or(usize::MAX),
            },
            OpError::Full { used, adding, max } => E::Full {
                used: *used,
                adding: *adding,
                max: *max,
            },
            OpError::Batch { index, source } => E::Batch {
                index: usize::try_from(*index).unwrap_or(usize::MAX),
                source: Box::new(source.to_engine()),
            },
            OpError::Config(c) => E::Config(c.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `OpError::from_engine` and the engine's `Error::is_outcome` say the same of every
    /// engine error: an outcome is a reply on every node, anything else stops the node
    /// (a replicated apply fails whole on it). They are two lists of variants; this keeps
    /// them in step (a variant added to the engine needs a line here).
    #[test]
    fn outcomes_agree_with_the_engine() {
        use logkv::Error as E;
        let io = || E::io(std::path::Path::new("f"), std::io::Error::other("x"));
        let cases = [
            io(),
            E::Locked("d".into()),
            E::Corrupt {
                path: "f".into(),
                offset: 1,
                reason: "r".into(),
            },
            E::NotFound,
            E::Exists,
            E::WrongRevision {
                expected: 1,
                latest: 2,
            },
            E::Mismatch,
            E::NoBucket("b".into()),
            E::BucketExists("b".into()),
            E::BadKey("k".into()),
            E::BadBucket("b".into()),
            E::BadArgument("a".into()),
            E::TooLarge { size: 2, max: 1 },
            E::Full {
                used: 1,
                adding: 1,
                max: 1,
            },
            E::Batch {
                index: 1,
                source: Box::new(E::Mismatch),
            },
            E::Batch {
                index: 1,
                source: Box::new(io()),
            },
            E::ReadTooLarge { bytes: 2, max: 1 },
            E::WatchTooLarge { bytes: 2, max: 1 },
            E::Poisoned {
                reason: "r".into(),
                path: "f".into(),
            },
            E::in_doubt(io()),
            E::PartlyDone {
                done: 1,
                source: Box::new(io()),
            },
            E::PathExists("d".into()),
            E::Config("c".into()),
            E::Lost { first_retained: 1 },
            E::Closed,
            E::Internal("i".into()),
            E::InjectedCrash("c".into()),
        ];
        for e in &cases {
            let op = OpError::from_engine(e);
            assert_eq!(op.is_some(), e.is_outcome(), "{e:?}");
            if let Some(op) = op {
                assert_eq!(op.to_engine().to_string(), e.to_string(), "round trip");
            }
        }
    }

    #[test]
    fn proposals_round_trip() {
        let p = Proposal::new(
            1_700_000_000_000,
            Command::Write {
                bucket: "b".into(),
                atomic: true,
                ops: vec![
                    Op::put("k", "v").with_ttl(Duration::from_millis(5)),
                    Op::cas("k", "w", Some(Bytes::from_static(b"v"))).returning_previous(),
                    Op::delete_at("k", 3),
                ],
            },
        );
        let mut buf = Vec::new();
        encode_proposal(&p, &mut buf).unwrap();
        assert_eq!(buf[0], COMMAND_FORMAT);
        assert_eq!(decode_proposal(&buf).unwrap(), p);
        buf[0] = 9;
        assert!(matches!(
            decode_proposal(&buf),
            Err(FormatError::Version(9))
        ));
        assert!(matches!(decode_proposal(&[]), Err(FormatError::Empty)));
        assert!(decode_proposal(&[COMMAND_FORMAT, 0xff, 0xff]).is_err());
    }

    #[test]
    fn proposals_travel_as_their_stored_bytes() {
        let p = Proposal::new(7, Command::Sweep { bucket: "b".into() });
        let wire = postcard::to_stdvec(&p).unwrap();
        let mut stored = Vec::new();
        encode_proposal(&p, &mut stored).unwrap();
        // A byte string (its length, one byte here, then the stored form).
        assert_eq!(wire.len(), stored.len() + 1);
        assert!(wire.ends_with(&stored));
        let back: Proposal = postcard::from_bytes(&wire).unwrap();
        assert_eq!(back, p);
        assert_eq!(back.encoded().unwrap(), &stored[..]);
        // Clones share one proposal, encoded once.
        let clone = p.clone();
        assert!(std::ptr::eq(clone.encoded().unwrap(), p.encoded().unwrap()));
        let mut bad = wire.clone();
        bad[1] = 9;
        assert!(
            postcard::from_bytes::<Proposal>(&bad).is_err(),
            "unknown format"
        );
    }

    /// The size a proposal is checked against is never less than what it encodes to, for
    /// ops with every field at its widest.
    #[test]
    fn the_size_hint_bounds_the_encoding() {
        let long = "b".repeat(200);
        let ttl = Duration::from_millis(u64::MAX);
        let ops = [
            Op::update("k".repeat(1024), vec![7u8; 300], u64::MAX).with_ttl(ttl),
            Op::cas("k", "v".repeat(1000), Some(Bytes::from(vec![1u8; 5000]))).returning_previous(),
            Op::delete_at("k", u64::MAX).returning_previous(),
            Op::revert("k".repeat(1024), u64::MAX),
            Op::put("", ""),
        ];
        let commands = [
            Command::Write {
                bucket: long.clone(),
                atomic: true,
                ops: ops.iter().cloned().cycle().take(5_000).collect(),
            },
            Command::Write {
                bucket: "b".into(),
                atomic: false,
                ops: vec![Op::put("", ""); 10_000],
            },
            Command::DeleteGlob {
                bucket: long.clone(),
                glob: "*".repeat(1024),
            },
            Command::CreateBucket {
                bucket: long.clone(),
                config: BucketSpec::from(logkv::BucketConfig::default()),
            },
            Command::Sweep { bucket: long },
        ];
        for command in commands {
            let hint = encoded_size_hint(&command);
            let p = Proposal::new(u64::MAX, command);
            let len = p.encoded().unwrap().len();
            assert!(hint >= len, "{p}: hint {hint} < {len}");
        }
    }

    #[test]
    fn ops_become_the_engine_ops() {
        let op = Op::update("k", "v", 7).with_ttl(Duration::from_secs(1));
        let engine = logkv::WriteOp::update("k", "v", 7).with_ttl(Duration::from_secs(1));
        assert_eq!(op.to_write_op(), engine);
        assert_eq!(
            Op::delete("k").returning_previous().to_write_op(),
            logkv::WriteOp::delete("k").returning_previous()
        );
        assert_eq!(
            Op::revert("k", 2).to_write_op(),
            logkv::WriteOp::revert("k", 2)
        );
    }

    #[test]
    fn errors_map_both_ways() {
        let e = logkv::Error::Batch {
            index: 2,
            source: Box::new(logkv::Error::WrongRevision {
                expected: 1,
                latest: 4,
            }),
        };
        let op = OpError::from_engine(&e).unwrap();
        assert_eq!(op.to_engine().to_string(), e.to_string());
        assert!(OpError::from_engine(&logkv::Error::Closed).is_none());
        let io = logkv::Error::io(
            std::path::Path::new("x"),
            std::io::Error::other("disk on fire"),
        );
        assert!(OpError::from_engine(&io).is_none());
    }
}
