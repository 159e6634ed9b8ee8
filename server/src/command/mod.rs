//! Commands: the table of verbs ([`table`]), the argument cursor ([`args`]), and one parsed
//! struct per verb with its `apply`, grouped by family. [`execute`] runs one request on a
//! [`Session`] behind the gates of authentication, RESP2 watch mode and MULTI.
//!
//! Parsing is pure (a struct borrowed from the request's arguments); `apply` acts on the
//! session and the engine and encodes the reply straight into the output buffer.

mod admin;
pub(crate) mod args;
mod backup;
mod bucket;
mod cluster;
mod kv;
pub(crate) mod proposals;
mod query;
mod table;
mod txn;
mod watch;

use bytes::Bytes;

pub(crate) use self::args::{is as is_word, preview, Args as ArgCursor};
use self::args::{wrong_args, Args};
use self::table::{lookup, position, Flags, VERBS};
use self::txn::exec_result;
use crate::protocol::Reply;
use crate::session::{Session, Write};

/// The names of the verbs, in the table's order (what request metrics are labelled with;
/// requests of an unknown verb are counted after them).
pub(crate) fn verb_names() -> impl Iterator<Item = &'static str> {
    VERBS.iter().map(|spec| spec.name)
}

/// Work that may block (fsync, disk-wide scans): run on the blocking pool, then encode.
pub(crate) type BlockingJob = Box<dyn FnOnce() -> Reply + Send + 'static>;

/// Work that waits on the cluster (a proposal, a membership change): awaited by the
/// connection; gives the encoded reply.
pub(crate) type AwaitJob =
    std::pin::Pin<Box<dyn std::future::Future<Output = Vec<u8>> + Send + 'static>>;

/// Captures what a streaming reply sends (off the event loop: it may wait for an fsync).
pub(crate) type StreamJob =
    Box<dyn FnOnce() -> Result<crate::backup::stream::BackupStream, logkv::Error> + Send + 'static>;

/// What the connection does after a command.
pub(crate) enum Flow {
    /// The reply is in the output buffer; go on.
    Continue,
    /// Run this job off the event loop and encode the reply it returns.
    Blocking(BlockingJob),
    /// Await this job and append the reply it gives.
    Await(AwaitJob),
    /// The reply is in the output buffer; send it and close the connection.
    Close,
    /// A reply of many frames (`BACKUP STREAM`): send what is in the output buffer, then
    /// the frames, produced off the event loop a batch at a time as the client reads them.
    Stream(StreamJob),
}

/// One parsed request.
pub(crate) enum Command<'a> {
    Ping(admin::Ping<'a>),
    Hello(admin::Hello<'a>),
    Auth(admin::Auth<'a>),
    /// The verbs without arguments have no parsed struct, only their function.
    Quit,
    Sync,
    Compact,
    Info,
    Config(admin::ConfigGet<'a>),
    Backup(backup::Backup),
    Bucket(bucket::BucketCmd),
    Use(bucket::Use<'a>),
    Status(bucket::Status<'a>),
    Get(kv::Get<'a>),
    Entry(kv::GetEntry<'a>),
    Ttl(kv::Ttl<'a>),
    /// PUT SET CREATE UPDATE CAS DEL PURGE REVERT GETDEL: what MULTI queues and pipelines
    /// batch is exactly what a direct call runs.
    Write(Write),
    Multi,
    Exec,
    Discard,
    History(query::History<'a>),
    Keys(query::Keys<'a>),
    Search(query::Search<'a>),
    Scan(query::Scan<'a>),
    DelGlob(query::DelGlob),
    Watch(watch::Watch<'a>),
    Unwatch(watch::Unwatch),
    Cluster(crate::command::cluster::ClusterCmd),
    /// `READONLY` (true) / `READWRITE` (false).
    ReadOnly(bool),
}

impl Command<'_> {
    /// Runs the command. An `Err` is an error reply to encode.
    fn apply(self, s: &mut Session, out: &mut Vec<u8>) -> Result<Flow, Reply> {
        match self {
            Command::Ping(c) => Ok(c.apply(out)),
            Command::Hello(c) => c.apply(s, out),
            Command::Auth(c) => c.apply(s, out),
            Command::Quit => Ok(admin::quit(s, out)),
            Command::Sync => Ok(admin::sync(s)),
            Command::Compact => Ok(admin::compact(s)),
            Command::Info => Ok(admin::info(s)),
            Command::Config(c) => Ok(c.apply(s, out)),
            Command::Backup(c) => c.apply(s),
            Command::Bucket(c) => Ok(c.apply(s, out)),
            Command::Use(c) => c.apply(s, out),
            Command::Status(c) => c.apply(s),
            Command::Get(c) => c.apply(s, out),
            Command::Entry(c) => c.apply(s, out),
            Command::Ttl(c) => c.apply(s, out),
            Command::Write(w) => {
                s.queue_write(w);
                Ok(Flow::Continue)
            }
            Command::Multi => txn::multi(s, out),
            Command::Exec => txn::exec(s, out),
            Command::Discard => txn::discard(s, out),
            Command::History(c) => c.apply(s, out),
            Command::Keys(c) => c.apply(s, out),
            Command::Search(c) => c.apply(s, out),
            Command::Scan(c) => c.apply(s, out),
            Command::DelGlob(c) => c.apply(s),
            Command::Watch(c) => c.apply(s, out),
            Command::Unwatch(c) => Ok(c.apply(s, out)),
            Command::Cluster(c) => c.apply(s, out),
            Command::ReadOnly(on) => {
                s.readonly = on;
                Reply::ok().encode(s.version, out);
                Ok(Flow::Continue)
            }
        }
    }
}

fn noauth() -> Reply {
    Reply::err("NOAUTH", "Authentication required.")
}

/// Whether the request `args` joins the pipeline's queued writes (a write that gets past
/// the gates); every other request replies at once, so the queue is applied before it.
pub(crate) fn joins_queue(s: &Session, args: &[Bytes]) -> bool {
    let Some(name) = args.first() else {
        return false;
    };
    let watch_mode = !s.version.is_resp3() && s.watches.active();
    s.multi.is_none()
        && s.authed
        && !watch_mode
        && lookup(name).is_some_and(|v| v.flags.has(Flags::WRITE) && v.fits(args.len()))
}

/// Whether the request `args` reads data (a cluster node fences it for linearizability).
pub(crate) fn reads(args: &[Bytes]) -> bool {
    args.first()
        .and_then(|name| lookup(name))
        .is_some_and(|v| v.flags.has(Flags::READ))
}

/// Whether the command reads the store's state (and so must see the writes the
/// connection made before it): every verb but a write that joins the pipeline's batch,
/// one that MULTI queues, and the verbs that touch no data.
pub(crate) fn reads_state(s: &Session, args: &[Bytes]) -> bool {
    let Some(spec) = args
        .first()
        .and_then(|name| position(name))
        .and_then(|i| VERBS.get(i))
    else {
        return false;
    };
    if s.multi.is_some() && !spec.flags.has(Flags::IN_MULTI) {
        return false;
    }
    let watch_mode = !s.version.is_resp3() && s.watches.active();
    if spec.flags.has(Flags::WRITE) && s.authed && !watch_mode {
        return false;
    }
    !matches!(
        spec.name,
        "ping" | "echo" | "quit" | "hello" | "auth" | "multi" | "discard" | "exec"
    )
}

/// Hints the engine about the keys the GETs among `requests` (the next requests of a
/// pipeline, about to run) will read, when there are at least two: their lookups then
/// overlap instead of waiting for memory one after another (see
/// [`logkv::Bucket::prefetch`]). Only a hint: whatever runs between (a write, USE) makes
/// it useless, never wrong.
pub(crate) fn prefetch<'a>(s: &Session, requests: impl Iterator<Item = &'a [Bytes]> + Clone) {
    let keys = requests.filter_map(|args| match args {
        [verb, key] if args::is(verb, "get") => Some(key),
        _ => None,
    });
    if s.authed && keys.clone().nth(1).is_some() {
        s.bucket.prefetch(keys);
    }
}

pub(crate) use query::key_order_to_build;

/// Executes one request on `s` and appends its reply to `out`.
pub(crate) fn execute(s: &mut Session, args: &[Bytes], out: &mut Vec<u8>) -> Flow {
    let Some((name, rest)) = args.split_first() else {
        return Flow::Continue;
    };
    s.commands += 1;
    let index = position(name);
    let spec = index.and_then(|i| VERBS.get(i));
    s.metrics
        .count(index.unwrap_or(VERBS.len()), &s.shared.metrics);
    let watch_mode = !s.version.is_resp3() && s.watches.active();
    if !joins_queue(s, args) {
        s.apply_pending(out);
    }
    s.reply_start = out.len();
    let version = s.version;
    if !s.authed && !spec.is_some_and(|v| v.flags.has(Flags::NO_AUTH)) {
        noauth().encode(version, out);
        return Flow::Continue;
    }
    let Some(spec) = spec else {
        let reply = Reply::err("ERR", format!("unknown command '{}'", preview(name)));
        // It may have been meant as one of the batch's writes (a misspelt one).
        if let Some(m) = &mut s.multi {
            m.fail(&reply);
        }
        reply.encode(version, out);
        return Flow::Continue;
    };
    if !spec.fits(args.len()) {
        let reply = wrong_args(spec.name);
        if spec.flags.has(Flags::QUEUED) {
            if let Some(m) = &mut s.multi {
                m.fail(&reply);
            }
        }
        reply.encode(version, out);
        return Flow::Continue;
    }
    if watch_mode && !spec.flags.has(Flags::WATCH_MODE) {
        Reply::err(
            "ERR",
            format!(
                "'{}' is not allowed while this RESP2 connection has watches: only WATCH, \
                 UNWATCH, PING and QUIT are (UNWATCH first; a connection switched to RESP3 \
                 with HELLO 3 before its first WATCH takes every verb)",
                spec.name
            ),
        )
        .encode(version, out);
        return Flow::Continue;
    }
    let mut cursor = Args::new(spec.name, rest);
    if s.multi.is_some() && !spec.flags.has(Flags::IN_MULTI) {
        if spec.flags.has(Flags::QUEUED) {
            txn::queue(s, &mut cursor, spec.parse, args, out);
        } else {
            Reply::err(
                "ERR",
                format!(
                    "'{}' is not allowed inside MULTI: only write verbs (PUT, SET, CREATE, \
                     UPDATE, CAS, DEL, PURGE, REVERT) are queued; EXEC or DISCARD first",
                    spec.name
                ),
            )
            .encode(version, out);
        }
        return Flow::Continue;
    }
    match (spec.parse)(&mut cursor).and_then(|command| command.apply(s, out)) {
        Ok(flow) => flow,
        Err(reply) => {
            s.apply_pending(out);
            s.reply_start = out.len();
            reply.encode(s.version, out);
            Flow::Continue
        }
    }
}

/// A static error message.
pub(crate) fn err(code: &'static str, msg: &'static str) -> Reply {
    Reply::err(code, msg)
}
