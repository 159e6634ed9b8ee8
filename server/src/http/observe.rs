//! `GET /healthz`, `GET /metrics`, and the timing of every gateway request.
//!
//! `/metrics` is the Prometheus text format (`OpenMetrics` 1.0, which Prometheus scrapes
//! natively) written by `prometheus-client` from the collector in `collector`.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use logkv::FsyncPolicy;
use prometheus_client::registry::Registry;
use serde::Serialize;

use super::collector::ServerCollector;
use super::json::ApiError;
use super::Gateway;
use crate::health::Unhealthy;
use crate::metrics::Route;
use crate::shared::Shared;

/// The content type of the `OpenMetrics` text format.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The route a matched path and method are, for the request metrics.
fn route_of(method: &Method, path: &str) -> Option<Route> {
    Some(match path {
        "/v1/buckets/{bucket}/keys/{*key}" => match *method {
            Method::PUT => Route::Put,
            Method::DELETE => Route::Delete,
            _ => Route::Get,
        },
        "/v1/buckets/{bucket}/keys" => Route::Keys,
        "/v1/buckets/{bucket}/search" => Route::Search,
        "/v1/buckets/{bucket}/scan" => Route::Scan,
        "/v1/buckets/{bucket}/watch" => Route::Watch,
        "/healthz" => Route::Healthz,
        "/metrics" => Route::Metrics,
        _ => return None,
    })
}

/// Times a routed request (a watch: until its stream starts) into the route's histogram.
pub(crate) async fn timed(State(gw): State<Arc<Gateway>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .and_then(|p| route_of(req.method(), p.as_str()));
    let started = Instant::now();
    let resp = next.run(req).await;
    if let Some(route) = route {
        gw.shared.metrics.record_http(route, started.elapsed());
    }
    resp
}

#[derive(Serialize)]
struct HealthJson {
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

/// `GET /healthz`: 200 `{"status":"serving"}`; 503 with `stopping` or `failed` and the
/// reason. Under `--fsync always` it also asks every bucket's log whether an fsync failed
/// (a sync with nothing unsynced costs no fsync); a cluster node asks its Raft node
/// whether it stopped on a fatal error.
pub(crate) async fn healthz(State(gw): State<Arc<Gateway>>) -> Response {
    match &gw.shared.cluster {
        // A cluster node's Raft log is its durability; a node stopped on a fatal error
        // (a failed disk) serves nothing more.
        Some(node) => {
            if let Some(failure) = node.failure() {
                gw.shared
                    .health
                    .fail(format!("the cluster node stopped: {failure}"));
            }
        }
        None if gw.shared.config.fsync == FsyncPolicy::Always => {
            let shared = Arc::clone(&gw.shared);
            let _ = tokio::task::spawn_blocking(move || probe(&shared)).await;
        }
        None => {}
    }
    let (status, body) = match gw.shared.health.status() {
        Ok(()) => (
            StatusCode::OK,
            HealthJson {
                status: "serving",
                reason: None,
            },
        ),
        Err(Unhealthy::Stopping) => (
            StatusCode::SERVICE_UNAVAILABLE,
            HealthJson {
                status: "stopping",
                reason: None,
            },
        ),
        Err(Unhealthy::Failed(reason)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            HealthJson {
                status: "failed",
                reason: Some(reason),
            },
        ),
    };
    (status, Json(body)).into_response()
}

/// Syncs every bucket's log, noting a poisoned one.
fn probe(shared: &Shared) {
    let store = shared.store();
    for name in store.bucket_names() {
        if let Ok(bucket) = store.bucket(&name) {
            if let Err(e) = bucket.sync() {
                shared.health.observe(&e);
            }
        }
    }
}

/// `GET /metrics`
pub(crate) async fn metrics(State(gw): State<Arc<Gateway>>) -> Result<Response, ApiError> {
    let shared = Arc::clone(&gw.shared);
    let text = tokio::task::spawn_blocking(move || {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(ServerCollector::new(shared)));
        let mut text = String::with_capacity(16 * 1024);
        prometheus_client::encoding::text::encode(&mut text, &registry).map(|()| text)
    })
    .await
    .map_err(|e| ApiError::internal(format!("metrics failed: {e}")))?
    .map_err(|e| ApiError::internal(format!("metrics could not be encoded: {e}")))?;
    let mut resp = text.into_response();
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(OPENMETRICS));
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Arc;

    use axum::body::Body;
    use axum::http::header::HOST;
    use axum::http::{Request, StatusCode};
    use tower_service::Service;

    use crate::client_memory::ClientMemory;
    use crate::http::{router, ConnInfo, Gateway};

    async fn healthz(gw: &Arc<Gateway>) -> (StatusCode, String) {
        let local = SocketAddr::from(([127, 0, 0, 1], 1));
        let memory = Arc::new(ClientMemory::new(1 << 20));
        let mut req = Request::builder()
            .uri("/healthz")
            .header(HOST, "127.0.0.1:1")
            .body(Body::empty())
            .unwrap();
        req.extensions_mut()
            .insert(ConnInfo::new(local, local, memory.register(1, local).0));
        let resp = router(gw).call(req).await.unwrap();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn healthz_follows_the_health() {
        let dir = tempfile::tempdir().unwrap();
        let store = logkv::Store::open(dir.path(), logkv::Options::default()).unwrap();
        let (gw, _stop) = Gateway::for_tests(dir.path(), store);
        let shared = Arc::clone(&gw.shared);
        assert_eq!(
            healthz(&gw).await,
            (StatusCode::OK, r#"{"status":"serving"}"#.into())
        );
        shared.health.stopping();
        assert_eq!(
            healthz(&gw).await,
            (
                StatusCode::SERVICE_UNAVAILABLE,
                r#"{"status":"stopping"}"#.into()
            )
        );
        shared.health.fail("an fsync failed: EIO".into());
        assert_eq!(
            healthz(&gw).await,
            (
                StatusCode::SERVICE_UNAVAILABLE,
                r#"{"status":"failed","reason":"an fsync failed: EIO"}"#.into()
            )
        );
    }
}
