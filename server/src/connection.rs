//! One client connection: buffers, the read / execute / write loop, pipelining,
//! durability waits and watch delivery.
//!
//! The loop, for each batch of bytes read:
//!
//! 1. parse the complete requests in the read buffer a window at a time ([`PARSE_AHEAD`]),
//!    hint the keys of the window's GETs to the engine (their lookups overlap: see
//!    [`logkv::Bucket::prefetch`]) and execute them in order, each encoding its reply
//!    straight into the output buffer; consecutive writes are queued
//!    and applied together (`write_each`: one lock hold, one append) as soon as anything
//!    else must reply, leaving a durability ticket per bucket;
//! 2. before the output is written: if there are tickets, post them to the bucket's
//!    syncer thread and await its broadcast (`durability.rs`: one fsync serves every
//!    connection that wrote meanwhile = group commit);
//! 3. when other connections are open, give way once, so that the requests the same
//!    readiness poll brought to them run before anyone's replies are written
//!    ([`Conn::let_others_read`]); then write the whole output at once.
//!
//! Buffers start empty and grow only as requests need. The read buffer is given back
//! whenever it has been fully consumed and the output buffer whenever it grew past
//! [`OUT_KEEP`], so an idle connection holds little more than its task and session
//! (under 2 KiB measured, plus the kernel's socket buffers). The output is flushed early
//! (same durability rule) whenever it passes [`FLUSH_AT`] in the middle of a long
//! pipeline, so replies never pile up beyond that plus one reply; a single reply over
//! `max_output` is replaced by an error.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::sync::watch;
use tracing::{error, warn};

use crate::client_memory::ClientBuffers;
use crate::cluster;
use crate::command::{self, Flow};
use crate::protocol::{parse_request, ParseError, Reply, Request};
use crate::session::Session;
use crate::shared::Shared;
use crate::tls::Transport;

/// First read size (and what it falls back to after small reads).
const READ_MIN: usize = crate::tls::STACK_READ;
/// Largest single read when the client keeps the buffer full (long pipelines).
const READ_MAX: usize = 64 * 1024;
/// Output capacity kept between batches; a larger buffer is given back after a write.
const OUT_KEEP: usize = 4 * 1024;
/// Output size that triggers a write in the middle of a pipeline.
const FLUSH_AT: usize = 64 * 1024;
/// Requests parsed ahead of execution at most (the GETs among them are looked up
/// together: see [`logkv::Bucket::prefetch`]).
const PARSE_AHEAD: usize = 32;
/// Bytes of requests parsed ahead at most (their copies live at once).
const PARSE_AHEAD_BYTES: usize = 64 * 1024;
/// Bytes of backup stream frames produced per step on the blocking pool.
const STREAM_BATCH: usize = 1024 * 1024;
/// Watch events are pulled only while the pending output is below this.
const WATCH_HIGH_WATER: usize = 1024 * 1024;

/// Watchers that a connection's writes may wake and it still gives way before writing
/// its replies ([`Conn::let_others_read`]): the pump's sends to so few come before the
/// replies and delay them by a few tens of microseconds at most.
const FEW_WATCHERS: u64 = 8;

/// How long, and for how many bytes, a closing connection discards the client's input.
const LINGER_TIME: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 64 << 20;

/// What ended a connection's wait.
enum Woke {
    Stop,
    /// A pump woke it: watch events wait.
    Events,
    Read(io::Result<usize>),
}

struct Conn {
    io: Transport,
    session: Session,
    rbuf: BytesMut,
    out: Vec<u8>,
    /// How much to try to read next time.
    read_size: usize,
    stop: watch::Receiver<bool>,
    /// Watch events may be waiting to be pulled.
    pull: bool,
    /// Close once the output is written.
    closing: bool,
    /// Close at once, sending nothing more (an HTTP request was recognised).
    hangup: bool,
    /// The read buffer holds the start of an inline line with no newline in its first
    /// this many bytes: parsing waits for one to come, so that a line sent a few bytes
    /// at a time is scanned once, not once per read.
    inline_scanned: Option<usize>,
    /// Watchers that the writes of the last requests woke (see [`FEW_WATCHERS`]).
    watchers_woken: u64,
    /// What the buffers hold, reported against the budget of all connections.
    buffers: ClientBuffers,
}

/// Serves one connection (TLS handshake done) until the client leaves, QUIT, a framing
/// error, or shutdown.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    io: Transport,
    peer: SocketAddr,
    id: u64,
    buffers: ClientBuffers,
    stop: watch::Receiver<bool>,
) -> io::Result<()> {
    // Before the store: a store replaced in between (a cluster node installing a snapshot)
    // then has the session look its bucket up again, not keep the replaced store's.
    let generation = shared.store_generation();
    let bucket = match shared.store().default_bucket() {
        Ok(b) => b,
        Err(e) => {
            error!("the default bucket is missing: {e}");
            return Ok(());
        }
    };
    let session = Session::new(shared, id, peer, bucket, generation);
    let mut conn = Conn {
        io,
        session,
        rbuf: BytesMut::new(),
        out: Vec::new(),
        read_size: READ_MIN,
        stop,
        pull: false,
        closing: false,
        hangup: false,
        inline_scanned: None,
        watchers_woken: 0,
        buffers,
    };
    let result = conn.run().await;
    let commands = conn.session.commands;
    conn.session
        .shared
        .stats
        .commands
        .fetch_add(commands, Ordering::Relaxed);
    result
}

impl Conn {
    async fn run(&mut self) -> io::Result<()> {
        loop {
            // Nothing follows the reply to QUIT (nor a framing error's).
            if self.pull && !self.closing && self.session.watches.active() {
                self.pull = self.session.watches.pull(
                    self.session.version,
                    &mut self.out,
                    WATCH_HIGH_WATER,
                );
            } else {
                self.pull = false;
            }
            if !self.out.is_empty() {
                self.let_others_read().await;
                self.flush().await?;
            }
            if self.closing {
                self.linger().await;
                return Ok(());
            }
            if *self.stop.borrow() {
                return Ok(());
            }
            let watching = self.session.watches.active();
            // Idle with every watch drained: the pumps may write events straight to the
            // socket while this task sleeps (see `session/watches.rs`).
            let parked = watching
                && !self.pull
                && self.out.is_empty()
                && self
                    .session
                    .watches
                    .park(self.session.version, || self.io.socket_copy());
            let was_empty = self.rbuf.is_empty();
            let spare = if was_empty { 0 } else { self.reserve_read() };
            let backlog = self.pull;
            let Conn {
                io,
                rbuf,
                stop,
                session,
                ..
            } = self;
            // Every branch is cancel-safe.
            let woke = if backlog {
                // The last pull stopped at the high-water mark and its output is written:
                // the input that came meanwhile (UNWATCH, PING, QUIT, ...) is read before the
                // next pull, without waiting for more, so that requests are served between
                // rounds of a backlog of events however fast events come.
                tokio::select! {
                    biased;
                    _ = stop.changed() => Woke::Stop,
                    read = io.fill(rbuf) => Woke::Read(read),
                    () = std::future::ready(()) => Woke::Events,
                }
            } else {
                // Unbiased: a flood of watch events must not starve the client's requests,
                // nor the other way round.
                tokio::select! {
                    _ = stop.changed() => Woke::Stop,
                    () = session.watches.notified(), if watching => Woke::Events,
                    read = io.fill(rbuf) => Woke::Read(read),
                }
            };
            if parked && self.session.watches.unpark(&mut self.out) {
                // A pump left part of a delivery: written first, then pulled on from here.
                self.pull = true;
            }
            let n = match woke {
                Woke::Stop => return Ok(()),
                Woke::Events => {
                    self.pull = true;
                    continue;
                }
                Woke::Read(read) => read?,
            };
            if n == 0 {
                return Ok(());
            }
            if was_empty {
                if n == READ_MIN {
                    // Likely more: go on reading straight into the buffer.
                    self.read_more()?;
                }
            } else {
                self.adapt_read_size(n, spare);
            }
            let woken = crate::pump::woken_here();
            self.process().await?;
            self.watchers_woken = crate::pump::woken_here().wrapping_sub(woken);
            if self.hangup {
                // No reply goes back, but the writes that ran before the hang-up are
                // made durable (and so visible), as if their replies had been sent.
                if !self.session.durability.is_empty() {
                    let _ = self.wait_durable().await;
                }
                return Ok(());
            }
            if self.account() {
                self.settle_unsent_writes();
                return Ok(());
            }
            // One shared-counter update per batch, not per request.
            let n = std::mem::take(&mut self.session.commands);
            if n > 0 {
                let shared = &self.session.shared;
                shared.stats.commands.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    /// Before this connection writes its replies: when other connections are open, gives
    /// way once ([`tokio::task::yield_now`]), so that the connections the same readiness
    /// poll woke read and execute their requests first, and the replies of a round go
    /// out together after it, as redis writes them after its event loop's reads. The
    /// clients then find many replies at each wake-up instead of one: with 50
    /// connections at `-P 1` (GET or SET, a million keys) the server and
    /// redis-benchmark together spent about 5 % less CPU per request, and at `-P 16`
    /// the rate rose by a tenth. Waits for durability gather more writers for each
    /// fsync too. A lone connection does not yield (it would only add a poll of the
    /// readiness driver to each round trip), nor one whose writes just woke more than
    /// [`FEW_WATCHERS`]: its acknowledgements would wait behind the delivery of their
    /// events (with 1,000 watchers, 1.8 ms at the median instead of 0.05 to 0.11).
    /// A watcher that has stopped reading costs the writers of its bucket nothing
    /// here, as it costs them nothing elsewhere.
    async fn let_others_read(&self) {
        if self.watchers_woken <= FEW_WATCHERS
            && self
                .session
                .shared
                .stats
                .connections
                .load(Ordering::Relaxed)
                > 1
        {
            tokio::task::yield_now().await;
        }
    }

    /// Makes room for the next read into a non-empty buffer; returns the spare capacity.
    fn reserve_read(&mut self) -> usize {
        if self.rbuf.capacity() - self.rbuf.len() < self.read_size {
            self.rbuf.reserve(self.read_size);
        }
        self.rbuf.capacity() - self.rbuf.len()
    }

    /// Grows the read size while reads fill the buffer; back to the minimum after a small one.
    fn adapt_read_size(&mut self, n: usize, spare: usize) {
        if n == spare && self.read_size < READ_MAX {
            self.read_size *= 2;
        } else if n < READ_MIN {
            self.read_size = READ_MIN;
        }
    }

    /// Reads what is available now into the read buffer, without waiting, growing the read
    /// size while reads fill it.
    fn read_more(&mut self) -> io::Result<()> {
        let spare = self.reserve_read();
        if let Some(n) = self.io.try_fill(&mut self.rbuf)? {
            self.adapt_read_size(n, spare);
        }
        Ok(())
    }

    /// Executes every complete request in the read buffer: parsed a window at a time
    /// ([`PARSE_AHEAD`]), the keys the window's GETs will read hinted to the engine
    /// (their cache misses then overlap instead of coming one after another), then
    /// executed in order.
    async fn process(&mut self) -> io::Result<()> {
        if self.inline_line_incomplete() {
            return Ok(());
        }
        // New requests: a read among them needs a barrier taken after they arrived.
        self.session.fenced = false;
        let max_request = self.session.shared.config.max_request;
        self.session.metrics.start();
        let mut pos = 0;
        let mut window = Vec::new();
        loop {
            let after = self.parse_ahead(pos, &mut window);
            command::prefetch(&self.session, window.iter().map(|(req, _)| &req.args[..]));
            for (req, n) in window.drain(..) {
                pos += n;
                if !req.is_empty() && !self.execute(&req).await? {
                    self.closing = true;
                    break;
                }
            }
            if self.closing {
                break;
            }
            match after {
                Ok(true) => {}
                Ok(false) => {
                    let pending = self.rbuf.len() - pos;
                    if pending > max_request {
                        self.answer_pending_writes().await;
                        Reply::err(
                            "ERR",
                            format!(
                                "Protocol error: request exceeds the max-request limit of \
                                 {max_request} bytes"
                            ),
                        )
                        .encode(self.session.version, &mut self.out);
                        self.closing = true;
                    }
                    break;
                }
                Err(ParseError::CrossProtocol) => {
                    // As Redis does: what came before this line ran; nothing after it runs,
                    // and no reply goes back to what is probably a browser.
                    warn!(
                        peer = %self.session.peer,
                        id = self.session.id,
                        "possible cross-protocol attack: an HTTP request on the RESP port; \
                         connection closed"
                    );
                    self.hangup = true;
                    break;
                }
                Err(e) => {
                    self.answer_pending_writes().await;
                    let reply = Reply::err("ERR", e.to_string());
                    // The line may have been meant as one of the batch's writes.
                    if let Some(m) = &mut self.session.multi {
                        m.fail(&reply);
                    }
                    reply.encode(self.session.version, &mut self.out);
                    let Some(n) = e.skip() else {
                        self.closing = true;
                        break;
                    };
                    pos += n;
                }
            }
        }
        // The pipeline's last writes, before anything is sent.
        self.answer_pending_writes().await;
        self.end_batch();
        self.rbuf.advance(pos);
        // What is left is one incomplete request (or nothing): an inline line has no
        // newline in it yet.
        self.inline_scanned = self
            .rbuf
            .first()
            .is_some_and(|&b| b != b'*')
            .then_some(self.rbuf.len());
        if self.rbuf.is_empty() {
            // Nothing pending: give the buffer back, so that an idle connection holds no
            // read buffer at all (one small allocation per batch is cheap next to the
            // system calls of a batch).
            self.rbuf = BytesMut::new();
        }
        Ok(())
    }

    /// Applies the writes held back to be applied together (and settles the proposals in
    /// flight), their replies going to the output: before anything is sent, and before a
    /// reply that is not a command's (a request that cannot be parsed), which must come
    /// after theirs.
    async fn answer_pending_writes(&mut self) {
        self.session.apply_pending(&mut self.out);
        command::proposals::settle(&mut self.session, &mut self.out).await;
    }

    /// Whether the read buffer still holds only the start of an inline line: no newline
    /// came with the bytes read since it was last looked at, and the line is not yet past
    /// the inline limit (which parsing reports). Each byte is looked at once.
    fn inline_line_incomplete(&mut self) -> bool {
        let Some(scanned) = self.inline_scanned else {
            return false;
        };
        let max_inline = self.session.shared.config.limits.max_inline;
        let fresh = self.rbuf.get(scanned..).unwrap_or_default();
        if fresh.contains(&b'\n') || self.rbuf.len() > max_inline.saturating_add(2) {
            self.inline_scanned = None;
            return false;
        }
        self.inline_scanned = Some(self.rbuf.len());
        true
    }

    /// Parses the complete requests from `pos` in the read buffer into `window`, each with
    /// the bytes it took, up to [`PARSE_AHEAD`] of them or [`PARSE_AHEAD_BYTES`] (at least
    /// one). Then says what follows them: `Ok(true)` more requests to parse, `Ok(false)`
    /// an incomplete one (or nothing), `Err` a request that cannot be parsed. Parsing
    /// depends on nothing a request changes, so requests can be parsed before those in
    /// front of them run.
    fn parse_ahead(
        &self,
        mut pos: usize,
        window: &mut Vec<(Request, usize)>,
    ) -> Result<bool, ParseError> {
        let limits = self.session.shared.config.limits;
        let mut bytes = 0;
        while window.len() < PARSE_AHEAD && bytes < PARSE_AHEAD_BYTES {
            let Some((req, n)) = parse_request(&self.rbuf[pos..], &limits)? else {
                return Ok(false);
            };
            pos += n;
            bytes += n;
            window.push((req, n));
        }
        Ok(true)
    }

    /// Executes one request, its reply going to the output (which is flushed when it
    /// passes [`FLUSH_AT`]). `false`: the connection is to close after the output.
    async fn execute(&mut self, req: &Request) -> io::Result<bool> {
        let max_output = self.session.shared.config.max_output;
        self.see_own_writes(&req.args).await?;
        if let Some(bucket) = command::key_order_to_build(&mut self.session, &req.args) {
            // Off the event loop: see `key_order_to_build`.
            if let Err(e) = tokio::task::spawn_blocking(move || bucket.build_key_order()).await {
                tracing::error!("building a bucket's key order failed: {e}");
            }
        }
        let start = self.out.len();
        if !cluster::reads::fence(&mut self.session, &req.args, &mut self.out).await {
            return Ok(true);
        }
        let watches = self.session.watches.len();
        let flow = command::execute(&mut self.session, &req.args, &mut self.out);
        command::proposals::settle(&mut self.session, &mut self.out).await;
        if !self.finish(flow).await? {
            return Ok(false);
        }
        // A new watch's initial data may be large: counted at once, not at the end of the
        // batch (a pipeline of WATCHes must not list a large bucket many times over first).
        if self.session.watches.len() > watches && self.account() {
            self.settle_unsent_writes();
            return Err(io::Error::other("closed: over --max-client-memory"));
        }
        // Replies of queued writes applied first are not this command's. (A stream has
        // flushed the output: what is left is past `start`, or nothing.)
        let start = start.max(self.session.reply_start);
        let size = self.out.len().saturating_sub(start);
        // An EXEC that applied its writes (its reply is their array) is answered in full:
        // an error in its place would report a failure for writes that were made. The
        // engine refuses, before applying it, a batch whose previous values pass the limit.
        let applied_batch = self.out.get(start) == Some(&b'*')
            && req
                .args
                .first()
                .is_some_and(|v| v.eq_ignore_ascii_case(b"EXEC"));
        if size > max_output && !applied_batch {
            self.out.truncate(start);
            Reply::err(
                "ERR",
                format!(
                    "reply of {size} bytes exceeds the max-output limit of \
                     {max_output} bytes (narrow the request, e.g. with LIMIT)"
                ),
            )
            .encode(self.session.version, &mut self.out);
        }
        if self.out.len() >= FLUSH_AT {
            self.answer_pending_writes().await;
            self.end_batch();
            self.flush().await?;
        }
        Ok(true)
    }

    /// Completes what a command left to do: runs its blocking job, awaits its cluster job
    /// or sends its stream, and encodes the reply. `false`: the connection is to close after
    /// the output.
    async fn finish(&mut self, flow: Flow) -> io::Result<bool> {
        match flow {
            Flow::Continue => {}
            Flow::Close => return Ok(false),
            Flow::Await(job) => {
                let reply = job.await;
                self.out.extend_from_slice(&reply);
            }
            Flow::Blocking(job) => self.blocking(job).await,
            Flow::Stream(job) => {
                self.answer_pending_writes().await;
                self.flush().await?;
                // The latency histograms count a stream until it begins: its transfer
                // takes as long as the client takes, and the requests after it start
                // their clock when it ends.
                self.end_batch();
                self.stream(job).await?;
                self.session.metrics.start();
            }
        }
        Ok(true)
    }

    /// Runs a command's job on the blocking pool and encodes its reply.
    async fn blocking(&mut self, job: command::BlockingJob) {
        let keep = Arc::clone(&self.session.shared);
        let reply = tokio::task::spawn_blocking(move || {
            let reply = job();
            drop(keep);
            reply
        })
        .await
        .unwrap_or_else(|e| {
            error!("a command panicked: {e}");
            Reply::err("ERR", "internal error")
        });
        reply.encode(self.session.version, &mut self.out);
    }

    /// Sends a reply of many frames (`BACKUP STREAM`): captured, then produced on the
    /// blocking pool a batch of [`STREAM_BATCH`] bytes at a time, each batch written before
    /// the next is read from disk, so the client's pace sets the server's. An error while
    /// producing ends the stream with an error frame; shutdown ends it (and the connection)
    /// between two batches.
    async fn stream(&mut self, job: command::StreamJob) -> io::Result<()> {
        let keep = Arc::clone(&self.session.shared);
        let started = tokio::task::spawn_blocking(move || {
            let stream = job();
            drop(keep);
            stream
        })
        .await
        .map_err(|e| io::Error::other(format!("a backup stream panicked: {e}")))?;
        let mut stream = match started {
            Ok(stream) => stream,
            Err(e) => {
                crate::encode::engine_error(&e).encode(self.session.version, &mut self.out);
                return Ok(());
            }
        };
        let mut buf = Vec::new();
        loop {
            if *self.stop.borrow() {
                return Err(io::Error::other(
                    "shutting down in the middle of a backup stream",
                ));
            }
            let produced = tokio::task::spawn_blocking(move || {
                let mut out = std::mem::take(&mut buf);
                out.clear();
                let done = stream.fill(&mut out, STREAM_BATCH);
                (stream, out, done)
            })
            .await
            .map_err(|e| io::Error::other(format!("a backup stream panicked: {e}")))?;
            let done;
            (stream, buf, done) = produced;
            match done {
                Ok(finished) => {
                    self.send_stream_batch(&buf).await?;
                    if finished {
                        return Ok(());
                    }
                }
                Err(e) => {
                    error!("backup stream failed: {e}");
                    // The files are let go before the error frame waits for the client.
                    drop(stream);
                    buf.clear();
                    Reply::err("ERR", format!("backup stream failed: {e}"))
                        .encode(self.session.version, &mut buf);
                    return self.send_stream_batch(&buf).await;
                }
            }
        }
    }

    /// Writes one batch of a stream, counted against the client-memory budget until it is
    /// sent. A client that takes longer than `--backup-stream-timeout` to receive it, an
    /// eviction or a shutdown ends the stream and the connection: the stream
    /// holds the files it reads, which a stalled reader must not keep on disk forever.
    async fn send_stream_batch(&mut self, batch: &[u8]) -> io::Result<()> {
        // An eviction, now or while the batch waits, cancels this task.
        let held = self.held();
        self.buffers.hold(held + batch.len());
        if self.buffers.evicted() {
            return Err(io::Error::other("evicted in the middle of a backup stream"));
        }
        let limit = self.session.shared.config.backup_stream_timeout;
        let sent = tokio::select! {
            sent = tokio::time::timeout(limit, self.io.write_out(batch)) => sent,
            _ = self.stop.changed() => {
                return Err(io::Error::other("shutting down in the middle of a backup stream"));
            }
        };
        let held = self.held();
        self.buffers.hold(held);
        let Ok(sent) = sent else {
            warn!(
                peer = %self.session.peer,
                id = self.session.id,
                "a backup stream's client took more than {} s to receive {} bytes; \
                 stream ended, connection closed",
                limit.as_secs(),
                batch.len()
            );
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "a backup stream's client stopped receiving",
            ));
        };
        sent
    }

    /// The replies of the requests executed so far are ready: their count and time go to
    /// the server's metrics (once per batch, not per request).
    fn end_batch(&mut self) {
        let session = &mut self.session;
        session.metrics.end(&session.shared.metrics);
    }

    /// Reports what the buffers hold (read but not executed, output not sent, MULTI
    /// queue, the watches' initial data not yet sent) to the server-wide budget. Returns
    /// true when this connection was evicted.
    fn account(&mut self) -> bool {
        let held = self.held();
        self.buffers.hold(held);
        self.buffers.evicted()
    }

    /// What the buffers hold (see [`Conn::account`]).
    fn held(&self) -> usize {
        self.rbuf.capacity()
            + self.out.capacity()
            + self.session.multi_bytes()
            + self.session.watches.initial_bytes()
    }

    /// Has the writes whose replies will not be sent (the connection was evicted) made
    /// durable, and so visible under `always`, as a hang-up does, by a task of their own
    /// (this one is being cancelled). Left alone, they would stay invisible until another
    /// write to their bucket is synced.
    fn settle_unsent_writes(&mut self) {
        if self.session.durability.is_empty() {
            return;
        }
        let mut pending = self.session.durability.take();
        let shared = Arc::clone(&self.session.shared);
        tokio::spawn(async move {
            if let Err(e) = pending.wait(&shared.syncers).await {
                if e.poisoned && !shared.health.is_stopping() {
                    shared.health.fail(format!("an fsync failed: {e}"));
                }
                error!("writes of an evicted connection could not be made durable: {e}");
            }
        });
    }

    /// Closes the connection after a server-side decision (QUIT, framing error): sends FIN,
    /// then discards what the client still sends for a moment, so that closing with unread
    /// input does not reset the connection before the client has read the last reply.
    async fn linger(&mut self) {
        if self.io.shutdown().await.is_err() {
            return;
        }
        let mut scratch = vec![0u8; 8192];
        let mut budget = LINGER_BYTES;
        let deadline = tokio::time::sleep(LINGER_TIME);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                () = &mut deadline => return,
                r = self.io.discard(&mut scratch) => match r {
                    Ok(n) if n > 0 && n < budget => budget -= n,
                    _ => return,
                },
            }
        }
    }

    /// A read that follows writes of this pipeline sees them: it waits for their
    /// durability (under `always` a write is visible only once durable), as their
    /// replies do. On a cluster node the writes are proposed first and their replies
    /// placed (the read's barrier, taken next, then covers them).
    async fn see_own_writes(&mut self, args: &[Bytes]) -> io::Result<()> {
        if command::reads_state(&self.session, args) {
            self.answer_pending_writes().await;
            if !self.session.durability.is_empty() {
                self.wait_durable().await?;
            }
        }
        Ok(())
    }

    /// Waits until the writes whose replies are in the output are durable (the bucket's
    /// syncer thread fsyncs for every connection waiting at once). If that fails, the
    /// replies would claim writes that may not survive a crash: they are replaced by
    /// `-INDOUBT` (the writes are in the log, and may be durable after a later sync or a
    /// restart), and the connection closes. A failed fsync also makes the server
    /// unhealthy; a sync that could not run (no descriptor) does not.
    async fn wait_durable(&mut self) -> io::Result<()> {
        let shared = Arc::clone(&self.session.shared);
        let started = std::time::Instant::now();
        let waited = self.session.durability.wait(&shared.syncers).await;
        shared.metrics.durability_wait.record(started.elapsed());
        if let Err(e) = waited {
            if e.poisoned && !shared.health.is_stopping() {
                shared.health.fail(format!("an fsync failed: {e}"));
            }
            error!("durability wait failed, closing the connection: {e}");
            self.out.clear();
            Reply::err("INDOUBT", format!("writes could not be made durable: {e}"))
                .encode(self.session.version, &mut self.out);
            let _ = self.io.write_out(&self.out).await;
            self.out.clear();
            return Err(io::Error::other(e));
        }
        Ok(())
    }

    /// Waits for the durability of the writes whose replies are in the output, then
    /// writes the output.
    async fn flush(&mut self) -> io::Result<()> {
        if self.account() {
            // Evicted: its task is being cancelled; send nothing more.
            self.settle_unsent_writes();
            return Err(io::Error::other("closed: over --max-client-memory"));
        }
        if !self.session.durability.is_empty() {
            self.wait_durable().await?;
        }
        if self.session.watches.active() {
            // A watcher that stopped reading would hold its task, and the segments its
            // watches read, for ever: closed once it takes nothing for the timeout.
            let stall = self.session.shared.config.watch_send_timeout;
            if let Err(e) = self.io.write_out_within(&self.out, stall).await {
                if e.kind() == io::ErrorKind::TimedOut {
                    warn!(
                        peer = %self.session.peer,
                        id = self.session.id,
                        "a watching client took no byte of its output for {} s; connection closed",
                        stall.as_secs()
                    );
                }
                return Err(e);
            }
        } else {
            self.io.write_out(&self.out).await?;
        }
        self.out.clear();
        if self.out.capacity() > OUT_KEEP {
            self.out = Vec::new();
        }
        Ok(())
    }
}
