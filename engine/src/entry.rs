//! What reads return and what writes take.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

pub use crate::log::record::Op;
use crate::log::LogPos;

/// One retained revision of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The bucket it belongs to.
    pub bucket: Arc<str>,
    /// The key.
    pub key: String,
    /// The value (empty for DEL and PURGE markers, and in meta-only watches).
    pub value: Bytes,
    /// The bucket revision of this write.
    pub revision: u64,
    /// When it was written, ms since the Unix epoch.
    pub created_ms: u64,
    /// PUT, DEL or PURGE.
    pub op: Op,
    /// In a watch's initial data: initial entries still to come after this one; else 0.
    pub delta: u64,
    /// When it expires (per-key TTL or bucket max age), ms since the epoch; 0 for never.
    pub expires_ms: u64,
}

/// An [`Entry`] borrowed from where it lies (the log, or an entry), made
/// without copying or allocating: what [`crate::Watch::try_next_ref`] hands
/// out. [`EntryRef::to_entry`] makes an owned copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryRef<'a> {
    /// The bucket it belongs to.
    pub bucket: &'a str,
    /// The key.
    pub key: &'a str,
    /// The value (empty for DEL and PURGE markers, and in meta-only watches).
    pub value: &'a [u8],
    /// The bucket revision of this write.
    pub revision: u64,
    /// When it was written, ms since the Unix epoch.
    pub created_ms: u64,
    /// PUT, DEL or PURGE.
    pub op: Op,
    /// In a watch's initial data: initial entries still to come after this one; else 0.
    pub delta: u64,
    /// When it expires (per-key TTL or bucket max age), ms since the epoch; 0 for never.
    pub expires_ms: u64,
}

impl EntryRef<'_> {
    /// An owned copy (the bucket name, key and value are copied).
    pub fn to_entry(&self) -> Entry {
        Entry {
            bucket: Arc::from(self.bucket),
            key: self.key.to_string(),
            value: Bytes::copy_from_slice(self.value),
            revision: self.revision,
            created_ms: self.created_ms,
            op: self.op,
            delta: self.delta,
            expires_ms: self.expires_ms,
        }
    }
}

impl Entry {
    /// This entry, borrowed.
    pub fn view(&self) -> EntryRef<'_> {
        EntryRef {
            bucket: &self.bucket,
            key: &self.key,
            value: &self.value,
            revision: self.revision,
            created_ms: self.created_ms,
            op: self.op,
            delta: self.delta,
            expires_ms: self.expires_ms,
        }
    }
}

/// The result of one write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The revision the write was given.
    pub revision: u64,
    /// The live entry the key had before, when the write asked for it
    /// ([`WriteOp::returning_previous`]).
    pub previous: Option<Entry>,
}

/// What a write that did not wait for durability hands back: pass it to
/// [`crate::Bucket::wait_durable`] to wait until the write is on stable storage.
///
/// Tickets of one bucket are ordered: waiting for the greatest of several
/// covers them all. The default ticket stands for nothing written and needs
/// no wait. A ticket belongs to the bucket that gave it (as opened: a bucket
/// dropped and created again under the same name is another bucket, see
/// [`crate::Bucket::id`]); another bucket refuses to wait for it.
#[must_use = "a write is not durable until its ticket has been waited for"]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DurabilityTicket {
    bucket: u64,
    end: LogPos,
}

impl DurabilityTicket {
    /// The ticket of bucket `bucket` (its [`crate::Bucket::id`]) for writes
    /// that end at `end` in its log.
    pub(crate) fn new(bucket: u64, end: LogPos) -> DurabilityTicket {
        DurabilityTicket { bucket, end }
    }

    /// The id of the bucket that gave the ticket (0 for the default ticket).
    pub fn bucket_id(self) -> u64 {
        self.bucket
    }

    /// The log position the writes end at.
    pub(crate) fn log_end(self) -> LogPos {
        self.end
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    Put,
    Create,
    Update(u64),
    Cas(Option<Bytes>),
    Delete(Option<u64>),
    Purge,
    Revert(u64),
}

/// One write, with its precondition. Build with the constructors; apply with
/// [`crate::Bucket::write`] (several at once are an atomic batch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteOp {
    pub(crate) kind: Kind,
    pub(crate) key: String,
    pub(crate) value: Bytes,
    pub(crate) ttl: Option<Duration>,
    pub(crate) return_previous: bool,
}

impl WriteOp {
    fn new(kind: Kind, key: impl Into<String>, value: Bytes) -> WriteOp {
        WriteOp {
            kind,
            key: key.into(),
            value,
            ttl: None,
            return_previous: false,
        }
    }

    /// Store `value` under `key`.
    pub fn put(key: impl Into<String>, value: impl Into<Bytes>) -> WriteOp {
        WriteOp::new(Kind::Put, key, value.into())
    }

    /// Store `value` only if `key` has no live value (its latest entry is missing,
    /// expired, a DEL or a PURGE); else [`crate::Error::Exists`].
    pub fn create(key: impl Into<String>, value: impl Into<Bytes>) -> WriteOp {
        WriteOp::new(Kind::Create, key, value.into())
    }

    /// Store `value` only if `revision` is the key's latest revision (a marker's
    /// too: that undeletes), or `revision` is 0 and the key has no retained
    /// entry; else [`crate::Error::WrongRevision`].
    pub fn update(key: impl Into<String>, value: impl Into<Bytes>, revision: u64) -> WriteOp {
        WriteOp::new(Kind::Update(revision), key, value.into())
    }

    /// Store `new` only if the current value equals `expected` (or, with `None`,
    /// if the key has no live value); else [`crate::Error::Mismatch`].
    pub fn cas(key: impl Into<String>, new: impl Into<Bytes>, expected: Option<Bytes>) -> WriteOp {
        WriteOp::new(Kind::Cas(expected), key, new.into())
    }

    /// Write a DEL marker (history kept). A missing key gets a marker too.
    pub fn delete(key: impl Into<String>) -> WriteOp {
        WriteOp::new(Kind::Delete(None), key, Bytes::new())
    }

    /// Write a DEL marker only if `revision` is the key's latest revision.
    pub fn delete_at(key: impl Into<String>, revision: u64) -> WriteOp {
        WriteOp::new(Kind::Delete(Some(revision)), key, Bytes::new())
    }

    /// Write a PURGE marker; every earlier revision of the key is dropped.
    pub fn purge(key: impl Into<String>) -> WriteOp {
        WriteOp::new(Kind::Purge, key, Bytes::new())
    }

    /// Write a new PUT carrying the value of retained revision `revision`;
    /// [`crate::Error::NotFound`] if that is not a retained, live PUT of this key.
    pub fn revert(key: impl Into<String>, revision: u64) -> WriteOp {
        WriteOp::new(Kind::Revert(revision), key, Bytes::new())
    }

    /// Give the value a time to live (PUT, CREATE, UPDATE, CAS).
    #[must_use]
    pub fn with_ttl(mut self, ttl: Duration) -> WriteOp {
        self.ttl = Some(ttl);
        self
    }

    /// Return the key's live entry from before this write in [`Written::previous`].
    #[must_use]
    pub fn returning_previous(mut self) -> WriteOp {
        self.return_previous = true;
        self
    }

    /// The key written.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Whether the write neither depends on nor returns its key's state: a PUT,
    /// DEL or PURGE with no precondition, not returning the previous entry.
    pub(crate) fn is_blind(&self) -> bool {
        !self.return_previous && matches!(self.kind, Kind::Put | Kind::Delete(None) | Kind::Purge)
    }

    pub(crate) fn record_op(&self) -> Op {
        match self.kind {
            Kind::Delete(_) => Op::Del,
            Kind::Purge => Op::Purge,
            _ => Op::Put,
        }
    }
}

/// Time left on a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ttl {
    /// The key has no live value.
    Missing,
    /// The value never expires.
    Forever,
    /// The value expires in this many milliseconds.
    Remaining(u64),
}

/// One page of a range scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// Pass as `from` to get the next page; `None` at the end.
    pub next: Option<String>,
    /// Live entries in key order.
    pub entries: Vec<Entry>,
}

/// Cheap counters of a bucket (see [`crate::Bucket::stats`]). More may come:
/// built only by the engine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BucketStats {
    /// Keys whose latest entry is a value (expired values not yet swept included).
    pub keys: u64,
    /// Entries stored, history included.
    pub values: u64,
    /// Bytes of retained records.
    pub bytes: u64,
    /// Bytes of records no longer retained, not yet compacted away.
    pub dead_bytes: u64,
    /// Segment files.
    pub segments: u64,
    /// fdatasync calls since open.
    pub fsyncs: u64,
    /// Compaction passes since open.
    pub compactions: u64,
    /// Whether a compaction pass is running now.
    pub compacting: bool,
    /// Last revision written.
    pub last_revision: u64,
}

/// A description of a bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketStatus {
    /// The bucket's name.
    pub bucket: String,
    /// Entries stored, history included.
    pub values: u64,
    /// Keys with a live value.
    pub keys: u64,
    /// Bytes of retained records.
    pub bytes: u64,
    /// Revisions kept per key.
    pub history: u8,
    /// Bucket TTL in ms, 0 for none.
    pub ttl_ms: u64,
    /// Max bytes, 0 for unlimited.
    pub max_bytes: u64,
    /// Max value size, 0 for unlimited.
    pub max_value_size: u64,
    /// Lowest retained revision (0 when empty).
    pub first_revision: u64,
    /// Last revision written.
    pub last_revision: u64,
    /// Segment files.
    pub segments: u64,
    /// fdatasync calls on this bucket's log since open.
    pub fsyncs: u64,
    /// Bytes in segments no longer retained (reclaimed by compaction).
    pub dead_bytes: u64,
    /// Compaction passes run since open.
    pub compactions: u64,
    /// Bytes reclaimed by compaction since open.
    pub reclaimed_bytes: u64,
}
