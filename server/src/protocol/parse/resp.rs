//! RESP arrays: `*<n>\r\n` followed by `n` bulk strings `$<len>\r\n<bytes>\r\n`.

use std::ops::Range;

use bytes::Bytes;

use super::{Limits, ParseError, Request};

pub(super) fn parse(buf: &[u8], limits: &Limits) -> Result<Option<(Request, usize)>, ParseError> {
    // First pass: validate and find the end without copying anything, so an incomplete
    // request costs only a walk over its headers.
    let Some((end, count)) = scan_resp(buf, limits, |_| {})? else {
        return Ok(None);
    };
    // Second pass over the now complete frame: copy it out once; the arguments are slices of
    // the copy (one allocation per request, and clones of an argument share it).
    let frame = Bytes::copy_from_slice(&buf[..end]);
    let mut args = Vec::with_capacity(count);
    scan_resp(&frame, limits, |r| args.push(frame.slice(r)))?;
    Ok(Some((
        Request {
            args,
            inline: false,
        },
        end,
    )))
}

/// Walks a RESP array at the start of `buf` (which starts with `*`), calling `on_arg` with the
/// range of each element's payload. Returns `(bytes consumed, element count)` when complete.
fn scan_resp(
    buf: &[u8],
    limits: &Limits,
    mut on_arg: impl FnMut(Range<usize>),
) -> Result<Option<(usize, usize)>, ParseError> {
    let (n, mut pos) = match read_int_line(buf, 1) {
        IntLine::Done(n, pos) => (n, pos),
        IntLine::Partial => return Ok(None),
        IntLine::Bad => return Err(ParseError::InvalidArrayLength),
    };
    if n == 0 || n == -1 {
        return Ok(Some((pos, 0)));
    }
    let argc = usize::try_from(n).map_err(|_| ParseError::InvalidArrayLength)?;
    if argc > limits.max_args {
        return Err(ParseError::TooManyArgs {
            len: n.unsigned_abs(),
            limit: limits.max_args,
        });
    }
    for _ in 0..argc {
        match buf.get(pos) {
            None => return Ok(None),
            Some(b'$') => {}
            Some(&found) => return Err(ParseError::ExpectedBulk { found }),
        }
        let (len, start) = match read_int_line(buf, pos + 1) {
            IntLine::Done(len, start) => (len, start),
            IntLine::Partial => return Ok(None),
            IntLine::Bad => return Err(ParseError::InvalidBulkLength),
        };
        let len = usize::try_from(len).map_err(|_| ParseError::InvalidBulkLength)?;
        if len > limits.max_bulk {
            return Err(ParseError::BulkTooLarge {
                len: len as u64,
                limit: limits.max_bulk,
            });
        }
        let end = start
            .checked_add(len)
            .ok_or(ParseError::InvalidBulkLength)?;
        match buf.get(end..end.saturating_add(2)) {
            Some(b"\r\n") => {}
            Some(_) => return Err(ParseError::MissingCrlf),
            // Incomplete; still reject at once a wrong byte right after the payload.
            None => {
                return match buf.get(end) {
                    Some(&b) if b != b'\r' => Err(ParseError::MissingCrlf),
                    _ => Ok(None),
                }
            }
        }
        on_arg(start..end);
        pos = end + 2;
    }
    Ok(Some((pos, argc)))
}

/// Longest digit run accepted in a length header (`i64::MAX` has 19 digits; a leading zero or
/// two is tolerated).
const MAX_DIGITS: usize = 20;

/// Outcome of reading a `[-]<digits>\r\n` header line.
enum IntLine {
    /// The value and the position just after the `\n`.
    Done(i64, usize),
    /// More bytes are needed.
    Partial,
    /// Not an integer line: bad character, no digits, overflow, too many digits, or a `\r`
    /// not followed by `\n`.
    Bad,
}

/// Reads `[-]<digits>\r\n` starting at `pos`.
fn read_int_line(buf: &[u8], pos: usize) -> IntLine {
    let rest = buf.get(pos..).unwrap_or_default();
    let (neg, first_digit) = match rest.first() {
        None => return IntLine::Partial,
        Some(b'-') => (true, 1),
        Some(_) => (false, 0),
    };
    let mut value: i64 = 0;
    let mut i = first_digit;
    loop {
        match rest.get(i) {
            None => return IntLine::Partial,
            Some(&b) if b.is_ascii_digit() => {
                let next = value
                    .checked_mul(10)
                    .and_then(|v| v.checked_add(i64::from(b - b'0')));
                match next {
                    Some(v) if i - first_digit < MAX_DIGITS => value = v,
                    _ => return IntLine::Bad,
                }
                i += 1;
            }
            Some(b'\r') if i > first_digit => {
                return match rest.get(i + 1) {
                    None => IntLine::Partial,
                    Some(b'\n') => IntLine::Done(if neg { -value } else { value }, pos + i + 2),
                    Some(_) => IntLine::Bad,
                };
            }
            Some(_) => return IntLine::Bad,
        }
    }
}
