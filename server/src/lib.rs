//! logkv-server: a thin TCP front end over the `logkv` engine.
//!
//! The server holds no key/value logic of its own: every request is parsed
//! ([`protocol::parse_request`]), turned into one engine call, and the result encoded
//! ([`protocol::encode`]) into the connection's output buffer.
//!
//! Layout (after tokio-rs/mini-redis):
//!
//! * [`server`]: binding, protected mode, the accept loop, connection limits, shutdown.
//! * `connection`: one task per TCP connection: buffers, the read / execute / write loop,
//!   pipelining, durability waits, watch delivery.
//! * `session`: per-connection state (protocol version, current bucket, auth, MULTI, watches).
//! * `command`: dispatch by verb, one module per family of verbs.
//! * `reply`: entries and other engine values encoded as RESP.
//! * `pump`: one thread per watched bucket that turns the engine's change tokens into
//!   wake-ups of the connection tasks.
//!
//! Tests start a server in-process with [`spawn_test_server`].
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod cli;
mod client_memory;
mod command;
pub mod config;
mod connection;
mod durability;
pub mod protocol;
mod pump;
mod reply;
pub mod server;
mod session;
mod testing;

pub use config::{parse_fsync, ServerConfig};
pub use server::{run, Server, ServerError};
pub use testing::{spawn_test_server, spawn_test_server_with, TestServer};

/// The server's version, as reported by `HELLO` and `INFO`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
