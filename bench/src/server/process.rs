//! The server processes the suite starts: logkv-server and redis-server on loopback, each in
//! its own directory, stopped (SIGTERM, then SIGKILL after 15 s) when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::resp::{Client, Value};
use crate::stores::BoxError;
use crate::sys;

/// Where a server keeps its files.
enum DataDir {
    /// A fresh temporary directory, removed when the server is dropped.
    Temp(tempfile::TempDir),
    /// A directory the caller owns (a restart on the same data).
    Kept(PathBuf),
}

impl DataDir {
    fn path(&self) -> &Path {
        match self {
            DataDir::Temp(t) => t.path(),
            DataDir::Kept(p) => p,
        }
    }
}

/// A server process; stopped on drop.
pub struct Running {
    /// `logkv-server` or `redis-server`.
    pub name: &'static str,
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    log: PathBuf,
    dir: DataDir,
    /// When the process was spawned.
    pub spawned: Instant,
}

impl Running {
    /// `127.0.0.1:port`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its data directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The last lines of its log (for error messages).
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }

    /// Waits until the server runs no background work that a measured run would share the
    /// cores with: logkv no compaction pass (`INFO` `compacting:0`), redis no AOF rewrite
    /// or RDB save running or scheduled, for [`quiet_hold`] in a row. Work that is due
    /// when a run ends starts at the server's next tick (logkv's sweep, every second;
    /// redis's cron, ten times a second) and is seen within the hold. Not waited for: the
    /// rewrite of logkv's index snapshot that compaction leaves due at most every 30 s
    /// (tens of milliseconds for a million keys). Returns how long it waited; fails after
    /// [`QUIET_WITHIN`].
    pub fn wait_quiet(&self) -> Result<Duration, BoxError> {
        let t = Instant::now();
        let mut quiet = Quiet::new(quiet_hold(self.name));
        let mut c = Client::connect(&self.addr())?;
        loop {
            let info = c.call(&[b"INFO"])?;
            let text = match &info {
                Value::Bulk(b) => String::from_utf8_lossy(b).into_owned(),
                other => return Err(format!("{}: INFO gave {other:?}", self.name).into()),
            };
            if quiet.held(busy_fields(&text).is_empty(), Instant::now()) {
                return Ok(t.elapsed());
            }
            if t.elapsed() > QUIET_WITHIN {
                return Err(format!(
                    "{} still busy after {QUIET_WITHIN:?}: {}",
                    self.name,
                    busy_fields(&text).join(", ")
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the process at once (SIGKILL, no shutdown) and waits for it; the data
    /// directory stays if the caller owns it.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops the process (SIGTERM, then SIGKILL after 15 s) and waits for it; the data
    /// directory stays if the caller owns it.
    pub fn stop(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            sys::terminate(self.child.id());
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            eprintln!(
                "    {} did not stop on SIGTERM within 15 s: killing it",
                self.name
            );
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// Longest [`Running::wait_quiet`] waits.
pub const QUIET_WITHIN: Duration = Duration::from_secs(120);

/// How long a server must show no background work before a run: longer than the period
/// at which it starts work that came due (logkv's sweep: 1 s; redis's cron: 100 ms).
pub fn quiet_hold(server: &str) -> Duration {
    match server {
        "redis-server" => Duration::from_millis(300),
        _ => Duration::from_millis(1500),
    }
}

/// Whether a server has shown no background work for a hold in a row.
struct Quiet {
    hold: Duration,
    since: Option<Instant>,
}

impl Quiet {
    fn new(hold: Duration) -> Quiet {
        Quiet { hold, since: None }
    }

    /// Takes one look (`idle`: no background work seen at `now`); whether every look for
    /// the hold up to `now` was idle.
    fn held(&mut self, idle: bool, now: Instant) -> bool {
        if !idle {
            self.since = None;
            return false;
        }
        let since = *self.since.get_or_insert(now);
        now.duration_since(since) >= self.hold
    }
}

/// The `INFO` fields (`name:value` lines, of logkv or of redis) that say background work
/// runs or is scheduled, with their values.
fn busy_fields(info: &str) -> Vec<String> {
    const BUSY: [&str; 4] = [
        "compacting",
        "aof_rewrite_in_progress",
        "aof_rewrite_scheduled",
        "rdb_bgsave_in_progress",
    ];
    info.lines()
        .filter_map(|l| l.trim_end().split_once(':'))
        .filter(|(k, v)| BUSY.contains(k) && *v != "0")
        .map(|(k, v)| format!("{k}:{v}"))
        .collect()
}

/// A free TCP port on 127.0.0.1, below the kernel's range of ephemeral ports and not given
/// before in this run: C1 restarts a killed node on its port, which a port from that range
/// (`bind` to port 0) could have lost meanwhile to any outgoing connection.
pub fn free_port() -> u16 {
    logkv_server::free_loopback_addr().port()
}

/// logkv-server next to this binary, else in the release directory beside it (so a debug
/// build of the harness still finds `target/release/logkv-server`).
pub fn default_server_bin() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    let here = dir.join("logkv-server");
    let release = dir.parent()?.join("release").join("logkv-server");
    Some(if here.is_file() || !release.is_file() {
        here
    } else {
        release
    })
}

/// Finds a program on PATH (or takes a path as given).
pub fn which(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let p = PathBuf::from(program);
        return p.is_file().then_some(p);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    })
}

/// Starts `program` with `args(port, dir)` and waits until it answers PING (at most
/// `ready_within`).
fn start(
    name: &'static str,
    program: &Path,
    args: &dyn Fn(u16, &Path) -> Vec<String>,
    base: &Path,
    dir: DataDir,
    ready_within: Duration,
) -> Result<Running, BoxError> {
    let port = free_port();
    let log = base.join(format!("{name}-{port}.log"));
    let logf = std::fs::File::create(&log)?;
    let spawned = Instant::now();
    let child = Command::new(program)
        .args(args(port, dir.path()))
        .stdin(Stdio::null())
        .stdout(logf.try_clone()?)
        .stderr(logf)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
    let mut r = Running {
        name,
        child,
        port,
        log,
        dir,
        spawned,
    };
    let deadline = spawned + ready_within;
    loop {
        if let Ok(Some(status)) = r.child.try_wait() {
            return Err(format!("{name} exited at start ({status}):\n{}", r.log_tail()).into());
        }
        if let Ok(mut c) = Client::connect(&r.addr()) {
            if let Ok(v) = c.call(&[b"PING"]) {
                if v.is_str("PONG") {
                    return Ok(r);
                }
            }
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{name} did not answer PING in {ready_within:?}:\n{}",
                r.log_tail()
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn temp_dir(name: &str, base: &Path) -> Result<DataDir, BoxError> {
    Ok(DataDir::Temp(
        tempfile::Builder::new()
            .prefix(&format!("{name}-"))
            .tempdir_in(base)?,
    ))
}

fn logkv_args(fsync: &str, extra: Vec<String>) -> impl Fn(u16, &Path) -> Vec<String> + '_ {
    move |port, dir| {
        let mut args = vec![
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--data-dir".into(),
            dir.display().to_string(),
            "--fsync".into(),
            fsync.to_string(),
        ];
        args.extend(extra.iter().cloned());
        args
    }
}

/// logkv-server with `--fsync fsync` in a fresh directory under `base`.
pub fn start_logkv(bin: &Path, fsync: &str, base: &Path) -> Result<Running, BoxError> {
    let dir = temp_dir("logkv-server", base)?;
    start(
        "logkv-server",
        bin,
        &logkv_args(fsync, Vec::new()),
        base,
        dir,
        Duration::from_secs(20),
    )
}

/// logkv-server with `--fsync fsync` and its HTTP gateway on a free loopback port
/// (`--http-listen`), in a fresh directory under `base`; returns the gateway's port too.
pub fn start_logkv_http(bin: &Path, fsync: &str, base: &Path) -> Result<(Running, u16), BoxError> {
    let http = free_port();
    let dir = temp_dir("logkv-server", base)?;
    let listen = vec!["--http-listen".into(), format!("127.0.0.1:{http}")];
    let server = start(
        "logkv-server",
        bin,
        &logkv_args(fsync, listen),
        base,
        dir,
        Duration::from_secs(20),
    )?;
    Ok((server, http))
}

/// logkv-server with `--fsync fsync` on the data in `dir` (kept when it stops).
pub fn start_logkv_in(
    bin: &Path,
    fsync: &str,
    base: &Path,
    dir: &Path,
    ready_within: Duration,
) -> Result<Running, BoxError> {
    start(
        "logkv-server",
        bin,
        &logkv_args(fsync, Vec::new()),
        base,
        DataDir::Kept(dir.to_path_buf()),
        ready_within,
    )
}

/// logkv-server with `--fsync fsync` and the flags `extra` (e.g. a cluster node's) on the
/// data in `dir` (kept when it stops).
pub fn start_logkv_with(
    bin: &Path,
    fsync: &str,
    extra: &[String],
    base: &Path,
    dir: &Path,
    ready_within: Duration,
) -> Result<Running, BoxError> {
    let args = logkv_args(fsync, extra.to_vec());
    start(
        "logkv-server",
        bin,
        &args,
        base,
        DataDir::Kept(dir.to_path_buf()),
        ready_within,
    )
}

/// redis-server with `appendonly yes`, `appendfsync appendfsync` and no RDB snapshots, in a
/// fresh directory under `base`.
pub fn start_redis(bin: &Path, appendfsync: &str, base: &Path) -> Result<Running, BoxError> {
    let dir = temp_dir("redis-server", base)?;
    let args = move |port: u16, dir: &Path| {
        vec![
            "--port".into(),
            port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--appendonly".into(),
            "yes".into(),
            "--appendfsync".into(),
            appendfsync.to_string(),
            "--dir".into(),
            dir.display().to_string(),
            "--save".into(),
            String::new(),
            "--daemonize".into(),
            "no".into(),
        ]
    };
    start(
        "redis-server",
        bin,
        &args,
        base,
        dir,
        Duration::from_secs(20),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_finds_programs() {
        assert!(which("sh").is_some());
        assert!(which("no-such-program-here").is_none());
        assert!(which("/no/such/path").is_none());
    }

    /// A run starts only after the hold passed with every look idle; a busy look starts
    /// the hold again.
    #[test]
    fn quiet_needs_the_whole_hold_idle() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut q = Quiet::new(Duration::from_millis(100));
        assert!(!q.held(true, at(0)), "idle, but not for the hold yet");
        assert!(!q.held(true, at(60)));
        assert!(!q.held(false, at(80)), "busy");
        assert!(
            !q.held(true, at(120)),
            "the hold starts again after a busy look"
        );
        assert!(!q.held(true, at(200)));
        assert!(q.held(true, at(220)), "idle from 120 to 220");
    }

    /// Background work is read from logkv's and redis's `INFO` alike; idle fields and
    /// others are not.
    #[test]
    fn busy_fields_name_running_background_work() {
        let logkv = "# logkv\r\ncompactions:3\r\ncompacting:1\r\nfsyncs:9\r\n";
        assert_eq!(busy_fields(logkv), vec!["compacting:1"]);
        assert!(busy_fields(&logkv.replace("compacting:1", "compacting:0")).is_empty());
        let redis = "# Persistence\r\nrdb_bgsave_in_progress:0\r\n\
                     aof_rewrite_in_progress:1\r\naof_rewrite_scheduled:0\r\n\
                     aof_rewrites:2\r\n";
        assert_eq!(busy_fields(redis), vec!["aof_rewrite_in_progress:1"]);
        assert!(busy_fields("aof_rewrites:7\r\nuptime_in_seconds:1\r\n").is_empty());
    }
}
