//! Multi-key reads: HISTORY KEYS SEARCH SCAN, and DELGLOB.

use bytes::Bytes;

use super::{is, syntax, text_arg, uint_arg, Verb};
use crate::protocol::Reply;
use crate::reply::{self, engine_error};
use crate::session::{Flow, Session};

/// SCAN's page size when no LIMIT is given.
const DEFAULT_SCAN_LIMIT: u64 = 100;

fn limit(arg: &[u8]) -> Result<usize, Reply> {
    let n = uint_arg(arg, "LIMIT")?;
    Ok(usize::try_from(n).unwrap_or(usize::MAX))
}

impl Session {
    /// `HISTORY pattern`
    pub(crate) fn history(&mut self, args: &[Bytes], out: &mut Vec<u8>) -> Result<Flow, Reply> {
        let pattern = text_arg(&args[1], "pattern")?;
        let list = self
            .with_bucket(|b| b.history(pattern))
            .map_err(|e| engine_error(&e))?;
        reply::entries(out, self.proto, &list);
        Ok(Flow::Continue)
    }

    /// `KEYS [pattern]`
    pub(crate) fn keys(&mut self, args: &[Bytes], out: &mut Vec<u8>) -> Result<Flow, Reply> {
        let pattern = match args.get(1) {
            Some(p) => text_arg(p, "pattern")?,
            None => ">",
        };
        let keys = self
            .with_bucket(|b| b.keys(pattern))
            .map_err(|e| engine_error(&e))?;
        reply::array(out, keys.len());
        for k in &keys {
            reply::bulk(out, k.as_bytes());
        }
        Ok(Flow::Continue)
    }

    /// `SEARCH glob [IN bucketglob] [LIMIT n]`
    pub(crate) fn search(&mut self, args: &[Bytes], out: &mut Vec<u8>) -> Result<Flow, Reply> {
        let glob = text_arg(&args[1], "glob")?;
        let mut buckets: Option<&str> = None;
        let mut max = 0usize;
        let mut rest = &args[2..];
        while let [word, value, tail @ ..] = rest {
            if is(word, "IN") {
                buckets = Some(text_arg(value, "bucket glob")?);
            } else if is(word, "LIMIT") {
                max = limit(value)?;
            } else {
                return Err(syntax(Verb::Search, word));
            }
            rest = tail;
        }
        if let [word] = rest {
            return Err(syntax(Verb::Search, word));
        }
        let found = match buckets {
            Some(bg) => self.shared.store.search(glob, bg, max),
            None => self.with_bucket(|b| b.search(glob, max)),
        }
        .map_err(|e| engine_error(&e))?;
        reply::entries(out, self.proto, &found);
        Ok(Flow::Continue)
    }

    /// `SCAN [FROM key] [TO key] [LIMIT n]`: `[next-or-null, [entries]]`.
    pub(crate) fn scan(&mut self, args: &[Bytes], out: &mut Vec<u8>) -> Result<Flow, Reply> {
        let mut from: Option<&str> = None;
        let mut to: Option<&str> = None;
        let mut max = DEFAULT_SCAN_LIMIT as usize;
        let mut rest = &args[1..];
        while let [word, value, tail @ ..] = rest {
            if is(word, "FROM") {
                from = Some(text_arg(value, "FROM key")?);
            } else if is(word, "TO") {
                to = Some(text_arg(value, "TO key")?);
            } else if is(word, "LIMIT") {
                max = limit(value)?;
            } else {
                return Err(syntax(Verb::Scan, word));
            }
            rest = tail;
        }
        if let [word] = rest {
            return Err(syntax(Verb::Scan, word));
        }
        let page = self
            .with_bucket(|b| b.scan(from, to, max))
            .map_err(|e| engine_error(&e))?;
        reply::array(out, 2);
        reply::opt_bulk(out, self.proto, page.next.as_deref().map(str::as_bytes));
        reply::entries(out, self.proto, &page.entries);
        Ok(Flow::Continue)
    }

    /// `DELGLOB glob`: runs on the blocking pool (each delete is made durable).
    pub(crate) fn delglob(&mut self, args: &[Bytes]) -> Result<Flow, Reply> {
        let glob = text_arg(&args[1], "glob")?.to_string();
        // Resolve a dropped-and-recreated current bucket now, cheaply.
        self.with_bucket(|b| b.ttl("_").map(|_| ()))
            .map_err(|e| engine_error(&e))?;
        let bucket = self.bucket.clone();
        Ok(Flow::Blocking(Box::new(move || {
            match bucket.delete_glob(&glob) {
                Ok(n) => Reply::Int(i64::try_from(n).unwrap_or(i64::MAX)),
                Err(e) => engine_error(&e),
            }
        })))
    }
}
