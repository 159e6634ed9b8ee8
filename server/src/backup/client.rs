//! `logkv-server backup --from HOST:PORT --to DIR`: receives a `BACKUP STREAM` (see
//! `backup::stream`) and writes it as a data directory on this machine.
//!
//! Every file path the server sends must be a relative path of plain names (at most
//! `buckets/<bucket>/<file>`), so nothing is ever written outside `DIR`; every file is
//! created new (never over an existing one), and its size and CRC-32 are checked against
//! the frames. The copy is written under `.<name>.<pid>.partial` beside `DIR`, fsynced,
//! and renamed to `DIR` (never over anything) only once the end frame confirmed it whole;
//! on any failure the temporary directory is removed and `DIR` does not exist.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::resp::{read_value, ReadError, Value};
use super::{plain_relative_path, sync_dir, STREAM_VERSION};
use crate::protocol::encode_request;

/// How long connecting (and the TLS handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the server may stay silent in the middle of a stream.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Deepest file path in a backup: `buckets/<bucket>/<file>`.
const MAX_DEPTH: usize = 3;

/// TLS towards the server.
#[derive(Debug, Clone)]
pub struct ClientTls {
    /// CA certificates (PEM) the server's certificate must chain to.
    pub ca: PathBuf,
    /// A client certificate chain and its key (PEM), for a server with `--tls-ca`.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// The name to check the server's certificate against; default: the host of `from`.
    pub server_name: Option<String>,
}

/// What to back up and where.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    /// The server, `host:port`.
    pub from: String,
    /// The new directory to write the copy into.
    pub to: PathBuf,
    /// The server's password, if it has one.
    pub password: Option<String>,
    /// TLS settings; plain TCP when `None`.
    pub tls: Option<ClientTls>,
}

/// A backup received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The directory written.
    pub path: PathBuf,
    /// Files in it.
    pub files: u64,
    /// Bytes of those files.
    pub bytes: u64,
    /// Each bucket's last revision in the copy.
    pub revisions: BTreeMap<String, u64>,
}

/// Why a backup failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The target exists already (a backup never writes over anything).
    #[error("{} exists already", .0.display())]
    Exists(PathBuf),
    /// Connecting failed.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// The address.
        addr: String,
        /// What went wrong.
        reason: String,
    },
    /// The TLS settings could not be used.
    #[error("TLS: {0}")]
    Tls(String),
    /// The server refused (an error reply).
    #[error("the server said: {0}")]
    Server(String),
    /// The stream broke the protocol.
    #[error("{0}")]
    Protocol(String),
    /// A file's bytes did not match its checksum or size.
    #[error("{path}: {what}; the backup is discarded")]
    Corrupt {
        /// The file, as the server named it.
        path: String,
        /// What did not match.
        what: String,
    },
    /// Writing the copy failed.
    #[error("{}: {source}", path.display())]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
}

impl From<ReadError> for BackupError {
    fn from(e: ReadError) -> BackupError {
        BackupError::Protocol(e.to_string())
    }
}

fn write_error(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Write {
        path: path.to_path_buf(),
        source,
    }
}

fn protocol(why: impl Into<String>) -> BackupError {
    BackupError::Protocol(why.into())
}

/// Receives a backup from the server into `opts.to`.
pub async fn receive(opts: &BackupOptions) -> Result<Received, BackupError> {
    if opts.to.symlink_metadata().is_ok() {
        return Err(BackupError::Exists(opts.to.clone()));
    }
    let connect_error = |reason: String| BackupError::Connect {
        addr: opts.from.clone(),
        reason,
    };
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&opts.from))
        .await
        .map_err(|_| connect_error("timed out".into()))?
        .map_err(|e| connect_error(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    match &opts.tls {
        None => session(tcp, opts).await,
        Some(tls) => {
            let (connector, name) = connector(tls, &opts.from)?;
            let stream = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, tcp))
                .await
                .map_err(|_| connect_error("the TLS handshake timed out".into()))?
                .map_err(|e| connect_error(format!("TLS handshake: {e}")))?;
            session(stream, opts).await
        }
    }
}

/// The TLS connector for `tls`, and the name to verify the server as.
fn connector(
    tls: &ClientTls,
    from: &str,
) -> Result<(tokio_rustls::TlsConnector, ServerName<'static>), BackupError> {
    let tls_error = |e: crate::tls::TlsError| BackupError::Tls(e.to_string());
    let mut roots = rustls::RootCertStore::empty();
    for cert in crate::tls::certificates("CA", &tls.ca).map_err(tls_error)? {
        roots
            .add(cert)
            .map_err(|e| BackupError::Tls(format!("{}: {e}", tls.ca.display())))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| BackupError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    let config = match &tls.identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = crate::tls::certificates("client certificate", cert).map_err(tls_error)?;
            let key = crate::tls::private_key(key).map_err(tls_error)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| BackupError::Tls(e.to_string()))?
        }
    };
    let host = match &tls.server_name {
        Some(name) => name.clone(),
        None => host_of(from).to_string(),
    };
    let name = ServerName::try_from(host.clone())
        .map_err(|e| BackupError::Tls(format!("server name {host:?}: {e}")))?;
    Ok((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
}

/// The host part of `host:port` (`[v6]:port` too).
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

async fn session<S: AsyncRead + AsyncWrite + Unpin + Send>(
    stream: S,
    opts: &BackupOptions,
) -> Result<Received, BackupError> {
    let (read, mut write) = tokio::io::split(stream);
    let mut r = BufReader::with_capacity(256 * 1024, read);
    if let Some(password) = &opts.password {
        send(&mut write, &[b"AUTH", password.as_bytes()]).await?;
        match next(&mut r).await? {
            Value::Simple(_) => {}
            Value::Error(e) => return Err(BackupError::Server(e)),
            other => return Err(protocol(format!("unexpected reply to AUTH: {other:?}"))),
        }
    }
    send(&mut write, &[b"BACKUP", b"STREAM"]).await?;
    let parent = match opts.to.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = opts
        .to
        .file_name()
        .ok_or_else(|| protocol(format!("{} names no directory", opts.to.display())))?
        .to_string_lossy()
        .into_owned();
    let header = header(next(&mut r).await?)?;
    // Made durable, as the rename into it will be: a backup reported written must not
    // lose the directory it was written into.
    logkv::fsutil::create_dir_all_durable(&logkv::io::Storage::os(), &parent)
        .map_err(|e| write_error(&parent)(std::io::Error::other(e)))?;
    let tmp = parent.join(format!(".{name}.{}.partial", std::process::id()));
    std::fs::create_dir(&tmp).map_err(write_error(&tmp))?;
    let result = receive_files(&mut r, &tmp, &header)
        .await
        .and_then(|(files, bytes)| {
            put_in_place(&tmp, &opts.to, &parent)?;
            Ok(Received {
                path: opts.to.clone(),
                files,
                bytes,
                revisions: header.revisions.clone(),
            })
        });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

/// Sends one request.
async fn send<W: AsyncWrite + Unpin>(w: &mut W, args: &[&[u8]]) -> Result<(), BackupError> {
    let mut out = Vec::new();
    encode_request(args, &mut out);
    w.write_all(&out)
        .await
        .map_err(|e| protocol(format!("connection: {e}")))?;
    w.flush()
        .await
        .map_err(|e| protocol(format!("connection: {e}")))
}

/// The next frame, within [`READ_TIMEOUT`].
async fn next<R: AsyncBufRead + Unpin + Send>(r: &mut R) -> Result<Value, BackupError> {
    tokio::time::timeout(READ_TIMEOUT, read_value(r))
        .await
        .map_err(|_| protocol("the server sent nothing for 60 s"))?
        .map_err(BackupError::from)
}

/// What the header frame announces.
struct Header {
    files: u64,
    bytes: u64,
    revisions: BTreeMap<String, u64>,
}

/// A frame: its name and its other elements. An error reply is the server's.
fn frame(v: Value) -> Result<(Vec<u8>, Vec<Value>), BackupError> {
    match v {
        Value::Error(e) => Err(BackupError::Server(e)),
        Value::Array(mut items) if !items.is_empty() => match items.remove(0) {
            Value::Bulk(name) => Ok((name, items)),
            other => Err(protocol(format!("a frame named {other:?}"))),
        },
        other => Err(protocol(format!("expected a frame, got {other:?}"))),
    }
}

fn uint(v: Option<&Value>, what: &str) -> Result<u64, BackupError> {
    match v {
        Some(Value::Int(n)) => u64::try_from(*n).map_err(|_| protocol(format!("{what} {n}"))),
        other => Err(protocol(format!("{what}: {other:?}"))),
    }
}

fn header(v: Value) -> Result<Header, BackupError> {
    let (name, items) = frame(v)?;
    if name != b"backup" {
        return Err(protocol(format!(
            "expected the backup header, got {:?}",
            String::from_utf8_lossy(&name)
        )));
    }
    let version = uint(items.first(), "version")?;
    if i64::try_from(version).ok() != Some(STREAM_VERSION) {
        return Err(protocol(format!(
            "stream format version {version} (this receiver reads {STREAM_VERSION})"
        )));
    }
    let mut revisions = BTreeMap::new();
    let Some(Value::Array(pairs)) = items.get(3) else {
        return Err(protocol("the header has no revisions"));
    };
    for pair in pairs.chunks(2) {
        match pair {
            [Value::Bulk(bucket), rev] => {
                let bucket = String::from_utf8_lossy(bucket).into_owned();
                revisions.insert(bucket, uint(Some(rev), "revision")?);
            }
            _ => return Err(protocol("bad revisions in the header")),
        }
    }
    Ok(Header {
        files: uint(items.get(1), "file count")?,
        bytes: uint(items.get(2), "byte count")?,
        revisions,
    })
}

/// The file being received.
struct Incoming {
    name: String,
    path: PathBuf,
    file: std::fs::File,
    size: u64,
    got: u64,
    crc: crc32fast::Hasher,
}

/// The receiving side's state: the directories made, the file being received, the counts.
struct Receiver<'a> {
    root: &'a Path,
    dirs: Vec<PathBuf>,
    current: Option<Incoming>,
    files: u64,
    bytes: u64,
}

impl Receiver<'_> {
    /// A `file` frame: creates the file (new) under the root, and its directories.
    fn start_file(&mut self, items: &[Value]) -> Result<(), BackupError> {
        let Some(Value::Bulk(raw)) = items.first() else {
            return Err(protocol("a file frame without a path"));
        };
        let shown = String::from_utf8_lossy(raw).into_owned();
        let rel = plain_relative_path(raw, MAX_DEPTH).ok_or_else(|| {
            protocol(format!(
                "refusing the file path {shown:?}: not a plain relative path"
            ))
        })?;
        let parents: Vec<&Path> = rel
            .ancestors()
            .skip(1)
            .filter(|d| !d.as_os_str().is_empty())
            .collect();
        for dir in parents.into_iter().rev() {
            let at = self.root.join(dir);
            if !self.dirs.contains(&at) {
                std::fs::create_dir(&at).map_err(write_error(&at))?;
                self.dirs.push(at);
            }
        }
        let path = self.root.join(&rel);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(write_error(&path))?;
        self.current = Some(Incoming {
            name: shown,
            path,
            file,
            size: uint(items.get(1), "file size")?,
            got: 0,
            crc: crc32fast::Hasher::new(),
        });
        Ok(())
    }

    /// A `data` frame: the current file's next bytes.
    fn data(f: &mut Incoming, items: &[Value]) -> Result<(), BackupError> {
        let Some(Value::Bulk(chunk)) = items.first() else {
            return Err(protocol("a data frame without bytes"));
        };
        f.got += chunk.len() as u64;
        if f.got > f.size {
            return Err(BackupError::Corrupt {
                path: f.name.clone(),
                what: format!("more than the {} bytes announced", f.size),
            });
        }
        f.crc.update(chunk);
        f.file.write_all(chunk).map_err(write_error(&f.path))
    }

    /// A `crc` frame: the current file is whole if its size and checksum match.
    fn end_file(&mut self, f: Incoming, items: &[Value]) -> Result<(), BackupError> {
        let want = uint(items.first(), "crc")?;
        let got = u64::from(f.crc.finalize());
        if f.got != f.size {
            return Err(BackupError::Corrupt {
                path: f.name,
                what: format!("{} bytes received of {}", f.got, f.size),
            });
        }
        if got != want {
            return Err(BackupError::Corrupt {
                path: f.name,
                what: format!("checksum mismatch (crc32 {got:08x}, the server's {want:08x})"),
            });
        }
        f.file.sync_all().map_err(write_error(&f.path))?;
        self.files += 1;
        self.bytes += f.size;
        Ok(())
    }

    /// The `end` frame: the counts must match; then every directory is fsynced.
    fn finish(&mut self, items: &[Value], header: &Header) -> Result<(u64, u64), BackupError> {
        let want = (
            uint(items.first(), "file count")?,
            uint(items.get(1), "byte count")?,
        );
        let got = (self.files, self.bytes);
        if got != want || got != (header.files, header.bytes) {
            return Err(protocol(format!(
                "received {} files and {} bytes; the server announced {} and {}",
                got.0, got.1, header.files, header.bytes
            )));
        }
        self.dirs
            .sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for dir in &self.dirs {
            sync_dir(dir).map_err(write_error(dir))?;
        }
        Ok(got)
    }
}

/// Receives every file into `root`; returns the files and bytes received.
async fn receive_files<R: AsyncBufRead + Unpin + Send>(
    r: &mut R,
    root: &Path,
    header: &Header,
) -> Result<(u64, u64), BackupError> {
    let mut rx = Receiver {
        root,
        dirs: vec![root.to_path_buf()],
        current: None,
        files: 0,
        bytes: 0,
    };
    loop {
        let (name, items) = frame(next(r).await?)?;
        match (name.as_slice(), rx.current.take()) {
            (b"file", None) => rx.start_file(&items)?,
            (b"data", Some(mut f)) => {
                Receiver::data(&mut f, &items)?;
                rx.current = Some(f);
            }
            (b"crc", Some(f)) => rx.end_file(f, &items)?,
            (b"end", None) => return rx.finish(&items, header),
            (other, _) => {
                return Err(protocol(format!(
                    "unexpected {:?} frame",
                    String::from_utf8_lossy(other)
                )))
            }
        }
    }
}

/// Renames the finished copy to its name (never over anything) and makes that durable.
fn put_in_place(tmp: &Path, to: &Path, parent: &Path) -> Result<(), BackupError> {
    logkv::io::rename_noreplace(tmp, to).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            BackupError::Exists(to.to_path_buf())
        } else {
            BackupError::Write {
                path: to.to_path_buf(),
                source: e,
            }
        }
    })?;
    sync_dir(parent).map_err(write_error(parent))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert_eq!(host_of("localhost:7379"), "localhost");
        assert_eq!(host_of("127.0.0.1:1"), "127.0.0.1");
        assert_eq!(host_of("[::1]:7379"), "::1");
    }
}
