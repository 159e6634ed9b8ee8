//! Store options and bucket configuration (and its file, `bucket.conf`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::fsutil::write_atomic;
use crate::fsync::FsyncPolicy;
use crate::io::Storage;

/// File holding a bucket's configuration, in the bucket's directory.
pub const CONFIG_FILE: &str = "bucket.conf";

/// Options for [`crate::Store::open`].
#[derive(Debug, Clone)]
pub struct Options {
    /// When writes become durable. Default: [`FsyncPolicy::Always`].
    pub fsync: FsyncPolicy,
    /// Segment size at which the log rotates. Default 64 MiB.
    pub segment_size: u64,
    /// Open a damaged log by keeping every valid record (and reporting what was
    /// skipped) instead of failing. Default false.
    pub repair: bool,
    /// Time source (TTL). Default: the system clock.
    pub clock: Arc<dyn Clock>,
    /// Run the background thread (interval fsync, TTL sweeping, compaction). Default true.
    pub background: bool,
    /// How often expired entries are swept. Default 1 s.
    pub sweep_interval: Duration,
    /// Compact a sealed segment once this share of its bytes is dead. Default 0.5.
    pub compact_dead_ratio: f64,
    /// A bucket whose log holds fewer bytes than this gets no index snapshot:
    /// scanning so little at open costs less than a file per bucket (it adds up
    /// over thousands of buckets). Default 64 KiB; 0 snapshots every log.
    pub snapshot_min_bytes: u64,
    /// Where the files live. Default: the operating system ([`Storage::os`]);
    /// tests use a simulated page cache.
    pub storage: Storage,
    /// The store is a replica: what it holds is applied from a replication log
    /// that outlives it (a cluster node's Raft log), which applies again, with
    /// the same revisions, whatever an unclean stop took back. So after such a
    /// stop the revision counters continue from the last revision recovered
    /// instead of skipping the revisions that may have been seen (see
    /// `Bucket::lost_revisions`). Default false.
    pub replicated: bool,
    /// The shortest time between two durability marks written after fsyncs
    /// (the mark tells recovery a torn tail from corruption). The mark sits in
    /// the first page of a segment, so a mark after every fsync makes each
    /// fsync flush two pages; a mark that lags stays a lower bound of what is
    /// durable, and damage to records synced after it is cut as a torn tail
    /// instead of refused as corruption. Default 50 ms; zero marks after every
    /// fsync.
    pub durability_mark_interval: Duration,
    /// Most bytes one read of many keys may return: the records (key, value and
    /// header) of HISTORY, SEARCH and SCAN, the keys of KEYS. A larger result
    /// is refused with [`crate::Error::ReadTooLarge`] at the pick that passes it,
    /// before any value is read. So is an atomic batch ([`crate::Bucket::write`]) whose
    /// writes would return previous values that together pass it, before anything is
    /// applied (not on a replica: see [`Options::replicated`]). Default 0: no limit.
    /// The server sets its `--max-output`, so that one request cannot make it hold more.
    pub max_read_bytes: u64,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            fsync: FsyncPolicy::Always,
            segment_size: 64 << 20,
            repair: false,
            clock: Arc::new(SystemClock),
            background: true,
            sweep_interval: Duration::from_secs(1),
            compact_dead_ratio: 0.5,
            snapshot_min_bytes: 64 * 1024,
            storage: Storage::os(),
            replicated: false,
            durability_mark_interval: crate::log::DEFAULT_MARK_EVERY,
            max_read_bytes: 0,
        }
    }
}

/// How a bucket keeps its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketConfig {
    /// Revisions kept per key, markers included: 1–64.
    pub history: u8,
    /// Maximum age of every entry; `None` for none.
    pub ttl: Option<Duration>,
    /// Maximum bytes of retained records (every retained entry's record,
    /// markers included); 0 for unlimited. A PUT that would leave the bucket
    /// over it, counting what the PUT replaces as gone, fails with
    /// [`crate::Error::Full`]; DEL and PURGE are always accepted.
    pub max_bytes: u64,
    /// Maximum value size in bytes; 0 for unlimited.
    pub max_value_size: u64,
}

impl Default for BucketConfig {
    fn default() -> BucketConfig {
        BucketConfig {
            history: 1,
            ttl: None,
            max_bytes: 0,
            max_value_size: 0,
        }
    }
}

impl BucketConfig {
    /// Checks the ranges.
    pub fn validate(&self) -> Result<()> {
        if !(1..=64).contains(&self.history) {
            return Err(Error::BadArgument(format!(
                "history {} outside 1-64",
                self.history
            )));
        }
        if self.ttl == Some(Duration::ZERO) {
            return Err(Error::BadArgument(
                "a bucket TTL of 0 means none: pass None".into(),
            ));
        }
        Ok(())
    }

    /// The bucket TTL in ms, 0 for none.
    pub fn ttl_ms(&self) -> u64 {
        self.ttl
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    /// The text of `bucket.conf`.
    pub(crate) fn encode(&self) -> String {
        format!(
            "# logkv bucket configuration\nversion=1\nhistory={}\nttl_ms={}\nmax_bytes={}\nmax_value={}\n",
            self.history,
            self.ttl_ms(),
            self.max_bytes,
            self.max_value_size
        )
    }

    pub(crate) fn save(&self, storage: &Storage, path: &Path) -> Result<()> {
        write_atomic(storage, path, self.encode().as_bytes())
    }

    /// Reads `bucket.conf` at `path`; `None` if there is no such file (a
    /// bucket whose creation never finished).
    pub(crate) fn load(path: &Path) -> Result<Option<BucketConfig>> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(path, e)),
        };
        Self::parse(path, &text).map(Some)
    }

    /// Parses the text of `bucket.conf` (read from `path`, named in errors).
    fn parse(path: &Path, text: &str) -> Result<BucketConfig> {
        let bad = |why: String| Error::Config(format!("{}: {why}", path.display()));
        let mut c = BucketConfig::default();
        let mut version = None;
        for line in text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| bad(format!("line {line:?} is not name=value")))?;
            let n: u64 = v
                .trim()
                .parse()
                .map_err(|_| bad(format!("{k}: {v:?} is not a number")))?;
            match k.trim() {
                "version" => version = Some(n),
                "history" => {
                    c.history = u8::try_from(n).map_err(|_| bad(format!("history {n}")))?;
                }
                "ttl_ms" => c.ttl = (n > 0).then(|| Duration::from_millis(n)),
                "max_bytes" => c.max_bytes = n,
                "max_value" => c.max_value_size = n,
                other => return Err(bad(format!("unknown setting {other:?}"))),
            }
        }
        if version != Some(1) {
            return Err(bad("missing or unsupported version".into()));
        }
        c.validate().map_err(|e| bad(e.to_string()))?;
        Ok(c)
    }
}
