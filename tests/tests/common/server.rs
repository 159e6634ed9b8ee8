//! The end-to-end server tests' helpers: an in-process server on a free loopback port,
//! a raw TCP client with a small RESP2/RESP3 reader, and a `redis` crate connection.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use logkv_server::{spawn_test_server_with, ServerConfig, TestServer};
use tempfile::TempDir;

/// A running server and the directory it owns.
pub struct Srv {
    pub server: Option<TestServer>,
    pub addr: SocketAddr,
    pub dir: TempDir,
}

impl Srv {
    /// A server with the defaults (fsync always).
    pub fn start() -> Srv {
        Srv::start_with(|_| {})
    }

    /// A server whose configuration `tweak` adjusts.
    pub fn start_with(tweak: impl FnOnce(&mut ServerConfig)) -> Srv {
        let dir = tempfile::tempdir().unwrap();
        let mut config = ServerConfig::new(dir.path());
        config.listen = "127.0.0.1:0".into();
        tweak(&mut config);
        let (addr, server) = spawn_test_server_with(config).unwrap();
        Srv {
            server: Some(server),
            addr,
            dir,
        }
    }

    /// Stops the server (gracefully) and starts a new one on the same directory.
    pub fn restart(&mut self) {
        self.server.take().unwrap().stop().unwrap();
        let mut config = ServerConfig::new(self.dir.path());
        config.listen = "127.0.0.1:0".into();
        let (addr, server) = spawn_test_server_with(config).unwrap();
        self.addr = addr;
        self.server = Some(server);
    }

    pub fn raw(&self) -> Raw {
        Raw::connect(self.addr)
    }

    pub fn redis(&self) -> redis::Connection {
        let client = redis::Client::open(format!("redis://{}/", self.addr)).unwrap();
        client.get_connection().unwrap()
    }

    pub fn redis_resp3(&self) -> redis::Connection {
        let client = redis::Client::open(format!("redis://{}/?protocol=resp3", self.addr)).unwrap();
        client.get_connection().unwrap()
    }
}

impl Drop for Srv {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            let _ = s.stop();
        }
    }
}

/// One RESP2 or RESP3 reply frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Vec<u8>),
    Null,
    Array(Vec<Frame>),
    Map(Vec<(Frame, Frame)>),
    Push(Vec<Frame>),
}

impl Frame {
    pub fn bulk(s: &str) -> Frame {
        Frame::Bulk(s.as_bytes().to_vec())
    }

    pub fn ok() -> Frame {
        Frame::Simple("OK".into())
    }

    /// The text of a bulk or simple string.
    pub fn text(&self) -> String {
        match self {
            Frame::Bulk(b) => String::from_utf8_lossy(b).into_owned(),
            Frame::Simple(s) => s.clone(),
            other => panic!("not a string: {other:?}"),
        }
    }

    /// What a reply says, to check its wording: the text of an error (without the `-`)
    /// or of a string, else the frame's debug form.
    pub fn message(&self) -> String {
        match self {
            Frame::Error(e) | Frame::Simple(e) => e.clone(),
            Frame::Bulk(b) => String::from_utf8_lossy(b).into_owned(),
            other => format!("{other:?}"),
        }
    }

    pub fn int(&self) -> i64 {
        match self {
            Frame::Int(n) => *n,
            other => panic!("not an integer: {other:?}"),
        }
    }

    pub fn items(&self) -> &[Frame] {
        match self {
            Frame::Array(v) | Frame::Push(v) => v,
            other => panic!("not an array: {other:?}"),
        }
    }

    pub fn is_error_code(&self, code: &str) -> bool {
        matches!(self, Frame::Error(e) if e.split(' ').next() == Some(code))
    }

    /// Field/value pairs of a RESP3 map or a RESP2 flat array of pairs.
    pub fn pairs(&self) -> Vec<(String, Frame)> {
        match self {
            Frame::Map(p) => p.iter().map(|(k, v)| (k.text(), v.clone())).collect(),
            Frame::Array(v) => {
                assert!(v.len() % 2 == 0, "odd pair array {v:?}");
                v.chunks(2).map(|c| (c[0].text(), c[1].clone())).collect()
            }
            other => panic!("not a map: {other:?}"),
        }
    }

    /// One field of an entry / map.
    pub fn field(&self, name: &str) -> Frame {
        self.pairs()
            .into_iter()
            .find(|(k, _)| k == name)
            .unwrap_or_else(|| panic!("no field {name} in {self:?}"))
            .1
    }
}

/// A raw TCP client.
pub struct Raw {
    pub reader: BufReader<TcpStream>,
    pub stream: TcpStream,
}

impl Raw {
    pub fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        Raw {
            reader: BufReader::new(stream.try_clone().unwrap()),
            stream,
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Sends a RESP array request.
    pub fn send_cmd(&mut self, args: &[&[u8]]) {
        let mut buf = Vec::new();
        logkv_server::protocol::encode_request(args, &mut buf);
        self.send(&buf);
    }

    /// Sends a RESP array request and reads one frame.
    pub fn cmd(&mut self, args: &[&str]) -> Frame {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.send_cmd(&args);
        self.read()
    }

    /// Sends an inline line (adds CRLF) and reads one frame.
    pub fn line(&mut self, line: &str) -> Frame {
        self.send(format!("{line}\r\n").as_bytes());
        self.read()
    }

    fn read_line(&mut self) -> Vec<u8> {
        let mut line = Vec::new();
        self.reader.read_until(b'\n', &mut line).unwrap();
        assert!(
            line.ends_with(b"\r\n"),
            "bad line {:?}",
            String::from_utf8_lossy(&line)
        );
        line.truncate(line.len() - 2);
        line
    }

    /// Reads one frame.
    pub fn read(&mut self) -> Frame {
        let line = self.read_line();
        let (tag, rest) = line.split_first().expect("empty line");
        let rest = String::from_utf8_lossy(rest).into_owned();
        let num = || rest.parse::<i64>().unwrap();
        match tag {
            b'+' => Frame::Simple(rest),
            b'-' => Frame::Error(rest),
            b':' => Frame::Int(num()),
            b'_' => Frame::Null,
            b'$' => {
                // A negative length is a null.
                let Ok(n) = usize::try_from(num()) else {
                    return Frame::Null;
                };
                let mut buf = vec![0u8; n + 2];
                self.reader.read_exact(&mut buf).unwrap();
                assert_eq!(&buf[n..], b"\r\n");
                buf.truncate(n);
                Frame::Bulk(buf)
            }
            b'*' | b'>' => {
                let n = num();
                if n < 0 {
                    return Frame::Null;
                }
                let items = (0..n).map(|_| self.read()).collect();
                if *tag == b'>' {
                    Frame::Push(items)
                } else {
                    Frame::Array(items)
                }
            }
            b'%' => Frame::Map((0..num()).map(|_| (self.read(), self.read())).collect()),
            other => panic!("unknown frame type {:?}", *other as char),
        }
    }

    /// Whether the server has closed the connection (reads until EOF or error).
    pub fn closed(&mut self) -> bool {
        let mut buf = [0u8; 4096];
        loop {
            match self.reader.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return false,
                Err(_) => return true,
            }
        }
    }

    pub fn shutdown_write(&self) {
        self.stream.shutdown(Shutdown::Write).unwrap();
    }
}

/// The error code and message of a redis crate error.
pub fn redis_err(e: &redis::RedisError) -> (String, String) {
    (
        e.code().unwrap_or("?").to_string(),
        e.detail().unwrap_or("").to_string(),
    )
}
