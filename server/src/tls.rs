//! TLS on the listen address (`--tls-cert`, `--tls-key`, `--tls-ca`), with rustls.
//!
//! [`load`] reads the PEM files once at startup and builds the acceptor; every problem
//! with them is a [`TlsError`] naming the file, so the server refuses to start with a
//! clear message instead of failing at the first handshake. The handshake itself runs in
//! the connection's task (`Transport::accept`), bounded by [`HANDSHAKE_TIMEOUT`], so a
//! client that speaks plain text, or nothing, is closed and never holds the accept loop.
//!
//! A connection is then a `Transport`: the TCP stream itself, or the TLS stream over it.
//! Reading goes through `Transport::fill` (cancel-safe, as the connection loop selects
//! on it), writing through `Transport::write_out`.

use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// How long a client has to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The certificate files, as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The server's certificate chain (PEM), its own certificate first.
    pub cert: PathBuf,
    /// The server's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by one of these CAs (PEM).
    pub client_ca: Option<PathBuf>,
}

/// Why the TLS configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or is not PEM of the expected kind.
    #[error("cannot read the {what} {}: {reason}", path.display())]
    File {
        /// Which file this is (`certificate`, `private key`, `client CA`).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// rustls refused the configuration (e.g. the key does not match the certificate).
    #[error("invalid TLS configuration ({} / {}): {source}", cert.display(), key.display())]
    Config {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        #[source]
        source: rustls::Error,
    },
    /// The client CA file holds no usable CA certificate.
    #[error("invalid client CA {}: {reason}", path.display())]
    ClientCa {
        /// The CA file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

fn file_error(what: &'static str, path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        what,
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Reads every certificate of a PEM file; at least one.
pub(crate) fn certificates(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    // Read first, so that a missing or unreadable file says so plainly.
    let pem = std::fs::read(path).map_err(|e| file_error(what, path, e))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(what, path, format!("not a PEM certificate file ({e})")))?;
    if certs.is_empty() {
        return Err(file_error(
            what,
            path,
            "no certificate in it (expected -----BEGIN CERTIFICATE-----)",
        ));
    }
    Ok(certs)
}

pub(crate) fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let what = "private key";
    let pem = std::fs::read(path).map_err(|e| file_error(what, path, e))?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        file_error(
            what,
            path,
            format!("no PEM private key in it (PKCS#8, PKCS#1 or SEC1 expected): {e}"),
        )
    })
}

/// Loads the certificate, key and optional client CA, and builds the acceptor.
pub fn load(files: &TlsFiles) -> Result<TlsAcceptor, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certificates("certificate", &files.cert)?;
    let key = private_key(&files.key)?;
    let config_error = |source| TlsError::Config {
        cert: files.cert.clone(),
        key: files.key.clone(),
        source,
    };
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(config_error)?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates("client CA", ca)? {
                roots.add(cert).map_err(|e| TlsError::ClientCa {
                    path: ca.clone(),
                    reason: e.to_string(),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::ClientCa {
                    path: ca.clone(),
                    reason: e.to_string(),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    // `with_single_cert` also checks that the key belongs to the certificate.
    let config = builder.with_single_cert(chain, key).map_err(config_error)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A client connection: plain TCP, or TLS over TCP.
pub(crate) enum Transport {
    /// Plain TCP.
    Tcp(TcpStream),
    /// TLS; boxed, as the TLS state is large next to a TCP stream.
    Tls(Box<TlsStream<TcpStream>>),
}

/// First read size of a plain connection's stack buffer.
pub(crate) const STACK_READ: usize = 4 * 1024;

impl Transport {
    /// Completes the TLS handshake when `acceptor` is given (within
    /// [`HANDSHAKE_TIMEOUT`]); a plain connection otherwise.
    pub async fn accept(
        stream: TcpStream,
        acceptor: Option<&TlsAcceptor>,
    ) -> io::Result<Transport> {
        let Some(acceptor) = acceptor else {
            return Ok(Transport::Tcp(stream));
        };
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => Ok(Transport::Tls(Box::new(tls))),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the TLS handshake did not complete in time",
            )),
        }
    }

    /// Waits for input and appends it to `buf` (into its spare capacity, which the
    /// caller reserves when `buf` is not empty). Returns 0 at end of stream. Cancel-safe:
    /// when the future is dropped, nothing was consumed.
    ///
    /// A plain connection whose buffer is empty reads into the stack first, so a wake-up
    /// without data costs no allocation and an idle connection keeps no read buffer.
    pub async fn fill(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            Transport::Tcp(stream) => loop {
                stream.readable().await?;
                match try_read_tcp(stream, buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    other => return other,
                }
            },
            Transport::Tls(stream) => {
                if buf.capacity() == buf.len() {
                    buf.reserve(STACK_READ);
                }
                stream.read_buf(buf).await
            }
        }
    }

    /// Reads more of what is already available without waiting (a plain connection
    /// only; a TLS stream returns what it has in [`Transport::fill`]). `Ok(None)` when
    /// nothing more is there now.
    pub fn try_fill(&mut self, buf: &mut BytesMut) -> io::Result<Option<usize>> {
        match self {
            Transport::Tcp(stream) => match stream.try_read_buf(buf) {
                Ok(n) => Ok(Some(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
                Err(e) => Err(e),
            },
            Transport::Tls(_) => Ok(None),
        }
    }

    /// Writes all of `out` (and, with TLS, the records it became).
    pub async fn write_out(&mut self, out: &[u8]) -> io::Result<()> {
        match self {
            Transport::Tcp(stream) => stream.write_all(out).await,
            Transport::Tls(stream) => {
                stream.write_all(out).await?;
                stream.flush().await
            }
        }
    }

    /// [`Transport::write_out`], failing with `TimedOut` when the client takes no byte
    /// for `stall` (each byte taken starts the time again).
    pub async fn write_out_within(&mut self, out: &[u8], stall: Duration) -> io::Result<()> {
        let stalled = || {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client took no byte for {} s", stall.as_secs()),
            )
        };
        let mut sent = 0;
        while sent < out.len() {
            let rest = out.get(sent..).unwrap_or_default();
            let wrote = match self {
                Transport::Tcp(stream) => tokio::time::timeout(stall, stream.write(rest)).await,
                Transport::Tls(stream) => tokio::time::timeout(stall, stream.write(rest)).await,
            };
            match wrote.map_err(|_| stalled())? {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => sent += n,
                Err(e) => return Err(e),
            }
        }
        match self {
            Transport::Tcp(_) => Ok(()),
            Transport::Tls(stream) => tokio::time::timeout(stall, stream.flush())
                .await
                .map_err(|_| stalled())?,
        }
    }

    /// A second handle on a plain connection's socket (a duplicated descriptor, still
    /// non-blocking), through which watch events are written while the connection waits
    /// (`session/watches.rs`). `None` with TLS (its records need the session's state), or
    /// if the descriptor cannot be duplicated.
    pub fn socket_copy(&self) -> Option<std::net::TcpStream> {
        match self {
            Transport::Tcp(stream) => match stream.as_fd().try_clone_to_owned() {
                Ok(fd) => Some(std::net::TcpStream::from(fd)),
                Err(e) => {
                    tracing::warn!("cannot duplicate a connection's socket: {e}");
                    None
                }
            },
            Transport::Tls(_) => None,
        }
    }

    /// Ends the sending side (with TLS, after a `close_notify` alert).
    pub async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            Transport::Tcp(stream) => stream.shutdown().await,
            Transport::Tls(stream) => stream.shutdown().await,
        }
    }

    /// Reads and discards input (while lingering before a close).
    pub async fn discard(&mut self, scratch: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Tcp(stream) => stream.read(scratch).await,
            Transport::Tls(stream) => stream.read(scratch).await,
        }
    }
}

/// One non-blocking read of a plain connection: into the stack when `buf` is empty.
///
/// A read that returns less than it asked for has drained the socket: the stream's
/// readiness is then cleared at once, which saves the next wait the read that would only
/// have said `EAGAIN` (one system call per request at `-P 1`). The readiness cleared is the
/// one observed before the read (`try_io`), so data that arrives after it marks the stream
/// ready again and is not missed.
fn try_read_tcp(stream: &TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    let mut got = 0;
    let read = stream.try_io(Interest::READABLE, || {
        let (n, asked) = if buf.is_empty() {
            let mut first = [0u8; STACK_READ];
            let n = stream.try_read(&mut first)?;
            buf.extend_from_slice(&first[..n]);
            (n, STACK_READ)
        } else {
            let asked = buf.capacity() - buf.len();
            (stream.try_read_buf(buf)?, asked)
        };
        got = n;
        if n > 0 && n < asked {
            // Drained: report "would block" so that try_io clears the readiness.
            Err(io::ErrorKind::WouldBlock.into())
        } else {
            Ok(n)
        }
    });
    match read {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => Ok(got),
        other => other,
    }
}
