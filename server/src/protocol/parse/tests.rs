//! The parser's tests: every framing, every error, every split point.

use super::*;
use std::fmt::Write as _;

use proptest::prelude::*;

fn lim() -> Limits {
    Limits::default()
}

fn parse(buf: &[u8]) -> Result<Option<(Request, usize)>, ParseError> {
    parse_request(buf, &lim())
}

fn args_of(buf: &[u8]) -> Vec<Vec<u8>> {
    match parse(buf) {
        Ok(Some((req, n))) => {
            assert_eq!(n, buf.len(), "whole buffer consumed for {buf:?}");
            req.args.iter().map(|a| a.to_vec()).collect()
        }
        other => panic!("expected a request from {buf:?}, got {other:?}"),
    }
}

fn words(list: &[&str]) -> Vec<Vec<u8>> {
    list.iter().map(|w| w.as_bytes().to_vec()).collect()
}

fn err_of(buf: &[u8]) -> ParseError {
    match parse(buf) {
        Err(e) => e,
        other => panic!("expected an error from {buf:?}, got {other:?}"),
    }
}

/// Every strict prefix gives Ok(None) or the full answer (an error may show up early).
fn check_prefixes(buf: &[u8], limits: &Limits) {
    let full = parse_request(buf, limits);
    for k in 0..buf.len() {
        let part = parse_request(&buf[..k], limits);
        // A prefix may hold a whole request (followed by more bytes) or an early error.
        assert!(
            part == Ok(None) || part == full,
            "prefix {k} of {buf:?} gave {part:?}, whole gave {full:?}"
        );
    }
}

/// Splits `buf` into all its requests, as a connection would.
fn parse_all(mut buf: &[u8]) -> Vec<Result<Request, ParseError>> {
    let mut out = Vec::new();
    loop {
        match parse(buf) {
            Ok(None) => return out,
            Ok(Some((req, n))) => {
                buf = &buf[n..];
                out.push(Ok(req));
            }
            Err(e) => {
                let skip = e.skip();
                out.push(Err(e));
                match skip {
                    Some(n) => buf = &buf[n..],
                    None => return out,
                }
            }
        }
    }
}

#[test]
fn resp_basic() {
    let buf = b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n";
    assert_eq!(args_of(buf), words(&["SET", "key", "value"]));
    let (req, _) = parse(buf).unwrap().unwrap();
    assert!(!req.inline);
    check_prefixes(buf, &lim());
}

#[test]
fn resp_binary_safe() {
    let mut buf = Vec::new();
    let val: Vec<u8> = (0..=255u8).collect();
    encode_request(&[&b"PUT"[..], b"k\r\n\0", &val, b""], &mut buf);
    assert_eq!(
        args_of(&buf),
        vec![b"PUT".to_vec(), b"k\r\n\0".to_vec(), val, vec![]]
    );
    check_prefixes(&buf, &lim());
}

#[test]
fn resp_empty_arrays_are_ignored() {
    for buf in [&b"*0\r\n"[..], b"*-1\r\n"] {
        let (req, n) = parse(buf).unwrap().unwrap();
        assert!(req.is_empty());
        assert_eq!(n, buf.len());
    }
}

#[test]
fn resp_bad_array_lengths() {
    for buf in [
        &b"*-5\r\n"[..],
        b"*-2\r\n",
        b"*x\r\n",
        b"*\r\n",
        b"*-\r\n",
        b"*3x\r\n",
        b"*3\rX",
        b"*+3\r\n",
        b"*99999999999999999999\r\n",
        b"*000000000000000000000001\r\n",
    ] {
        assert_eq!(err_of(buf), ParseError::InvalidArrayLength, "{buf:?}");
        check_prefixes(buf, &lim());
    }
}

#[test]
fn resp_too_many_args() {
    let e = err_of(b"*2000\r\n");
    assert_eq!(
        e,
        ParseError::TooManyArgs {
            len: 2000,
            limit: 1024
        }
    );
    assert_eq!(
        e.to_string(),
        "Protocol error: array length 2000 exceeds limit 1024"
    );
    assert!(e.closes_connection());
    assert_eq!(e.skip(), None);
    // Exactly at the limit is fine (and waits for the elements).
    assert_eq!(parse(b"*1024\r\n"), Ok(None));
}

#[test]
fn resp_bad_bulk_lengths() {
    for buf in [
        &b"*1\r\n$-2\r\n"[..],
        b"*1\r\n$-1\r\n",
        b"*1\r\n$99999999999999999999\r\n",
        b"*1\r\n$abc\r\n",
        b"*1\r\n$\r\n",
        b"*1\r\n$3\n",
    ] {
        let e = err_of(buf);
        assert_eq!(e, ParseError::InvalidBulkLength, "{buf:?}");
        assert!(e.closes_connection());
        check_prefixes(buf, &lim());
    }
}

#[test]
fn resp_expected_bulk() {
    let e = err_of(b"*1\r\n:3\r\n");
    assert_eq!(e, ParseError::ExpectedBulk { found: b':' });
    assert_eq!(e.to_string(), "Protocol error: expected '$', got ':'");
    assert_eq!(
        err_of(b"*1\r\n\n").to_string(),
        "Protocol error: expected '$', got '\\n'"
    );
    // Nested arrays are not requests.
    assert_eq!(
        err_of(b"*1\r\n*1\r\n"),
        ParseError::ExpectedBulk { found: b'*' }
    );
}

#[test]
fn resp_bulk_too_large() {
    let e = err_of(b"*2\r\n$3\r\nPUT\r\n$9000000\r\n");
    assert_eq!(
        e.to_string(),
        "Protocol error: bulk string length 9000000 exceeds limit 8388608"
    );
    assert!(e.closes_connection());
    // Exactly the limit, with the payload present, is accepted.
    let small = Limits {
        max_bulk: 4,
        ..lim()
    };
    let buf = b"*1\r\n$4\r\nabcd\r\n";
    assert_eq!(parse_request(buf, &small).unwrap().unwrap().1, buf.len());
    let buf = b"*1\r\n$5\r\nabcde\r\n";
    assert_eq!(
        parse_request(buf, &small),
        Err(ParseError::BulkTooLarge { len: 5, limit: 4 })
    );
}

#[test]
fn resp_big_bulk_at_limit() {
    let val = vec![b'v'; 8 * 1024 * 1024];
    let mut buf = Vec::new();
    encode_request(&[&b"PUT"[..], b"k", &val], &mut buf);
    // Arriving in chunks: waits, then parses.
    for cut in [1, 20, buf.len() / 2, buf.len() - 2, buf.len() - 1] {
        assert_eq!(parse(&buf[..cut]), Ok(None));
    }
    let (req, n) = parse(&buf).unwrap().unwrap();
    assert_eq!(n, buf.len());
    assert_eq!(req.args[2].len(), val.len());
}

#[test]
fn resp_missing_crlf_after_bulk() {
    for buf in [
        &b"*1\r\n$3\r\nfooX\r\n"[..],
        b"*1\r\n$3\r\nfoo\rX",
        b"*1\r\n$3\r\nfoo\n\r",
        b"*1\r\n$0\r\nX",
    ] {
        let e = err_of(buf);
        assert_eq!(e, ParseError::MissingCrlf, "{buf:?}");
        assert!(e.closes_connection());
        check_prefixes(buf, &lim());
    }
}

#[test]
fn resp_every_split_point() {
    let mut buf = Vec::new();
    encode_request(&[&b"SET"[..], b"", b"a b\r\nc", b"0123456789"], &mut buf);
    check_prefixes(&buf, &lim());
    for k in 0..buf.len() {
        assert_eq!(parse(&buf[..k]), Ok(None), "prefix {k}");
    }
    // Trailing bytes of the next request do not matter.
    let mut more = buf.clone();
    more.extend_from_slice(b"*1\r\n$4\r\nPI");
    assert_eq!(parse(&more).unwrap().unwrap().1, buf.len());
}

#[test]
fn inline_basic() {
    assert_eq!(args_of(b"PING\r\n"), words(&["PING"]));
    assert_eq!(args_of(b"PING\n"), words(&["PING"]));
    assert_eq!(
        args_of(b"  SET\tkey  \t value \r\n"),
        words(&["SET", "key", "value"])
    );
    let (req, _) = parse(b"GET k\n").unwrap().unwrap();
    assert!(req.inline);
    check_prefixes(b"SET key value\r\n", &lim());
    for k in 0..15 {
        assert_eq!(parse(&b"SET key value\r\n"[..k]), Ok(None));
    }
}

#[test]
fn inline_empty_lines_are_ignored() {
    for buf in [&b"\n"[..], b"\r\n", b"   \t \r\n", b" \n"] {
        let (req, n) = parse(buf).unwrap().unwrap();
        assert!(req.is_empty() && req.inline, "{buf:?}");
        assert_eq!(n, buf.len());
    }
}

#[test]
fn inline_only_last_cr_is_dropped() {
    assert_eq!(args_of(b"a\rb\r\n"), vec![b"a\rb".to_vec()]);
    assert_eq!(args_of(b"a\r\r\n"), vec![b"a\r".to_vec()]);
}

#[test]
fn inline_first_byte_other_than_star() {
    // `$`, `+`, `:` ... start inline requests.
    assert_eq!(args_of(b"$3 foo\r\n"), words(&["$3", "foo"]));
    assert_eq!(args_of(b"+OK\n"), words(&["+OK"]));
}

#[test]
fn inline_double_quotes_and_escapes() {
    assert_eq!(
        args_of(
            br#"SET "hello world" "a\\b\"c\nd\re\tf\x41\x7a\xfF""#
                .iter()
                .chain(b"\n")
                .copied()
                .collect::<Vec<_>>()
                .as_slice()
        ),
        vec![
            b"SET".to_vec(),
            b"hello world".to_vec(),
            b"a\\b\"c\nd\re\tf\x41\x7a\xff".to_vec()
        ]
    );
    assert_eq!(args_of(b"\"\" x\n"), vec![b"".to_vec(), b"x".to_vec()]);
    assert_eq!(args_of(b"\"\\x00\"\n"), vec![vec![0u8]]);
    assert_eq!(args_of(b"\"a'b\"\n"), words(&["a'b"]));
    assert_eq!(args_of(b"x \"q\"\t\r\n"), words(&["x", "q"]));
}

#[test]
fn inline_single_quotes() {
    assert_eq!(
        args_of(b"SET 'a \"b\" \\n c' '' 'C:\\dir\\' '\\x41'\n"),
        vec![
            b"SET".to_vec(),
            b"a \"b\" \\n c".to_vec(),
            b"".to_vec(),
            b"C:\\dir\\".to_vec(),
            b"\\x41".to_vec(),
        ]
    );
    // No escapes at all: `\'` ends the word, and what follows must be a space.
    assert_eq!(
        err_of(b"'it\\'s'\n"),
        ParseError::Inline {
            kind: InlineSyntax::TextAfterQuote,
            skip: 8
        }
    );
}

#[test]
fn inline_quotes_inside_bare_words_are_literal() {
    assert_eq!(
        args_of(b"PUT it's a\"b\"\n"),
        words(&["PUT", "it's", "a\"b\""])
    );
}

#[test]
fn inline_syntax_errors_keep_the_connection() {
    let cases: [(&[u8], InlineSyntax); 10] = [
        (b"SET \"abc\r\n", InlineSyntax::UnbalancedQuotes),
        (b"SET 'abc\n", InlineSyntax::UnbalancedQuotes),
        (b"SET 'abc\\\n", InlineSyntax::UnbalancedQuotes),
        (b"SET \"abc\\\"\n", InlineSyntax::UnbalancedQuotes),
        (b"SET \"abc\\\n", InlineSyntax::UnbalancedQuotes),
        (b"SET \"\\q\"\n", InlineSyntax::BadEscape),
        (b"SET \"\\xZZ\"\n", InlineSyntax::BadEscape),
        (b"SET \"\\x4\"\n", InlineSyntax::BadEscape),
        (b"SET \"a\"b\n", InlineSyntax::TextAfterQuote),
        (b"SET 'a'\"b\"\n", InlineSyntax::TextAfterQuote),
    ];
    for (buf, kind) in cases {
        let e = err_of(buf);
        assert_eq!(
            e,
            ParseError::Inline {
                kind,
                skip: buf.len()
            },
            "{buf:?}"
        );
        assert!(!e.closes_connection());
        assert_eq!(e.skip(), Some(buf.len()));
        check_prefixes(buf, &lim());
    }
    assert_eq!(
        err_of(b"\"x\n").to_string(),
        "syntax error: unbalanced quotes in inline request"
    );
    // The line after a bad one parses normally.
    let all = parse_all(b"GET \"x\nGET y\r\n");
    assert_eq!(all.len(), 2);
    assert!(matches!(all[0], Err(ParseError::Inline { skip: 7, .. })));
    assert_eq!(
        all[1].as_ref().unwrap().args,
        vec![Bytes::from("GET"), Bytes::from("y")]
    );
}

#[test]
fn http_request_lines_are_cross_protocol() {
    for buf in [
        &b"POST / HTTP/1.1\r\nHost: x\r\n\r\nPUT pwned yes"[..],
        b"GET /?x=1 HTTP/1.1\r\n",
        b"Host: 127.0.0.1:7379\r\n",
        // Quotes that would not split do not hide the request line.
        b"GET /?q=\"x HTTP/1.1\r\n",
    ] {
        let e = err_of(buf);
        assert_eq!(e, ParseError::CrossProtocol, "{buf:?}");
        assert!(e.closes_connection());
        assert_eq!(e.skip(), None);
        check_prefixes(buf, &lim());
    }
    // The same words framed as RESP are a command like any other.
    let mut buf = Vec::new();
    encode_request(&["GET", "/", "HTTP/1.1"], &mut buf);
    assert_eq!(args_of(&buf), words(&["GET", "/", "HTTP/1.1"]));
    assert_eq!(args_of(b"GET key\r\n"), words(&["GET", "key"]));
}

#[test]
fn inline_too_long() {
    let limits = lim();
    let e = parse_request(&vec![b'a'; 10 * 1024 * 1024], &limits).unwrap_err();
    assert_eq!(e, ParseError::InlineTooLong { limit: 65536 });
    assert_eq!(
        e.to_string(),
        "Protocol error: inline request exceeds limit 65536 bytes"
    );
    assert!(e.closes_connection());
    // Also when the newline eventually comes.
    let mut line = vec![b'a'; 65537];
    line.push(b'\n');
    assert_eq!(parse_request(&line, &limits), Err(e.clone()));
    // Exactly at the limit is fine, with either terminator, and waits until then.
    for term in [&b"\n"[..], b"\r\n"] {
        let mut line = vec![b'a'; 65536];
        assert_eq!(parse_request(&line, &limits), Ok(None));
        line.extend_from_slice(term);
        assert_eq!(
            parse_request(&line[..65537], &limits).ok(),
            Some(if term.len() == 1 {
                Some((
                    Request {
                        args: vec![Bytes::from(vec![b'a'; 65536])],
                        inline: true,
                    },
                    65537,
                ))
            } else {
                None
            })
        );
        assert_eq!(
            parse_request(&line, &limits).unwrap().unwrap().1,
            line.len()
        );
    }
    // Small limits: every split point agrees.
    let small = Limits {
        max_inline: 4,
        ..lim()
    };
    for buf in [
        &b"abcd\r\n"[..],
        b"abcde\n",
        b"abcd\r\r\n",
        b"abcdef",
        b"abc\r\n",
    ] {
        check_prefixes(buf, &small);
    }
    assert!(parse_request(b"abcd\r\n", &small).unwrap().is_some());
    assert!(parse_request(b"abcd\r\r\n", &small).is_err());
}

#[test]
fn pipelined_mixed_requests() {
    let mut buf = Vec::new();
    encode_request(&["SET", "a", "1"], &mut buf);
    buf.extend_from_slice(b"GET a\r\n\r\n");
    encode_request::<&str>(&[], &mut buf);
    buf.extend_from_slice(b"*-1\r\nPING\n");
    encode_request(&["DEL", "a"], &mut buf);
    let got: Vec<Vec<Bytes>> = parse_all(&buf)
        .into_iter()
        .map(|r| r.unwrap().args)
        .collect();
    let expect: Vec<Vec<Bytes>> = [
        &["SET", "a", "1"][..],
        &["GET", "a"],
        &[],
        &[],
        &[],
        &["PING"],
        &["DEL", "a"],
    ]
    .iter()
    .map(|w| w.iter().map(|s| Bytes::from(*s)).collect())
    .collect();
    assert_eq!(got, expect);
}

#[test]
fn pipeline_of_ten_thousand_sets() {
    let mut buf = Vec::new();
    for i in 0..10_000 {
        encode_request(&["SET", &format!("key:{i}"), "value"], &mut buf);
    }
    let mut rest = &buf[..];
    let mut count = 0;
    while let Some((req, n)) = parse(rest).unwrap() {
        assert_eq!(req.args.len(), 3);
        assert_eq!(req.args[1], format!("key:{count}").as_bytes());
        rest = &rest[n..];
        count += 1;
    }
    assert_eq!(count, 10_000);
    assert!(rest.is_empty());
}

/// Tiny xorshift generator so the garbage test needs no extra crate.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn binary_garbage_never_panics() {
    let alphabet = b"*$\r\n-0123456789 \t\"'\\xaZ";
    let small = Limits {
        max_inline: 64,
        max_bulk: 16,
        max_args: 8,
    };
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for round in 0..20_000 {
        let len = (rng.next() % 48) as usize;
        let buf: Vec<u8> = (0..len)
            .map(|_| {
                let r = rng.next();
                if round % 2 == 0 {
                    r.to_le_bytes()[0]
                } else {
                    let i = usize::try_from(r % alphabet.len() as u64).expect("below the length");
                    alphabet[i]
                }
            })
            .collect();
        for limits in [&small, &lim()] {
            if let Ok(Some((_, n))) = parse_request(&buf, limits) {
                assert!(n > 0 && n <= buf.len());
            }
            if let Err(e) = parse_request(&buf, limits) {
                let msg = e.to_string();
                assert!(!msg.contains('\r') && !msg.contains('\n'), "{msg:?}");
                if let Some(n) = e.skip() {
                    assert!(n > 0 && n <= buf.len());
                }
            }
            check_prefixes(&buf, limits);
        }
    }
}

/// Quotes an argument the way a person would type it on an inline line.
fn inline_quote(arg: &[u8]) -> String {
    let mut s = String::from("\"");
    for &b in arg {
        match b {
            b'"' => s.push_str("\\\""),
            b'\\' => s.push_str("\\\\"),
            b'\n' => s.push_str("\\n"),
            b'\r' => s.push_str("\\r"),
            b'\t' => s.push_str("\\t"),
            0x20..=0x7e => s.push(b as char),
            _ => {
                let _ = write!(s, "\\x{b:02x}");
            }
        }
    }
    s.push('"');
    s
}

proptest! {
    #[test]
    fn prop_resp_roundtrip(args in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..12)) {
        let mut buf = Vec::new();
        encode_request(&args, &mut buf);
        let (req, n) = parse(&buf).unwrap().unwrap();
        prop_assert_eq!(n, buf.len());
        prop_assert!(!req.inline);
        let got: Vec<Vec<u8>> = req.args.iter().map(|a| a.to_vec()).collect();
        prop_assert_eq!(got, args);
        for k in 0..buf.len() {
            prop_assert_eq!(parse(&buf[..k]), Ok(None));
        }
    }

    #[test]
    fn prop_inline_quoted_roundtrip(args in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..20), 1..8)) {
        let line: Vec<String> = args.iter().map(|a| inline_quote(a)).collect();
        let buf = format!("{}\r\n", line.join(" \t"));
        let (req, n) = parse(buf.as_bytes()).unwrap().unwrap();
        prop_assert_eq!(n, buf.len());
        let got: Vec<Vec<u8>> = req.args.iter().map(|a| a.to_vec()).collect();
        prop_assert_eq!(got, args);
    }

    #[test]
    fn prop_any_bytes_prefix_consistent(buf in prop::collection::vec(any::<u8>(), 0..64)) {
        check_prefixes(&buf, &Limits { max_inline: 16, max_bulk: 8, max_args: 4 });
        check_prefixes(&buf, &lim());
    }
}
