//! Incremental request parser.
//!
//! Two framings, told apart by the first byte of each request:
//!
//! * **RESP array** (`*`): `*<n>\r\n` followed by `n` bulk strings `$<len>\r\n<bytes>\r\n`.
//!   Binary safe. `*0` and `*-1` are empty requests.
//! * **Inline** (any other first byte): one line ended by `\n` (a `\r` before it is dropped),
//!   words split on spaces and tabs.
//!   - A word that *starts* with `"` is double quoted and takes the escapes
//!     `\\ \" \n \r \t \xHH` (two hex digits, either case); any other escape is a syntax error.
//!   - A word that *starts* with `'` is single quoted and wholly literal, as in a POSIX shell:
//!     backslashes are kept and the word ends at the next `'`. (Unlike `redis-cli`, `\'` is not
//!     a quote; a word holding `'` is written bare, `it's`, or double quoted, `"it's"`.)
//!   - A closing quote must be followed by a space, a tab or the end of the line.
//!   - A quote inside a bare word is an ordinary character: `it's` is the word `it's`.
//!   - A line that is empty or only spaces and tabs is an empty request.
//!
//! [`parse_request`] looks only at the start of its buffer and never keeps state: when it needs
//! more bytes it says so, and the caller calls it again, from the same start, once more bytes
//! have arrived. Partial requests are rescanned header by header (bulk payloads are skipped,
//! not scanned), and arguments are copied out only once the whole request is there, so a call
//! is linear in the size of the request it returns.

use bytes::Bytes;

use super::reply::push_len;

mod inline;
mod resp;
#[cfg(test)]
mod tests;

/// Size limits applied while parsing. Exceeding any of them is a framing violation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest inline line, in bytes, not counting the `\r\n` / `\n` terminator (default 64 KiB).
    pub max_inline: usize,
    /// Longest RESP bulk string, in bytes (default 8 MiB).
    pub max_bulk: usize,
    /// Most elements in a RESP array (default 1,024).
    pub max_args: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_inline: 64 * 1024,
            max_bulk: 8 * 1024 * 1024,
            max_args: 1024,
        }
    }
}

/// One complete request.
///
/// `args` empty means "nothing to do": an empty inline line, `*0` or `*-1`. The caller drops
/// the consumed bytes and sends no reply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// The arguments, verb first. Each one owns its bytes (no sharing with the input buffer).
    pub args: Vec<Bytes>,
    /// Whether the request came as an inline line (rather than a RESP array).
    pub inline: bool,
}

impl Request {
    /// True when the request has no arguments and must be ignored.
    pub fn is_empty(&self) -> bool {
        self.args.is_empty()
    }
}

/// Why an inline line could not be split into words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InlineSyntax {
    /// A quoted word has no closing quote on its line.
    #[error("unbalanced quotes in inline request")]
    UnbalancedQuotes,
    /// A double-quoted word holds an escape other than `\\ \" \n \r \t \xHH`.
    #[error("invalid escape sequence in inline request")]
    BadEscape,
    /// A closing quote is followed by something other than a space, a tab or the end of line.
    #[error("closing quote must be followed by a space in inline request")]
    TextAfterQuote,
}

/// A request that cannot be parsed.
///
/// Every message fits after `-ERR ` (one line, no CR/LF). All variants but
/// [`ParseError::Inline`] are framing violations: reply, then close the connection
/// ([`ParseError::closes_connection`]). For [`ParseError::Inline`] the bad line is dropped
/// ([`ParseError::skip`] bytes) and the connection stays usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The `*<n>` header is not an integer line, or `n` is negative (other than `-1`).
    #[error("Protocol error: invalid multibulk length")]
    InvalidArrayLength,
    /// The array has more elements than [`Limits::max_args`].
    #[error("Protocol error: array length {len} exceeds limit {limit}")]
    TooManyArgs {
        /// Claimed number of elements.
        len: u64,
        /// The limit in force.
        limit: usize,
    },
    /// An array element does not start with `$`.
    #[error("Protocol error: expected '$', got '{}'", .found.escape_ascii())]
    ExpectedBulk {
        /// The byte found instead.
        found: u8,
    },
    /// The `$<len>` header is not an integer line, or `len` is negative or overflows.
    #[error("Protocol error: invalid bulk length")]
    InvalidBulkLength,
    /// A bulk string is longer than [`Limits::max_bulk`].
    #[error("Protocol error: bulk string length {len} exceeds limit {limit}")]
    BulkTooLarge {
        /// Claimed length.
        len: u64,
        /// The limit in force.
        limit: usize,
    },
    /// A bulk string's payload is not followed by `\r\n`.
    #[error("Protocol error: expected CRLF after bulk string")]
    MissingCrlf,
    /// An inline line is longer than [`Limits::max_inline`].
    #[error("Protocol error: inline request exceeds limit {limit} bytes")]
    InlineTooLong {
        /// The limit in force.
        limit: usize,
    },
    /// A line of an HTTP request (see [`super::http`]): a possible cross-protocol attack.
    /// The connection is closed without a reply and nothing after this line runs.
    #[error("Protocol error: an HTTP request on the RESP port")]
    CrossProtocol,
    /// An inline line is complete but malformed. Not a framing violation.
    #[error("syntax error: {kind}")]
    Inline {
        /// What is wrong with the line.
        kind: InlineSyntax,
        /// Bytes to drop (the whole line with its terminator) before parsing on.
        skip: usize,
    },
}

impl ParseError {
    /// Whether the connection must be closed after replying with this error.
    pub fn closes_connection(&self) -> bool {
        !matches!(self, ParseError::Inline { .. })
    }

    /// For an error that leaves the connection usable, the number of bytes to drop from the
    /// front of the buffer; `None` for a framing violation.
    pub fn skip(&self) -> Option<usize> {
        match self {
            ParseError::Inline { skip, .. } => Some(*skip),
            _ => None,
        }
    }
}

/// Parses one request from the start of `buf`.
///
/// * `Ok(None)`: `buf` holds only part of a request (or nothing); call again with more bytes.
/// * `Ok(Some((request, n)))`: a complete request taken from `buf[..n]`. An empty
///   `request.args` means "ignore" (see [`Request`]), but the `n` bytes must still be dropped.
/// * `Err(e)`: see [`ParseError`].
///
/// Splitting the input anywhere only delays the answer: every prefix of a buffer gives either
/// `Ok(None)` or the same answer as the whole buffer.
pub fn parse_request(buf: &[u8], limits: &Limits) -> Result<Option<(Request, usize)>, ParseError> {
    match buf.first() {
        None => Ok(None),
        Some(b'*') => resp::parse(buf, limits),
        Some(_) => inline::parse(buf, limits),
    }
}

/// Appends `args` encoded as a RESP array of bulk strings (what a Redis client sends).
pub fn encode_request<A: AsRef<[u8]>>(args: &[A], out: &mut Vec<u8>) {
    push_len(out, b'*', args.len());
    for arg in args {
        let arg = arg.as_ref();
        push_len(out, b'$', arg.len());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}
