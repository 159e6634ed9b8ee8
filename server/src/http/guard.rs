//! What every gateway request passes before its route: the `Host` check (DNS rebinding),
//! the `Origin` check and CORS, and the password.
//!
//! * **Host.** A web page on `evil.example` can point its own name at 127.0.0.1 (DNS
//!   rebinding) and then read and write the gateway as "same origin". Its requests still
//!   carry `Host: evil.example`, so a request is served only when its `Host` is the address
//!   the connection came in on (`ip:port`, and `localhost:port` / `127.0.0.1:port` /
//!   `[::1]:port` on loopback), the `--http-listen` address as written, or a name given
//!   with `--http-allowed-host`. Otherwise: 421 `BADHOST`.
//! * **Origin and CORS.** No CORS header is sent unless `--http-cors-origin` names the
//!   request's `Origin`; then only that origin is allowed (preflight `OPTIONS` answered with
//!   the methods and headers the routes use). A request whose `Origin` is neither allowed
//!   nor the gateway's own is refused (403 `FORBIDDEN`) before it runs, so a cross-site
//!   form or `fetch` cannot even make a write happen without reading its answer.
//! * **Password.** With `--password`, every route but `/healthz` needs
//!   `Authorization: Bearer <password>`, compared in constant time as `AUTH` is; else 401.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, AUTHORIZATION, HOST, ORIGIN, VARY,
    WWW_AUTHENTICATE,
};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::warn;

use super::json::ApiError;
use super::{ConnInfo, Gateway};
use crate::secret::same_secret;

/// The header that carries a raw value's revision.
pub(crate) const REVISION_HEADER: &str = "x-logkv-revision";

/// The address as a `Host` header writes it (`[v6]:port` for IPv6).
fn authority(addr: SocketAddr) -> String {
    addr.to_string()
}

/// Splits `host[:port]` (or `[v6][:port]`) into its name and port.
fn split_host(host: &str) -> (&str, Option<&str>) {
    let colon = if host.starts_with('[') {
        host.find(']')
            .and_then(|end| host[end..].find(':').map(|c| end + c))
    } else {
        host.rfind(':')
    };
    match colon {
        Some(i) => (&host[..i], Some(&host[i + 1..])),
        None => (host, None),
    }
}

impl Gateway {
    /// Whether a request with this `Host`, arriving on `local`, is for this gateway.
    pub(crate) fn host_allowed(&self, host: &str, local: SocketAddr) -> bool {
        let host = host.trim().to_ascii_lowercase();
        let port = local.port();
        let mut own = vec![authority(local), self.listen.to_ascii_lowercase()];
        if local.ip().is_loopback() {
            for name in ["localhost", "127.0.0.1", "[::1]"] {
                own.push(format!("{name}:{port}"));
            }
        }
        if port == 80 {
            // A browser leaves the default port out.
            let bare: Vec<String> = own
                .iter()
                .filter_map(|a| a.strip_suffix(":80").map(str::to_string))
                .collect();
            own.extend(bare);
        }
        if own.contains(&host) {
            return true;
        }
        let (name, _) = split_host(&host);
        self.allowed_hosts.iter().any(|allowed| {
            let allowed = allowed.to_ascii_lowercase();
            match split_host(&allowed) {
                (_, Some(_)) => allowed == host,
                (allowed_name, None) => allowed_name == name,
            }
        })
    }

    /// Whether `origin` is one of `--http-cors-origin`.
    fn cors_allows(&self, origin: &HeaderValue) -> bool {
        self.cors_origins
            .iter()
            .any(|o| o.as_bytes().eq_ignore_ascii_case(origin.as_bytes()))
    }

    /// Whether the request carries the password (always, without one).
    fn authorized(&self, headers: &HeaderMap) -> Option<bool> {
        let want = self.shared.config.password.as_deref()?;
        let given = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        Some(given.is_some_and(|g| same_secret(g.trim().as_bytes(), want.as_bytes())))
    }
}

/// The checks, then the route, then the CORS headers of an allowed origin.
pub(crate) async fn check(State(gw): State<Arc<Gateway>>, req: Request, next: Next) -> Response {
    let Some(info) = req.extensions().get::<ConnInfo>().cloned() else {
        return ApiError::internal("connection information missing").into_response();
    };
    let host = req.headers().get(HOST).and_then(|h| h.to_str().ok());
    if !host.is_some_and(|h| gw.host_allowed(h, info.local)) {
        warn!(peer = %info.peer, host = ?req.headers().get(HOST), "HTTP request for another host refused (DNS rebinding?)");
        return ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            "BADHOST",
            "the Host header names neither this gateway's address nor an --http-allowed-host",
        )
        .into_response();
    }
    let cors = match req.headers().get(ORIGIN) {
        None => None,
        Some(origin) if gw.cors_allows(origin) => Some(origin.clone()),
        Some(origin) if is_own_origin(&gw, origin, info.local) => None,
        Some(origin) => {
            warn!(peer = %info.peer, ?origin, "cross-origin HTTP request refused");
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "FORBIDDEN",
                "cross-origin requests from this origin are not allowed (--http-cors-origin)",
            )
            .into_response();
        }
    };
    if req.method() == Method::OPTIONS {
        if let Some(origin) = cors {
            return preflight(origin);
        }
    }
    let open_route = req.uri().path() == "/healthz";
    if !open_route && gw.authorized(req.headers()) == Some(false) {
        if req.headers().contains_key(AUTHORIZATION) {
            warn!(peer = %info.peer, "HTTP request with an invalid password");
        }
        let mut resp = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "NOAUTH",
            "Authentication required: send Authorization: Bearer <password>",
        )
        .into_response();
        resp.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"logkv\""),
        );
        return with_cors(resp, cors);
    }
    with_cors(next.run(req).await, cors)
}

/// Whether `origin` is the gateway itself: `http://` and a host the gateway answers to
/// (a page it would serve; CORS is not needed, and not sent, for it).
fn is_own_origin(gw: &Gateway, origin: &HeaderValue, local: SocketAddr) -> bool {
    origin.to_str().is_ok_and(|o| {
        o.strip_prefix("http://")
            .is_some_and(|authority| gw.host_allowed(authority, local))
    })
}

/// The answer to a CORS preflight from an allowed origin.
fn preflight(origin: HeaderValue) -> Response {
    let mut resp = StatusCode::NO_CONTENT.into_response();
    let h = resp.headers_mut();
    h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.insert(
        ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, PUT, DELETE"),
    );
    h.insert(
        ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("authorization, content-type, last-event-id"),
    );
    h.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    h.insert(VARY, HeaderValue::from_static("Origin"));
    resp
}

fn with_cors(mut resp: Response, origin: Option<HeaderValue>) -> Response {
    if let Some(origin) = origin {
        let h = resp.headers_mut();
        h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(
            ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(REVISION_HEADER),
        );
        h.append(VARY, HeaderValue::from_static("Origin"));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::split_host;

    #[test]
    fn hosts_split_into_name_and_port() {
        assert_eq!(split_host("localhost:80"), ("localhost", Some("80")));
        assert_eq!(split_host("localhost"), ("localhost", None));
        assert_eq!(split_host("[::1]:8080"), ("[::1]", Some("8080")));
        assert_eq!(split_host("[::1]"), ("[::1]", None));
        assert_eq!(split_host("kv.example:1"), ("kv.example", Some("1")));
    }
}
