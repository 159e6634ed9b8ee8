//! Visible skips. A test that cannot run here (a tool, a package or a privilege is
//! missing) calls [`skip`] and returns. Under `LOGKV_NO_SKIP=1` (set by `.ci/run`, where
//! every test is meant to run) the skip is a failure instead.

use std::io::Write;
use std::process::Command;

/// The environment variable that turns a skip into a failure.
pub const NO_SKIP: &str = "LOGKV_NO_SKIP";

/// Reports that the calling test did not run, and why; the caller then returns.
///
/// Panics when `LOGKV_NO_SKIP=1`. Otherwise writes `skipped: <test>: <reason>` straight to
/// the process's stderr, past the test harness's output capture, so the line shows in
/// `cargo test`'s output next to the `ok` the harness prints for the test.
#[track_caller]
pub fn skip(reason: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("<unnamed test>")
        .to_string();
    assert!(
        std::env::var_os(NO_SKIP).is_none_or(|v| v != "1"),
        "{test} cannot run here and {NO_SKIP}=1 forbids skipping it: {reason}"
    );
    let _ = writeln!(std::io::stderr(), "skipped: {test}: {reason}");
}

/// Whether `program args...` runs and exits successfully (a probe for a tool).
pub fn command_succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}
