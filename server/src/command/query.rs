//! Multi-key reads: HISTORY KEYS SEARCH SCAN, and DELGLOB.

use std::sync::Arc;

use bytes::Bytes;
use logkv::{Bucket, Subject};

use super::args::{is, text, uint, Args};
use super::Flow;
use crate::encode::{self, engine_error};
use crate::protocol::Reply;
use crate::session::Session;

/// The current bucket, if `args` is a read in key order there (KEYS or HISTORY
/// of a pattern, SEARCH, SCAN, a WATCH that sends initial values) and the
/// bucket's key order is not built yet: the connection builds it on the
/// blocking pool first ([`logkv::Bucket::build_key_order`]). Built inline, the
/// first such read of a large bucket would hold up every connection of its
/// worker thread while it sorts the keys (about 0.15 s for a million). Only a
/// hint: a request this says nothing of builds the order itself if it must.
pub(crate) fn key_order_to_build(s: &mut Session, args: &[Bytes]) -> Option<Bucket> {
    if !s.authed || s.multi.is_some() {
        return None;
    }
    let (verb, rest) = args.split_first()?;
    let pattern_walks = |p: Option<&Bytes>| {
        let p = p.map_or(">", |p| std::str::from_utf8(p).unwrap_or(""));
        Subject::new(p).is_ok_and(|subject| !subject.is_literal())
    };
    let walks = if is(verb, "KEYS") || is(verb, "HISTORY") {
        pattern_walks(rest.first())
    } else if is(verb, "SEARCH") {
        // Across buckets (IN), each bucket builds its own.
        !rest.iter().any(|w| is(w, "IN"))
    } else if is(verb, "SCAN") {
        true
    } else if is(verb, "WATCH") {
        // Initial values (a walk of the pattern's prefix) unless updates only.
        rest.iter().any(|w| is(w, "FROM")) || !rest.iter().any(|w| is(w, "UPDATESONLY"))
    } else {
        false
    };
    if !walks {
        return None;
    }
    // The bucket the read will use (a cluster node's store may have been replaced).
    let bucket = s.live_bucket().ok()?;
    (!bucket.key_order_built()).then_some(bucket)
}

/// SCAN's page size when no LIMIT is given.
const DEFAULT_SCAN_LIMIT: usize = 100;

fn limit(arg: &[u8]) -> Result<usize, Reply> {
    let n = uint(arg, "LIMIT")?;
    Ok(usize::try_from(n).unwrap_or(usize::MAX))
}

/// `HISTORY pattern`
pub(crate) struct History<'a> {
    pattern: &'a str,
}

impl<'a> History<'a> {
    pub fn parse(args: &mut Args<'a>) -> Result<History<'a>, Reply> {
        Ok(History {
            pattern: args.next_text("pattern")?,
        })
    }

    pub fn apply(self, s: &mut Session, out: &mut Vec<u8>) -> Result<Flow, Reply> {
        let list = s
            .with_bucket(|b| b.history(self.pattern))
            .map_err(|e| engine_error(&e))?;
        encode::entries(out, s.version, &list);
        Ok(Flow::Continue)
    }
}

/// `KEYS [pattern]`
pub(crate) struct Keys<'a> {
    pattern: &'a str,
}

impl<'a> Keys<'a> {
    pub fn parse(args: &mut Args<'a>) -> Result<Keys<'a>, Reply> {
        let pattern = match args.next() {
            Some(p) => text(p, "pattern")?,
            None => ">",
        };
        Ok(Keys { pattern })
    }

    pub fn apply(self, s: &mut Session, out: &mut Vec<u8>) -> Result<Flow, Reply> {
        let keys = s
            .with_bucket(|b| b.keys(self.pattern))
            .map_err(|e| engine_error(&e))?;
        encode::array(out, keys.len());
        for k in &keys {
            encode::bulk(out, k.as_bytes());
        }
        Ok(Flow::Continue)
    }
}

/// `SEARCH glob [IN bucketglob] [LIMIT n]`
pub(crate) struct Search<'a> {
    glob: &'a str,
    buckets: Option<&'a str>,
    /// 0: no limit.
    max: usize,
}

impl<'a> Search<'a> {
    pub fn parse(args: &mut Args<'a>) -> Result<Search<'a>, Reply> {
        let glob = args.next_text("glob")?;
        let mut search = Search {
            glob,
            buckets: None,
            max: 0,
        };
        while let Some(word) = args.next() {
            if is(word, "IN") {
                search.buckets = Some(text(args.value_of(word)?, "bucket glob")?);
            } else if is(word, "LIMIT") {
                search.max = limit(args.value_of(word)?)?;
            } else {
                return Err(args.syntax(word));
            }
        }
        Ok(search)
    }

    pub fn apply(self, s: &mut Session, out: &mut Vec<u8>) -> Result<Flow, Reply> {
        let found = match self.buckets {
            Some(bg) => s.shared.store().search(self.glob, bg, self.max),
            None => s.with_bucket(|b| b.search(self.glob, self.max)),
        }
        .map_err(|e| engine_error(&e))?;
        encode::entries(out, s.version, &found);
        Ok(Flow::Continue)
    }
}

/// `SCAN [FROM key] [TO key] [LIMIT n]`: `[next-or-null, [entries]]`.
pub(crate) struct Scan<'a> {
    from: Option<&'a str>,
    to: Option<&'a str>,
    max: usize,
}

impl<'a> Scan<'a> {
    pub fn parse(args: &mut Args<'a>) -> Result<Scan<'a>, Reply> {
        let mut scan = Scan {
            from: None,
            to: None,
            max: DEFAULT_SCAN_LIMIT,
        };
        while let Some(word) = args.next() {
            if is(word, "FROM") {
                scan.from = Some(text(args.value_of(word)?, "FROM key")?);
            } else if is(word, "TO") {
                scan.to = Some(text(args.value_of(word)?, "TO key")?);
            } else if is(word, "LIMIT") {
                scan.max = limit(args.value_of(word)?)?;
            } else {
                return Err(args.syntax(word));
            }
        }
        Ok(scan)
    }

    pub fn apply(self, s: &mut Session, out: &mut Vec<u8>) -> Result<Flow, Reply> {
        let page = s
            .with_bucket(|b| b.scan(self.from, self.to, self.max))
            .map_err(|e| engine_error(&e))?;
        encode::array(out, 2);
        encode::opt_bulk(out, s.version, page.next.as_deref().map(str::as_bytes));
        encode::entries(out, s.version, &page.entries);
        Ok(Flow::Continue)
    }
}

/// `DELGLOB glob`: runs on the blocking pool (each delete is made durable).
pub(crate) struct DelGlob {
    glob: String,
}

impl DelGlob {
    pub fn parse(args: &mut Args<'_>) -> Result<DelGlob, Reply> {
        Ok(DelGlob {
            glob: args.next_text("glob")?.to_string(),
        })
    }

    pub fn apply(self, s: &mut Session) -> Result<Flow, Reply> {
        if s.shared.cluster.is_some() {
            return Ok(crate::command::proposals::delete_glob(s, self.glob));
        }
        // Resolve a dropped-and-recreated current bucket now, cheaply.
        let bucket = s.live_bucket().map_err(|e| engine_error(&e))?;
        let shared = Arc::clone(&s.shared);
        Ok(Flow::Blocking(Box::new(move || {
            match bucket.delete_glob(&self.glob) {
                Ok(n) => Reply::Int(i64::try_from(n).unwrap_or(i64::MAX)),
                Err(e) => {
                    // A failed fsync poisons the log: the server is unhealthy.
                    shared.health.observe(&e);
                    engine_error(&e)
                }
            }
        })))
    }
}
