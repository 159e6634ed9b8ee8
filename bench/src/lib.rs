//! logkv's benchmark harness (see docs/BENCHMARKS.md): the embedded suite (logkv against
//! redb, fjall and sled), the server suite (logkv-server against redis-server), and their
//! parts.
//!
//! Every result is one JSON object per line on stdout ([`report::Row`]); progress and
//! human tables go to stderr.
#![allow(
    clippy::many_single_char_names,
    reason = "k, v, n, d, w, s: key, value, count, duration, writer, store, the harness's vocabulary"
)]

pub mod embedded;
pub mod http;
pub mod keys;
pub mod limits;
pub mod redisbench;
pub mod report;
pub mod resp;
pub mod server;
pub mod skim;
pub mod stores;
pub mod sys;
pub mod watchbench;
