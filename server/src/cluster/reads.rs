//! Linearizable reads on a cluster node: before the first read of what the client sent, the
//! node waits until it has applied everything committed when the request arrived (the
//! leader's read index). One barrier serves the reads that follow it until more requests
//! arrive or a write completes. `READONLY` connections read locally (possibly stale, never
//! uncommitted).

use bytes::Bytes;

use super::error_reply;
use crate::command;
use crate::session::Session;

/// Passes the read barrier before `args` if it needs one. `false`: the barrier failed and
/// its error reply is in `out` instead of the request's.
pub(crate) async fn fence(s: &mut Session, args: &[Bytes], out: &mut Vec<u8>) -> bool {
    let Some(node) = s.shared.cluster.clone() else {
        return true;
    };
    if s.fenced || s.readonly || !s.authed || s.multi.is_some() || !command::reads(args) {
        return true;
    }
    match node.read_barrier().await {
        Ok(()) => {
            s.fenced = true;
            true
        }
        Err(e) => {
            s.commands += 1;
            s.reply_start = out.len();
            error_reply(&e).encode(s.version, out);
            false
        }
    }
}
