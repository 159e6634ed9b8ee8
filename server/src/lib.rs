//! logkv-server: a thin TCP front end over the `logkv` engine.
//!
//! The server holds no key/value logic of its own: every request is parsed
//! ([`protocol::parse_request`]), turned into one engine call, and the result encoded
//! ([`protocol::encode`]) into the connection's output buffer.
//!
//! Layout (after tokio-rs/mini-redis), each module using only those listed after it:
//!
//! * [`server`]: binding, protected mode, the accept loop, connection limits, shutdown.
//! * `connection`: one task per TCP connection: buffers, the read / execute / write loop,
//!   pipelining, durability waits, watch delivery, HTTP requests turned away.
//! * `command`: the table of verbs, the argument cursor, and one parsed struct per verb
//!   with its `apply`, by family (`kv`, `txn`, `bucket`, `query`, `watch`, `admin`).
//! * `session`: per-connection state (RESP version, current bucket, auth, the MULTI queue,
//!   watches, the pipeline's pending writes). It knows nothing of `command`.
//! * `shared`: what every connection shares (store, configuration, counters, pumps,
//!   syncers, the client-memory budget).
//! * `cluster`: the hooks of a cluster node (`--node-id`): writes proposed to the Raft group,
//!   read barriers, the `CLUSTER` verbs.
//! * `client_memory`: the budget for all connections' buffers (`--max-client-memory`).
//! * `metrics`: request counts and latency histograms (per-connection, flushed per batch).
//! * `health`: serving, shutting down, or failed (a poisoned log), for `/healthz`.
//! * `durability`: group commit; the only place that handles durability tickets.
//! * `encode`: engine values (entries, write results, errors and their wire codes) as RESP.
//! * [`tls`]: the certificates (`--tls-cert`, `--tls-key`, `--tls-ca`) and a connection's
//!   transport, plain TCP or TLS.
//! * `http`: the HTTP gateway (`--http-listen`): routes, SSE watches, guard.
//! * `pump`: one task per watched bucket, woken by the engine's change hook, that writes
//!   events to idle watching connections itself (one encoding per kind of watcher) and
//!   wakes the others.
//! * [`backup`]: `BACKUP STREAM`'s frames, and the command that receives them
//!   (`logkv-server backup`).
//! * [`protocol`]: the wire format, pure: request parsing, reply encoding, HTTP detection.
//!
//! Tests start a server in-process with [`spawn_test_server`].
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod backup;
pub mod cli;
mod client_memory;
mod cluster;
mod command;
pub mod config;
mod connection;
mod durability;
mod encode;
mod health;
mod http;
mod metrics;
pub mod protocol;
mod pump;
mod secret;
pub mod server;
mod server_error;
mod session;
mod shared;
mod testing;
pub mod tls;

pub use config::{parse_fsync, ClusterConfig, ServerConfig};
pub use encode::error_code;
pub use server::{run, Server};
pub use server_error::ServerError;
pub use testing::{free_loopback_addr, spawn_test_server, spawn_test_server_with, TestServer};

/// The server's version, as reported by `HELLO` and `INFO`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
