//! WATCH / UNWATCH and the delivery of watch events.
//!
//! A connection's watches are engine [`Watch`]es: cursors into the bucket's log that are
//! pulled with `try_next()` (never blocking). The connection subscribes its [`Notify`] to
//! the bucket's pump ([`crate::pump`]) and, when woken, pulls events only while its
//! pending output is below a high-water mark: a client that does not read stops being
//! pulled for, so it never blocks writers nor grows the server's memory (the log is the
//! buffer).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use logkv::{Error, Watch, WatchEvent, WatchOptions};
use tokio::sync::Notify;
use tracing::warn;

use super::{is, syntax, text_arg, uint_arg, Verb};
use crate::protocol::Reply;
use crate::pump::Pump;
use crate::reply::{self, engine_error};
use crate::server::Shared;
use crate::session::{Flow, Session};

/// Most watches one connection may hold.
pub(crate) const MAX_WATCHES: usize = 1024;

struct Slot {
    id: u64,
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

    fn remove(&mut self, idx: usize) {
        let slot = self.list.remove(idx);
        self.shared.pumps.unsubscribe(&slot.pump, &self.notify);
        self.shared.stats.watchers.fetch_sub(1, Ordering::Relaxed);
    }

    /// Pulls events into `out` until every watch is drained or `out` reaches `high_water`.
    /// Returns true when it stopped at the high-water mark (more may be waiting).
    pub fn pull(&mut self, proto: u8, out: &mut Vec<u8>, high_water: usize) -> bool {
        let n = self.list.len();
        let mut full = false;
        for step in 0..n {
            let idx = (self.start + step) % n;
            let slot = &mut self.list[idx];
            if slot.ended {
                continue;
            }
            loop {
                if out.len() >= high_water {
                    full = true;
                    break;
                }
                match slot.watch.try_next() {
                    Ok(None) => break,
                    Ok(Some(ev)) => {
                        if encode_event(out, proto, slot.id, slot.with_value, &ev) {
                            slot.ended = true;
                            break;
                        }
                    }
                    Err(e) => {
                        if !matches!(e, Error::Closed) {
                            warn!(watch = slot.id, "watch failed: {e}");
                        }
                        // The bucket was dropped (or the log failed): the watch ends.
                        encode_lost(out, proto, slot.id, 0);
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
        while !self.list.is_empty() {
            self.remove(self.list.len() - 1);
        }
    }
}

fn encode_lost(out: &mut Vec<u8>, proto: u8, id: u64, first_retained: u64) {
    reply::push(out, proto, 4);
    reply::bulk(out, b"watch");
    reply::uint(out, id);
    reply::bulk(out, b"lost");
    reply::uint(out, first_retained);
}

/// Appends one watch frame; returns true if the watch has ended.
fn encode_event(out: &mut Vec<u8>, proto: u8, id: u64, with_value: bool, ev: &WatchEvent) -> bool {
    match ev {
        WatchEvent::Entry(e) => {
            reply::push(out, proto, 3);
            reply::bulk(out, b"watch");
            reply::uint(out, id);
            reply::entry(out, proto, e, with_value);
            false
        }
        WatchEvent::Ready => {
            reply::push(out, proto, 3);
            reply::bulk(out, b"watch");
            reply::uint(out, id);
            reply::bulk(out, b"ready");
            false
        }
        WatchEvent::Lost { first_retained } => {
            encode_lost(out, proto, id, *first_retained);
            true
        }
    }
}

impl Session {
    /// `WATCH pattern [HISTORY] [METAONLY] [NODELETES] [UPDATESONLY] [FROM rev]`
    pub(crate) fn watch(&mut self, args: &[Bytes], out: &mut Vec<u8>) -> Result<Flow, Reply> {
        let pattern = text_arg(&args[1], "pattern")?;
        let mut opts = WatchOptions::default();
        let mut rest = &args[2..];
        while let [word, tail @ ..] = rest {
            rest = tail;
            if is(word, "HISTORY") {
                opts.include_history = true;
            } else if is(word, "METAONLY") {
                opts.meta_only = true;
            } else if is(word, "NODELETES") {
                opts.ignore_deletes = true;
            } else if is(word, "UPDATESONLY") {
                opts.updates_only = true;
            } else if is(word, "FROM") {
                let [rev, tail @ ..] = rest else {
                    return Err(syntax(Verb::Watch, word));
                };
                opts.from_revision = Some(uint_arg(rev, "revision")?);
                rest = tail;
            } else {
                return Err(syntax(Verb::Watch, word));
            }
        }
        if self.watches.list.len() >= MAX_WATCHES {
            return Err(Reply::err(
                "ERR",
                format!("too many watches on this connection (limit {MAX_WATCHES})"),
            ));
        }
        // Subscribe before the watch takes its snapshot: a write in between still wakes us.
        let bucket = {
            self.with_bucket(|b| b.ttl("_").map(|_| ()))
                .map_err(|e| engine_error(&e))?;
            self.bucket.clone()
        };
        let pump = self.shared.pumps.subscribe(&bucket, &self.watches.notify);
        let with_value = !opts.meta_only;
        let watch = match bucket.watch(pattern, opts) {
            Ok(w) => w,
            Err(e) => {
                self.shared.pumps.unsubscribe(&pump, &self.watches.notify);
                return Err(engine_error(&e));
            }
        };
        let w = &mut self.watches;
        let id = w.next_id;
        w.next_id += 1;
        w.list.push(Slot {
            id,
            watch,
            with_value,
            pump,
            ended: false,
        });
        self.shared.stats.watchers.fetch_add(1, Ordering::Relaxed);
        // Have the connection pull the initial data right after this reply.
        self.watches.notify.notify_one();
        reply::uint(out, id);
        Ok(Flow::Continue)
    }

    /// `UNWATCH [id]`: `:watches left`.
    pub(crate) fn unwatch(&mut self, args: &[Bytes], out: &mut Vec<u8>) -> Result<Flow, Reply> {
        match args.get(1) {
            Some(id) => {
                let id = uint_arg(id, "watch id")?;
                if let Some(i) = self.watches.list.iter().position(|s| s.id == id) {
                    self.watches.remove(i);
                }
            }
            None => {
                while !self.watches.list.is_empty() {
                    let last = self.watches.list.len() - 1;
                    self.watches.remove(last);
                }
            }
        }
        reply::uint(out, self.watches.list.len() as u64);
        Ok(Flow::Continue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames() {
        let mut out = Vec::new();
        assert!(!encode_event(&mut out, 3, 7, true, &WatchEvent::Ready));
        assert_eq!(out, b">3\r\n$5\r\nwatch\r\n:7\r\n$5\r\nready\r\n");
        out.clear();
        let lost = WatchEvent::Lost { first_retained: 42 };
        assert!(
            encode_event(&mut out, 2, 7, true, &lost),
            "lost ends the watch"
        );
        assert_eq!(out, b"*4\r\n$5\r\nwatch\r\n:7\r\n$4\r\nlost\r\n:42\r\n");
        out.clear();
        encode_lost(&mut out, 3, 1, 0);
        assert_eq!(out, b">4\r\n$5\r\nwatch\r\n:1\r\n$4\r\nlost\r\n:0\r\n");
    }
}
