//! The `logkv-server` binary: parses the command line, sets up logging, runs the server
//! until SIGINT or SIGTERM.
#![deny(unsafe_op_in_unsafe_fn)]

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use logkv_server::cli::{BackupArgs, Cli, Tool};
use tracing::{error, info};
use tracing_subscriber::EnvFilter;

/// mimalloc rather than the system allocator: see the comment on the dependency in
/// Cargo.toml.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

extern "C" {
    /// mimalloc's `mi_option_set` (mimalloc.h), linked from the allocator above.
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}

/// `mi_option_purge_delay` in mimalloc 3's `mi_option_t` (the pinned libmimalloc-sys
/// builds mimalloc 3; its constants stop before this one).
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

/// Freed memory goes back to the system at once (mimalloc's default waits 10 ms, and 10
/// times that for its arenas): a client's buffers freed on eviction must not count against
/// the server's memory while new ones are filled (the client memory budget).
fn purge_freed_memory_at_once() {
    // SAFETY: `mi_option_set` only stores an option value; any option and value is valid.
    unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
}

fn main() -> ExitCode {
    purge_freed_memory_at_once();
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    if let Some(Tool::Backup(args)) = cli.command {
        return backup(args);
    }
    let threads = cli
        .threads
        .unwrap_or_else(logkv_server::cli::default_threads)
        .max(1);
    raise_open_file_limit(cli.max_connections);
    let config = cli.into_config();
    // tokio's multi-threaded runtime with one small task per connection, so
    // thousands of mostly idle clients cost memory, not threads. Workers: one
    // less than the cores by default. Measured here (2 cores, redis-benchmark on
    // the same machine): one worker avoids bouncing the index lock's cache line
    // between cores and serves pipelined GETs ~40% faster than two.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .thread_name("logkv-worker")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(logkv_server::run(config, shutdown_signal()));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            eprintln!("logkv-server: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `logkv-server backup`: receives a backup stream into a new directory and says what it got.
fn backup(args: BackupArgs) -> ExitCode {
    let opts = args.into_options();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let started = std::time::Instant::now();
    match runtime.block_on(logkv_server::backup::client::receive(&opts)) {
        Ok(got) => {
            println!(
                "backup of {} written to {}: {} buckets, {} files, {} bytes in {:.2} s",
                opts.from,
                got.path.display(),
                got.revisions.len(),
                got.files,
                got.bytes,
                started.elapsed().as_secs_f64()
            );
            for (bucket, revision) in &got.revisions {
                println!("  {bucket}: revision {revision}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("logkv-server backup: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Raises the soft limit on open files to what `max_connections` clients need
/// (plus files of the store), as far as the hard limit allows, like Redis does;
/// says how to raise the hard limit when it is too low. A connection that watches holds
/// two descriptors (its socket and the copy the watch pump writes events to), so each
/// connection counts twice. Without enough, a watcher is served without the copy (its
/// task is woken for every event), and new connections may be refused.
fn raise_open_file_limit(max_connections: usize) {
    let wanted = max_connections as u64 * 2 + 256;
    match rlimit::increase_nofile_limit(wanted) {
        Ok(got) if got >= wanted => {}
        Ok(got) => tracing::warn!(
            limit = got,
            wanted,
            "the open-file limit allows only about {} connections that watch; raise it \
             (ulimit -n {wanted}) or lower --max-connections",
            got.saturating_sub(256) / 2
        ),
        Err(e) => tracing::warn!("could not raise the open-file limit: {e}"),
    }
}

/// Completes on the first SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => info!("SIGINT received"),
                    _ = term.recv() => info!("SIGTERM received"),
                }
            }
            Err(e) => {
                error!("cannot listen for SIGTERM ({e}); only Ctrl-C stops the server");
                let _ = tokio::signal::ctrl_c().await;
                info!("SIGINT received");
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        info!("Ctrl-C received");
    }
}
