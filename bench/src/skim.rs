//! Event frames and replies read without building values.
//!
//! The fan-out receivers (S5, and the RESP side of the gateway rows) need only the id each
//! pushed frame carries, and the load of the `verbs` rows only the kind of each reply and
//! its integer. On a 2-core machine whatever the client spends decoding is taken from the
//! server it measures, so they skim: one pass over the bytes, no allocation, the same code
//! for logkv and redis.

/// Digits of the sequence number at the start of a redis message (see `server::fanout`).
pub const SEQ_DIGITS: usize = 20;

/// What one pushed frame says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// logkv `["watch", id, entry]`: the entry's revision.
    Entry(u64),
    /// logkv `["watch", id, "ready"]`.
    Ready,
    /// logkv `["watch", id, "lost", first_retained]`.
    Lost,
    /// redis `["message", channel, payload]`: the sequence number the payload starts with.
    Message(u64),
}

/// The start of one RESP value.
enum Head<'a> {
    /// `$n` (or RESP3 `=` / `!`): the string.
    Bulk(&'a [u8]),
    /// `*n`, `>n`, `~n` (n elements) or `%n` (2n elements).
    Aggregate(usize),
    /// Any other one-line value: its type byte and text.
    Line(u8, &'a [u8]),
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

/// `Ok(None)`: the buffer ends inside the value.
type Step<T> = Result<Option<T>, String>;

impl<'a> Cursor<'a> {
    fn line(&mut self) -> Step<&'a [u8]> {
        let Some(rest) = self.buf.get(self.pos..) else {
            return Ok(None);
        };
        let Some(cr) = rest.iter().position(|&b| b == b'\r') else {
            return Ok(None);
        };
        match rest.get(cr + 1) {
            None => Ok(None),
            Some(b'\n') => {
                self.pos += cr + 2;
                Ok(Some(&rest[..cr]))
            }
            // A CR inside a line is not RESP the servers send.
            Some(_) => Err("a CR not followed by LF inside a line".into()),
        }
    }

    fn head(&mut self) -> Step<Head<'a>> {
        let Some(&kind) = self.buf.get(self.pos) else {
            return Ok(None);
        };
        self.pos += 1;
        let Some(line) = self.line()? else {
            return Ok(None);
        };
        let count = || crate::resp::int_line(line);
        Ok(Some(match kind {
            b'$' | b'=' | b'!' => match usize::try_from(count()?) {
                Err(_) => Head::Line(b'_', b""),
                Ok(n) => {
                    let Some(s) = self.buf.get(self.pos..self.pos + n) else {
                        return Ok(None);
                    };
                    match self.buf.get(self.pos + n..self.pos + n + 2) {
                        None => return Ok(None),
                        Some(b"\r\n") => {}
                        Some(_) => return Err("bulk string not ended by CRLF".into()),
                    }
                    self.pos += n + 2;
                    if kind == b'!' {
                        // A RESP3 blob error: an error, whatever its length.
                        Head::Line(b'-', s)
                    } else {
                        Head::Bulk(s)
                    }
                }
            },
            b'*' | b'>' | b'~' => match usize::try_from(count()?) {
                Err(_) => Head::Line(b'_', b""),
                Ok(n) => Head::Aggregate(n),
            },
            b'%' => {
                let n = usize::try_from(count()?).map_err(|_| "negative map length")?;
                Head::Aggregate(n.checked_mul(2).ok_or("map length overflows")?)
            }
            b'+' | b'-' | b':' | b'_' | b'#' | b',' | b'(' => Head::Line(kind, line),
            other => return Err(format!("unknown RESP type byte {:?}", other as char)),
        }))
    }

    /// Skips one whole value.
    fn skip(&mut self, depth: usize) -> Step<()> {
        if depth > 64 {
            return Err("RESP nested too deeply".into());
        }
        match self.head()? {
            None => Ok(None),
            Some(Head::Aggregate(n)) => {
                for _ in 0..n {
                    if self.skip(depth + 1)?.is_none() {
                        return Ok(None);
                    }
                }
                Ok(Some(()))
            }
            Some(_) => Ok(Some(())),
        }
    }

    fn bulk(&mut self) -> Step<&'a [u8]> {
        match self.head()? {
            None => Ok(None),
            Some(Head::Bulk(s)) => Ok(Some(s)),
            Some(_) => Err("expected a bulk string".into()),
        }
    }
}

fn number(s: &[u8]) -> Result<u64, String> {
    std::str::from_utf8(s)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| format!("not a number: {:?}", String::from_utf8_lossy(s)))
}

/// What a reply is, skimmed: its outermost value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply<'a> {
    /// A one-line value (`+`, `-`, `:`, `_`, `#`, `,`, `(`): its type byte and text.
    Line(u8, &'a [u8]),
    /// A bulk string.
    Bulk(&'a [u8]),
    /// An array, push or set of n elements, or a map of n / 2 pairs (skipped whole).
    Aggregate(usize),
}

/// Reads one whole reply at the start of `buf`: `Ok(Some((reply, bytes used)))`, `Ok(None)`
/// if `buf` holds only part of one, `Err` for bytes that are not RESP.
pub fn reply(buf: &[u8]) -> Result<Option<(Reply<'_>, usize)>, String> {
    let mut c = Cursor { buf, pos: 0 };
    let reply = match c.head()? {
        None => return Ok(None),
        Some(Head::Line(kind, text)) => Reply::Line(kind, text),
        Some(Head::Bulk(s)) => Reply::Bulk(s),
        Some(Head::Aggregate(n)) => {
            for _ in 0..n {
                if c.skip(1)?.is_none() {
                    return Ok(None);
                }
            }
            Reply::Aggregate(n)
        }
    };
    Ok(Some((reply, c.pos)))
}

/// The integer of a `:n` reply.
pub fn int_reply(r: Reply<'_>) -> Option<u64> {
    match r {
        Reply::Line(b':', n) => number(n).ok(),
        _ => None,
    }
}

/// Reads one pushed frame at the start of `buf`: `Ok(Some((frame, bytes used)))`,
/// `Ok(None)` if `buf` holds only part of one, `Err` for anything that is not a watch frame
/// or a pub/sub message.
pub fn frame(buf: &[u8]) -> Result<Option<(Frame, usize)>, String> {
    let mut c = Cursor { buf, pos: 0 };
    let n = match c.head()? {
        None => return Ok(None),
        Some(Head::Aggregate(n)) if n >= 3 => n,
        Some(_) => return Err("a pushed frame is not an array of 3 or more".into()),
    };
    let Some(kind) = c.bulk()? else {
        return Ok(None);
    };
    let frame = match kind {
        b"watch" => {
            if c.skip(1)?.is_none() {
                return Ok(None);
            }
            match c.head()? {
                None => return Ok(None),
                Some(Head::Bulk(b"ready")) => Frame::Ready,
                Some(Head::Bulk(b"lost")) => Frame::Lost,
                Some(Head::Aggregate(fields)) => {
                    let mut revision = None;
                    for _ in 0..fields / 2 {
                        let Some(name) = c.bulk()? else {
                            return Ok(None);
                        };
                        if name == b"revision" {
                            match c.head()? {
                                None => return Ok(None),
                                Some(Head::Line(b':', n)) => revision = Some(number(n)?),
                                Some(_) => return Err("a revision that is not an integer".into()),
                            }
                        } else if c.skip(1)?.is_none() {
                            return Ok(None);
                        }
                    }
                    Frame::Entry(revision.ok_or("an entry without a revision")?)
                }
                Some(_) => return Err("a watch frame with an unknown third element".into()),
            }
        }
        b"message" => {
            if c.skip(1)?.is_none() {
                return Ok(None);
            }
            let Some(payload) = c.bulk()? else {
                return Ok(None);
            };
            Frame::Message(number(payload.get(..SEQ_DIGITS).unwrap_or(payload))?)
        }
        other => {
            return Err(format!(
                "unexpected pushed frame {:?}",
                String::from_utf8_lossy(other)
            ))
        }
    };
    for _ in 3..n {
        if c.skip(1)?.is_none() {
            return Ok(None);
        }
    }
    Ok(Some((frame, c.pos)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resp::{parse, watch_frame, WatchFrame};

    const RESP2_ENTRY: &[u8] = b"*3\r\n$5\r\nwatch\r\n:1\r\n*16\r\n$6\r\nbucket\r\n$2\r\ns5\r\n\
$3\r\nkey\r\n$7\r\nfan.out\r\n$5\r\nvalue\r\n$5\r\nhello\r\n$8\r\nrevision\r\n:42\r\n\
$7\r\ncreated\r\n:1795988980064\r\n$2\r\nop\r\n$3\r\nPUT\r\n$5\r\ndelta\r\n:0\r\n\
$7\r\nexpires\r\n:0\r\n";
    const RESP3_ENTRY: &[u8] = b">3\r\n$5\r\nwatch\r\n:7\r\n%7\r\n$6\r\nbucket\r\n$2\r\ns5\r\n\
$3\r\nkey\r\n$1\r\nk\r\n$8\r\nrevision\r\n:9\r\n$7\r\ncreated\r\n:10\r\n$2\r\nop\r\n\
$3\r\nDEL\r\n$5\r\ndelta\r\n:0\r\n$7\r\nexpires\r\n:0\r\n";
    const READY: &[u8] = b">3\r\n$5\r\nwatch\r\n:1\r\n$5\r\nready\r\n";
    const LOST: &[u8] = b"*4\r\n$5\r\nwatch\r\n:1\r\n$4\r\nlost\r\n:12\r\n";
    const MESSAGE: &[u8] = b"*3\r\n$7\r\nmessage\r\n$2\r\ns5\r\n\
$30\r\n00000000000000000123vvvvvvvvvv\r\n";

    #[test]
    fn reads_what_the_full_parser_reads() {
        for (bytes, want) in [
            (RESP2_ENTRY, Frame::Entry(42)),
            (RESP3_ENTRY, Frame::Entry(9)),
            (READY, Frame::Ready),
            (LOST, Frame::Lost),
            (MESSAGE, Frame::Message(123)),
        ] {
            assert_eq!(frame(bytes), Ok(Some((want, bytes.len()))));
            let (v, used) = parse(bytes).unwrap().unwrap();
            assert_eq!(used, bytes.len());
            match (watch_frame(&v), want) {
                (Some(WatchFrame::Entry { revision, .. }), Frame::Entry(r)) => {
                    assert_eq!(revision, r);
                }
                (Some(WatchFrame::Ready(_)), Frame::Ready)
                | (Some(WatchFrame::Lost(_)), Frame::Lost)
                | (None, Frame::Message(_)) => {}
                (got, want) => panic!("full parser {got:?}, skim {want:?}"),
            }
        }
    }

    #[test]
    fn every_prefix_is_incomplete_and_frames_follow_each_other() {
        for bytes in [RESP2_ENTRY, RESP3_ENTRY, READY, LOST, MESSAGE] {
            for cut in 0..bytes.len() {
                assert_eq!(frame(&bytes[..cut]), Ok(None), "cut at {cut}");
            }
        }
        let mut two = RESP2_ENTRY.to_vec();
        two.extend_from_slice(READY);
        let (first, used) = frame(&two).unwrap().unwrap();
        assert_eq!((first, used), (Frame::Entry(42), RESP2_ENTRY.len()));
        assert_eq!(frame(&two[used..]), Ok(Some((Frame::Ready, READY.len()))));
    }

    #[test]
    fn replies_are_skimmed_whole() {
        for (bytes, want) in [
            (&b"+OK\r\n"[..], Reply::Line(b'+', b"OK")),
            (b":42\r\n", Reply::Line(b':', b"42")),
            (
                b"-WRONGREV expected 1, latest 2\r\n",
                Reply::Line(b'-', b"WRONGREV expected 1, latest 2"),
            ),
            (b"$3\r\nabc\r\n", Reply::Bulk(b"abc")),
            (b"*1\r\n*2\r\n$1\r\na\r\n:1\r\n", Reply::Aggregate(1)),
            (
                b"%1\r\n$1\r\na\r\n%1\r\n$1\r\nb\r\n_\r\n",
                Reply::Aggregate(2),
            ),
        ] {
            assert_eq!(reply(bytes), Ok(Some((want, bytes.len()))));
            for cut in 0..bytes.len() {
                assert_eq!(reply(&bytes[..cut]), Ok(None), "cut at {cut}");
            }
        }
        let two = b":7\r\n+OK\r\n";
        let (first, used) = reply(two).unwrap().unwrap();
        assert_eq!((int_reply(first), used), (Some(7), 4));
        assert_eq!(int_reply(Reply::Line(b'+', b"7")), None);
        assert!(reply(b"?1\r\n").is_err());
        assert!(
            reply(b"+O\rK\r\n").is_err(),
            "a CR inside a line is damage, not a cut"
        );
        assert_eq!(
            reply(b"!3\r\nERR\r\n"),
            Ok(Some((Reply::Line(b'-', b"ERR"), 9))),
            "a blob error is an error"
        );
        // The entry arrays of a RESP2 watch frame are skipped as one value.
        assert_eq!(
            reply(RESP2_ENTRY),
            Ok(Some((Reply::Aggregate(3), RESP2_ENTRY.len())))
        );
    }

    #[test]
    fn refuses_what_is_not_an_event() {
        assert!(frame(b"+OK\r\n").is_err());
        assert!(frame(b"*3\r\n$9\r\nsubscribe\r\n$2\r\ns5\r\n:1\r\n").is_err());
        assert!(frame(b"*3\r\n$5\r\nwatch\r\n:1\r\n*2\r\n$3\r\nkey\r\n$1\r\nk\r\n").is_err());
        assert!(frame(b"*3\r\n$5\r\nwatch\r\n:1\r\n$5\r\nreadyXX").is_err());
        assert!(frame(b"?3\r\n").is_err());
    }
}
