//! The command line of `logkv-server`.
//!
//! Parsed with clap's derive API: standard GNU-style flags, `--help`/`--version` generated
//! from these doc comments, environment-variable fallbacks and consistent error messages,
//! all without hand-written parsing code.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use logkv::FsyncPolicy;

use crate::backup::client::{BackupOptions, ClientTls};
use crate::config::{parse_fsync, parse_initial_cluster, ClusterConfig, ServerConfig};
use crate::protocol::Limits;
use crate::tls::TlsFiles;

const AFTER_HELP: &str = "\
Examples:
  logkv-server
      Serve ./data on 127.0.0.1:7379 (loopback only), every write fsynced.
  logkv-server --data-dir /var/lib/logkv --fsync interval=1000
      Batch fsyncs once a second, like Redis `appendfsync everysec`.
  LOGKV_PASSWORD=s3cret logkv-server --listen 0.0.0.0:7379
      Accept clients from the network; they must send `AUTH s3cret` first.
  logkv-server --tls-cert server.pem --tls-key server.key
      Serve TLS (redis-cli --tls --cacert ca.pem -p 7379 PING).
  logkv-server --backup-dir /var/backups/logkv
      Enable `BACKUP <name>`: a consistent copy into /var/backups/logkv/<name>, served
      as it was by logkv-server --data-dir /var/backups/logkv/<name>.
  logkv-server backup --from db1:7379 --to ./db1-2024-05-01
      Stream a consistent copy of a running server to this machine (checksummed).
  logkv-server --http-listen 127.0.0.1:7380
      Also serve JSON, Server-Sent Events, /healthz and /metrics over HTTP:
      curl -X PUT --data-binary hello localhost:7380/v1/buckets/default/keys/greeting

Talk to it with any Redis client or with a plain TCP tool:
  redis-cli -p 7379 PUT greeting hello
  printf 'GET greeting\\r\\n' | nc -q1 127.0.0.1 7379

Sizes accept the suffixes k/KiB, m/MiB and g/GiB (powers of 1024), e.g. --max-bulk 16MiB.
Logging goes to stderr; set RUST_LOG (e.g. RUST_LOG=debug) to change the level (default info).
Stop the server with Ctrl-C or SIGTERM: it finishes in-flight requests, syncs and exits.
The wire protocol is described in docs/PROTOCOL.md.";

/// logkv-server: a key/value server with revisions, history, TTLs and watches, speaking the
/// Redis protocol (RESP2/RESP3) and plain text lines.
#[derive(Debug, Parser)]
#[command(name = "logkv-server", version, after_help = AFTER_HELP)]
pub struct Cli {
    /// Address to listen on, as host:port. A non-loopback address needs a password (or
    /// --unprotected).
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:7379")]
    pub listen: String,

    /// Directory holding the data; created if missing. Only one server can use it at a time.
    #[arg(long, value_name = "DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// When writes reach stable storage: `always` (before each reply; concurrent clients
    /// share fsyncs), `interval=<ms>` (in the background every `ms` milliseconds) or `never`
    /// (left to the OS; still synced at shutdown).
    #[arg(long, value_name = "POLICY", default_value = "always", value_parser = parse_fsync)]
    pub fsync: FsyncPolicy,

    /// Open a damaged store by keeping every valid record: damage below what was durable
    /// (which otherwise stops the server, naming the file and offset) is skipped and each
    /// skipped region is logged. A torn tail past the last sync never needs this.
    #[arg(long)]
    pub repair: bool,

    /// Require clients to send `AUTH <password>` before anything else. Prefer the
    /// `LOGKV_PASSWORD` environment variable: command lines are visible to other users.
    #[arg(
        long,
        env = "LOGKV_PASSWORD",
        hide_env_values = true,
        value_name = "PASSWORD"
    )]
    pub password: Option<String>,

    /// Most simultaneous client connections; extra ones get an error and are closed.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub max_connections: usize,

    /// Longest inline (text) request line.
    #[arg(long, value_name = "SIZE", default_value = "64KiB", value_parser = parse_size)]
    pub max_inline: usize,

    /// Longest RESP bulk string (one argument, e.g. a value).
    #[arg(long, value_name = "SIZE", default_value = "8MiB", value_parser = parse_size)]
    pub max_bulk: usize,

    /// Most elements in one RESP request array (the verb included).
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub max_args: usize,

    /// Most unanswered output held for one connection; a larger reply is replaced by an error.
    #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = parse_size)]
    pub max_output: usize,

    /// Largest single request (all its arguments together).
    #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = parse_size)]
    pub max_request: usize,

    /// Most memory all client connections together may hold in their buffers: input read
    /// but not yet executed, output not yet sent, writes queued in MULTI. Past it, the
    /// connections holding the most are closed (each logged; INFO counts them as
    /// `evicted_clients`). Default: an eighth of the physical memory (or of the cgroup's
    /// memory limit when lower), at least 256MiB and at most 8GiB.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_client_memory: Option<usize>,

    /// Allow listening on a non-loopback address without a password. Anyone who can reach
    /// the port can then read and change everything: use only on a trusted network.
    #[arg(long)]
    pub unprotected: bool,

    /// Run as node N of a cluster (a positive integer, never reused for another node).
    /// Needs --raft-listen; the data directory then holds the node's Raft log and store.
    #[arg(long, value_name = "N", requires = "raft_listen")]
    pub node_id: Option<u64>,

    /// Where the other cluster nodes reach this one (host:port).
    #[arg(long, value_name = "HOST:PORT", requires = "node_id")]
    pub raft_listen: Option<String>,

    /// The first members of the cluster, the same on every node: `1=host:port,2=...`
    /// (their --raft-listen addresses). Left out on a node that waits to be added with
    /// `CLUSTER ADD`.
    #[arg(long, value_name = "ID=HOST:PORT,...", requires = "node_id", value_parser = parse_initial_cluster)]
    pub initial_cluster: Option<std::collections::BTreeMap<u64, String>>,

    /// The client address the other nodes report for this one (`CLUSTER INFO` `leader_addr`).
    /// Default: --listen.
    #[arg(long, value_name = "HOST:PORT", requires = "node_id")]
    pub advertise: Option<String>,

    /// Serve TLS on the listen address with this certificate chain (PEM, the server's own
    /// certificate first). Needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Require client certificates signed by a CA in this file (PEM); clients without one
    /// fail the handshake. Needs --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_ca: Option<PathBuf>,

    /// Serve the HTTP gateway (JSON, Server-Sent Events, /healthz, /metrics) on this
    /// address, host:port. Off by default. The same protection rules as --listen.
    #[arg(long, value_name = "HOST:PORT")]
    pub http_listen: Option<String>,

    /// A host name the gateway accepts in the Host header besides its listen address
    /// (requests naming any other host are refused: DNS rebinding). Repeatable.
    #[arg(long = "http-allowed-host", value_name = "NAME")]
    pub http_allowed_hosts: Vec<String>,

    /// An origin (e.g. `https://dashboard.example`) allowed to call the gateway from a web
    /// page: CORS headers are sent for it, and only for it. Repeatable; none by default.
    #[arg(long = "http-cors-origin", value_name = "ORIGIN")]
    pub http_cors_origins: Vec<String>,

    /// Seconds a gateway client has to send a request's headers, and may leave a request
    /// body, or its reply, without a byte: past it the connection is closed (headers,
    /// reply) or the request is answered 408 (body).
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub http_timeout: u64,

    /// Enable `BACKUP <name>`, which writes a consistent copy of the data into
    /// `DIR/<name>` (a data directory; created if missing). Without it `BACKUP <name>` is
    /// refused. DIR must not be inside --data-dir; on the same file system, backups
    /// hard-link the data's sealed segments instead of copying them.
    #[arg(long, value_name = "DIR")]
    pub backup_dir: Option<PathBuf>,

    /// Seconds a `BACKUP STREAM` client may take to receive each 1 MiB of the stream: past
    /// it the stream ends and the connection is closed, letting go of the files the stream
    /// holds (a stalled reader would otherwise keep compacted segments on disk).
    #[arg(long, value_name = "SECS", default_value = "60", value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub backup_stream_timeout: u64,

    /// Seconds a connection that watches may leave its pending output (events, replies)
    /// without taking a byte: past it the connection is closed, ending its watches and
    /// letting go of the log segments they held (a watcher that stopped reading would
    /// otherwise keep compacted segments on disk).
    #[arg(long, value_name = "SECS", default_value = "60", value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub watch_send_timeout: u64,

    /// A tool instead of the server (e.g. `backup`).
    #[command(subcommand)]
    pub command: Option<Tool>,

    /// Event-loop threads. Default: one less than the number of cores (at least one),
    /// leaving a core for fsyncs, compaction and the clients on the same machine.
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
}

/// Tools of the same binary.
#[derive(Debug, Subcommand)]
pub enum Tool {
    /// Stream a consistent copy of a running server's data to this machine (`BACKUP
    /// STREAM`), checking each file's CRC-32; DIR is then a data directory
    /// (`logkv-server --data-dir DIR` serves it). DIR must not exist: the copy is written
    /// under a temporary name beside it and renamed into place once complete.
    Backup(BackupArgs),
}

/// The flags of `logkv-server backup`.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// The server to back up, as host:port.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:7379")]
    pub from: String,

    /// The new directory to write the copy into.
    #[arg(long, value_name = "DIR")]
    pub to: PathBuf,

    /// The server's password (prefer the `LOGKV_PASSWORD` environment variable).
    #[arg(
        long,
        env = "LOGKV_PASSWORD",
        hide_env_values = true,
        value_name = "PASSWORD"
    )]
    pub password: Option<String>,

    /// Connect with TLS, trusting the CA certificates in this file (PEM).
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,

    /// A client certificate (PEM) for a server that requires one. Needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key", requires = "tls_ca")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// The name the server's certificate must carry (default: the host of --from).
    #[arg(long, value_name = "NAME", requires = "tls_ca")]
    pub tls_server_name: Option<String>,
}

impl BackupArgs {
    /// The options these flags describe.
    pub fn into_options(self) -> BackupOptions {
        let identity = self.tls_cert.zip(self.tls_key);
        let server_name = self.tls_server_name;
        BackupOptions {
            from: self.from,
            to: self.to,
            password: self.password.filter(|p| !p.is_empty()),
            tls: self.tls_ca.map(|ca| ClientTls {
                ca,
                identity,
                server_name,
            }),
        }
    }
}

/// The default number of event-loop threads: cores - 1, at least 1.
pub fn default_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    cores.saturating_sub(1).max(1)
}

impl Cli {
    /// The server configuration these flags describe.
    pub fn into_config(self) -> ServerConfig {
        let mut config = ServerConfig::new(self.data_dir);
        config.listen = self.listen;
        config.fsync = self.fsync;
        config.repair = self.repair;
        config.password = self.password.filter(|p| !p.is_empty());
        config.max_connections = self.max_connections;
        config.limits = Limits {
            max_inline: self.max_inline,
            max_bulk: self.max_bulk,
            max_args: self.max_args,
        };
        config.max_output = self.max_output;
        config.max_request = self.max_request;
        if let Some(budget) = self.max_client_memory {
            config.max_client_memory = budget;
        }
        config.unprotected = self.unprotected;
        if let (Some(node_id), Some(raft_listen)) = (self.node_id, self.raft_listen) {
            config.cluster = Some(ClusterConfig {
                node_id,
                raft_listen,
                initial: self.initial_cluster.unwrap_or_default(),
                advertise: self.advertise,
            });
        }
        config.tls = match (self.tls_cert, self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert,
                key,
                client_ca: self.tls_ca,
            }),
            _ => None,
        };
        config.http_listen = self.http_listen;
        config.http_allowed_hosts = self.http_allowed_hosts;
        config.http_cors_origins = self.http_cors_origins;
        config.http_timeout = Duration::from_secs(self.http_timeout);
        config.backup_stream_timeout = Duration::from_secs(self.backup_stream_timeout);
        config.watch_send_timeout = Duration::from_secs(self.watch_send_timeout);
        config.backup_dir = self.backup_dir;
        config
    }
}

/// Parses a byte size: a number with an optional suffix `k`/`KiB`, `m`/`MiB`, `g`/`GiB`
/// (case-insensitive, powers of 1024) or `b`.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, suffix) = t.split_at(split);
    let n: usize = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 65536, 64KiB, 8MiB)"))?;
    let mult: usize = match suffix.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => return Err(format!("{s:?}: unknown size suffix {other:?}")),
    };
    let v = n
        .checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))?;
    if v == 0 {
        return Err(format!("{s:?}: must be greater than 0"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("64k"), Ok(65536));
        assert_eq!(parse_size("8MiB"), Ok(8 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert!(parse_size("0").is_err());
        assert!(parse_size("x").is_err());
        assert!(parse_size("5 parsecs").is_err());
    }

    #[test]
    fn defaults_match_the_contract() {
        let cli = Cli::parse_from(["logkv-server"]);
        let c = cli.into_config();
        assert_eq!(c.listen, "127.0.0.1:7379");
        assert_eq!(c.data_dir, PathBuf::from("./data"));
        assert_eq!(c.fsync, FsyncPolicy::Always);
        assert_eq!(c.max_connections, 10_000);
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.max_output, 64 << 20);
        assert_eq!(c.max_client_memory, crate::client_memory::default_budget());
        assert!(!c.unprotected);
    }

    #[test]
    fn flags() {
        let cli = Cli::parse_from([
            "logkv-server",
            "--listen",
            "0.0.0.0:1",
            "--fsync",
            "interval=250",
            "--password",
            "pw",
            "--max-bulk",
            "1MiB",
            "--unprotected",
            "--max-client-memory",
            "100MiB",
        ]);
        let c = cli.into_config();
        assert_eq!(c.listen, "0.0.0.0:1");
        assert_eq!(
            c.fsync,
            FsyncPolicy::Interval(std::time::Duration::from_millis(250))
        );
        assert_eq!(c.password.as_deref(), Some("pw"));
        assert_eq!(c.limits.max_bulk, 1 << 20);
        assert!(c.unprotected);
        assert_eq!(c.max_client_memory, 100 << 20);
        assert!(c.tls.is_none());
        assert!(c.http_listen.is_none() && c.http_cors_origins.is_empty());
        assert!(Cli::try_parse_from(["logkv-server", "--fsync", "bogus"]).is_err());
    }

    #[test]
    fn cluster_flags() {
        assert!(Cli::parse_from(["logkv-server"])
            .into_config()
            .cluster
            .is_none());
        let c = Cli::parse_from([
            "logkv-server",
            "--node-id",
            "2",
            "--raft-listen",
            "127.0.0.1:7480",
            "--initial-cluster",
            "1=127.0.0.1:7479,2=127.0.0.1:7480",
            "--advertise",
            "10.0.0.2:7379",
        ])
        .into_config();
        let cluster = c.cluster.unwrap();
        assert_eq!(cluster.node_id, 2);
        assert_eq!(cluster.raft_listen, "127.0.0.1:7480");
        assert_eq!(cluster.initial.len(), 2);
        assert_eq!(cluster.advertise.as_deref(), Some("10.0.0.2:7379"));
        // --node-id needs --raft-listen, and the other flags need --node-id.
        assert!(Cli::try_parse_from(["logkv-server", "--node-id", "1"]).is_err());
        assert!(Cli::try_parse_from(["logkv-server", "--advertise", "h:1"]).is_err());
    }

    #[test]
    fn http_flags_repeat() {
        let c = Cli::parse_from([
            "logkv-server",
            "--http-listen",
            "127.0.0.1:7380",
            "--http-allowed-host",
            "kv.local",
            "--http-allowed-host",
            "kv",
            "--http-cors-origin",
            "http://dash.local",
        ])
        .into_config();
        assert_eq!(c.http_listen.as_deref(), Some("127.0.0.1:7380"));
        assert_eq!(c.http_allowed_hosts, ["kv.local", "kv"]);
        assert_eq!(c.http_cors_origins, ["http://dash.local"]);
        assert_eq!(c.http_timeout, Duration::from_secs(30));
        assert_eq!(c.backup_stream_timeout, Duration::from_secs(60));
        assert_eq!(c.watch_send_timeout, Duration::from_secs(60));
    }

    #[test]
    fn timeouts_are_whole_seconds_from_one() {
        let parse = |v: &str| Cli::try_parse_from(["logkv-server", "--http-timeout", v]);
        let c = parse("5").unwrap().into_config();
        assert_eq!(c.http_timeout, Duration::from_secs(5));
        assert!(parse("0").is_err());
        assert!(parse("1.5").is_err());
        let c = Cli::try_parse_from(["logkv-server", "--backup-stream-timeout", "2"]).unwrap();
        assert_eq!(
            c.into_config().backup_stream_timeout,
            Duration::from_secs(2)
        );
        assert!(Cli::try_parse_from(["logkv-server", "--backup-stream-timeout", "0"]).is_err());
        let c = Cli::try_parse_from(["logkv-server", "--watch-send-timeout", "3"]).unwrap();
        assert_eq!(c.into_config().watch_send_timeout, Duration::from_secs(3));
        assert!(Cli::try_parse_from(["logkv-server", "--watch-send-timeout", "0"]).is_err());
    }

    #[test]
    fn tls_flags_come_together() {
        let c = Cli::parse_from([
            "logkv-server",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
            "--tls-ca",
            "ca.pem",
        ])
        .into_config();
        let tls = c.tls.unwrap();
        assert_eq!(tls.cert, PathBuf::from("c.pem"));
        assert_eq!(tls.key, PathBuf::from("k.pem"));
        assert_eq!(tls.client_ca, Some(PathBuf::from("ca.pem")));
        for lonely in [
            &["--tls-cert", "c.pem"][..],
            &["--tls-key", "k.pem"],
            &["--tls-ca", "ca.pem"],
            &["--tls-ca", "ca.pem", "--tls-key", "k.pem"],
        ] {
            let args = std::iter::once("logkv-server").chain(lonely.iter().copied());
            assert!(Cli::try_parse_from(args).is_err(), "{lonely:?}");
        }
    }
}
