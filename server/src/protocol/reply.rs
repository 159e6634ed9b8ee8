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
    pub fn encode(&self, proto: u8, out: &mut Vec<u8>) {
        encode(self, proto, out);
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

/// Appends the encoding of `reply` to `out`: RESP3 when `proto >= 3`, RESP2 otherwise.
pub fn encode(reply: &Reply, proto: u8, out: &mut Vec<u8>) {
    let resp3 = proto >= 3;
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
                encode(item, proto, out);
            }
        }
        Reply::Map(pairs) => {
            if resp3 {
                push_len(out, b'%', pairs.len());
            } else {
                push_len(out, b'*', pairs.len().saturating_mul(2));
            }
            for (key, value) in pairs {
                encode(key, proto, out);
                encode(value, proto, out);
            }
        }
        Reply::Push(items) => {
            push_len(out, if resp3 { b'>' } else { b'*' }, items.len());
            for item in items {
                encode(item, proto, out);
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

    fn enc(reply: &Reply, proto: u8) -> Vec<u8> {
        let mut out = Vec::new();
        encode(reply, proto, &mut out);
        out
    }

    /// Asserts the RESP2 and RESP3 encodings.
    fn check(reply: Reply, resp2: &[u8], resp3: &[u8]) {
        assert_eq!(
            enc(&reply, 2).escape_ascii().to_string(),
            resp2.escape_ascii().to_string()
        );
        assert_eq!(
            enc(&reply, 3).escape_ascii().to_string(),
            resp3.escape_ascii().to_string()
        );
    }

    fn bulk(s: &'static str) -> Reply {
        Reply::bulk(s)
    }

    #[test]
    fn simple_and_ok() {
        check(Reply::ok(), b"+OK\r\n", b"+OK\r\n");
        check(Reply::simple("PONG"), b"+PONG\r\n", b"+PONG\r\n");
        check(
            Reply::simple(String::from("a\r\nb")),
            b"+a  b\r\n",
            b"+a  b\r\n",
        );
        check(Reply::simple(""), b"+\r\n", b"+\r\n");
    }

    #[test]
    fn errors() {
        check(
            Reply::err("WRONGREV", "expected 3, latest 5"),
            b"-WRONGREV expected 3, latest 5\r\n",
            b"-WRONGREV expected 3, latest 5\r\n",
        );
        check(
            Reply::err("ERR", "bad\r\nline\n"),
            b"-ERR bad  line \r\n",
            b"-ERR bad  line \r\n",
        );
        check(Reply::err("NOAUTH", ""), b"-NOAUTH\r\n", b"-NOAUTH\r\n");
        assert!(Reply::err("ERR", "x").is_error());
        assert!(!Reply::ok().is_error());
    }

    #[test]
    fn integers() {
        check(Reply::Int(0), b":0\r\n", b":0\r\n");
        check(Reply::Int(42), b":42\r\n", b":42\r\n");
        check(Reply::Int(-2), b":-2\r\n", b":-2\r\n");
        check(
            Reply::Int(i64::MAX),
            b":9223372036854775807\r\n",
            b":9223372036854775807\r\n",
        );
        check(
            Reply::Int(i64::MIN),
            b":-9223372036854775808\r\n",
            b":-9223372036854775808\r\n",
        );
        for n in [1, 9, 10, 99, 100, 12345, 1 << 40, -1, -10, -999] {
            assert_eq!(enc(&Reply::Int(n), 2), format!(":{n}\r\n").into_bytes());
        }
    }

    #[test]
    fn bulk_and_null() {
        check(bulk("hello"), b"$5\r\nhello\r\n", b"$5\r\nhello\r\n");
        check(bulk(""), b"$0\r\n\r\n", b"$0\r\n\r\n");
        check(
            Reply::bulk(&b"a\r\n\0"[..]),
            b"$4\r\na\r\n\0\r\n",
            b"$4\r\na\r\n\0\r\n",
        );
        check(Reply::Null, b"$-1\r\n", b"_\r\n");
        check(Reply::from(None::<i64>), b"$-1\r\n", b"_\r\n");
        check(Reply::from(Some(7i64)), b":7\r\n", b":7\r\n");
        check(
            Reply::from(Bytes::from_static(b"v")),
            b"$1\r\nv\r\n",
            b"$1\r\nv\r\n",
        );
    }

    #[test]
    fn arrays() {
        check(Reply::Array(vec![]), b"*0\r\n", b"*0\r\n");
        check(
            Reply::Array(vec![bulk("a"), Reply::Int(1), Reply::Null]),
            b"*3\r\n$1\r\na\r\n:1\r\n$-1\r\n",
            b"*3\r\n$1\r\na\r\n:1\r\n_\r\n",
        );
        // SCAN-shaped: cursor then a nested array.
        check(
            Reply::Array(vec![Reply::Null, Reply::Array(vec![bulk("k")])]),
            b"*2\r\n$-1\r\n*1\r\n$1\r\nk\r\n",
            b"*2\r\n_\r\n*1\r\n$1\r\nk\r\n",
        );
    }

    #[test]
    fn maps() {
        check(Reply::Map(vec![]), b"*0\r\n", b"%0\r\n");
        check(
            Reply::Map(vec![
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
            Reply::Push(vec![bulk("watch"), Reply::Int(1), entry]),
            b"*3\r\n$5\r\nwatch\r\n:1\r\n*4\r\n$3\r\nkey\r\n$1\r\na\r\n$8\r\nrevision\r\n:9\r\n",
            b">3\r\n$5\r\nwatch\r\n:1\r\n%2\r\n$3\r\nkey\r\n$1\r\na\r\n$8\r\nrevision\r\n:9\r\n",
        );
        check(
            Reply::Push(vec![bulk("watch"), Reply::Int(1), bulk("ready")]),
            b"*3\r\n$5\r\nwatch\r\n:1\r\n$5\r\nready\r\n",
            b">3\r\n$5\r\nwatch\r\n:1\r\n$5\r\nready\r\n",
        );
    }

    #[test]
    fn appends_and_method_form() {
        let mut out = b"+PONG\r\n".to_vec();
        Reply::Int(5).encode(3, &mut out);
        assert_eq!(out, b"+PONG\r\n:5\r\n");
        // Unknown versions: below 3 is RESP2, 3 and up RESP3.
        assert_eq!(enc(&Reply::Null, 0), b"$-1\r\n");
        assert_eq!(enc(&Reply::Null, 4), b"_\r\n");
    }

    #[test]
    fn headers() {
        let mut out = Vec::new();
        push_len(&mut out, b'$', usize::MAX);
        assert_eq!(out, format!("${}\r\n", usize::MAX).into_bytes());
    }
}
