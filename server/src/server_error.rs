//! Why the server could not start or stop cleanly (its own module, so that what starts
//! before the accept loop, e.g. a cluster node, can report it without importing the server).

use std::net::SocketAddr;
use std::path::PathBuf;

/// Why the server could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A non-loopback listen address without a password (protected mode).
    #[error(
        "refusing to listen on {addr} without a password: it is not a loopback address, so anyone \
         who can reach it could read and change all data. Set a password with --password <secret> \
         or the LOGKV_PASSWORD environment variable (clients then send AUTH <secret>), listen on \
         127.0.0.1, or pass --unprotected if this network is trusted"
    )]
    Unprotected {
        /// The address asked for.
        addr: String,
    },
    /// The listen address is not `host:port` or does not resolve.
    #[error("invalid listen address {addr:?}: {reason}")]
    BadAddress {
        /// The address asked for.
        addr: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The data directory could not be opened.
    #[error("cannot open the data directory {}: {source}{hint}", dir.display())]
    Store {
        /// The directory.
        dir: PathBuf,
        /// The engine's error.
        #[source]
        source: logkv::Error,
        /// Extra advice for the user.
        hint: &'static str,
    },
    /// The backup directory cannot be used.
    #[error("unusable --backup-dir {}: {reason}", dir.display())]
    BackupDir {
        /// The directory.
        dir: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Binding the listening socket failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The TLS certificate, key or client CA could not be loaded.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The final sync at shutdown failed.
    #[error("final sync at shutdown failed: {0}")]
    Sync(#[source] logkv::Error),
    /// The cluster node could not start.
    #[error("cannot start the cluster node: {0}")]
    Cluster(String),
    /// The cluster node stopped on a storage error after it started; the server shut
    /// down (fail-stop).
    #[error(
        "the cluster node stopped on a storage error ({0}); the server shut down: restart it, \
         or replace it from the others (see docs/CLUSTER.md)"
    )]
    NodeStopped(String),
}
