//! Starting a server in-process, for tests.

use std::net::SocketAddr;
use std::path::Path;
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use crate::config::ServerConfig;
use crate::server::Server;
use crate::server_error::ServerError;

/// A server running on its own thread and runtime; stopped by [`TestServer::stop`] or drop.
#[derive(Debug)]
pub struct TestServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<Result<(), ServerError>>>,
}

impl TestServer {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Shuts it down gracefully and waits until it has closed its store.
    pub fn stop(mut self) -> Result<(), ServerError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), ServerError> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match self.thread.take() {
            Some(t) => t.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
            None => Ok(()),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// Starts a server on a free loopback port over `dir` (defaults otherwise, fsync always).
pub fn spawn_test_server(dir: &Path) -> Result<(SocketAddr, TestServer), ServerError> {
    let mut config = ServerConfig::new(dir);
    config.listen = "127.0.0.1:0".into();
    spawn_test_server_with(config)
}

/// Starts a server with `config` on its own thread (a two-worker runtime, like the
/// binary on a small machine). Returns once it is listening.
pub fn spawn_test_server_with(
    config: ServerConfig,
) -> Result<(SocketAddr, TestServer), ServerError> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("logkv-test-server".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(|source| ServerError::Bind {
                    addr: SocketAddr::from(([127, 0, 0, 1], 0)),
                    source,
                })?;
            rt.block_on(async move {
                let server = match Server::bind(config).await {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return Ok(());
                    }
                };
                let _ = ready_tx.send(Ok(server.local_addr()));
                server
                    .serve(async {
                        let _ = stop_rx.await;
                    })
                    .await
            })
        })
        .map_err(|source| ServerError::Bind {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            source,
        })?;
    match ready_rx.recv() {
        Ok(Ok(addr)) => Ok((
            addr,
            TestServer {
                addr,
                stop: Some(stop_tx),
                thread: Some(thread),
            },
        )),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => match thread.join() {
            Ok(Err(e)) => Err(e),
            Ok(Ok(())) => Err(ServerError::Bind {
                addr: SocketAddr::from(([127, 0, 0, 1], 0)),
                source: std::io::Error::other("test server thread ended early"),
            }),
            Err(p) => std::panic::resume_unwind(p),
        },
    }
}
