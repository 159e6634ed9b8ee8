//! A minimal RESP client over std's `TcpStream`, for the logkv-only server rows
//! (WATCH fan-out, slow consumer): an encoder for commands and an incremental parser for
//! RESP2 and the RESP3 types the server sends.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// One RESP value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `+OK`
    Simple(String),
    /// `-ERR message`
    Error(String),
    /// `:42`
    Int(i64),
    /// `$3\r\nabc` (`$-1` and RESP3 `_` are [`Value::Null`]).
    Bulk(Vec<u8>),
    /// `*n` arrays and RESP3 `>` pushes and `~` sets.
    Array(Vec<Value>),
    /// RESP3 `%` map.
    Map(Vec<(Value, Value)>),
    /// `$-1`, `*-1`, `_`.
    Null,
    /// RESP3 `#t` / `#f`.
    Bool(bool),
    /// RESP3 `,1.5`.
    Double(f64),
}

impl Value {
    /// The value as an integer, from `:n` or a numeric bulk string.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(n) => Some(*n),
            Value::Bulk(b) => std::str::from_utf8(b).ok()?.parse().ok(),
            Value::Simple(s) => s.parse().ok(),
            _ => None,
        }
    }

    /// Whether the value is the bulk or simple string `s`.
    pub fn is_str(&self, s: &str) -> bool {
        match self {
            Value::Bulk(b) => b == s.as_bytes(),
            Value::Simple(t) => t == s,
            _ => false,
        }
    }

    /// A field of an entry: a RESP3 map or a RESP2 flat array of field, value pairs.
    pub fn field(&self, name: &str) -> Option<&Value> {
        match self {
            Value::Map(pairs) => pairs.iter().find(|(k, _)| k.is_str(name)).map(|(_, v)| v),
            Value::Array(items) => items
                .chunks_exact(2)
                .find(|kv| kv[0].is_str(name))
                .map(|kv| &kv[1]),
            _ => None,
        }
    }
}

/// What a watch push frame says.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchFrame {
    /// `["watch", id, entry]`: the entry's revision.
    Entry {
        /// Watch id.
        id: u64,
        /// The entry's revision.
        revision: u64,
    },
    /// `["watch", id, "ready"]`.
    Ready(u64),
    /// `["watch", id, "lost", first_retained]`.
    Lost(u64),
}

/// Reads a watch frame; `None` if `v` is not one.
pub fn watch_frame(v: &Value) -> Option<WatchFrame> {
    let Value::Array(items) = v else { return None };
    if items.len() < 3 || !items[0].is_str("watch") {
        return None;
    }
    let id = u64::try_from(items[1].as_int()?).ok()?;
    match &items[2] {
        x if x.is_str("ready") => Some(WatchFrame::Ready(id)),
        x if x.is_str("lost") => Some(WatchFrame::Lost(id)),
        entry => Some(WatchFrame::Entry {
            id,
            revision: u64::try_from(entry.field("revision")?.as_int()?).ok()?,
        }),
    }
}

/// Appends a command as a RESP array of bulk strings.
pub fn encode(args: &[&[u8]], out: &mut Vec<u8>) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        bulk(a, out);
    }
}

/// Appends one bulk string.
pub fn bulk(b: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(format!("${}\r\n", b.len()).as_bytes());
    out.extend_from_slice(b);
    out.extend_from_slice(b"\r\n");
}

/// Parses one value from the start of `buf`: `Ok(Some((value, bytes used)))`, `Ok(None)` if
/// `buf` holds only part of one, `Err` if it is not RESP.
pub fn parse(buf: &[u8]) -> Result<Option<(Value, usize)>, String> {
    let mut pos = 0;
    match parse_at(buf, &mut pos, 0)? {
        Some(v) => Ok(Some((v, pos))),
        None => Ok(None),
    }
}

/// The integer of a RESP header or `:` line (without its type byte and CRLF).
pub(crate) fn int_line(l: &[u8]) -> Result<i64, String> {
    std::str::from_utf8(l)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad number {:?}", String::from_utf8_lossy(l)))
}

fn line<'a>(buf: &'a [u8], pos: &mut usize) -> Option<&'a [u8]> {
    let start = *pos;
    let rel = buf.get(start..)?.windows(2).position(|w| w == b"\r\n")?;
    *pos = start + rel + 2;
    Some(&buf[start..start + rel])
}

fn parse_at(buf: &[u8], pos: &mut usize, depth: usize) -> Result<Option<Value>, String> {
    if depth > 64 {
        return Err("RESP nested too deeply".into());
    }
    let Some(&kind) = buf.get(*pos) else {
        return Ok(None);
    };
    *pos += 1;
    let Some(l) = line(buf, pos) else {
        return Ok(None);
    };
    let text = || String::from_utf8_lossy(l).into_owned();
    let num = || int_line(l);
    Ok(Some(match kind {
        b'+' => Value::Simple(text()),
        b'-' => Value::Error(text()),
        b':' => Value::Int(num()?),
        b'_' => Value::Null,
        b'#' => Value::Bool(l == b"t"),
        b',' => Value::Double(text().parse().map_err(|_| "bad double".to_string())?),
        b'$' | b'=' | b'!' => {
            // A negative length is a null.
            let Ok(n) = usize::try_from(num()?) else {
                return Ok(Some(Value::Null));
            };
            if buf.len() < *pos + n + 2 {
                return Ok(None);
            }
            let v = buf[*pos..*pos + n].to_vec();
            if &buf[*pos + n..*pos + n + 2] != b"\r\n" {
                return Err("bulk string not ended by CRLF".into());
            }
            *pos += n + 2;
            Value::Bulk(v)
        }
        b'*' | b'>' | b'~' => {
            // A negative length is a null.
            let Ok(n) = usize::try_from(num()?) else {
                return Ok(Some(Value::Null));
            };
            let mut items = Vec::with_capacity(n.min(1024));
            for _ in 0..n {
                match parse_at(buf, pos, depth + 1)? {
                    Some(v) => items.push(v),
                    None => return Ok(None),
                }
            }
            Value::Array(items)
        }
        b'%' => {
            let n = num()?;
            let mut pairs = Vec::with_capacity(usize::try_from(n).unwrap_or(0).min(1024));
            for _ in 0..n {
                let Some(k) = parse_at(buf, pos, depth + 1)? else {
                    return Ok(None);
                };
                let Some(v) = parse_at(buf, pos, depth + 1)? else {
                    return Ok(None);
                };
                pairs.push((k, v));
            }
            Value::Map(pairs)
        }
        other => return Err(format!("unknown RESP type byte {:?}", other as char)),
    }))
}

/// A buffer of bytes read from a connection, from which whole values are taken.
#[derive(Debug, Default)]
pub struct Inbox {
    buf: Vec<u8>,
    start: usize,
}

impl Inbox {
    /// Adds bytes read from the connection.
    pub fn extend(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Whether every byte added was taken as a value.
    pub fn is_empty(&self) -> bool {
        self.start == self.buf.len()
    }

    /// The bytes not yet taken as values.
    pub fn into_unread(mut self) -> Vec<u8> {
        self.buf.drain(..self.start);
        self.buf
    }

    /// The next whole value, if there is one.
    pub fn next_value(&mut self) -> io::Result<Option<Value>> {
        match parse(&self.buf[self.start..]) {
            Ok(Some((v, used))) => {
                self.start += used;
                if self.start > 1 << 16 && self.start * 2 > self.buf.len() {
                    self.buf.drain(..self.start);
                    self.start = 0;
                }
                Ok(Some(v))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(io::Error::new(io::ErrorKind::InvalidData, e)),
        }
    }
}

/// A blocking RESP connection.
#[derive(Debug)]
pub struct Client {
    /// The socket.
    pub stream: TcpStream,
    inbox: Inbox,
    out: Vec<u8>,
}

impl Client {
    /// Connects (`TCP_NODELAY`, 10 s read timeout).
    pub fn connect(addr: &str) -> io::Result<Client> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(Client {
            stream,
            inbox: Inbox::default(),
            out: Vec::new(),
        })
    }

    /// Queues a command (sent by [`Client::flush`]).
    pub fn queue(&mut self, args: &[&[u8]]) {
        encode(args, &mut self.out);
    }

    /// Sends the queued commands.
    pub fn flush(&mut self) -> io::Result<()> {
        self.stream.write_all(&self.out)?;
        self.out.clear();
        Ok(())
    }

    /// Reads the next value.
    pub fn read(&mut self) -> io::Result<Value> {
        let mut chunk = [0u8; 16 << 10];
        loop {
            if let Some(v) = self.inbox.next_value()? {
                return Ok(v);
            }
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.inbox.extend(&chunk[..n]);
        }
    }

    /// Sends one command and reads its reply.
    pub fn call(&mut self, args: &[&[u8]]) -> io::Result<Value> {
        self.queue(args);
        self.flush()?;
        self.read()
    }

    /// Splits off the socket and the bytes already read (for a poll loop).
    pub fn into_parts(self) -> (TcpStream, Inbox) {
        (self.stream, self.inbox)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(s: &[u8]) -> Value {
        let (v, used) = parse(s).unwrap().unwrap();
        assert_eq!(used, s.len());
        v
    }

    #[test]
    fn encodes_commands_as_bulk_arrays() {
        let mut out = Vec::new();
        encode(&[b"PUT", b"k", b""], &mut out);
        assert_eq!(out, b"*3\r\n$3\r\nPUT\r\n$1\r\nk\r\n$0\r\n\r\n");
    }

    #[test]
    fn parses_scalars() {
        assert_eq!(one(b"+OK\r\n"), Value::Simple("OK".into()));
        assert_eq!(
            one(b"-WRONGREV expected 1, latest 2\r\n"),
            Value::Error("WRONGREV expected 1, latest 2".into())
        );
        assert_eq!(one(b":-42\r\n"), Value::Int(-42));
        assert_eq!(one(b"$5\r\nhe\r\no\r\n"), Value::Bulk(b"he\r\no".to_vec()));
        assert_eq!(one(b"$-1\r\n"), Value::Null);
        assert_eq!(one(b"_\r\n"), Value::Null);
        assert_eq!(one(b"#t\r\n"), Value::Bool(true));
        assert_eq!(one(b",1.5\r\n"), Value::Double(1.5));
    }

    #[test]
    fn parses_nested_arrays_maps_and_pushes() {
        assert_eq!(
            one(b"*2\r\n*1\r\n:1\r\n$1\r\nx\r\n"),
            Value::Array(vec![
                Value::Array(vec![Value::Int(1)]),
                Value::Bulk(b"x".to_vec())
            ])
        );
        assert_eq!(
            one(b"%1\r\n+a\r\n:2\r\n"),
            Value::Map(vec![(Value::Simple("a".into()), Value::Int(2))])
        );
        assert_eq!(one(b">1\r\n:7\r\n"), Value::Array(vec![Value::Int(7)]));
        assert_eq!(one(b"*-1\r\n"), Value::Null);
    }

    #[test]
    fn partial_input_waits_for_more() {
        let whole = b"*2\r\n$5\r\nwatch\r\n:12\r\n";
        for cut in 0..whole.len() {
            assert_eq!(parse(&whole[..cut]).unwrap(), None, "cut at {cut}");
        }
        assert!(parse(whole).unwrap().is_some());
        let mut inbox = Inbox::default();
        inbox.extend(&whole[..7]);
        assert_eq!(inbox.next_value().unwrap(), None);
        inbox.extend(&whole[7..]);
        inbox.extend(b"+PONG\r\n");
        assert!(matches!(inbox.next_value().unwrap(), Some(Value::Array(_))));
        assert_eq!(
            inbox.next_value().unwrap(),
            Some(Value::Simple("PONG".into()))
        );
        assert_eq!(inbox.next_value().unwrap(), None);
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse(b"?what\r\n").is_err());
        assert!(parse(b":abc\r\n").is_err());
        assert!(parse(b"$3\r\nabcde\r\n").is_err());
    }

    #[test]
    fn reads_watch_frames_in_resp2_and_resp3() {
        let resp2 = b"*3\r\n$5\r\nwatch\r\n:1\r\n*16\r\n$6\r\nbucket\r\n$7\r\ndefault\r\n$3\r\nkey\r\n$1\r\nk\r\n$5\r\nvalue\r\n$1\r\nv\r\n$8\r\nrevision\r\n:17\r\n$7\r\ncreated\r\n:1\r\n$2\r\nop\r\n$3\r\nPUT\r\n$5\r\ndelta\r\n:0\r\n$7\r\nexpires\r\n:0\r\n";
        assert_eq!(
            watch_frame(&one(resp2)),
            Some(WatchFrame::Entry {
                id: 1,
                revision: 17
            })
        );
        let resp3 =
            b">3\r\n$5\r\nwatch\r\n:2\r\n%2\r\n$3\r\nkey\r\n$1\r\nk\r\n$8\r\nrevision\r\n:9\r\n";
        assert_eq!(
            watch_frame(&one(resp3)),
            Some(WatchFrame::Entry { id: 2, revision: 9 })
        );
        let ready = b"*3\r\n$5\r\nwatch\r\n:3\r\n$5\r\nready\r\n";
        assert_eq!(watch_frame(&one(ready)), Some(WatchFrame::Ready(3)));
        let lost = b"*4\r\n$5\r\nwatch\r\n:3\r\n$4\r\nlost\r\n:100\r\n";
        assert_eq!(watch_frame(&one(lost)), Some(WatchFrame::Lost(3)));
        assert_eq!(watch_frame(&Value::Int(1)), None);
    }
}
