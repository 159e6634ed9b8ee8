//! The `protocol` target: the request parser over arbitrary bytes.

use logkv_server::protocol::{encode_request, parse_request, Limits};

/// Limits small enough for the fuzzer to reach every one of them.
const LIMITS: Limits = Limits {
    max_inline: 1024,
    max_bulk: 4096,
    max_args: 16,
};

/// Requests longer than this have their prefixes sampled rather than all tried.
const ALL_PREFIXES_UP_TO: usize = 128;

/// The request parser, request after request through the input, as a
/// connection would call it:
/// - it never panics, and never claims more bytes than it was given;
/// - a request respects the limits;
/// - every prefix of the buffer gives either "need more bytes" or the same
///   answer as the whole buffer (a request split across reads parses the same);
/// - a request re-encoded as a RESP array parses back to the same arguments;
/// - an error that keeps the connection open skips forward, within the buffer.
///
/// # Panics
///
/// When the parser breaks one of those rules (a finding).
pub fn protocol(data: &[u8]) {
    let mut at = 0;
    while at < data.len() {
        let buf = &data[at..];
        let whole = parse_request(buf, &LIMITS);
        let answered = match &whole {
            Ok(Some((_, n))) => *n,
            Ok(None) => buf.len(),
            Err(e) => e.skip().unwrap_or(buf.len()),
        };
        for len in prefix_lengths(answered.min(buf.len())) {
            let part = parse_request(&buf[..len], &LIMITS);
            assert!(
                matches!(part, Ok(None)) || part == whole,
                "the first {len} bytes give {part:?}, the whole buffer {whole:?}"
            );
        }
        match whole {
            Ok(Some((req, n))) => {
                assert!(n > 0 && n <= buf.len(), "consumed {n} of {}", buf.len());
                // The element limit is for RESP arrays; an inline line is bounded by its length.
                let max_words = if req.inline {
                    LIMITS.max_inline
                } else {
                    LIMITS.max_args
                };
                assert!(req.args.len() <= max_words);
                let max_arg = if req.inline {
                    LIMITS.max_inline
                } else {
                    LIMITS.max_bulk
                };
                assert!(req.args.iter().all(|a| a.len() <= max_arg));
                re_encoded_parses_back(&req.args);
                at += n;
            }
            Ok(None) => break,
            Err(e) if e.closes_connection() => break,
            Err(e) => match e.skip() {
                Some(n) if n > 0 && n <= buf.len() => at += n,
                other => panic!("non-closing error {e} skips {other:?}"),
            },
        }
    }
}

/// Lengths of the strict prefixes of an answer of `len` bytes to try: all of
/// them for a short one, a sample (both ends and a stride) for a long one.
fn prefix_lengths(len: usize) -> Vec<usize> {
    if len <= ALL_PREFIXES_UP_TO {
        (0..len).collect()
    } else {
        let stride = len / 32;
        (0..16)
            .chain((0..len).step_by(stride))
            .chain(len - 16..len)
            .collect()
    }
}

/// Arguments sent as a RESP array (what a client library sends) come back whole.
fn re_encoded_parses_back<A: AsRef<[u8]> + std::fmt::Debug>(args: &[A]) {
    let mut wire = Vec::new();
    encode_request(args, &mut wire);
    let roomy = Limits {
        max_args: args.len().max(1),
        ..LIMITS
    };
    match parse_request(&wire, &roomy) {
        Ok(Some((again, n))) => {
            assert_eq!(n, wire.len(), "a re-encoded request is read whole");
            assert!(!again.inline);
            assert!(
                again
                    .args
                    .iter()
                    .map(|a| &a[..])
                    .eq(args.iter().map(AsRef::as_ref)),
                "{args:?} parses back as {:?}",
                again.args
            );
        }
        other => panic!("re-encoded {args:?} parses as {other:?}"),
    }
}
