//! A minimal HTTP/1.1 client side for the gateway rows: GET requests, responses framed by
//! `Content-Length`, and Server-Sent Events over a chunked (or unframed) response body.
//!
//! Written by hand over std's `TcpStream`, like [`crate::resp`], so the harness measures the
//! server and not a client library (and needs no HTTP crate): the client does no more work
//! per request on HTTP than on RESP.

/// Appends `GET path HTTP/1.1` with a `Host` header (a keep-alive request).
pub fn encode_get(host: &str, path: &str, headers: &[(&str, &str)], out: &mut Vec<u8>) {
    out.extend_from_slice(b"GET ");
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// How a response's body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `Content-Length: n`.
    Length(usize),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Neither: the body runs until the connection closes.
    Close,
}

/// A response's status line and headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// The status code.
    pub status: u16,
    /// How the body is framed.
    pub framing: Framing,
    /// Bytes of the status line and headers, the blank line included.
    pub len: usize,
}

/// Parses a response head from the start of `buf`: `Ok(None)` while it is incomplete.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, String> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let text = std::str::from_utf8(&buf[..end]).map_err(|_| "a response head not in UTF-8")?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut framing = Framing::Close;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("bad header line {line:?}"));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n = value
                .parse()
                .map_err(|_| format!("bad Content-Length {value:?}"))?;
            framing = Framing::Length(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            && value.eq_ignore_ascii_case("chunked")
        {
            framing = Framing::Chunked;
        }
    }
    Ok(Some(Head {
        status,
        framing,
        len: end + 4,
    }))
}

/// A whole response read from the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response<'a> {
    /// The status code.
    pub status: u16,
    /// The body.
    pub body: &'a [u8],
    /// Bytes of the response, head and body.
    pub len: usize,
}

/// A whole response framed by `Content-Length` at the start of `buf`; `Ok(None)` while it
/// is incomplete; any other framing is an error (a GET of one entry is always sent with a
/// length).
pub fn parse_response(buf: &[u8]) -> Result<Option<Response<'_>>, String> {
    let Some(head) = parse_head(buf)? else {
        return Ok(None);
    };
    let Framing::Length(n) = head.framing else {
        return Err(format!(
            "a response without Content-Length ({:?})",
            head.framing
        ));
    };
    let end = head.len + n;
    Ok((buf.len() >= end).then(|| Response {
        status: head.status,
        body: &buf[head.len..end],
        len: end,
    }))
}

/// Where a chunked body's decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Reading a chunk-size line (hex, maybe `;extensions`).
    Size,
    /// Inside a chunk, this many bytes left.
    Data(usize),
    /// Expecting the CRLF after a chunk's data; this many of its bytes seen.
    DataEnd(u8),
    /// The last (zero-size) chunk came: the body is over.
    Done,
}

/// Decodes a `Transfer-Encoding: chunked` body fed in arbitrary pieces.
#[derive(Debug)]
pub struct Chunked {
    state: ChunkState,
    line: Vec<u8>,
}

impl Default for Chunked {
    fn default() -> Self {
        Chunked {
            state: ChunkState::Size,
            line: Vec::new(),
        }
    }
}

impl Chunked {
    /// Decodes `input`, appending the body's bytes to `out`; `Ok(true)` once the body has
    /// ended (bytes after its end are not read).
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<bool, String> {
        while !input.is_empty() {
            match self.state {
                ChunkState::Done => return Ok(true),
                ChunkState::Size => {
                    let Some(nl) = input.iter().position(|&b| b == b'\n') else {
                        self.line.extend_from_slice(input);
                        if self.line.len() > 1024 {
                            return Err("a chunk-size line over 1 KiB".into());
                        }
                        return Ok(false);
                    };
                    self.line.extend_from_slice(&input[..nl]);
                    input = &input[nl + 1..];
                    let text = std::str::from_utf8(&self.line).map_err(|_| "bad chunk size")?;
                    let hex = text.trim_end_matches('\r').split(';').next().unwrap_or("");
                    let size = usize::from_str_radix(hex.trim(), 16)
                        .map_err(|_| format!("bad chunk size {text:?}"))?;
                    self.line.clear();
                    // A zero-size chunk ends the body (trailers are not read).
                    self.state = if size == 0 {
                        ChunkState::Done
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(left) => {
                    let take = left.min(input.len());
                    out.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    self.state = if take == left {
                        ChunkState::DataEnd(0)
                    } else {
                        ChunkState::Data(left - take)
                    };
                }
                ChunkState::DataEnd(seen) => {
                    let want = b"\r\n"[usize::from(seen)];
                    if input[0] != want {
                        return Err("a chunk not ended by CRLF".into());
                    }
                    input = &input[1..];
                    self.state = if seen == 1 {
                        ChunkState::Size
                    } else {
                        ChunkState::DataEnd(1)
                    };
                }
            }
        }
        Ok(self.state == ChunkState::Done)
    }
}

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// The `event:` field; empty for an unnamed (`message`) event.
    pub event: String,
    /// The `id:` field.
    pub id: Option<String>,
    /// The `data:` lines, joined by `\n`.
    pub data: String,
}

/// Reads a `text/event-stream` response: its head, its body (chunked or not), and the events
/// in it, from bytes fed in arbitrary pieces.
#[derive(Debug, Default)]
pub struct SseReader {
    head: Option<Head>,
    raw: Vec<u8>,
    chunked: Chunked,
    text: Vec<u8>,
    pending: SseEvent,
    ended: bool,
}

impl SseReader {
    /// Feeds bytes read from the connection; complete events are appended to `events`.
    /// A status other than 200 is an error.
    pub fn feed(&mut self, bytes: &[u8], events: &mut Vec<SseEvent>) -> Result<(), String> {
        if let Some(head) = self.head {
            return self.body(head, bytes, events);
        }
        self.raw.extend_from_slice(bytes);
        let Some(h) = parse_head(&self.raw)? else {
            return Ok(());
        };
        if h.status != 200 {
            let body = String::from_utf8_lossy(&self.raw[h.len..]);
            return Err(format!("the watch was answered {}: {body}", h.status));
        }
        self.head = Some(h);
        let body = self.raw.split_off(h.len);
        self.raw = Vec::new();
        self.body(h, &body, events)
    }

    /// Whether the response body has ended (the server ended the stream).
    pub fn ended(&self) -> bool {
        self.ended
    }

    fn body(&mut self, head: Head, bytes: &[u8], events: &mut Vec<SseEvent>) -> Result<(), String> {
        match head.framing {
            Framing::Chunked => self.ended |= self.chunked.feed(bytes, &mut self.text)?,
            Framing::Close | Framing::Length(_) => self.text.extend_from_slice(bytes),
        }
        let mut start = 0;
        while let Some(nl) = self.text[start..].iter().position(|&b| b == b'\n') {
            let line = &self.text[start..start + nl];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let line = std::str::from_utf8(line).map_err(|_| "an event line not in UTF-8")?;
            start += nl + 1;
            if line.is_empty() {
                let ev = std::mem::take(&mut self.pending);
                if ev != SseEvent::default() {
                    events.push(ev);
                }
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => value.clone_into(&mut self.pending.event),
                "id" => self.pending.id = Some(value.to_string()),
                "data" => {
                    if !self.pending.data.is_empty() {
                        self.pending.data.push('\n');
                    }
                    self.pending.data.push_str(value);
                }
                _ => {}
            }
        }
        self.text.drain(..start);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_a_keep_alive_get() {
        let mut out = Vec::new();
        encode_get("127.0.0.1:80", "/v1/x", &[("Last-Event-ID", "7")], &mut out);
        assert_eq!(
            out,
            b"GET /v1/x HTTP/1.1\r\nHost: 127.0.0.1:80\r\nLast-Event-ID: 7\r\n\r\n"
        );
    }

    #[test]
    fn parses_responses_with_a_length() {
        let r = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 5\r\n\r\nhelloHTTP/1.1";
        for cut in 0..r.len() - 8 {
            assert_eq!(parse_response(&r[..cut]).unwrap(), None, "cut at {cut}");
        }
        let got = parse_response(r).unwrap().unwrap();
        assert_eq!(
            (got.status, got.body, got.len),
            (200, &b"hello"[..], r.len() - 8)
        );
        let nf = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
        let got = parse_response(nf).unwrap().unwrap();
        assert_eq!((got.status, got.body, got.len), (404, &b""[..], nf.len()));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n").is_err());
    }

    #[test]
    fn reads_heads_and_their_framing() {
        let h = parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nabc")
            .unwrap()
            .unwrap();
        assert_eq!((h.status, h.framing, h.len), (200, Framing::Chunked, 47));
        let h = parse_head(b"HTTP/1.1 204 No Content\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::Close);
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n").is_err());
    }

    #[test]
    fn decodes_chunks_split_anywhere() {
        let body = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n";
        for cut in 0..=body.len() {
            let mut c = Chunked::default();
            let mut out = Vec::new();
            let first = c.feed(&body[..cut], &mut out).unwrap();
            let done = c.feed(&body[cut..], &mut out).unwrap();
            assert!(done || first, "cut at {cut}");
            assert_eq!(out, b"hello, world", "cut at {cut}");
        }
        let mut out = Vec::new();
        assert!(Chunked::default().feed(b"zz\r\n", &mut out).is_err());
        assert!(Chunked::default().feed(b"1\r\nab", &mut out).is_err());
    }

    #[test]
    fn reads_server_sent_events_across_pieces() {
        let mut stream =
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
                .to_vec();
        for piece in [
            "id: 3\ndata: {\"revision\":3}\n\n",
            "event: ready\ndata: {}\n\n: ping\n",
            "id: 7\r\ndata: a\r\n\r\n",
        ] {
            stream.extend_from_slice(format!("{:x}\r\n{piece}\r\n", piece.len()).as_bytes());
        }
        stream.extend_from_slice(b"0\r\n\r\n");
        let want = vec![
            SseEvent {
                event: String::new(),
                id: Some("3".into()),
                data: "{\"revision\":3}".into(),
            },
            SseEvent {
                event: "ready".into(),
                id: None,
                data: "{}".into(),
            },
            SseEvent {
                event: String::new(),
                id: Some("7".into()),
                data: "a".into(),
            },
        ];
        for cut in 0..=stream.len() {
            let mut r = SseReader::default();
            let mut events = Vec::new();
            r.feed(&stream[..cut], &mut events).unwrap();
            r.feed(&stream[cut..], &mut events).unwrap();
            assert_eq!(events, want, "cut at {cut}");
            assert!(r.ended());
        }
    }

    #[test]
    fn an_sse_request_refused_is_an_error() {
        let mut r = SseReader::default();
        let err = r
            .feed(
                b"HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\n\r\n{}",
                &mut Vec::new(),
            )
            .unwrap_err();
        assert!(err.contains("404"), "{err}");
    }
}
