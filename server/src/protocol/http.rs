//! Recognising an HTTP request that arrived on the RESP / inline port.
//!
//! A web page can make a browser send a cross-origin `POST` with a `text/plain` body to
//! `127.0.0.1:7379` without asking first. To an inline parser, every line of that request
//! is a command: the request line, each header, then the body, which the page controls
//! (`PUT pwned yes`). Redis closed this hole in 3.2.7 by closing a connection whose command
//! is `POST` or `Host:`; we do the same, one line at a time, before a line is split into
//! words.
//!
//! A line is taken for HTTP when:
//!
//! * its first word is `POST` or starts with `Host:` (any case): neither is ever a verb; or
//! * its first word is an HTTP method (any case), its last word starts with `HTTP/` (as in
//!   `GET /path?x=1 HTTP/1.1`), and the word after the method is a request target a
//!   browser sends: a path (`/...`), `*`, an absolute URL (`http://...`, through a proxy),
//!   or any word after `CONNECT`. `GET` and `PUT` are logkv verbs too: `GET key` and
//!   `PUT key value` stay commands, `PUT key HTTP/1.1` too (a key is not a path); only the
//!   `HTTP/<version>` token that ends every HTTP/1 request line (and the HTTP/2 preface
//!   `PRI * HTTP/2.0`) after such a target makes them HTTP.
//!
//! RESP arrays are never checked: a browser cannot start a request with `*`, and a program
//! that speaks RESP may store any bytes, `HTTP/1.1` included.

/// Request methods of HTTP/1.1 (RFC 9110 and RFC 5789), plus `PRI`, which starts the
/// HTTP/2 connection preface.
const METHODS: [&[u8]; 10] = [
    b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH", b"PRI",
];

fn is_space(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Whether an inline line (without its terminator) is a line of an HTTP request.
pub fn is_http_line(line: &[u8]) -> bool {
    let mut words = line.split(|&b| is_space(b)).filter(|w| !w.is_empty());
    let Some(first) = words.next() else {
        return false;
    };
    if first.eq_ignore_ascii_case(b"POST")
        || first
            .get(..5)
            .is_some_and(|p| p.eq_ignore_ascii_case(b"Host:"))
    {
        return true;
    }
    if !METHODS.iter().any(|m| first.eq_ignore_ascii_case(m)) {
        return false;
    }
    // The request target, then the version as the last word.
    let (Some(target), Some(last)) = (words.next(), words.next_back()) else {
        return false;
    };
    let browser_target = target.starts_with(b"/")
        || target == b"*"
        || target.windows(3).any(|w| w == b"://")
        || first.eq_ignore_ascii_case(b"CONNECT");
    browser_target
        && last
            .get(..5)
            .is_some_and(|p| p.eq_ignore_ascii_case(b"HTTP/"))
}

#[cfg(test)]
mod tests {
    use super::is_http_line;

    #[test]
    fn request_lines_and_host_headers() {
        for line in [
            &b"POST / HTTP/1.1"[..],
            b"post /submit HTTP/1.0",
            b"POST",
            b"GET /?x=1 HTTP/1.1",
            b"get / http/1.1",
            b"PUT /v1/keys/a HTTP/1.1",
            b"DELETE /k HTTP/1.1",
            b"OPTIONS * HTTP/1.1",
            b"Head / HTTP/1.0",
            b"CONNECT example.com:443 HTTP/1.1",
            b"PATCH /x HTTP/1.1",
            b"TRACE / HTTP/1.1",
            b"PRI * HTTP/2.0",
            b"Host: 127.0.0.1:7379",
            b"host:127.0.0.1",
            b"HOST: x",
            b"  \tGET\t/a b HTTP/1.1",
            b"GET http://127.0.0.1:7379/ HTTP/1.1",
        ] {
            assert!(is_http_line(line), "{}", line.escape_ascii());
        }
    }

    #[test]
    fn commands_stay_commands() {
        for line in [
            &b""[..],
            b"   ",
            b"GET key",
            b"get HTTP/1.1",
            b"PUT k v",
            b"PUT k HTTP",
            b"PUT k v TTL 100",
            b"DEL k REV 3",
            b"SET a HTTP/1.1",
            b"PUT mykey HTTP/1.1",
            b"PUT mykey value HTTP/1.1",
            b"get key HTTP/2",
            b"PING HTTP/1.1",
            b"HOST",
            b"Hos: x",
            b"POSTS / HTTP/1.1",
            b"Content-Type: text/plain",
        ] {
            assert!(!is_http_line(line), "{}", line.escape_ascii());
        }
    }
}
