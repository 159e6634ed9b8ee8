//! A RESP2 client whose every call can fail: the server it talks to is killed
//! at any moment, and a request whose reply did not arrive whole has an unknown
//! outcome (it may or may not have been applied).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// One reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Status(String),
    Error(String),
    Int(i64),
    /// A bulk string; `None` is the null reply.
    Bulk(Option<Vec<u8>>),
    /// An array; `None` is the null array.
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// The error code (first word) of an error reply.
    pub fn error_code(&self) -> Option<&str> {
        match self {
            Reply::Error(e) => e.split(' ').next(),
            _ => None,
        }
    }

    /// The integer of an integer reply.
    pub fn int(&self) -> Option<i64> {
        match self {
            Reply::Int(n) => Some(*n),
            _ => None,
        }
    }

    /// Whether this is the null reply (a null bulk string or array).
    pub fn is_null(&self) -> bool {
        matches!(self, Reply::Bulk(None) | Reply::Array(None))
    }

    /// The text of a status or bulk string reply.
    pub fn text(&self) -> Option<String> {
        match self {
            Reply::Status(s) => Some(s.clone()),
            Reply::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }

    /// A field of an entry (RESP2: a flat array of field/value pairs).
    pub fn field(&self, name: &str) -> Option<&Reply> {
        let Reply::Array(Some(items)) = self else {
            return None;
        };
        items
            .chunks(2)
            .find(|pair| pair[0].text().as_deref() == Some(name))
            .and_then(|pair| pair.get(1))
    }
}

/// A connection to the server.
pub struct Conn {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Conn {
    /// Connects; reads time out after a minute (the server is killed long before).
    pub fn connect(addr: SocketAddr) -> io::Result<Conn> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        Ok(Conn {
            reader: BufReader::new(stream.try_clone()?),
            stream,
        })
    }

    /// Sends bytes already encoded (one request or a pipeline of them).
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Sends one request and reads its reply.
    pub fn call<A: AsRef<[u8]>>(&mut self, args: &[A]) -> io::Result<Reply> {
        let mut buf = Vec::new();
        logkv_server::protocol::encode_request(args, &mut buf);
        self.send(&buf)?;
        self.read()
    }

    /// Reads one whole reply. A reply cut short is an error (its request's outcome
    /// is unknown); a malformed one is a server bug, and panics.
    pub fn read(&mut self) -> io::Result<Reply> {
        let line = self.line()?;
        let (tag, rest) = line
            .split_first()
            .unwrap_or_else(|| panic!("an empty line"));
        let rest = String::from_utf8_lossy(rest).into_owned();
        let number = || -> i64 {
            rest.parse()
                .unwrap_or_else(|_| panic!("not a number after {}: {rest:?}", char::from(*tag)))
        };
        Ok(match tag {
            b'+' => Reply::Status(rest),
            b'-' => Reply::Error(rest),
            b':' => Reply::Int(number()),
            b'$' => match usize::try_from(number()) {
                Err(_) => Reply::Bulk(None),
                Ok(n) => {
                    let mut body = vec![0u8; n + 2];
                    self.reader.read_exact(&mut body)?;
                    assert_eq!(&body[n..], b"\r\n", "a bulk string without its CRLF");
                    body.truncate(n);
                    Reply::Bulk(Some(body))
                }
            },
            b'*' => match usize::try_from(number()) {
                Err(_) => Reply::Array(None),
                Ok(n) => Reply::Array(Some(
                    (0..n).map(|_| self.read()).collect::<io::Result<_>>()?,
                )),
            },
            other => panic!("unexpected reply type {:?}", char::from(*other)),
        })
    }

    /// One line without its CRLF; a line cut short is an error.
    fn line(&mut self) -> io::Result<Vec<u8>> {
        let mut line = Vec::new();
        self.reader.read_until(b'\n', &mut line)?;
        if !line.ends_with(b"\n") {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the connection ended inside a reply",
            ));
        }
        assert!(
            line.ends_with(b"\r\n"),
            "a line ended by a bare LF: {line:?}"
        );
        line.truncate(line.len() - 2);
        Ok(line)
    }
}
