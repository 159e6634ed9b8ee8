//! `logkv-server` built inside this crate, so that the process tests (`cluster_*`) can run
//! real server processes with `CARGO_BIN_EXE_logkv_node` (a binary of another package is
//! not built for them). Same command line, same behaviour; SIGTERM stops it cleanly.

use std::process::ExitCode;

use clap::Parser;
use logkv_server::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let threads = cli
        .threads
        .unwrap_or_else(logkv_server::cli::default_threads)
        .max(1);
    let config = cli.into_config();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let stop = async {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            term.recv().await;
        } else {
            let _ = tokio::signal::ctrl_c().await;
        }
    };
    match runtime.block_on(logkv_server::run(config, stop)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("logkv-server: {e}");
            ExitCode::FAILURE
        }
    }
}
