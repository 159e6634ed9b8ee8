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

/// Lowest port [`free_loopback_addr`] hands out.
const TEST_PORTS_FROM: u16 = 10_000;

/// The first port of the kernel's range of ephemeral ports (`/proc/sys/net/ipv4/
/// ip_local_port_range`), at least 1,000 above [`TEST_PORTS_FROM`].
fn ephemeral_from() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768)
        .max(TEST_PORTS_FROM + 1_000)
}

/// A loopback address for a test to listen on later: a port that was free when checked,
/// below the kernel's range of ephemeral ports, and not handed out before in this process
/// (a cursor walks the range once). The kernel gives outgoing connections (and `bind` to
/// port 0) ports from that range, so a port taken from it and bound later — a node
/// restarted on its address after a kill — could meanwhile be taken by any connection the
/// test makes; one below it cannot.
///
/// For tests and the benchmark harness, which start a few dozen servers at most.
///
/// # Panics
/// If no port is left below the ephemeral range.
pub fn free_loopback_addr() -> SocketAddr {
    use std::net::{Ipv4Addr, TcpListener};
    use std::sync::Mutex;

    /// Where this process's walk of the range starts, and the ports walked so far.
    static WALK: Mutex<Option<(u32, u32)>> = Mutex::new(None);
    let span = u32::from(ephemeral_from() - TEST_PORTS_FROM);
    let mut walk = WALK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // Test binaries run one after another: each starts at its own place in the range.
    let (start, walked) =
        walk.get_or_insert_with(|| (std::process::id().wrapping_mul(7_919) % span, 0));
    while *walked < span {
        let port = TEST_PORTS_FROM + u16::try_from((*start + *walked) % span).unwrap_or(0);
        *walked += 1;
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        }
    }
    panic!("no free loopback port left below {}", ephemeral_from());
}

/// Two stores in fresh directories and a current-thread runtime to drive a unit test's
/// async code (the directories must outlive the stores).
#[cfg(test)]
pub(crate) fn two_stores() -> (
    [tempfile::TempDir; 2],
    [logkv::Store; 2],
    tokio::runtime::Runtime,
) {
    let dirs = [
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    ];
    let stores = dirs
        .each_ref()
        .map(|d| logkv::Store::open(d.path(), logkv::Options::default()).expect("open"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    (dirs, stores, rt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_ports_are_distinct_free_and_below_the_ephemeral_range() {
        let below = ephemeral_from();
        let addrs: Vec<SocketAddr> = (0..50).map(|_| free_loopback_addr()).collect();
        let ports: std::collections::HashSet<u16> = addrs.iter().map(SocketAddr::port).collect();
        assert_eq!(ports.len(), addrs.len(), "no port handed out twice");
        for a in &addrs {
            assert!(a.ip().is_loopback());
            assert!((TEST_PORTS_FROM..below).contains(&a.port()));
            assert!(
                std::net::TcpListener::bind(a).is_ok(),
                "{a} can be listened on"
            );
        }
    }
}
