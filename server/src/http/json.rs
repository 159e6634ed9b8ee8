//! What the gateway answers: entries as JSON (values in base64) and errors as
//! `{"error": CODE, "message": text}` with the HTTP status that fits the code.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use logkv::Entry;
use serde::Serialize;

use crate::encode::error_code;

/// An entry as JSON: the fields of the protocol's entries, `value` in base64 (left out for
/// meta-only watches).
#[derive(Debug, Serialize)]
pub(crate) struct EntryJson<'a> {
    bucket: &'a str,
    key: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    revision: u64,
    created: u64,
    op: &'static str,
    delta: u64,
    expires: u64,
}

impl<'a> EntryJson<'a> {
    /// `e` as JSON; without its value when `with_value` is false.
    pub fn new(e: &'a Entry, with_value: bool) -> EntryJson<'a> {
        EntryJson {
            bucket: &e.bucket,
            key: &e.key,
            value: with_value.then(|| BASE64.encode(&e.value)),
            revision: e.revision,
            created: e.created_ms,
            op: e.op.as_str(),
            delta: e.delta,
            expires: e.expires_ms,
        }
    }
}

/// A list of entries as JSON.
pub(crate) fn entries(list: &[Entry]) -> Vec<EntryJson<'_>> {
    list.iter().map(|e| EntryJson::new(e, true)).collect()
}

/// An error answer: a status, a protocol error code and a message.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

#[derive(Serialize)]
struct ErrorJson<'a> {
    error: &'a str,
    message: &'a str,
}

impl ApiError {
    /// An error with this status and code.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    /// A malformed request (`BADARG`, 400).
    pub fn bad_arg(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "BADARG", message)
    }

    /// Nothing there (`NOTFOUND`, 404).
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "NOTFOUND", message)
    }

    /// A server-side failure (`ERR`, 500).
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "ERR", message)
    }

    /// An engine error, with the protocol's code and the status that fits it: failed
    /// preconditions are 409, a missing bucket 404, a bad key or argument 400.
    pub fn engine(e: &logkv::Error) -> ApiError {
        let code = error_code(e);
        if let logkv::Error::ReadTooLarge { .. } | logkv::Error::WatchTooLarge { .. } = e {
            // The request asks for too much: narrowed, it succeeds.
            return ApiError::new(StatusCode::BAD_REQUEST, code, e.to_string());
        }
        let status = match code {
            "WRONGREV" | "EXISTS" | "MISMATCH" => StatusCode::CONFLICT,
            "NOTFOUND" | "NOBUCKET" => StatusCode::NOT_FOUND,
            "BADKEY" | "BADARG" => StatusCode::BAD_REQUEST,
            "TOOLARGE" => StatusCode::PAYLOAD_TOO_LARGE,
            "FULL" => StatusCode::INSUFFICIENT_STORAGE,
            "BUSY" => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, code, e.to_string())
    }
}

impl ApiError {
    /// A cluster failure: `NOLEADER` (503: nothing was applied, retry), `INDOUBT` (504: the
    /// write reached the leader but its outcome is unknown; read the key to check),
    /// `TOOLARGE` (413: over one replicated entry's limit, nothing applied), or a server-side
    /// failure.
    pub fn cluster(e: &logkv_cluster::ClusterError) -> ApiError {
        use logkv_cluster::ClusterError;
        match e {
            ClusterError::NoLeader(m) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "NOLEADER", m.clone())
            }
            ClusterError::InDoubt(m) => {
                ApiError::new(StatusCode::GATEWAY_TIMEOUT, "INDOUBT", m.clone())
            }
            ClusterError::TooLarge { .. } => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "TOOLARGE", e.to_string())
            }
            ClusterError::Failed(m) => ApiError::internal(m.clone()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorJson {
            error: self.code,
            message: &self.message,
        };
        (self.status, Json(body)).into_response()
    }
}

/// Gives every error response the gateway's JSON shape (`{"error", "message"}`): axum's
/// own rejections (a body over the limit, a path or a query that does not parse, a method
/// a route does not take) come as plain text, or empty.
pub(crate) async fn errors_as_json(resp: Response) -> Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json || !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    // Rejection texts are short; a longer one is replaced by the status's reason.
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let mut message = String::from_utf8_lossy(&text).trim().to_string();
    if message.is_empty() {
        message = status
            .canonical_reason()
            .unwrap_or("request refused")
            .to_string();
    }
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "TOOLARGE",
        StatusCode::NOT_FOUND => "NOTFOUND",
        s if s.is_client_error() => "BADARG",
        _ => "ERR",
    };
    let mut json = ApiError::new(status, code, message).into_response();
    // What else the response said (an Allow header, say) stays.
    for (name, value) in &parts.headers {
        if name != axum::http::header::CONTENT_TYPE && name != axum::http::header::CONTENT_LENGTH {
            json.headers_mut().append(name.clone(), value.clone());
        }
    }
    json
}

impl From<logkv::Error> for ApiError {
    fn from(e: logkv::Error) -> ApiError {
        ApiError::engine(&e)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use logkv::{Error, Op};

    use super::*;

    #[test]
    fn statuses_of_engine_errors() {
        let cases = [
            (Error::Exists, StatusCode::CONFLICT, "EXISTS"),
            (
                Error::WrongRevision {
                    expected: 1,
                    latest: 2,
                },
                StatusCode::CONFLICT,
                "WRONGREV",
            ),
            (Error::Mismatch, StatusCode::CONFLICT, "MISMATCH"),
            (
                Error::NoBucket("b".into()),
                StatusCode::NOT_FOUND,
                "NOBUCKET",
            ),
            (Error::BadKey("k".into()), StatusCode::BAD_REQUEST, "BADKEY"),
            (
                Error::TooLarge { size: 2, max: 1 },
                StatusCode::PAYLOAD_TOO_LARGE,
                "TOOLARGE",
            ),
            (Error::Closed, StatusCode::INTERNAL_SERVER_ERROR, "ERR"),
        ];
        for (e, status, code) in cases {
            let api = ApiError::engine(&e);
            assert_eq!((api.status, api.code), (status, code), "{e}");
        }
    }

    #[test]
    fn entry_json() {
        let e = Entry {
            bucket: Arc::from("b"),
            key: "k".into(),
            value: Bytes::from_static(b"\x00hi"),
            revision: 3,
            created_ms: 10,
            op: Op::Put,
            delta: 0,
            expires_ms: 0,
        };
        assert_eq!(
            serde_json::to_string(&EntryJson::new(&e, true)).unwrap(),
            r#"{"bucket":"b","key":"k","value":"AGhp","revision":3,"created":10,"op":"PUT","delta":0,"expires":0}"#
        );
        assert!(!serde_json::to_string(&EntryJson::new(&e, false))
            .unwrap()
            .contains("value"));
    }
}
