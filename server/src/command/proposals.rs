//! Writes on a cluster node: proposed to the Raft group (from a follower, forwarded to the
//! leader), applied on every node, replied to with what applying gave on the leader.

use logkv::Written;
use logkv_cluster::command::{BucketSpec, Command, Response, WrittenData};
use logkv_cluster::{ClusterError, ClusterNode, Op};

use super::{exec_result, AwaitJob, Flow};
use crate::cluster::error_reply;
use crate::encode::{self, engine_error, WriteShape};
use crate::protocol::{Reply, RespVersion};
use crate::session::{Session, Write};

/// Proposes the pipelined writes the session set aside, in order, and inserts each batch's
/// replies where they belong in `out`. After it, reads need a new barrier.
pub(crate) async fn settle(s: &mut Session, out: &mut Vec<u8>) {
    if s.deferred.is_empty() {
        return;
    }
    let Some(node) = s.shared.cluster.clone() else {
        return;
    };
    let bucket = s.bucket.name().to_string();
    let version = s.version;
    let mut inserted = 0;
    for (writes, at) in std::mem::take(&mut s.deferred) {
        let replies = propose_writes(&node, &bucket, writes, version).await;
        let at = at + inserted;
        out.splice(at..at, replies.iter().copied());
        inserted += replies.len();
    }
    s.fenced = false;
}

async fn propose_writes(
    node: &ClusterNode,
    bucket: &str,
    writes: Vec<Write>,
    version: RespVersion,
) -> Vec<u8> {
    let (ops, shapes): (Vec<Op>, Vec<WriteShape>) =
        writes.into_iter().map(|w| (w.op, w.shape)).unzip();
    let cmd = Command::Write {
        bucket: bucket.to_string(),
        atomic: false,
        ops,
    };
    let mut out = Vec::new();
    match node.write(cmd).await {
        Ok(Response::Each(results)) => {
            for (shape, r) in shapes.iter().zip(results) {
                match r {
                    Ok(written) => {
                        encode::written(&mut out, version, &written.to_engine(), *shape);
                    }
                    Err(e) => engine_error(&e.to_engine()).encode(version, &mut out),
                }
            }
        }
        Ok(Response::Failed(e)) => {
            let reply = engine_error(&e.to_engine());
            for _ in &shapes {
                reply.encode(version, &mut out);
            }
        }
        Ok(other) => {
            let reply = Reply::err("ERR", format!("unexpected outcome {other:?}"));
            for _ in &shapes {
                reply.encode(version, &mut out);
            }
        }
        Err(e) => {
            let reply = error_reply(&e);
            for _ in &shapes {
                reply.encode(version, &mut out);
            }
        }
    }
    out
}

/// One write proposed on its own (the HTTP gateway's PUT and DELETE): the engine's result,
/// or why the cluster could not apply it.
pub(crate) async fn write_one(
    node: &ClusterNode,
    bucket: String,
    op: Op,
) -> Result<logkv::Result<Written>, ClusterError> {
    let cmd = Command::Write {
        bucket,
        atomic: false,
        ops: vec![op],
    };
    Ok(match node.write(cmd).await? {
        Response::Each(results) => match results.into_iter().next() {
            Some(Ok(w)) => Ok(w.to_engine()),
            Some(Err(e)) => Err(e.to_engine()),
            None => Err(logkv::Error::Internal(
                "the write returned no result".into(),
            )),
        },
        Response::Failed(e) => Err(e.to_engine()),
        other => Err(logkv::Error::Internal(format!(
            "unexpected outcome {other:?}"
        ))),
    })
}

fn node(s: &Session) -> Option<ClusterNode> {
    s.shared.cluster.clone()
}

/// Runs `f` on the cluster node and encodes the reply it returns.
fn await_reply<F>(s: &mut Session, f: F) -> Flow
where
    F: FnOnce(ClusterNode, RespVersion) -> AwaitJob,
{
    s.fenced = false;
    let version = s.version;
    match node(s) {
        Some(n) => Flow::Await(f(n, version)),
        None => Flow::Await(Box::pin(async move {
            let mut out = Vec::new();
            Reply::err("ERR", "not a cluster").encode(version, &mut out);
            out
        })),
    }
}

/// `EXEC` on a cluster node: the queued writes as one atomic batch.
pub(crate) fn exec(s: &mut Session, ops: Vec<Op>, shapes: Vec<WriteShape>) -> Flow {
    let bucket = s.bucket.name().to_string();
    await_reply(s, move |node, version| {
        Box::pin(async move {
            let mut out = Vec::new();
            let cmd = Command::Write {
                bucket,
                atomic: true,
                ops,
            };
            let result: Result<Vec<Written>, logkv::Error> = match node.write(cmd).await {
                Ok(Response::Atomic(Ok(w))) => Ok(w.iter().map(WrittenData::to_engine).collect()),
                Ok(Response::Atomic(Err(e)) | Response::Failed(e)) => Err(e.to_engine()),
                Ok(other) => Err(logkv::Error::Internal(format!(
                    "unexpected outcome {other:?}"
                ))),
                Err(e) => {
                    error_reply(&e).encode(version, &mut out);
                    return out;
                }
            };
            if let Err(reply) = exec_result(version, result, &shapes, &mut out) {
                out.clear();
                reply.encode(version, &mut out);
            }
            out
        })
    })
}

/// A command whose reply is `+OK`, a count, or an error: BUCKET CREATE/DROP, DELGLOB.
fn simple(s: &mut Session, cmd: Command) -> Flow {
    await_reply(s, move |node, version| {
        Box::pin(async move {
            let mut out = Vec::new();
            let reply = match node.write(cmd).await {
                Ok(Response::Done) => Reply::ok(),
                Ok(Response::Count(n)) => Reply::Int(i64::try_from(n).unwrap_or(i64::MAX)),
                Ok(Response::Failed(e)) => engine_error(&e.to_engine()),
                Ok(other) => Reply::err("ERR", format!("unexpected outcome {other:?}")),
                Err(e) => error_reply(&e),
            };
            reply.encode(version, &mut out);
            out
        })
    })
}

/// `BUCKET CREATE` on a cluster node.
pub(crate) fn create_bucket(s: &mut Session, name: String, config: logkv::BucketConfig) -> Flow {
    simple(
        s,
        Command::CreateBucket {
            bucket: name,
            config: BucketSpec::from(config),
        },
    )
}

/// `BUCKET DROP` on a cluster node.
pub(crate) fn drop_bucket(s: &mut Session, name: String) -> Flow {
    simple(s, Command::DropBucket { bucket: name })
}

/// `DELGLOB` on a cluster node.
pub(crate) fn delete_glob(s: &mut Session, glob: String) -> Flow {
    let bucket = s.bucket.name().to_string();
    simple(s, Command::DeleteGlob { bucket, glob })
}
