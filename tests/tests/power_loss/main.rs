//! Power-loss tests: the store's files sit on a simulated page cache
//! (`logkv::io::SimFs`, feature `failpoints`), and the power is cut.
//!
//! - `close`: a clean close with nothing new to mark writes nothing.
//! - `fault_sweep`: a fixed workload with one sync or write failed at each place it
//!   can be, going on after the failure, then cut.
//! - `harness`: random workloads cut at random points, checked against a reference store.
//! - `regressions`: one test per durability defect the simulation found or a review
//!   reported, each failing before its fix.
//! - `sim`: a store directory on the simulated page cache, for tests that cut by hand.

#![allow(
    clippy::cast_possible_truncation,
    reason = "test sizes and indexes drawn from small ranges"
)]

mod close;
#[path = "../common/mod.rs"]
mod common;
mod compaction_steps;
mod concurrent;
mod fault_sweep;
mod harness;
mod regressions;
mod replicated;
mod sim;
mod unclean_open;
