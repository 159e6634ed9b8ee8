//! A request body (a value being written) read as it arrives: counted against the client
//! memory budget while it grows, as a RESP connection's unfinished input is, and refused
//! past `--max-bulk`.
//!
//! A body is memory the server holds before any write runs. Buffered whole by an extractor,
//! it counted for nothing until it had all arrived, so `--max-connections` clients each
//! sending most of an `--max-bulk` value (and then nothing) held that much times the number
//! of connections, outside `--max-client-memory`. Counted as it grows, the connections
//! holding the most are closed past the budget. A body that stops arriving for
//! `--http-timeout` is answered 408, so a stalled upload does not hold its connection (and
//! one of `--max-connections`) forever.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::header::CONTENT_LENGTH;
use axum::http::{HeaderMap, StatusCode};
use bytes::BytesMut;
use futures_util::StreamExt as _;

use super::json::ApiError;
use super::ConnInfo;

/// Reads `body`, at most `max` bytes, reporting what it holds (plus `extra`: the key) to
/// the connection's budget as it grows. A `Content-Length` over `max` is refused before
/// any of the body is read, and a body with no byte for `idle` is a 408.
pub(crate) async fn read_counted(
    headers: &HeaderMap,
    body: Body,
    conn: &ConnInfo,
    max: usize,
    idle: Duration,
    extra: usize,
) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = declared {
        if len > max as u64 {
            return Err(too_large(len, max));
        }
    }
    let mut chunks = body.into_data_stream();
    // The usual body is one chunk: it is kept as it came, without a copy.
    let mut first: Option<Bytes> = None;
    let mut joined = BytesMut::new();
    let mut received = 0usize;
    loop {
        let Ok(next) = tokio::time::timeout(idle, chunks.next()).await else {
            return Err(stalled(received, idle));
        };
        let Some(chunk) = next else { break };
        let chunk = chunk
            .map_err(|e| ApiError::bad_arg(format!("the request body could not be read: {e}")))?;
        received += chunk.len();
        if received > max {
            return Err(too_large(received as u64, max));
        }
        match first.take() {
            None if joined.is_empty() => first = Some(chunk),
            None => joined.extend_from_slice(&chunk),
            Some(earlier) => {
                joined.reserve(earlier.len() + chunk.len());
                joined.extend_from_slice(&earlier);
                joined.extend_from_slice(&chunk);
            }
        }
        conn.hold(extra + first.as_ref().map_or(joined.capacity(), Bytes::len));
    }
    Ok(first.unwrap_or_else(|| joined.freeze()))
}

/// The answer to a body that stopped after `received` bytes and sent nothing for `idle`.
fn stalled(received: usize, idle: Duration) -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "TIMEOUT",
        format!(
            "the request body stopped after {received} bytes: nothing arrived for {} s (--http-timeout)",
            idle.as_secs()
        ),
    )
}

/// The refusal of a body of (at least) `len` bytes.
fn too_large(len: u64, max: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "TOOLARGE",
        format!("a request body of {len} bytes exceeds the --max-bulk limit of {max} bytes"),
    )
}
