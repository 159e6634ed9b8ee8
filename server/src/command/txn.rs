//! MULTI / EXEC / DISCARD on the engine's atomic batch write.
//!
//! After MULTI, each write verb is parsed and queued (`+QUEUED`); a write verb that cannot
//! be parsed gets its `-ERR` at once and makes EXEC fail without applying anything (as in
//! Redis), reported as `-ABORTED <index> ERR <message>`. Other verbs get `-ERR` and are not
//! queued. EXEC hands the whole queue to `Bucket::write_nowait` as one batch: all or
//! nothing, consecutive revisions, durable together before the reply.

use bytes::Bytes;
use logkv::{Error, Written};

use super::args::Args;
use super::table::Parser;
use super::{Command, Flow};
use crate::encode::{self, engine_error, error_code, WriteShape};
use crate::protocol::Reply;
use crate::protocol::RespVersion;
use crate::session::{MultiQueue, Session};

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
            | Error::ReadTooLarge { .. }
    )
}

/// Queues a write verb inside MULTI: `+QUEUED`, or its error, which fails the transaction.
pub(super) fn queue(
    s: &mut Session,
    args: &mut Args<'_>,
    parse: Parser,
    request: &[Bytes],
    out: &mut Vec<u8>,
) {
    let max = s.shared.config.max_request;
    let version = s.version;
    let Some(m) = s.multi.as_mut() else {
        return;
    };
    let size: usize = request.iter().map(Bytes::len).sum();
    let parsed = if m.fits(size, max) {
        parse(args)
    } else {
        Err(Reply::err(
            "ERR",
            format!("MULTI queue exceeds the max-request limit of {max} bytes"),
        ))
    };
    match parsed {
        Ok(Command::Write(write)) => {
            m.push(write.op, write.shape, size);
            out.extend_from_slice(b"+QUEUED\r\n");
        }
        // Not reached: the table flags only write verbs as queued (its tests check it).
        Ok(_) => {
            let reply = super::err("ERR", "internal error: only writes can be queued");
            m.fail(&reply);
            reply.encode(version, out);
        }
        Err(reply) => {
            m.fail(&reply);
            reply.encode(version, out);
        }
    }
}

/// `MULTI`
pub(crate) fn multi(s: &mut Session, out: &mut Vec<u8>) -> Result<Flow, Reply> {
    if s.multi.is_some() {
        return Err(super::err("ERR", "MULTI calls can not be nested"));
    }
    s.multi = Some(MultiQueue::default());
    Reply::ok().encode(s.version, out);
    Ok(Flow::Continue)
}

/// `EXEC`
pub(crate) fn exec(s: &mut Session, out: &mut Vec<u8>) -> Result<Flow, Reply> {
    let Some(m) = s.multi.take() else {
        return Err(super::err("ERR", "EXEC without MULTI"));
    };
    let (ops, shapes) = m
        .into_writes()
        .map_err(|f| aborted(f.index, f.code, f.msg))?;
    if ops.is_empty() {
        encode::array(out, 0);
        return Ok(Flow::Continue);
    }
    if s.shared.cluster.is_some() {
        return Ok(crate::command::proposals::exec(s, ops, shapes));
    }
    let ops: Vec<logkv::WriteOp> = ops.iter().map(logkv_cluster::Op::to_write_op).collect();
    let result = s
        .with_bucket(|b| b.write_nowait(&ops))
        .map(|(written, ticket)| {
            s.durability.note(&s.bucket, ticket);
            written
        });
    if result
        .as_ref()
        .is_err_and(|e| e.is_outcome() && !matches!(e.cause(), Error::NoBucket(_)))
    {
        // A refusal may rest on writes not durable yet (a revision a crash could give
        // to other data): it goes out once they are, as a success would.
        let ticket = s.bucket.end_ticket();
        s.durability.note(&s.bucket, ticket);
    }
    exec_result(s.version, result, &shapes, out)?;
    Ok(Flow::Continue)
}

/// Encodes what EXEC's batch gave: the array of the writes' replies, or `-ABORTED` naming
/// the write that failed (nothing was applied).
pub(crate) fn exec_result(
    version: RespVersion,
    result: Result<Vec<Written>, Error>,
    shapes: &[WriteShape],
    out: &mut Vec<u8>,
) -> Result<(), Reply> {
    match result {
        Ok(written) => {
            encode::array(out, written.len());
            for (w, shape) in written.iter().zip(shapes) {
                encode::written(out, version, w, *shape);
            }
            Ok(())
        }
        Err(Error::Batch { index, source }) => Err(aborted(index, error_code(&source), source)),
        Err(e) if is_per_write(&e) => Err(aborted(0, error_code(&e), &e)),
        Err(e) => Err(engine_error(&e)),
    }
}

/// `DISCARD`
pub(crate) fn discard(s: &mut Session, out: &mut Vec<u8>) -> Result<Flow, Reply> {
    if s.multi.take().is_none() {
        return Err(super::err("ERR", "DISCARD without MULTI"));
    }
    Reply::ok().encode(s.version, out);
    Ok(Flow::Continue)
}
