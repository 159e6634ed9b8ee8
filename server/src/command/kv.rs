//! Single-key verbs: GET ENTRY TTL, and the writes PUT SET CREATE UPDATE CAS DEL PURGE
//! REVERT GETDEL.
//!
//! A write parses into a [`Write`] (the engine's [`WriteOp`] plus the shape of its reply),
//! so that MULTI queues exactly what a direct call would run. Direct writes join the
//! pipeline's batch (`Session::apply_pending`); the connection waits for durability once
//! per batch, before replying.

use std::time::Duration;

use bytes::Bytes;
use logkv::{Op, Ttl as KeyTtl};
// The server's write op: the engine's `WriteOp` in the form a replicated command carries it
// (same constructors); a single node turns it into the engine's at apply.
use logkv_cluster::Op as WriteOp;

use super::args::{is, uint, Args};
use super::Flow;
use crate::encode::{self, engine_error, WriteShape};
use crate::protocol::Reply;
use crate::session::{Session, Write};

/// `[REV n]` after a key.
fn optional_rev(args: &mut Args<'_>) -> Result<Option<u64>, Reply> {
    if args.remaining() == 2 && args.keyword("REV") {
        return Ok(Some(args.next_uint("revision")?));
    }
    args.finish()?;
    Ok(None)
}

/// `key [REV n]`: what GET and ENTRY read.
struct KeyAtRev<'a> {
    key: &'a str,
    rev: Option<u64>,
}

impl<'a> KeyAtRev<'a> {
    fn parse(args: &mut Args<'a>) -> Result<KeyAtRev<'a>, Reply> {
        let key = args.next_key()?;
        let rev = optional_rev(args)?;
        Ok(KeyAtRev { key, rev })
    }
}

/// `GET key [REV n]`
pub(crate) struct Get<'a>(KeyAtRev<'a>);

impl<'a> Get<'a> {
    pub fn parse(args: &mut Args<'a>) -> Result<Get<'a>, Reply> {
        KeyAtRev::parse(args).map(Get)
    }

    pub fn apply(self, s: &mut Session, out: &mut Vec<u8>) -> Result<Flow, Reply> {
        let version = s.version;
        let KeyAtRev { key, rev } = self.0;
        match rev {
            None => {
                // Encoded straight from the log's memory map: no copy of the value.
                let found = s
                    .with_bucket(|b| b.get_with(key, |v| encode::opt_bulk(out, version, Some(v))))
                    .map_err(|e| engine_error(&e))?;
                if found.is_none() {
                    encode::null(out, version);
                }
            }
            Some(rev) => {
                let e = s
                    .with_bucket(|b| b.entry_at(key, rev))
                    .map_err(|e| engine_error(&e))?;
                let v = e.as_ref().filter(|e| e.op == Op::Put).map(|e| &e.value[..]);
                encode::opt_bulk(out, version, v);
            }
        }
        Ok(Flow::Continue)
    }
}

/// `ENTRY key [REV n]`
pub(crate) struct GetEntry<'a>(KeyAtRev<'a>);

impl<'a> GetEntry<'a> {
    pub fn parse(args: &mut Args<'a>) -> Result<GetEntry<'a>, Reply> {
        KeyAtRev::parse(args).map(GetEntry)
    }

    pub fn apply(self, s: &mut Session, out: &mut Vec<u8>) -> Result<Flow, Reply> {
        let KeyAtRev { key, rev } = self.0;
        let e = match rev {
            None => s.with_bucket(|b| b.entry(key)),
            Some(rev) => s.with_bucket(|b| b.entry_at(key, rev)),
        }
        .map_err(|e| engine_error(&e))?;
        encode::opt_entry(out, s.version, e.as_ref());
        Ok(Flow::Continue)
    }
}

/// `TTL key`: ms left, -1 without expiry, -2 without a live value.
pub(crate) struct Ttl<'a> {
    key: &'a str,
}

impl<'a> Ttl<'a> {
    pub fn parse(args: &mut Args<'a>) -> Result<Ttl<'a>, Reply> {
        Ok(Ttl {
            key: args.next_key()?,
        })
    }

    pub fn apply(self, s: &mut Session, out: &mut Vec<u8>) -> Result<Flow, Reply> {
        let t = s
            .with_bucket(|b| b.ttl(self.key))
            .map_err(|e| engine_error(&e))?;
        match t {
            KeyTtl::Missing => encode::int(out, -2),
            KeyTtl::Forever => encode::int(out, -1),
            KeyTtl::Remaining(ms) => encode::uint(out, ms),
        }
        Ok(Flow::Continue)
    }
}

fn revision(op: WriteOp) -> Write {
    Write {
        op,
        shape: WriteShape::Revision,
    }
}

/// `[TTL ms]` after key and value.
fn optional_ttl(args: &mut Args<'_>, op: WriteOp) -> Result<WriteOp, Reply> {
    if args.remaining() == 2 && args.keyword("TTL") {
        return match args.next_uint("TTL")? {
            0 => Err(super::err(
                "BADARG",
                "TTL must be a positive number of milliseconds",
            )),
            ms => Ok(op.with_ttl(Duration::from_millis(ms))),
        };
    }
    args.finish()?;
    Ok(op)
}

/// The key of a write, as the engine takes it.
fn write_key(args: &mut Args<'_>) -> Result<String, Reply> {
    Ok(args.next_key()?.to_string())
}

/// `PUT key value [TTL ms]`
pub(crate) fn put(args: &mut Args<'_>) -> Result<Write, Reply> {
    let key = write_key(args)?;
    let value = args.next_bytes()?.clone();
    Ok(revision(optional_ttl(args, WriteOp::put(key, value))?))
}

/// `CREATE key value [TTL ms]`
pub(crate) fn create(args: &mut Args<'_>) -> Result<Write, Reply> {
    let key = write_key(args)?;
    let value = args.next_bytes()?.clone();
    Ok(revision(optional_ttl(args, WriteOp::create(key, value))?))
}

/// `UPDATE key value rev`
pub(crate) fn update(args: &mut Args<'_>) -> Result<Write, Reply> {
    let key = write_key(args)?;
    let value = args.next_bytes()?.clone();
    let rev = args.next_uint("revision")?;
    Ok(revision(WriteOp::update(key, value, rev)))
}

/// `CAS key new [old]`
pub(crate) fn cas(args: &mut Args<'_>) -> Result<Write, Reply> {
    let key = write_key(args)?;
    let new = args.next_bytes()?.clone();
    let old = args.next().cloned();
    Ok(revision(WriteOp::cas(key, new, old)))
}

/// `DEL key [REV n]`
pub(crate) fn del(args: &mut Args<'_>) -> Result<Write, Reply> {
    let key = write_key(args)?;
    Ok(revision(match optional_rev(args)? {
        None => WriteOp::delete(key),
        Some(rev) => WriteOp::delete_at(key, rev),
    }))
}

/// `PURGE key`
pub(crate) fn purge(args: &mut Args<'_>) -> Result<Write, Reply> {
    Ok(revision(WriteOp::purge(write_key(args)?)))
}

/// `REVERT key rev`
pub(crate) fn revert(args: &mut Args<'_>) -> Result<Write, Reply> {
    let key = write_key(args)?;
    Ok(revision(WriteOp::revert(key, args.next_uint("revision")?)))
}

/// `GETDEL key`: a DEL that returns the value it deleted.
pub(crate) fn getdel(args: &mut Args<'_>) -> Result<Write, Reply> {
    Ok(Write {
        op: WriteOp::delete(write_key(args)?).returning_previous(),
        shape: WriteShape::Previous,
    })
}

/// `SET key value [EX s|PX ms] [GET]`, Redis-compatible.
pub(crate) fn set(args: &mut Args<'_>) -> Result<Write, Reply> {
    let key = write_key(args)?;
    let value: Bytes = args.next_bytes()?.clone();
    let mut ttl: Option<Duration> = None;
    let mut get = false;
    let invalid = || super::err("BADARG", "invalid expire time in 'set' command");
    while let Some(word) = args.next() {
        let seconds = is(word, "EX");
        if is(word, "GET") && !get {
            get = true;
        } else if (seconds || is(word, "PX")) && ttl.is_none() && args.remaining() > 0 {
            let n = uint(args.next_bytes()?, "expire time").map_err(|_| invalid())?;
            let ms = if seconds {
                n.checked_mul(1000)
            } else {
                Some(n)
            };
            match ms {
                Some(ms) if ms > 0 && i64::try_from(ms).is_ok() => {
                    ttl = Some(Duration::from_millis(ms));
                }
                _ => return Err(invalid()),
            }
        } else {
            return Err(args.syntax(word));
        }
    }
    let mut op = WriteOp::put(key, value);
    if let Some(t) = ttl {
        op = op.with_ttl(t);
    }
    Ok(if get {
        Write {
            op: op.returning_previous(),
            shape: WriteShape::Previous,
        }
    } else {
        Write {
            op,
            shape: WriteShape::Ok,
        }
    })
}
