//! The HTTP gateway (`--http-listen`): JSON over HTTP/1.1 for programs that cannot speak
//! RESP (a web page storing its layout), on the server's own tokio runtime.
//!
//! * `guard`: what every request passes first (Host, Origin/CORS, password).
//! * `routes`: keys and entries, the multi-key reads; `body`: a value's upload, counted
//!   against the client memory budget as it arrives.
//! * `sse`: watches as Server-Sent Events.
//! * `io`: the socket under hyper: replies counted until sent, a stalled one timed out.
//! * `json`: entries and errors as JSON.
//! * `observe`: `/healthz`, `/metrics` and the timing of every request; `collector`:
//!   what `/metrics` shows.
//!
//! Connections are accepted by the server's accept loop (so they are counted, limited and
//! drained at shutdown like RESP ones) and each is driven by hyper's HTTP/1 connection
//! with the axum router as its service. Every engine call runs on the blocking pool.

mod body;
mod collector;
mod guard;
mod io;
mod json;
mod observe;
mod routes;
mod sse;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::HttpBody as _;
use axum::routing::get;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tower_service::Service;
use tracing::debug;

use crate::client_memory::ClientBuffers;
use crate::shared::Shared;

/// What the gateway's routes share.
pub(crate) struct Gateway {
    pub shared: Arc<Shared>,
    /// `--http-listen` as written (a valid `Host`).
    pub listen: String,
    /// `--http-allowed-host` names.
    pub allowed_hosts: Vec<String>,
    /// `--http-cors-origin` origins.
    pub cors_origins: Vec<String>,
    /// Becomes true at shutdown: watches end, connections close once idle.
    pub stop: watch::Receiver<bool>,
    /// Watch streams listing their initial data now, at most one per core: a list is
    /// counted against the client budget once it is made, so this bounds what is held
    /// uncounted, as the runtime's threads bound it for RESP watches.
    pub listings: Arc<tokio::sync::Semaphore>,
}

impl Gateway {
    /// The gateway of the server `shared`, as its configuration says, stopping when `stop`
    /// becomes true.
    pub fn new(shared: Arc<Shared>, stop: watch::Receiver<bool>) -> Gateway {
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
        Gateway {
            listen: shared.config.http_listen.clone().unwrap_or_default(),
            allowed_hosts: shared.config.http_allowed_hosts.clone(),
            cors_origins: shared.config.http_cors_origins.clone(),
            shared,
            stop,
            listings: Arc::new(tokio::sync::Semaphore::new(cores)),
        }
    }

    /// A gateway over `store` (opened in `dir`) with the default settings, for unit tests,
    /// with the sender of its stop signal.
    #[cfg(test)]
    pub fn for_tests(
        dir: &std::path::Path,
        store: logkv::Store,
    ) -> (Arc<Gateway>, watch::Sender<bool>) {
        let config = crate::config::ServerConfig::new(dir);
        let shared = Arc::new(Shared {
            stores: logkv_cluster::StoreCell::new(store, 0),
            cluster: None,
            client_memory: Arc::new(crate::client_memory::ClientMemory::new(
                config.max_client_memory,
            )),
            config,
            stats: crate::shared::Stats::new(),
            pumps: crate::pump::Pumps::new(),
            syncers: crate::durability::Syncers::default(),
            metrics: crate::metrics::Metrics::new(crate::command::verb_names()),
            health: crate::health::Health::default(),
        });
        let (stop_tx, stop) = watch::channel(false);
        (Arc::new(Gateway::new(shared, stop)), stop_tx)
    }
}

/// One HTTP connection, as its requests see it.
#[derive(Clone)]
pub(crate) struct ConnInfo {
    pub peer: SocketAddr,
    /// The address the connection came in on (what a valid `Host` names).
    pub local: SocketAddr,
    held: Arc<Mutex<Held>>,
}

/// What one connection holds, reported together against the client budget.
struct Held {
    buffers: ClientBuffers,
    /// A request body (or a watch's initial data).
    request: usize,
    /// Replies handed to hyper and not yet written to the socket.
    replies: usize,
}

impl Held {
    fn report(&mut self) {
        let total = self.request.saturating_add(self.replies);
        self.buffers.hold(total);
    }
}

impl ConnInfo {
    /// A connection from `peer` that came in on `local`, with its budget handle.
    pub fn new(peer: SocketAddr, local: SocketAddr, buffers: ClientBuffers) -> ConnInfo {
        ConnInfo {
            peer,
            local,
            held: Arc::new(Mutex::new(Held {
                buffers,
                request: 0,
                replies: 0,
            })),
        }
    }

    /// Reports what the connection holds for its request (a body) against the client
    /// budget.
    pub fn hold(&self, bytes: usize) {
        let mut held = self.held.lock();
        held.request = bytes;
        held.report();
    }

    /// A reply of `bytes` was made: it counts until the socket has taken as many bytes
    /// (its headers make it count a little less than it holds, never more).
    pub fn reply_queued(&self, bytes: usize) {
        let mut held = self.held.lock();
        held.replies = held.replies.saturating_add(bytes);
        held.report();
    }

    /// The socket took `bytes`.
    fn sent(&self, bytes: usize) {
        let mut held = self.held.lock();
        if held.replies > 0 {
            held.replies = held.replies.saturating_sub(bytes);
            held.report();
        }
    }

    /// A guard that reports nothing held when it is dropped: however a request that holds
    /// a body ends (its write done or failed, an error before it, the client gone), its
    /// bytes stop counting with it.
    pub fn released_at_end(&self) -> Released<'_> {
        Released(self)
    }
}

/// See [`ConnInfo::released_at_end`].
pub(crate) struct Released<'a>(&'a ConnInfo);

impl Drop for Released<'_> {
    fn drop(&mut self) {
        self.0.hold(0);
    }
}

/// The gateway's routes behind its guard.
pub(crate) fn router(gw: &Arc<Gateway>) -> Router {
    let key = "/v1/buckets/{bucket}/keys/{*key}";
    Router::new()
        .route(
            key,
            get(routes::get_key)
                .put(routes::put_key)
                .delete(routes::delete_key),
        )
        .route("/v1/buckets/{bucket}/keys", get(routes::list_keys))
        .route("/v1/buckets/{bucket}/search", get(routes::search))
        .route("/v1/buckets/{bucket}/scan", get(routes::scan))
        .route("/v1/buckets/{bucket}/watch", get(sse::watch))
        .route("/healthz", get(observe::healthz))
        .route("/metrics", get(observe::metrics))
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(gw),
            observe::timed,
        ))
        .fallback(|| async { json::ApiError::not_found("no such route") })
        .layer(axum::middleware::map_response(json::errors_as_json))
        // Inside the guard: a refused reply gets the CORS headers a cross-origin page needs
        // to read it.
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(gw),
            limit_reply,
        ))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(gw),
            guard::check,
        ))
        .layer(axum::middleware::from_fn(count_reply))
        .with_state(Arc::clone(gw))
}

/// Replaces a read's reply (a `GET` of a `/v1/` route) larger than `--max-output` by 400
/// `ERR`, as a RESP reply past it is replaced by `-ERR`: the engine's read limit counts
/// the records read, and the reply's JSON (base64 values, field names) is larger. Watch
/// streams (no size known), the observability routes, HEAD (no body sent) and writes (an
/// applied write is answered in full, as on RESP) are not limited.
async fn limit_reply(
    axum::extract::State(gw): axum::extract::State<Arc<Gateway>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let data = req.uri().path().starts_with("/v1/") && req.method() == axum::http::Method::GET;
    let reply = next.run(req).await;
    let max = gw.shared.config.max_output;
    match reply.body().size_hint().exact() {
        Some(size) if data && size > u64::try_from(max).unwrap_or(u64::MAX) => json::ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "ERR",
            format!(
                "reply of {size} bytes exceeds the max-output limit of {max} bytes \
                     (narrow the request, e.g. with limit)"
            ),
        )
        .into_response(),
        _ => reply,
    }
}

/// Counts every reply whose size is known (all but watch streams, which count what they
/// hold themselves) against the client budget until it is sent. A reply to HEAD sends
/// no body (axum drops it past this layer): nothing to count.
async fn count_reply(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let conn = req
        .extensions()
        .get::<ConnInfo>()
        .filter(|_| req.method() != axum::http::Method::HEAD)
        .cloned();
    let reply = next.run(req).await;
    if let (Some(conn), Some(bytes)) = (conn, reply.body().size_hint().exact()) {
        conn.reply_queued(usize::try_from(bytes).unwrap_or(usize::MAX));
    }
    reply
}

/// Bytes of a request's head (its line and headers) a connection buffers at most while
/// they arrive: past it the request is answered 431 and the connection closed. hyper's
/// default (about 400 KiB) let each of thousands of connections hold that much, unseen
/// by `--max-client-memory`.
const MAX_REQUEST_HEAD: usize = 16 * 1024;

/// Serves one HTTP connection until the client leaves or, at shutdown, once its current
/// request is answered (watch streams end at shutdown).
pub(crate) async fn serve_connection(
    router: Router,
    stream: TcpStream,
    peer: SocketAddr,
    buffers: ClientBuffers,
    timeout: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let local = match stream.local_addr() {
        Ok(a) => a,
        Err(e) => {
            debug!(%peer, "HTTP connection error: {e}");
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    let info = ConnInfo::new(peer, local, buffers);
    let io = io::CountedIo::new(stream, info.clone(), timeout);
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(info.clone());
        let mut router = router.clone();
        async move { router.call(req).await }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(timeout)
        .max_buf_size(MAX_REQUEST_HEAD)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        debug!(%peer, "HTTP connection error: {e}");
    }
}
