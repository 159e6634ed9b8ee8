//! Server configuration, independent of how it was given (CLI flags or code).

use std::path::PathBuf;
use std::time::Duration;

use logkv::FsyncPolicy;

use crate::protocol::Limits;
use crate::tls::TlsFiles;

/// Everything the server needs to start.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on, `host:port` (`127.0.0.1:0` picks a free port).
    pub listen: String,
    /// The store directory.
    pub data_dir: PathBuf,
    /// When writes become durable.
    pub fsync: FsyncPolicy,
    /// Open a damaged store keeping every valid record (`--repair`).
    pub repair: bool,
    /// The password clients must give with `AUTH`; `None` for none.
    pub password: Option<String>,
    /// Most simultaneous client connections; more are told so and closed.
    pub max_connections: usize,
    /// Request size limits (inline line, bulk string, array elements).
    pub limits: Limits,
    /// Largest unanswered output per connection, in bytes: the most one reply may take
    /// (larger replies are replaced by an error).
    pub max_output: usize,
    /// Largest single request, in bytes, all arguments together.
    pub max_request: usize,
    /// Most memory all client connections together may hold in their buffers (input not
    /// yet executed, output not yet sent, MULTI queues); past it the connections holding
    /// the most are closed.
    pub max_client_memory: usize,
    /// Allow listening on a non-loopback address without a password.
    pub unprotected: bool,
    /// How long shutdown waits for connections to finish what they are doing.
    pub shutdown_grace: Duration,
    /// Run as a node of a cluster (`--node-id` and the flags with it); `None`: a single
    /// node, as in version 1.
    pub cluster: Option<ClusterConfig>,
    /// Serve TLS on the listen address with these files; plain TCP when `None`.
    pub tls: Option<TlsFiles>,
    /// Where the HTTP gateway listens, `host:port`; no gateway when `None`.
    pub http_listen: Option<String>,
    /// Names besides the listen address that the gateway accepts in a `Host` header.
    pub http_allowed_hosts: Vec<String>,
    /// Origins the gateway sends CORS headers for; none when empty.
    pub http_cors_origins: Vec<String>,
    /// How long a gateway client has to send a request's headers, and may leave a body or
    /// a reply without a byte (`--http-timeout`).
    pub http_timeout: Duration,
    /// Where `BACKUP name` writes (`<backup-dir>/name`); `BACKUP name` is refused when `None`.
    pub backup_dir: Option<PathBuf>,
    /// How long a `BACKUP STREAM` client may take to receive each batch of the stream
    /// (`--backup-stream-timeout`).
    pub backup_stream_timeout: Duration,
    /// How long a connection with watches may leave its pending output without a byte
    /// taken before it is closed (`--watch-send-timeout`).
    pub watch_send_timeout: Duration,
}

/// The cluster flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// `--node-id`.
    pub node_id: u64,
    /// `--raft-listen`: where the other nodes reach this one.
    pub raft_listen: String,
    /// `--initial-cluster`: id → raft address of the first members (empty: wait to be
    /// added with `CLUSTER ADD`).
    pub initial: std::collections::BTreeMap<u64, String>,
    /// `--advertise`: the client address other nodes report for this one (default: the
    /// listen address).
    pub advertise: Option<String>,
}

/// Parses `--initial-cluster`: `1=host:port,2=host:port,...`.
pub fn parse_initial_cluster(s: &str) -> Result<std::collections::BTreeMap<u64, String>, String> {
    let mut out = std::collections::BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?}: expected id=host:port"))?;
        let id: u64 = id
            .trim()
            .parse()
            .ok()
            .filter(|id| *id > 0)
            .ok_or_else(|| format!("{part:?}: the node id must be a positive integer"))?;
        let addr = addr.trim();
        if !addr.contains(':') {
            return Err(format!("{part:?}: expected id=host:port"));
        }
        if out.insert(id, addr.to_string()).is_some() {
            return Err(format!("node {id} is listed twice"));
        }
    }
    if out.is_empty() {
        return Err("expected at least one id=host:port".into());
    }
    Ok(out)
}

impl ServerConfig {
    /// The defaults of the command line, with the given data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> ServerConfig {
        ServerConfig {
            listen: "127.0.0.1:7379".into(),
            data_dir: data_dir.into(),
            fsync: FsyncPolicy::Always,
            repair: false,
            password: None,
            max_connections: 10_000,
            limits: Limits::default(),
            max_output: 64 << 20,
            max_request: 64 << 20,
            max_client_memory: crate::client_memory::default_budget(),
            unprotected: false,
            shutdown_grace: Duration::from_secs(5),
            cluster: None,
            tls: None,
            http_listen: None,
            http_allowed_hosts: Vec::new(),
            http_cors_origins: Vec::new(),
            http_timeout: Duration::from_secs(30),
            backup_stream_timeout: Duration::from_secs(60),
            watch_send_timeout: Duration::from_secs(60),
            backup_dir: None,
        }
    }

    /// The engine's limit on one read of many keys (`Options::max_read_bytes`):
    /// `--max-output`, so that no such read builds a result its reply could not carry.
    pub fn max_read_bytes(&self) -> u64 {
        u64::try_from(self.max_output).unwrap_or(u64::MAX)
    }
}

/// Parses an fsync policy: `always`, `never`, or `interval=<ms>`.
pub fn parse_fsync(s: &str) -> Result<FsyncPolicy, String> {
    let lower = s.trim().to_ascii_lowercase();
    match lower.as_str() {
        "always" => Ok(FsyncPolicy::Always),
        "never" => Ok(FsyncPolicy::Never),
        _ => {
            let ms = lower
                .strip_prefix("interval=")
                .ok_or_else(|| format!("{s:?}: expected always, never or interval=<ms>"))?;
            match ms.parse::<u64>() {
                Ok(ms) if ms > 0 => Ok(FsyncPolicy::Interval(Duration::from_millis(ms))),
                _ => Err(format!(
                    "{s:?}: the interval must be a positive number of milliseconds"
                )),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fsync_policies() {
        assert_eq!(parse_fsync("always"), Ok(FsyncPolicy::Always));
        assert_eq!(parse_fsync("NEVER"), Ok(FsyncPolicy::Never));
        assert_eq!(
            parse_fsync("interval=1000"),
            Ok(FsyncPolicy::Interval(Duration::from_secs(1)))
        );
        assert!(parse_fsync("interval=0").is_err());
        assert!(parse_fsync("interval=x").is_err());
        assert!(parse_fsync("sometimes").is_err());
    }

    #[test]
    fn initial_clusters() {
        let m = parse_initial_cluster("1=127.0.0.1:7479, 2=127.0.0.1:7480,3=h:1").unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m[&2], "127.0.0.1:7480");
        for bad in ["", "1", "0=h:1", "x=h:1", "1=h", "1=h:1,1=h:2"] {
            assert!(parse_initial_cluster(bad).is_err(), "{bad:?}");
        }
    }
}
