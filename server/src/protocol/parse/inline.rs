//! Inline lines: words split on spaces and tabs, with double- and single-quoted words.

use bytes::Bytes;

use super::{InlineSyntax, Limits, ParseError, Request};
use crate::protocol::http;

pub(super) fn parse(buf: &[u8], limits: &Limits) -> Result<Option<(Request, usize)>, ParseError> {
    let too_long = ParseError::InlineTooLong {
        limit: limits.max_inline,
    };
    // A line of max_inline bytes plus "\r\n" fits in this window; look no further.
    let window = &buf[..buf.len().min(limits.max_inline.saturating_add(2))];
    let Some(nl) = window.iter().position(|&b| b == b'\n') else {
        // No newline yet: the line is at least this long (a final '\r' may be the terminator).
        let at_least = buf.len() - usize::from(buf.last() == Some(&b'\r'));
        return if at_least > limits.max_inline {
            Err(too_long)
        } else {
            Ok(None)
        };
    };
    let line = &buf[..nl];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.len() > limits.max_inline {
        return Err(too_long);
    }
    if http::is_http_line(line) {
        return Err(ParseError::CrossProtocol);
    }
    let skip = nl + 1;
    match split_words(line) {
        Ok(args) => Ok(Some((Request { args, inline: true }, skip))),
        Err(kind) => Err(ParseError::Inline { kind, skip }),
    }
}

fn is_space(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Splits one inline line (without its terminator) into words.
fn split_words(line: &[u8]) -> Result<Vec<Bytes>, InlineSyntax> {
    let mut args = Vec::new();
    let mut i = 0;
    loop {
        while line.get(i).is_some_and(|&b| is_space(b)) {
            i += 1;
        }
        let Some(&first) = line.get(i) else {
            return Ok(args);
        };
        let word = match first {
            b'"' => {
                let (word, next) = double_quoted(line, i + 1)?;
                i = next;
                word
            }
            b'\'' => {
                let (word, next) = single_quoted(line, i + 1)?;
                i = next;
                word
            }
            _ => {
                let start = i;
                while line.get(i).is_some_and(|&b| !is_space(b)) {
                    i += 1;
                }
                args.push(Bytes::copy_from_slice(&line[start..i]));
                continue;
            }
        };
        // `i` is just past the closing quote.
        if line.get(i).is_some_and(|&b| !is_space(b)) {
            return Err(InlineSyntax::TextAfterQuote);
        }
        args.push(Bytes::from(word));
    }
}

/// Reads a double-quoted word whose content starts at `i`; returns it and the position after
/// the closing quote.
fn double_quoted(line: &[u8], mut i: usize) -> Result<(Vec<u8>, usize), InlineSyntax> {
    let mut word = Vec::new();
    loop {
        match line.get(i) {
            None => return Err(InlineSyntax::UnbalancedQuotes),
            Some(b'"') => return Ok((word, i + 1)),
            Some(b'\\') => {
                let (byte, len) = match line.get(i + 1) {
                    None => return Err(InlineSyntax::UnbalancedQuotes),
                    Some(b'\\') => (b'\\', 2),
                    Some(b'"') => (b'"', 2),
                    Some(b'n') => (b'\n', 2),
                    Some(b'r') => (b'\r', 2),
                    Some(b't') => (b'\t', 2),
                    Some(b'x') => {
                        let hi = line.get(i + 2).and_then(|&b| hex_value(b));
                        let lo = line.get(i + 3).and_then(|&b| hex_value(b));
                        match (hi, lo) {
                            (Some(hi), Some(lo)) => (hi << 4 | lo, 4),
                            _ => return Err(InlineSyntax::BadEscape),
                        }
                    }
                    Some(_) => return Err(InlineSyntax::BadEscape),
                };
                word.push(byte);
                i += len;
            }
            Some(&b) => {
                word.push(b);
                i += 1;
            }
        }
    }
}

/// Reads a single-quoted (literal) word whose content starts at `i`; returns it and the
/// position after the closing quote.
fn single_quoted(line: &[u8], i: usize) -> Result<(Vec<u8>, usize), InlineSyntax> {
    let rest = line.get(i..).unwrap_or_default();
    match rest.iter().position(|&b| b == b'\'') {
        Some(len) => Ok((rest[..len].to_vec(), i + len + 1)),
        None => Err(InlineSyntax::UnbalancedQuotes),
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}
