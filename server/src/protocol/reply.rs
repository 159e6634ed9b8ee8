//! Reply model and its RESP2 / RESP3 encoding.
//!
//! | variant  | RESP2                      | RESP3        |
//! |----------|----------------------------|--------------|
//! | `Simple` | `+text`                    | same         |
//! | `Error`  | `-CODE message`            | same         |
//! | `Int`    | `:n`                       | same         |
//! | `Bulk`   | `$len` + bytes             | same         |
//! | `Null`   | `$-1`                      | `_`          |
//! | `Array`  | `*n` + items               | same         |
//! | `Map`    | `*2n` + key, value, ...    | `%n` + pairs |
//! | `Push`   | `*n` + items               | `>n` + items |
//!
//! Simple strings and error lines cannot carry CR or LF: each one is written as a space.

use std::borrow::Cow;

use bytes::Bytes;

/// The version of RESP a connection's replies are encoded in (`HELLO 2` / `HELLO 3`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RespVersion {
    /// RESP2, the default: maps as flat arrays, null as `$-1`, pushes as arrays.
    #[default]
    Resp2,
    /// RESP3: maps `%`, null `_`, pushes `>`.
    Resp3,
}

impl RespVersion {
    /// The version `HELLO <n>` asks for, if it is one the server speaks.
    pub fn from_number(n: u64) -> Option<RespVersion> {
        match n {
            2 => Some(RespVersion::Resp2),
            3 => Some(RespVersion::Resp3),
            _ => None,
        }
    }

    /// The version's number, as `HELLO` reports it.
    pub fn number(self) -> u8 {
        match self {
            RespVersion::Resp2 => 2,
            RespVersion::Resp3 => 3,
        }
    }

    /// Whether maps, nulls and pushes have their own RESP3 types.
    pub fn is_resp3(self) -> bool {
        self == RespVersion::Resp3
    }
}

/// One reply, independent of the protocol version it will be encoded for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// A status line, `+OK`.
    Simple(Cow<'static, str>),
    /// An error line, `-CODE message` (just `-CODE` when the message is empty).
    Error {
        /// The error code: `ERR`, `NOTFOUND`, `WRONGREV`, ...
        code: &'static str,
        /// Human-readable detail.
        msg: Cow<'static, str>,
    },
    /// An integer, `:n`.
    Int(i64),
    /// A binary-safe string, `$len`.
    Bulk(Bytes),
    /// No value: `$-1` in RESP2, `_` in RESP3.
    Null,
    /// An array of replies.
    Array(Vec<Reply>),
    /// Key/value pairs: a RESP3 map, or a flat array of 2n elements in RESP2.
    Map(Vec<(Reply, Reply)>),
    /// An out-of-band event (watch frames): a RESP3 push, or a plain array in RESP2.
    Push(Vec<Reply>),
}

impl Reply {
    /// `+OK`.
    pub fn ok() -> Reply {
        Reply::Simple(Cow::Borrowed("OK"))
    }

    /// A status line.
    pub fn simple(text: impl Into<Cow<'static, str>>) -> Reply {
        Reply::Simple(text.into())
    }

    /// An error line `-code msg`.
    pub fn err(code: &'static str, msg: impl Into<Cow<'static, str>>) -> Reply {
        Reply::Error {
            code,
            msg: msg.into(),
        }
    }

    /// A bulk string.
    pub fn bulk(bytes: impl Into<Bytes>) -> Reply {
        Reply::Bulk(bytes.into())
    }

    /// Whether this is an error reply.
    pub fn is_error(&self) -> bool {
        matches!(self, Reply::Error { .. })
    }

    /// Appends this reply's encoding to `out`; see [`encode`].
    pub fn encode(&self, version: RespVersion, out: &mut Vec<u8>) {
        encode(self, version, out);
    }
}

impl From<i64> for Reply {
    fn from(n: i64) -> Reply {
        Reply::Int(n)
    }
}

impl From<Bytes> for Reply {
    fn from(b: Bytes) -> Reply {
        Reply::Bulk(b)
    }
}

impl<T: Into<Reply>> From<Option<T>> for Reply {
    fn from(v: Option<T>) -> Reply {
        v.map_or(Reply::Null, Into::into)
    }
}

/// Appends the encoding of `reply` to `out` in the given RESP version.
pub fn encode(reply: &Reply, version: RespVersion, out: &mut Vec<u8>) {
    let resp3 = version.is_resp3();
    match reply {
        Reply::Simple(text) => {
            out.push(b'+');
            push_line_text(out, text.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Reply::Error { code, msg } => {
            out.push(b'-');
            push_line_text(out, code.as_bytes());
            if !msg.is_empty() {
                out.push(b' ');
                push_line_text(out, msg.as_bytes());
            }
            out.extend_from_slice(b"\r\n");
        }
        Reply::Int(n) => push_int(out, b':', *n),
        Reply::Bulk(bytes) => {
            push_len(out, b'$', bytes.len());
            out.extend_from_slice(bytes);
            out.extend_from_slice(b"\r\n");
        }
        Reply::Null => out.extend_from_slice(if resp3 { b"_\r\n" } else { b"$-1\r\n" }),
        Reply::Array(items) => {
            push_len(out, b'*', items.len());
            for item in items {
                encode(item, version, out);
            }
        }
        Reply::Map(pairs) => {
            if resp3 {
                push_len(out, b'%', pairs.len());
            } else {
                push_len(out, b'*', pairs.len().saturating_mul(2));
            }
            for (key, value) in pairs {
                encode(key, version, out);
                encode(value, version, out);
            }
        }
        Reply::Push(items) => {
            push_len(out, if resp3 { b'>' } else { b'*' }, items.len());
            for item in items {
                encode(item, version, out);
            }
        }
    }
}

/// Appends text that must stay on one line, turning CR and LF into spaces.
fn push_line_text(out: &mut Vec<u8>, text: &[u8]) {
    if text.iter().any(|&b| b == b'\r' || b == b'\n') {
        out.extend(
            text.iter()
                .map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
        );
    } else {
        out.extend_from_slice(text);
    }
}

/// Appends `<tag><n>\r\n`.
pub(crate) fn push_int(out: &mut Vec<u8>, tag: u8, n: i64) {
    push_header(out, tag, n < 0, n.unsigned_abs());
}

/// Appends `<tag><len>\r\n`.
pub(crate) fn push_len(out: &mut Vec<u8>, tag: u8, len: usize) {
    push_header(out, tag, false, len as u64);
}

/// Formats `<tag>[-]<digits>\r\n` on the stack and appends it in one copy.
fn push_header(out: &mut Vec<u8>, tag: u8, neg: bool, mut n: u64) {
    // tag + sign + 20 digits (u64::MAX) + CRLF
    let mut buf = [0u8; 24];
    let mut i = buf.len() - 2;
    buf[i..].copy_from_slice(b"\r\n");
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if neg {
        i -= 1;
        buf[i] = b'-';
    }
    i -= 1;
    buf[i] = tag;
    out.extend_from_slice(&buf[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    use RespVersion::{Resp2, Resp3};

    fn enc(reply: &Reply, version: RespVersion) -> Vec<u8> {
        let mut out = Vec::new();
        encode(reply, version, &mut out);
        out
    }

    /// Asserts the RESP2 and RESP3 encodings.
    fn check(reply: &Reply, resp2: &[u8], resp3: &[u8]) {
        assert_eq!(
            enc(reply, Resp2).escape_ascii().to_string(),
            resp2.escape_ascii().to_string()
        );
        assert_eq!(
            enc(reply, Resp3).escape_ascii().to_string(),
            resp3.escape_ascii().to_string()
        );
    }

    fn bulk(s: &'static str) -> Reply {
        Reply::bulk(s)
    }

    #[test]
    fn simple_and_ok() {
        check(&Reply::ok(), b"+OK\r\n", b"+OK\r\n");
        check(&Reply::simple("PONG"), b"+PONG\r\n", b"+PONG\r\n");
        check(
            &Reply::simple(String::from("a\r\nb")),
            b"+a  b\r\n",
            b"+a  b\r\n",
        );
        check(&Reply::simple(""), b"+\r\n", b"+\r\n");
    }

    #[test]
    fn errors() {
        check(
            &Reply::err("WRONGREV", "expected 3, latest 5"),
            b"-WRONGREV expected 3, latest 5\r\n",
            b"-WRONGREV expected 3, latest 5\r\n",
        );
        check(
            &Reply::err("ERR", "bad\r\nline\n"),
            b"-ERR bad  line \r\n",
            b"-ERR bad  line \r\n",
        );
        check(&Reply::err("NOAUTH", ""), b"-NOAUTH\r\n", b"-NOAUTH\r\n");
        assert!(Reply::err("ERR", "x").is_error());
        assert!(!Reply::ok().is_error());
    }

    #[test]
    fn integers() {
        check(&Reply::Int(0), b":0\r\n", b":0\r\n");
        check(&Reply::Int(42), b":42\r\n", b":42\r\n");
        check(&Reply::Int(-2), b":-2\r\n", b":-2\r\n");
        check(
            &Reply::Int(i64::MAX),
            b":9223372036854775807\r\n",
            b":9223372036854775807\r\n",
        );
        check(
            &Reply::Int(i64::MIN),
            b":-9223372036854775808\r\n",
            b":-9223372036854775808\r\n",
        );
        for n in [1, 9, 10, 99, 100, 12345, 1 << 40, -1, -10, -999] {
            assert_eq!(enc(&Reply::Int(n), Resp2), format!(":{n}\r\n").into_bytes());
        }
    }

    #[test]
    fn bulk_and_null() {
        check(&bulk("hello"), b"$5\r\nhello\r\n", b"$5\r\nhello\r\n");
        check(&bulk(""), b"$0\r\n\r\n", b"$0\r\n\r\n");
        check(
            &Reply::bulk(&b"a\r\n\0"[..]),
            b"$4\r\na\r\n\0\r\n",
            b"$4\r\na\r\n\0\r\n",
        );
        check(&Reply::Null, b"$-1\r\n", b"_\r\n");
        check(&Reply::from(None::<i64>), b"$-1\r\n", b"_\r\n");
        check(&Reply::from(Some(7i64)), b":7\r\n", b":7\r\n");
        check(
            &Reply::from(Bytes::from_static(b"v")),
            b"$1\r\nv\r\n",
            b"$1\r\nv\r\n",
        );
    }

    #[test]
    fn arrays() {
        check(&Reply::Array(vec![]), b"*0\r\n", b"*0\r\n");
        check(
            &Reply::Array(vec![bulk("a"), Reply::Int(1), Reply::Null]),
            b"*3\r\n$1\r\na\r\n:1\r\n$-1\r\n",
            b"*3\r\n$1\r\na\r\n:1\r\n_\r\n",
        );
        // SCAN-shaped: cursor then a nested array.
        check(
            &Reply::Array(vec![Reply::Null, Reply::Array(vec![bulk("k")])]),
            b"*2\r\n$-1\r\n*1\r\n$1\r\nk\r\n",
            b"*2\r\n_\r\n*1\r\n$1\r\nk\r\n",
        );
    }

    #[test]
    fn maps() {
        check(&Reply::Map(vec![]), b"*0\r\n", b"%0\r\n");
        check(
            &Reply::Map(vec![
                (bulk("server"), bulk("logkv")),
                (bulk("proto"), Reply::Int(3)),
            ]),
            b"*4\r\n$6\r\nserver\r\n$5\r\nlogkv\r\n$5\r\nproto\r\n:3\r\n",
            b"%2\r\n$6\r\nserver\r\n$5\r\nlogkv\r\n$5\r\nproto\r\n:3\r\n",
        );
    }

    #[test]
    fn pushes() {
        let entry = Reply::Map(vec![
            (bulk("key"), bulk("a")),
            (bulk("revision"), Reply::Int(9)),
        ]);
        check(
            &Reply::Push(vec![bulk("watch"), Reply::Int(1), entry]),
            b"*3\r\n$5\r\nwatch\r\n:1\r\n*4\r\n$3\r\nkey\r\n$1\r\na\r\n$8\r\nrevision\r\n:9\r\n",
            b">3\r\n$5\r\nwatch\r\n:1\r\n%2\r\n$3\r\nkey\r\n$1\r\na\r\n$8\r\nrevision\r\n:9\r\n",
        );
        check(
            &Reply::Push(vec![bulk("watch"), Reply::Int(1), bulk("ready")]),
            b"*3\r\n$5\r\nwatch\r\n:1\r\n$5\r\nready\r\n",
            b">3\r\n$5\r\nwatch\r\n:1\r\n$5\r\nready\r\n",
        );
    }

    #[test]
    fn appends_and_method_form() {
        let mut out = b"+PONG\r\n".to_vec();
        Reply::Int(5).encode(Resp3, &mut out);
        assert_eq!(out, b"+PONG\r\n:5\r\n");
        // Only 2 and 3 are versions; the default is RESP2.
        assert_eq!(RespVersion::from_number(0), None);
        assert_eq!(RespVersion::from_number(4), None);
        assert_eq!(RespVersion::from_number(2), Some(Resp2));
        assert_eq!(RespVersion::from_number(3), Some(Resp3));
        assert_eq!(RespVersion::default(), Resp2);
        assert_eq!((Resp2.number(), Resp3.number()), (2, 3));
        assert_eq!(enc(&Reply::Null, RespVersion::default()), b"$-1\r\n");
    }

    #[test]
    fn headers() {
        let mut out = Vec::new();
        push_len(&mut out, b'$', usize::MAX);
        assert_eq!(out, format!("${}\r\n", usize::MAX).into_bytes());
    }
}
