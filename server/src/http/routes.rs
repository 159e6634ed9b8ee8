//! The key routes: one entry (GET, PUT, DELETE) and the multi-key reads (keys, search,
//! scan). Each is one engine call, run on the blocking pool (a write waits for its fsync
//! there); the gateway holds no key/value logic.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use logkv::Op;
// The server's write op (see `crate::command::kv`): a cluster node proposes it as it is.
use logkv_cluster::Op as WriteOp;
use serde::Serialize;

use super::guard::REVISION_HEADER;
use super::json::{entries, ApiError, EntryJson};
use super::{ConnInfo, Gateway};

/// SCAN's page size when no `limit` is given (as the verb).
const DEFAULT_SCAN_LIMIT: usize = 100;

/// A request's query parameters, checked against the names its route takes.
pub(crate) struct Params(HashMap<String, String>);

impl Params {
    /// The parameters; an unknown name is an error (a typo must not be ignored).
    pub fn new(map: HashMap<String, String>, known: &[&str]) -> Result<Params, ApiError> {
        if let Some(unknown) = map.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(ApiError::bad_arg(format!(
                "unknown parameter '{unknown}' (this route takes: {})",
                known.join(", ")
            )));
        }
        Ok(Params(map))
    }

    /// Whether a flag (`?raw`, `?create`, ...) is present, with any value.
    pub fn flag(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    /// A text parameter; an empty value counts as absent.
    pub fn text(&mut self, name: &str) -> Option<String> {
        self.0.remove(name).filter(|v| !v.is_empty())
    }

    /// A non-negative integer parameter.
    pub fn uint(&self, name: &str) -> Result<Option<u64>, ApiError> {
        match self.0.get(name).map(String::as_str) {
            None | Some("") => Ok(None),
            Some(v) => crate::command::args::decimal(v.as_bytes())
                .map(Some)
                .ok_or_else(|| {
                    ApiError::bad_arg(format!("invalid {name} '{v}': not a non-negative integer"))
                }),
        }
    }
}

impl Gateway {
    /// Runs the read `f` on the store on the blocking pool; on a cluster node once the
    /// read barrier is passed, so that the read is linearizable.
    pub(crate) async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&logkv::Store) -> logkv::Result<T> + Send + 'static,
    ) -> Result<T, ApiError> {
        if let Some(node) = &self.shared.cluster {
            node.read_barrier()
                .await
                .map_err(|e| ApiError::cluster(&e))?;
        }
        self.run(f).await
    }

    /// Runs `f` on the store on the blocking pool.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&logkv::Store) -> logkv::Result<T> + Send + 'static,
    ) -> Result<T, ApiError> {
        let shared = Arc::clone(&self.shared);
        let keep = Arc::clone(&self.shared);
        match tokio::task::spawn_blocking(move || f(&shared.store())).await {
            Ok(result) => result.map_err(|e| {
                keep.health.observe(&e);
                ApiError::from(e)
            }),
            Err(e) => Err(ApiError::internal(format!("the request failed: {e}"))),
        }
    }
}

/// `{"revision": n}`
#[derive(Serialize)]
struct Revision {
    revision: u64,
}

/// `{"keys": [...]}`
#[derive(Serialize)]
struct KeysJson {
    keys: Vec<String>,
}

/// `{"entries": [...]}`
#[derive(Serialize)]
struct EntriesJson<'a> {
    entries: Vec<EntryJson<'a>>,
}

/// `{"next": key | null, "entries": [...]}`
#[derive(Serialize)]
struct PageJson<'a> {
    next: Option<&'a str>,
    entries: Vec<EntryJson<'a>>,
}

/// `GET /v1/buckets/{bucket}/keys/{key}[?rev=N][&raw]`
pub(crate) async fn get_key(
    State(gw): State<Arc<Gateway>>,
    Path((bucket, key)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let params = Params::new(query, &["rev", "raw"])?;
    let rev = params.uint("rev")?;
    let raw = params.flag("raw");
    let entry = gw
        .read(move |store| {
            let b = store.bucket(&bucket)?;
            match rev {
                None => b.entry(&key),
                Some(rev) => b.entry_at(&key, rev),
            }
        })
        .await?;
    let missing = || ApiError::not_found("no such key (or revision)");
    let entry = entry.ok_or_else(missing)?;
    if !raw {
        return Ok(Json(EntryJson::new(&entry, true)).into_response());
    }
    if entry.op != Op::Put {
        return Err(ApiError::not_found(format!(
            "revision {} is a {} marker: it has no value",
            entry.revision,
            entry.op.as_str()
        )));
    }
    let mut resp = entry.value.into_response();
    let h = resp.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(REVISION_HEADER, HeaderValue::from(entry.revision));
    Ok(resp)
}

/// `PUT /v1/buckets/{bucket}/keys/{key}[?ttl=ms][&rev=N | &create]` with the value as
/// the body (counted against the client memory budget while it arrives).
pub(crate) async fn put_key(
    State(gw): State<Arc<Gateway>>,
    Extension(conn): Extension<ConnInfo>,
    Path((bucket, key)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    // The parameters are checked before the body is read: a request refused for them
    // is refused without waiting for (and holding) its value.
    let params = Params::new(query, &["ttl", "rev", "create"])?;
    let rev = params.uint("rev")?;
    let create = params.flag("create");
    if rev.is_some() && create {
        return Err(ApiError::bad_arg(
            "rev (UPDATE) and create (CREATE) exclude each other",
        ));
    }
    let ttl = match params.uint("ttl")? {
        Some(0) => {
            return Err(ApiError::bad_arg(
                "ttl must be a positive number of milliseconds",
            ))
        }
        ttl => ttl.map(Duration::from_millis),
    };
    let _released = conn.released_at_end();
    let max = gw.shared.config.limits.max_bulk;
    let idle = gw.shared.config.http_timeout;
    // Counted as it was read, the body stays counted until the guard drops: after the write.
    let body = super::body::read_counted(&headers, body, &conn, max, idle, key.len()).await?;
    let mut op = match rev {
        Some(rev) => WriteOp::update(key, body, rev),
        None if create => WriteOp::create(key, body),
        None => WriteOp::put(key, body),
    };
    if let Some(ttl) = ttl {
        op = op.with_ttl(ttl);
    }
    write(&gw, bucket, op).await
}

/// `DELETE /v1/buckets/{bucket}/keys/{key}[?purge | ?rev=N]`
pub(crate) async fn delete_key(
    State(gw): State<Arc<Gateway>>,
    Path((bucket, key)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let params = Params::new(query, &["purge", "rev"])?;
    let op = match (params.flag("purge"), params.uint("rev")?) {
        (true, Some(_)) => return Err(ApiError::bad_arg("purge takes no rev")),
        (true, None) => WriteOp::purge(key),
        (false, Some(rev)) => WriteOp::delete_at(key, rev),
        (false, None) => WriteOp::delete(key),
    };
    write(&gw, bucket, op).await
}

/// One write, durable before the answer (the engine's group commit shares fsyncs with
/// every other writer; on a cluster node, proposed and committed on a majority).
async fn write(gw: &Gateway, bucket: String, op: WriteOp) -> Result<Response, ApiError> {
    let revision = if let Some(node) = &gw.shared.cluster {
        crate::command::proposals::write_one(node, bucket, op)
            .await
            .map_err(|e| ApiError::cluster(&e))
            .and_then(|written| written.map(|w| w.revision).map_err(ApiError::from))
    } else {
        let op = op.to_write_op();
        gw.run(move |store| store.bucket(&bucket)?.write(std::slice::from_ref(&op)))
            .await
            .and_then(|written| {
                written
                    .first()
                    .map(|w| w.revision)
                    .ok_or_else(|| ApiError::internal("the write returned no result"))
            })
    };
    Ok(Json(Revision {
        revision: revision?,
    })
    .into_response())
}

/// `GET /v1/buckets/{bucket}/keys[?pattern=P]`
pub(crate) async fn list_keys(
    State(gw): State<Arc<Gateway>>,
    Path(bucket): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let mut params = Params::new(query, &["pattern"])?;
    let pattern = params.text("pattern").unwrap_or_else(|| ">".into());
    let keys = gw
        .read(move |store| store.bucket(&bucket)?.keys(&pattern))
        .await?;
    Ok(Json(KeysJson { keys }).into_response())
}

/// `GET /v1/buckets/{bucket}/search?glob=G[&limit=N]`
pub(crate) async fn search(
    State(gw): State<Arc<Gateway>>,
    Path(bucket): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let mut params = Params::new(query, &["glob", "limit"])?;
    let limit = limit(&params)?.unwrap_or(0);
    let glob = params
        .text("glob")
        .ok_or_else(|| ApiError::bad_arg("search needs ?glob="))?;
    let found = gw
        .read(move |store| store.bucket(&bucket)?.search(&glob, limit))
        .await?;
    let body = EntriesJson {
        entries: entries(&found),
    };
    Ok(Json(body).into_response())
}

/// `GET /v1/buckets/{bucket}/scan[?from=K][&to=K][&limit=N]`
pub(crate) async fn scan(
    State(gw): State<Arc<Gateway>>,
    Path(bucket): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let mut params = Params::new(query, &["from", "to", "limit"])?;
    let limit = limit(&params)?.unwrap_or(DEFAULT_SCAN_LIMIT);
    let (from, to) = (params.text("from"), params.text("to"));
    let page = gw
        .read(move |store| {
            store
                .bucket(&bucket)?
                .scan(from.as_deref(), to.as_deref(), limit)
        })
        .await?;
    let body = PageJson {
        next: page.next.as_deref(),
        entries: entries(&page.entries),
    };
    Ok(Json(body).into_response())
}

fn limit(params: &Params) -> Result<Option<usize>, ApiError> {
    Ok(params
        .uint("limit")?
        .map(|n| usize::try_from(n).unwrap_or(usize::MAX)))
}
