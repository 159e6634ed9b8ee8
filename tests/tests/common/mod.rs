//! Helpers shared by the test binaries of `tests/tests/`: options for test stores, a copy
//! of a store directory as a crash leaves it, a seeded random generator, visible skips,
//! and an in-process server with RESP clients.
//!
//! Every binary includes this module (`mod common;`, or `#[path = "../common/mod.rs"]`
//! from a binary's own directory) and uses part of it.
#![allow(
    dead_code,
    unused_imports,
    reason = "each test binary compiles this module and uses a different part of it"
)]

pub mod rng;
pub mod server;
pub mod skip;
pub mod store_dir;

pub use logkv_tests::options::{clock_opts, durable_opts, opts, repair_opts, T0};
pub use rng::{seed_from_env, Rng};
pub use skip::{command_succeeds, skip};
pub use store_dir::copy_store_dir;
