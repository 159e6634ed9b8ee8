//! logkv: an embeddable, log-structured key-value store.
//!
//! Data lives in buckets. Each bucket has its own append-only log of
//! checksummed records, an in-memory index from key to its retained
//! revisions, and its own revision counter. Semantics follow NATS `JetStream`
//! key/value buckets: revisions, create/update, delete vs purge, history.
//!
//! ```
//! use logkv::{Store, Options, BucketConfig};
//!
//! let dir = tempfile::tempdir()?;
//! let store = Store::open(dir.path(), Options::default())?;
//! let users = store.create_bucket("users", BucketConfig { history: 5, ..Default::default() })?;
//!
//! let r1 = users.put("user.1.name", "ada")?;
//! let r2 = users.update("user.1.name", "ada lovelace", r1)?;
//! assert_eq!(users.get("user.1.name")?.as_deref(), Some(&b"ada lovelace"[..]));
//! assert_eq!(users.entry_at("user.1.name", r1)?.unwrap().value, "ada");
//!
//! users.delete("user.1.name")?;
//! assert_eq!(users.get("user.1.name")?, None);
//! assert_eq!(users.history("user.1.name")?.len(), 3);
//! assert!(users.update("user.1.name", "x", r2).is_err()); // not the latest any more
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]
// A panic in the engine takes the whole store (or server) down: no unwrap on
// what the disk, a caller or a peer can cause, no index that is not proven in
// range (`get` or checked code returns a typed error instead).
#![warn(clippy::unwrap_used, clippy::indexing_slicing)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::indexing_slicing))]

mod bucket;
mod checkpoint;
pub mod clock;
mod config;
mod entry;
mod error;
pub mod fsutil;
pub mod fsync;
pub mod index;
pub mod io;
mod key;
mod latency;
mod lock;
pub mod log;
mod prefetch;
mod snapshot;
mod store;
mod sync;
mod watch_hub;

pub use bucket::compact::CompactionReport;
#[cfg(any(test, feature = "failpoints"))]
pub use bucket::compact::CrashPoint;
pub use bucket::handle::{ApplyMode, Bucket};
pub use bucket::watch::{Watch, WatchEvent, WatchEventRef, WatchMark, WatchOptions, WatchStep};
pub use checkpoint::{Checkpoint, CheckpointFile, CheckpointSource};
pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{BucketConfig, Options};
pub use entry::{
    BucketStats, BucketStatus, DurabilityTicket, Entry, EntryRef, Op, Page, Ttl, WriteOp, Written,
};
pub use error::{Error, Result};
pub use fsync::FsyncPolicy;
pub use key::{validate_bucket_name, validate_key, Glob, Subject, MAX_KEY_LEN};
pub use latency::Latencies;
pub use log::recovery::{RecoveryReport, Skipped};
pub use store::{Store, DEFAULT_BUCKET};
pub use watch_hub::ChangeHook;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
