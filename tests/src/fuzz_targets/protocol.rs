//! The `protocol` target: the request parser over arbitrary bytes.

use logkv_server::protocol::{parse_request, Limits};

/// The request parser: never panics, never claims more bytes than it was
/// given, and an error that keeps the connection open always skips forward.
///
/// # Panics
///
/// When the parser breaks one of those rules (a finding).
pub fn protocol(data: &[u8]) {
    let limits = Limits {
        max_inline: 1024,
        max_bulk: 4096,
        max_args: 16,
    };
    let mut at = 0;
    while at < data.len() {
        match parse_request(&data[at..], &limits) {
            Ok(Some((req, n))) => {
                assert!(
                    n > 0 && n <= data.len() - at,
                    "consumed {n} of {}",
                    data.len() - at
                );
                // The element limit is for RESP arrays; an inline line is bounded by its length.
                let max_words = if req.inline {
                    limits.max_inline
                } else {
                    limits.max_args
                };
                assert!(req.args.len() <= max_words);
                assert!(req
                    .args
                    .iter()
                    .all(|a| a.len() <= limits.max_bulk.max(limits.max_inline)));
                at += n;
            }
            Ok(None) => break,
            Err(e) if e.closes_connection() => break,
            Err(e) => match e.skip() {
                Some(n) if n > 0 && n <= data.len() - at => at += n,
                other => panic!("non-closing error {e} skips {other:?}"),
            },
        }
    }
}
