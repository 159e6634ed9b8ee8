//! MULTI / EXEC / DISCARD on the engine's atomic batch write.
//!
//! After MULTI, each write verb is parsed and queued (`+QUEUED`); a write verb that cannot
//! be parsed gets its `-ERR` at once and makes EXEC fail without applying anything (as in
//! Redis), reported as `-ABORTED <index> ERR <message>`. Other verbs get `-ERR` and are not
//! queued. EXEC hands the whole queue to `Bucket::write_nowait` as one batch: all or
//! nothing, consecutive revisions, durable together before the reply.

use bytes::Bytes;
use logkv::{Error, WriteOp};

use super::kv::{encode_written, parse_write, Shape};
use super::Verb;
use crate::protocol::Reply;
use crate::reply::{self, engine_error};
use crate::session::{Flow, Session};

/// A transaction being queued.
#[derive(Debug, Default)]
pub(crate) struct Multi {
    ops: Vec<WriteOp>,
    shapes: Vec<Shape>,
    /// Bytes of keys and values queued.
    bytes: usize,
    /// The first queued command that failed: its index, code and message.
    failed: Option<(usize, &'static str, String)>,
}

impl Multi {
    /// Bytes of keys and values queued.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Marks the transaction as failed at the next queue position (the first failure wins).
    pub fn fail(&mut self, reply: &Reply) {
        if self.failed.is_none() {
            if let Reply::Error { code, msg } = reply {
                self.failed = Some((self.ops.len(), code, msg.to_string()));
            }
        }
    }
}

fn aborted(index: usize, code: &str, msg: impl std::fmt::Display) -> Reply {
    Reply::err("ABORTED", format!("{index} {code} {msg}"))
}

/// Errors that are about one write of a batch (its key, value or precondition).
fn is_per_write(e: &Error) -> bool {
    matches!(
        e,
        Error::BadKey(_)
            | Error::BadArgument(_)
            | Error::TooLarge { .. }
            | Error::Full { .. }
            | Error::Exists
            | Error::WrongRevision { .. }
            | Error::Mismatch
            | Error::NotFound
    )
}

impl Session {
    /// `MULTI`
    pub(crate) fn multi(&mut self, out: &mut Vec<u8>) -> Result<Flow, Reply> {
        self.multi = Some(Multi::default());
        Reply::ok().encode(self.proto, out);
        Ok(Flow::Continue)
    }

    /// Queues a write verb inside MULTI.
    pub(crate) fn queue(&mut self, verb: Verb, args: Vec<Bytes>, out: &mut Vec<u8>) {
        let max = self.shared.config.max_request;
        let Some(m) = self.multi.as_mut() else {
            return;
        };
        let size: usize = args.iter().map(Bytes::len).sum();
        let parsed = if m.bytes + size > max {
            Err(Reply::err(
                "ERR",
                format!("MULTI queue exceeds the max-request limit of {max} bytes"),
            ))
        } else {
            parse_write(verb, args)
        };
        match parsed {
            Ok(cmd) => {
                m.bytes += size;
                m.ops.push(cmd.op);
                m.shapes.push(cmd.shape);
                out.extend_from_slice(b"+QUEUED\r\n");
            }
            Err(reply) => {
                m.fail(&reply);
                reply.encode(self.proto, out);
            }
        }
    }

    /// `EXEC`
    pub(crate) fn exec(&mut self, out: &mut Vec<u8>) -> Result<Flow, Reply> {
        let Some(m) = self.multi.take() else {
            return Err(super::err("ERR", "EXEC without MULTI"));
        };
        if let Some((index, code, msg)) = m.failed {
            return Err(aborted(index, code, msg));
        }
        if m.ops.is_empty() {
            reply::array(out, 0);
            return Ok(Flow::Continue);
        }
        let ops = &m.ops;
        match self.with_bucket(|b| b.write_nowait(ops)) {
            Ok((written, ticket)) => {
                self.note_current_ticket(ticket);
                reply::array(out, written.len());
                for (w, shape) in written.iter().zip(&m.shapes) {
                    encode_written(w, *shape, self.proto, out);
                }
                Ok(Flow::Continue)
            }
            Err(Error::Batch { index, source }) => Err(aborted(index, source.code(), source)),
            Err(e) if is_per_write(&e) => Err(aborted(0, e.code(), &e)),
            Err(e) => Err(engine_error(&e)),
        }
    }

    /// `DISCARD`
    pub(crate) fn discard(&mut self, out: &mut Vec<u8>) -> Result<Flow, Reply> {
        if self.multi.take().is_none() {
            return Err(super::err("ERR", "DISCARD without MULTI"));
        }
        Reply::ok().encode(self.proto, out);
        Ok(Flow::Continue)
    }
}
