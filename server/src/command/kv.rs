//! Single-key verbs: PUT SET GET ENTRY GETDEL CREATE UPDATE CAS DEL PURGE REVERT TTL.
//!
//! Writes are parsed into a [`WriteCmd`] (the engine's [`WriteOp`] plus the shape of its
//! reply) so that MULTI can queue exactly what a direct call would run. Direct writes use
//! `write_nowait`; the connection waits for durability once per pipeline, before replying.

use std::time::Duration;

use bytes::Bytes;
use logkv::{Op, Ttl, WriteOp, Written};

use super::{is, key_arg, syntax, uint_arg, wrong_args, Verb};
use crate::protocol::Reply;
use crate::reply::{self, engine_error};
use crate::session::{Flow, Session};

/// How a write's result is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// `:revision`
    Revision,
    /// `+OK` (SET)
    Ok,
    /// The previous live value, or null (SET ... GET, GETDEL)
    Previous,
}

/// A parsed write.
#[derive(Debug)]
pub(crate) struct WriteCmd {
    pub op: WriteOp,
    pub shape: Shape,
}

/// Appends the reply of a successful write.
pub(crate) fn encode_written(w: &Written, shape: Shape, proto: u8, out: &mut Vec<u8>) {
    match shape {
        Shape::Revision => reply::uint(out, w.revision),
        Shape::Ok => out.extend_from_slice(b"+OK\r\n"),
        Shape::Previous => reply::opt_bulk(out, proto, w.previous.as_ref().map(|e| &e.value[..])),
    }
}

fn ttl_ms(arg: &[u8]) -> Result<Duration, Reply> {
    match uint_arg(arg, "TTL")? {
        0 => Err(super::err(
            "BADARG",
            "TTL must be a positive number of milliseconds",
        )),
        ms => Ok(Duration::from_millis(ms)),
    }
}

/// `[TTL ms]` after key and value.
fn optional_ttl(verb: Verb, op: WriteOp, rest: &[Bytes]) -> Result<WriteOp, Reply> {
    match rest {
        [] => Ok(op),
        [word, ms] if is(word, "TTL") => Ok(op.with_ttl(ttl_ms(ms)?)),
        [word, ..] => Err(syntax(verb, word)),
    }
}

/// Parses a write verb (PUT SET CREATE UPDATE CAS DEL PURGE REVERT); arity is checked.
pub(crate) fn parse_write(verb: Verb, args: Vec<Bytes>) -> Result<WriteCmd, Reply> {
    let key = key_arg(&args[1])?.to_string();
    let revision = |arg: &Bytes| uint_arg(arg, "revision");
    let (op, shape) = match verb {
        Verb::Put => (
            optional_ttl(verb, WriteOp::put(key, args[2].clone()), &args[3..])?,
            Shape::Revision,
        ),
        Verb::Create => (
            optional_ttl(verb, WriteOp::create(key, args[2].clone()), &args[3..])?,
            Shape::Revision,
        ),
        Verb::Set => parse_set(key, &args)?,
        Verb::Update => (
            WriteOp::update(key, args[2].clone(), revision(&args[3])?),
            Shape::Revision,
        ),
        Verb::Cas => {
            let old = args.get(3).cloned();
            (WriteOp::cas(key, args[2].clone(), old), Shape::Revision)
        }
        Verb::Del => match &args[2..] {
            [] => (WriteOp::delete(key), Shape::Revision),
            [word, n] if is(word, "REV") => {
                (WriteOp::delete_at(key, revision(n)?), Shape::Revision)
            }
            [word, ..] => return Err(syntax(verb, word)),
        },
        Verb::Purge => (WriteOp::purge(key), Shape::Revision),
        Verb::Revert => (WriteOp::revert(key, revision(&args[2])?), Shape::Revision),
        _ => return Err(wrong_args(verb)),
    };
    Ok(WriteCmd { op, shape })
}

/// `SET key value [EX s|PX ms] [GET]`, Redis-compatible.
fn parse_set(key: String, args: &[Bytes]) -> Result<(WriteOp, Shape), Reply> {
    let mut ttl: Option<Duration> = None;
    let mut get = false;
    let mut i = 3;
    let invalid = || super::err("BADARG", "invalid expire time in 'set' command");
    while i < args.len() {
        let word = &args[i];
        if is(word, "GET") && !get {
            get = true;
            i += 1;
        } else if (is(word, "EX") || is(word, "PX")) && ttl.is_none() && i + 1 < args.len() {
            let n = uint_arg(&args[i + 1], "expire time").map_err(|_| invalid())?;
            let ms = if is(word, "EX") {
                n.checked_mul(1000)
            } else {
                Some(n)
            };
            match ms {
                Some(ms) if ms > 0 && ms <= i64::MAX as u64 => {
                    ttl = Some(Duration::from_millis(ms))
                }
                _ => return Err(invalid()),
            }
            i += 2;
        } else {
            return Err(syntax(Verb::Set, word));
        }
    }
    let mut op = WriteOp::put(key, args[2].clone());
    if let Some(t) = ttl {
        op = op.with_ttl(t);
    }
    Ok(if get {
        (op.returning_previous(), Shape::Previous)
    } else {
        (op, Shape::Ok)
    })
}

/// `GETDEL key`: a DEL that returns the value it deleted.
pub(crate) fn getdel(args: &[Bytes]) -> Result<WriteCmd, Reply> {
    let key = key_arg(&args[1])?.to_string();
    Ok(WriteCmd {
        op: WriteOp::delete(key).returning_previous(),
        shape: Shape::Previous,
    })
}

impl Session {
    /// Queues one write of the pipeline; [`Session::apply_pending`] applies it
    /// (visible before any later command runs, durable before the reply is sent).
    pub(crate) fn write_one(&mut self, cmd: WriteCmd) -> Result<Flow, Reply> {
        self.pending.push(cmd);
        Ok(Flow::Continue)
    }

    /// Applies the queued writes in one engine call and encodes their replies.
    pub(crate) fn apply_pending(&mut self, out: &mut Vec<u8>) {
        if self.pending.is_empty() {
            return;
        }
        let cmds = std::mem::take(&mut self.pending);
        let ops: Vec<WriteOp> = cmds.iter().map(|c| c.op.clone()).collect();
        match self.with_bucket(|b| b.write_each(&ops)) {
            Ok((results, ticket)) => {
                self.note_current_ticket(ticket);
                for (cmd, result) in cmds.iter().zip(results) {
                    match result {
                        Ok(w) => encode_written(&w, cmd.shape, self.proto, out),
                        Err(e) => engine_error(&e).encode(self.proto, out),
                    }
                }
            }
            Err(e) => {
                let reply = engine_error(&e);
                for _ in &cmds {
                    reply.encode(self.proto, out);
                }
            }
        }
        let mut cmds = cmds;
        cmds.clear();
        self.pending = cmds;
    }

    /// `GET key [REV n]`
    pub(crate) fn get(&mut self, args: &[Bytes], out: &mut Vec<u8>) -> Result<Flow, Reply> {
        let key = key_arg(&args[1])?;
        match &args[2..] {
            [] => {
                // Encoded straight from the log's memory map: no copy of the value.
                let proto = self.proto;
                let found = self
                    .with_bucket(|b| b.get_with(key, |v| reply::opt_bulk(out, proto, Some(v))))
                    .map_err(|e| engine_error(&e))?;
                if found.is_none() {
                    reply::opt_bulk(out, proto, None);
                }
            }
            [word, n] if is(word, "REV") => {
                let rev = uint_arg(n, "revision")?;
                let e = self
                    .with_bucket(|b| b.entry_at(key, rev))
                    .map_err(|e| engine_error(&e))?;
                let v = e.as_ref().filter(|e| e.op == Op::Put).map(|e| &e.value[..]);
                reply::opt_bulk(out, self.proto, v);
            }
            [word, ..] => return Err(syntax(Verb::Get, word)),
        }
        Ok(Flow::Continue)
    }

    /// `ENTRY key [REV n]`
    pub(crate) fn entry(&mut self, args: &[Bytes], out: &mut Vec<u8>) -> Result<Flow, Reply> {
        let key = key_arg(&args[1])?;
        let e = match &args[2..] {
            [] => self.with_bucket(|b| b.entry(key)),
            [word, n] if is(word, "REV") => {
                let rev = uint_arg(n, "revision")?;
                self.with_bucket(|b| b.entry_at(key, rev))
            }
            [word, ..] => return Err(syntax(Verb::Entry, word)),
        }
        .map_err(|e| engine_error(&e))?;
        reply::opt_entry(out, self.proto, e.as_ref());
        Ok(Flow::Continue)
    }

    /// `TTL key`: ms left, -1 without expiry, -2 without a live value.
    pub(crate) fn ttl(&mut self, args: &[Bytes], out: &mut Vec<u8>) -> Result<Flow, Reply> {
        let key = key_arg(&args[1])?;
        let t = self
            .with_bucket(|b| b.ttl(key))
            .map_err(|e| engine_error(&e))?;
        match t {
            Ttl::Missing => reply::int(out, -2),
            Ttl::Forever => reply::int(out, -1),
            Ttl::Remaining(ms) => reply::uint(out, ms),
        }
        Ok(Flow::Continue)
    }
}
