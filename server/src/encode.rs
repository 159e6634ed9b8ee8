//! Engine values encoded as RESP, straight into the output buffer: entries, the results
//! of writes, and engine errors with their wire codes.
//!
//! Hot and repetitive shapes (entries, watch frames) are written directly instead of being
//! built as a [`Reply`] tree first; everything else goes through [`Reply`] and
//! [`crate::protocol::encode`]. The engine knows no wire codes: [`error_code`] is where an
//! engine error gets its protocol error code.

use logkv::{Entry, EntryRef, Error, Written};

use crate::protocol::reply::{push_int, push_len};
use crate::protocol::{Reply, RespVersion};

/// Appends a bulk string.
pub(crate) fn bulk(out: &mut Vec<u8>, b: &[u8]) {
    push_len(out, b'$', b.len());
    out.extend_from_slice(b);
    out.extend_from_slice(b"\r\n");
}

/// Appends an integer.
pub(crate) fn int(out: &mut Vec<u8>, n: i64) {
    push_int(out, b':', n);
}

/// Appends an unsigned integer (clamped to `i64::MAX`).
pub(crate) fn uint(out: &mut Vec<u8>, n: u64) {
    int(out, i64::try_from(n).unwrap_or(i64::MAX));
}

/// Appends a null (`$-1` in RESP2, `_` in RESP3).
pub(crate) fn null(out: &mut Vec<u8>, version: RespVersion) {
    out.extend_from_slice(if version.is_resp3() {
        b"_\r\n"
    } else {
        b"$-1\r\n"
    });
}

/// Appends an array header.
pub(crate) fn array(out: &mut Vec<u8>, n: usize) {
    push_len(out, b'*', n);
}

/// Appends a map header: `%n` in RESP3, `*2n` in RESP2.
pub(crate) fn map(out: &mut Vec<u8>, version: RespVersion, pairs: usize) {
    if version.is_resp3() {
        push_len(out, b'%', pairs);
    } else {
        push_len(out, b'*', pairs * 2);
    }
}

/// Appends a push header: `>n` in RESP3, `*n` in RESP2.
pub(crate) fn push(out: &mut Vec<u8>, version: RespVersion, n: usize) {
    push_len(out, if version.is_resp3() { b'>' } else { b'*' }, n);
}

/// Appends a value that may be missing.
pub(crate) fn opt_bulk(out: &mut Vec<u8>, version: RespVersion, v: Option<&[u8]>) {
    match v {
        Some(b) => bulk(out, b),
        None => null(out, version),
    }
}

/// Appends an entry: a map (RESP3) or flat array of pairs (RESP2), fields in the order
/// `bucket key value revision created op delta expires`; `value` is left out when
/// `with_value` is false (METAONLY watches).
pub(crate) fn entry(out: &mut Vec<u8>, version: RespVersion, e: &Entry, with_value: bool) {
    entry_ref(out, version, &e.view(), with_value);
}

/// [`entry`] for a borrowed entry (a watch event read in place from the log).
pub(crate) fn entry_ref(
    out: &mut Vec<u8>,
    version: RespVersion,
    e: &EntryRef<'_>,
    with_value: bool,
) {
    map(out, version, if with_value { 8 } else { 7 });
    bulk(out, b"bucket");
    bulk(out, e.bucket.as_bytes());
    bulk(out, b"key");
    bulk(out, e.key.as_bytes());
    if with_value {
        bulk(out, b"value");
        bulk(out, e.value);
    }
    bulk(out, b"revision");
    uint(out, e.revision);
    bulk(out, b"created");
    uint(out, e.created_ms);
    bulk(out, b"op");
    bulk(out, e.op.as_str().as_bytes());
    bulk(out, b"delta");
    uint(out, e.delta);
    bulk(out, b"expires");
    uint(out, e.expires_ms);
}

/// Appends an entry that may be missing.
pub(crate) fn opt_entry(out: &mut Vec<u8>, version: RespVersion, e: Option<&Entry>) {
    match e {
        Some(e) => entry(out, version, e, true),
        None => null(out, version),
    }
}

/// Appends an array of entries.
pub(crate) fn entries(out: &mut Vec<u8>, version: RespVersion, list: &[Entry]) {
    array(out, list.len());
    for e in list {
        entry(out, version, e, true);
    }
}

/// How the result of a write is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteShape {
    /// `:revision`
    Revision,
    /// `+OK` (SET)
    Ok,
    /// The previous live value, or null (SET ... GET, GETDEL)
    Previous,
}

/// Appends the reply of a successful write.
pub(crate) fn written(out: &mut Vec<u8>, version: RespVersion, w: &Written, shape: WriteShape) {
    match shape {
        WriteShape::Revision => uint(out, w.revision),
        WriteShape::Ok => out.extend_from_slice(b"+OK\r\n"),
        WriteShape::Previous => {
            opt_bulk(out, version, w.previous.as_ref().map(|e| &e.value[..]));
        }
    }
}

/// The protocol's error code for an engine error.
pub fn error_code(e: &Error) -> &'static str {
    match e {
        Error::NotFound => "NOTFOUND",
        Error::Exists | Error::BucketExists(_) | Error::PathExists(_) => "EXISTS",
        Error::WrongRevision { .. } => "WRONGREV",
        Error::Mismatch => "MISMATCH",
        Error::NoBucket(_) => "NOBUCKET",
        Error::BadKey(_) => "BADKEY",
        Error::BadBucket(_) | Error::BadArgument(_) => "BADARG",
        Error::TooLarge { .. } => "TOOLARGE",
        Error::Full { .. } => "FULL",
        Error::Batch { source, .. } | Error::PartlyDone { source, .. } => error_code(source),
        Error::Locked(_) => "BUSY",
        Error::InDoubt { .. } => "INDOUBT",
        // I/O, corruption, a poisoned log, configuration, lost watches, a closed store, and
        // whatever the engine adds later: a server-side failure.
        _ => "ERR",
    }
}

/// The reply for an engine error: `-CODE message`.
pub(crate) fn engine_error(e: &Error) -> Reply {
    Reply::err(error_code(e), e.to_string())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use logkv::Op;

    use super::*;

    #[test]
    fn error_codes() {
        let cases: [(Error, &str); 17] = [
            (Error::in_doubt(Error::Closed), "INDOUBT"),
            (Error::NotFound, "NOTFOUND"),
            (Error::Exists, "EXISTS"),
            (Error::BucketExists("b".into()), "EXISTS"),
            (
                Error::WrongRevision {
                    expected: 1,
                    latest: 2,
                },
                "WRONGREV",
            ),
            (Error::Mismatch, "MISMATCH"),
            (Error::NoBucket("b".into()), "NOBUCKET"),
            (Error::BadKey("k".into()), "BADKEY"),
            (Error::BadBucket("b".into()), "BADARG"),
            (Error::BadArgument("x".into()), "BADARG"),
            (Error::TooLarge { size: 2, max: 1 }, "TOOLARGE"),
            (
                Error::Full {
                    used: 1,
                    adding: 1,
                    max: 1,
                },
                "FULL",
            ),
            (Error::Locked("d".into()), "BUSY"),
            (Error::Closed, "ERR"),
            (
                Error::Batch {
                    index: 3,
                    source: Box::new(Error::Mismatch),
                },
                "MISMATCH",
            ),
            (
                Error::PartlyDone {
                    done: 3,
                    source: Box::new(Error::in_doubt(Error::Closed)),
                },
                "INDOUBT",
            ),
            (
                Error::PartlyDone {
                    done: 3,
                    source: Box::new(Error::Full {
                        used: 1,
                        adding: 1,
                        max: 1,
                    }),
                },
                "FULL",
            ),
        ];
        for (e, code) in cases {
            assert_eq!(error_code(&e), code, "{e}");
        }
        assert_eq!(
            engine_error(&Error::NotFound),
            Reply::err("NOTFOUND", "not found")
        );
    }

    fn sample() -> Entry {
        Entry {
            bucket: Arc::from("b"),
            key: "k".into(),
            value: Bytes::from_static(b"v"),
            revision: 3,
            created_ms: 10,
            op: Op::Put,
            delta: 0,
            expires_ms: 0,
        }
    }

    #[test]
    fn entry_shapes() {
        let mut out = Vec::new();
        entry(&mut out, RespVersion::Resp2, &sample(), true);
        assert_eq!(
            out,
            b"*16\r\n$6\r\nbucket\r\n$1\r\nb\r\n$3\r\nkey\r\n$1\r\nk\r\n$5\r\nvalue\r\n$1\r\nv\r\n\
$8\r\nrevision\r\n:3\r\n$7\r\ncreated\r\n:10\r\n$2\r\nop\r\n$3\r\nPUT\r\n$5\r\ndelta\r\n:0\r\n\
$7\r\nexpires\r\n:0\r\n"
        );
        let mut out3 = Vec::new();
        entry(&mut out3, RespVersion::Resp3, &sample(), false);
        assert!(out3.starts_with(b"%7\r\n$6\r\nbucket"));
        assert!(!out3.windows(5).any(|w| w == b"value"));
    }
}
