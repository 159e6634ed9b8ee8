//! The engine's one error type.

use std::path::{Path, PathBuf};

/// Result alias for the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the engine. New variants may be added:
/// match with a catch-all arm ([`Error::cause`] and [`Error::is_outcome`]
/// classify them).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system I/O error on a named file or directory.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// Another store (in this process or another) holds the directory lock.
    #[error("{} is locked: another logkv store has it open (in this or another process)", .0.display())]
    Locked(PathBuf),
    /// A segment holds bytes that are not valid records before its tail.
    #[error("corrupt log {} at offset {offset}: {reason} (open with repair to keep every valid record)", path.display())]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// Byte offset of the damage in the file.
        offset: u64,
        /// What is wrong there.
        reason: String,
    },
    /// The key has no value (or the revision asked for is not retained).
    #[error("not found")]
    NotFound,
    /// `create` on a key that has a live value.
    #[error("key exists")]
    Exists,
    /// An expected revision did not match the key's latest revision.
    #[error("expected {expected}, latest {latest}")]
    WrongRevision {
        /// The revision the caller expected.
        expected: u64,
        /// The key's latest revision (0 when it has no entry).
        latest: u64,
    },
    /// A compare-and-swap by value found another value.
    #[error("current value does not match")]
    Mismatch,
    /// No bucket by that name.
    #[error("no such bucket: {0}")]
    NoBucket(String),
    /// A bucket by that name exists already.
    #[error("bucket exists: {0}")]
    BucketExists(String),
    /// The key is not a valid key (see [`crate::validate_key`]).
    #[error("invalid key: {0}")]
    BadKey(String),
    /// The bucket name is not valid (1–64 of `[A-Za-z0-9_-]`).
    #[error("invalid bucket name: {0}")]
    BadBucket(String),
    /// An argument is out of range or malformed.
    #[error("invalid argument: {0}")]
    BadArgument(String),
    /// The value is larger than the bucket's max value size.
    #[error("value of {size} bytes exceeds the bucket's max value size of {max}")]
    TooLarge {
        /// The value's size.
        size: usize,
        /// The largest size allowed.
        max: usize,
    },
    /// The write would take the bucket over its max bytes.
    #[error("bucket is full: {used} + {adding} bytes would exceed max bytes {max}")]
    Full {
        /// Bytes the bucket would hold besides the write's record: what it holds
        /// now, with the earlier writes of the same call, less what the write
        /// replaces (the older entries of its key it drops from retention).
        used: u64,
        /// Bytes the write would add.
        adding: u64,
        /// The bucket's max bytes.
        max: u64,
    },
    /// One write of an atomic batch failed its precondition; nothing was written.
    #[error("batch write {index} failed: {source}")]
    Batch {
        /// Position of the failed write in the batch, from 0.
        index: usize,
        /// Why it failed.
        #[source]
        source: Box<Error>,
    },
    /// A read of many keys would return more than `Options::max_read_bytes`.
    #[error("the result holds at least {bytes} bytes, over the read limit of {max} bytes (narrow the request, e.g. with LIMIT)")]
    ReadTooLarge {
        /// Bytes of the result counted when it was refused (a lower bound).
        bytes: u64,
        /// The limit.
        max: u64,
    },
    /// A watch's initial data would list more than `WatchOptions::max_initial_bytes`.
    #[error("the watch's initial data lists at least {bytes} bytes of keys, over the limit of {max} bytes (narrow the pattern, or watch UPDATESONLY, or FROM a recent revision)")]
    WatchTooLarge {
        /// Bytes of the list counted when it was refused (a lower bound).
        bytes: u64,
        /// The limit.
        max: u64,
    },
    /// A previous fsync failed; the log may have lost data and refuses writes until reopened.
    #[error("log {} failed an earlier fsync ({reason}); reopen the store", path.display())]
    Poisoned {
        /// What the failed fsync said.
        reason: String,
        /// The segment being synced.
        path: PathBuf,
    },
    /// The outcome is unknown: a write is in the log, but the sync that was to
    /// make it durable failed or could not run (no descriptor), or its `pwrite`
    /// failed part way; it may be durable, and visible, after the next sync or
    /// a restart, or never (read the key to know). Or a bucket drop failed and
    /// could not be undone durably: the bucket is dropped, and a restart may
    /// find it dropped or whole. Nothing else leaves an outcome unknown.
    #[error(
        "outcome unknown ({source}): it may be found done after the next sync or a restart, or not"
    )]
    InDoubt {
        /// Why it was not made durable.
        #[source]
        source: Box<Error>,
    },
    /// A delete of many keys ([`crate::Bucket::delete_glob`]) failed part way:
    /// `done` keys were deleted before the failure, each as by
    /// [`crate::Bucket::delete`] (the waiting call waited for them as for a success:
    /// a failure of that wait is the source, [`Error::InDoubt`]).
    #[error("{source}; {done} keys were deleted before it")]
    PartlyDone {
        /// The keys deleted before the failure.
        done: usize,
        /// What failed.
        #[source]
        source: Box<Error>,
    },
    /// A checkpoint's directory (or anything else by that name) exists already.
    #[error("{} exists already", .0.display())]
    PathExists(PathBuf),
    /// Invalid configuration or options.
    #[error("configuration error: {0}")]
    Config(String),
    /// The watched data was compacted away before the watcher read it.
    #[error("watch lost: revisions before {first_retained} were compacted away")]
    Lost {
        /// The lowest revision still retained.
        first_retained: u64,
    },
    /// The store or bucket was closed or dropped.
    #[error("store closed")]
    Closed,
    /// The engine found one of its own invariants broken (a bug, not a
    /// problem of the caller's or of the disk's).
    #[error("internal error: {0}")]
    Internal(String),
    /// A test stopped a compaction pass at this step as if the process had
    /// crashed there (only with the `failpoints` feature; see
    /// `Bucket::set_compaction_crash_point`).
    #[error("injected crash at {0}")]
    InjectedCrash(String),
}

impl Error {
    /// The error of a write whose sync failed (see [`Error::InDoubt`]).
    pub fn in_doubt(source: Error) -> Error {
        Error::InDoubt {
            source: Box::new(source),
        }
    }

    /// Whether this error is an answer about the data (a precondition, a bad key
    /// or argument, a limit, a missing or existing bucket): the same on every
    /// store that holds the same data. Any other (I/O, corruption, a poisoned
    /// log, a closed store) is this store's own.
    pub fn is_outcome(&self) -> bool {
        match self {
            Error::NotFound
            | Error::Exists
            | Error::WrongRevision { .. }
            | Error::Mismatch
            | Error::NoBucket(_)
            | Error::BucketExists(_)
            | Error::BadKey(_)
            | Error::BadBucket(_)
            | Error::BadArgument(_)
            | Error::TooLarge { .. }
            | Error::Full { .. }
            | Error::Config(_) => true,
            Error::Batch { source, .. } => source.is_outcome(),
            _ => false,
        }
    }

    /// The error this one reports, seen through [`Error::InDoubt`],
    /// [`Error::Batch`] and [`Error::PartlyDone`]: what went wrong, not how it
    /// reached the caller.
    pub fn cause(&self) -> &Error {
        match self {
            Error::InDoubt { source }
            | Error::Batch { source, .. }
            | Error::PartlyDone { source, .. } => source.cause(),
            other => other,
        }
    }

    /// Whether this error (seen through [`Error::cause`]) says no descriptor
    /// was left to open a file (`EMFILE`, `ENFILE`): the call that failed
    /// wrote and synced nothing, and may succeed once descriptors are free.
    pub fn is_out_of_descriptors(&self) -> bool {
        matches!(self.cause(), Error::Io { source, .. } if crate::io::out_of_descriptors(source))
    }

    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: &Path, source: std::io::Error) -> Error {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
