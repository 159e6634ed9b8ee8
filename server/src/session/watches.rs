//! A connection's watches and the delivery of their events.
//!
//! A connection's watches are engine [`Watch`]es: cursors into the bucket's log that are
//! pulled with `try_next()` (never blocking). The connection subscribes its [`Notify`] to
//! the bucket's pump ([`crate::pump`]) and, when woken, pulls events only while its
//! pending output is below a high-water mark: a client that does not read stops being
//! pulled for, so it never blocks writers nor grows the server's memory (the log is the
//! buffer).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use logkv::{Bucket, Error, Watch, WatchEvent, WatchOptions};
use tokio::sync::Notify;
use tracing::warn;

use crate::encode;
use crate::protocol::RespVersion;
use crate::pump::Pump;
use crate::shared::Shared;

/// Most watches one connection may hold.
pub(crate) const MAX_WATCHES: usize = 1024;

struct Slot {
    id: u64,
    /// The store generation the watch reads (a cluster node that installs a snapshot
    /// replaces its store: the watch then ends with `lost`).
    generation: u64,
    /// On a cluster node, the watch's `FROM` revision: a node behind the one the client
    /// resumes from still applies the revisions before it, which the client has seen.
    skip_below: u64,
    watch: Watch,
    with_value: bool,
    pump: Arc<Pump>,
    ended: bool,
}

/// A connection's watches.
pub(crate) struct Watches {
    shared: Arc<Shared>,
    list: Vec<Slot>,
    next_id: u64,
    /// Woken by the pumps of the watched buckets.
    pub notify: Arc<Notify>,
    /// Where the next pull starts (round robin between watches).
    start: usize,
}

impl Watches {
    pub fn new(shared: Arc<Shared>) -> Watches {
        Watches {
            shared,
            list: Vec::new(),
            next_id: 1,
            notify: Arc::new(Notify::new()),
            start: 0,
        }
    }

    /// Whether any watch is active.
    pub fn active(&self) -> bool {
        !self.list.is_empty()
    }

    /// How many watches are active.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Starts watching `pattern` on `bucket`; returns the new watch's id. Its events
    /// (initial data first) are pulled right after the reply.
    pub fn add(
        &mut self,
        bucket: &Bucket,
        pattern: &str,
        opts: WatchOptions,
    ) -> logkv::Result<u64> {
        // Subscribe before the watch takes its snapshot: a write in between still wakes us.
        let pump = self.shared.pumps.subscribe(bucket, &self.notify);
        let with_value = !opts.meta_only;
        let skip_below = if self.shared.cluster.is_some() {
            opts.from_revision.unwrap_or(0)
        } else {
            0
        };
        let watch = match bucket.watch(pattern, opts) {
            Ok(w) => w,
            Err(e) => {
                pump.unsubscribe(&self.notify);
                return Err(e);
            }
        };
        let id = self.next_id;
        self.next_id += 1;
        self.list.push(Slot {
            id,
            generation: self.shared.store_generation(),
            skip_below,
            watch,
            with_value,
            pump,
            ended: false,
        });
        self.shared.stats.watchers.fetch_add(1, Ordering::Relaxed);
        self.notify.notify_one();
        Ok(id)
    }

    /// Ends the watch `id`, if there is one.
    pub fn remove_id(&mut self, id: u64) {
        if let Some(i) = self.list.iter().position(|s| s.id == id) {
            self.remove(i);
        }
    }

    /// Ends every watch.
    pub fn clear(&mut self) {
        while let Some(last) = self.list.len().checked_sub(1) {
            self.remove(last);
        }
    }

    fn remove(&mut self, idx: usize) {
        let slot = self.list.remove(idx);
        slot.pump.unsubscribe(&self.notify);
        self.shared.stats.watchers.fetch_sub(1, Ordering::Relaxed);
    }

    /// Pulls events into `out` until every watch is drained or `out` reaches `high_water`.
    /// Returns true when it stopped at the high-water mark (more may be waiting).
    pub fn pull(&mut self, version: RespVersion, out: &mut Vec<u8>, high_water: usize) -> bool {
        let n = self.list.len();
        let mut full = false;
        let generation = self.shared.store_generation();
        for step in 0..n {
            let idx = (self.start + step) % n;
            let slot = &mut self.list[idx];
            if slot.ended {
                continue;
            }
            if slot.generation != generation {
                encode_lost(out, version, slot.id, 0);
                slot.ended = true;
                continue;
            }
            loop {
                if out.len() >= high_water {
                    full = true;
                    break;
                }
                match slot.watch.try_next() {
                    Ok(None) => break,
                    Ok(Some(WatchEvent::Entry(e))) if e.revision < slot.skip_below => {}
                    Ok(Some(ev)) => {
                        if encode_event(out, version, slot.id, slot.with_value, &ev) {
                            slot.ended = true;
                            break;
                        }
                    }
                    Err(e) => {
                        if !matches!(e, Error::Closed) {
                            warn!(watch = slot.id, "watch failed: {e}");
                        }
                        // The bucket was dropped (or the log failed): the watch ends.
                        encode_lost(out, version, slot.id, 0);
                        slot.ended = true;
                        break;
                    }
                }
            }
            if full {
                self.start = (idx + 1) % n;
                break;
            }
        }
        let mut i = 0;
        while i < self.list.len() {
            if self.list[i].ended {
                self.remove(i);
            } else {
                i += 1;
            }
        }
        full
    }
}

impl Drop for Watches {
    fn drop(&mut self) {
        self.clear();
    }
}

fn encode_lost(out: &mut Vec<u8>, version: RespVersion, id: u64, first_retained: u64) {
    encode::push(out, version, 4);
    encode::bulk(out, b"watch");
    encode::uint(out, id);
    encode::bulk(out, b"lost");
    encode::uint(out, first_retained);
}

/// Appends one watch frame; returns true if the watch has ended.
fn encode_event(
    out: &mut Vec<u8>,
    version: RespVersion,
    id: u64,
    with_value: bool,
    ev: &WatchEvent,
) -> bool {
    match ev {
        WatchEvent::Entry(e) => {
            encode::push(out, version, 3);
            encode::bulk(out, b"watch");
            encode::uint(out, id);
            encode::entry(out, version, e, with_value);
            false
        }
        WatchEvent::Ready => {
            encode::push(out, version, 3);
            encode::bulk(out, b"watch");
            encode::uint(out, id);
            encode::bulk(out, b"ready");
            false
        }
        WatchEvent::Lost { first_retained } => {
            encode_lost(out, version, id, *first_retained);
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames() {
        let mut out = Vec::new();
        assert!(!encode_event(
            &mut out,
            RespVersion::Resp3,
            7,
            true,
            &WatchEvent::Ready
        ));
        assert_eq!(out, b">3\r\n$5\r\nwatch\r\n:7\r\n$5\r\nready\r\n");
        out.clear();
        let lost = WatchEvent::Lost { first_retained: 42 };
        assert!(
            encode_event(&mut out, RespVersion::Resp2, 7, true, &lost),
            "lost ends the watch"
        );
        assert_eq!(out, b"*4\r\n$5\r\nwatch\r\n:7\r\n$4\r\nlost\r\n:42\r\n");
        out.clear();
        encode_lost(&mut out, RespVersion::Resp3, 1, 0);
        assert_eq!(out, b">4\r\n$5\r\nwatch\r\n:1\r\n$4\r\nlost\r\n:0\r\n");
    }
}
