//! What the harness asks of the operating system: memory, disk usage, file limits, signals.

use std::path::Path;

/// Resident anonymous memory of this process in bytes (`RssAnon` in /proc/self/status).
pub fn rss_anon() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_status_kb(&text, "RssAnon:")
}

/// A `kB` field of a /proc status file, in bytes.
pub fn parse_status_kb(text: &str, field: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line[field.len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// A field of another process's /proc status file: a `kB` field in bytes (`VmRSS:`), or a
/// plain number (`Threads:`).
pub fn proc_status_field(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    let mut words = line[field.len()..].split_whitespace();
    let n: u64 = words.next()?.parse().ok()?;
    Some(if words.next() == Some("kB") {
        n * 1024
    } else {
        n
    })
}

/// Open file descriptors of a process (entries of /proc/pid/fd).
pub fn open_fds(pid: u32) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

/// Bytes allocated on disk under `dir` (`st_blocks` × 512, like `du`): preallocated but
/// unwritten space of sparse files does not count, written space does.
pub fn disk_usage(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let meta = match entry.metadata() {
                Ok(m) => m,
                // A file removed by a background thread while we walk.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                total += meta.blocks() * 512;
            }
        }
    }
    Ok(total)
}

/// Raises the open-file limit to its hard maximum (the server suite opens a thousand
/// sockets, and the servers it starts inherit the limit).
pub fn raise_nofile_limit() {
    // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &raw const lim);
        }
    }
}

/// CPU time (user and system) process `pid` has used, from `/proc/<pid>/stat`.
pub fn process_cpu(pid: u32) -> Option<std::time::Duration> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_cpu(&text, clock_ticks()?)
}

/// `utime + stime` of a `/proc/<pid>/stat` line, at `ticks` per second.
fn parse_stat_cpu(stat: &str, ticks: u64) -> Option<std::time::Duration> {
    // The command name is in parentheses and may hold spaces: fields are
    // counted after its closing one (state is field 3; utime 14, stime 15).
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let t = utime + stime;
    Some(
        std::time::Duration::from_secs(t / ticks)
            + std::time::Duration::from_nanos((t % ticks) * 1_000_000_000 / ticks),
    )
}

/// Clock ticks per second (the unit of `/proc/<pid>/stat`'s times).
fn clock_ticks() -> Option<u64> {
    // SAFETY: sysconf only reads a configuration value.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(t).ok().filter(|&t| t > 0)
}

/// CPU time the calling thread has used.
pub fn thread_cpu() -> std::time::Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the struct passed to it.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut ts) } == 0;
    if !ok {
        return std::time::Duration::ZERO;
    }
    std::time::Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

/// CPU time (user and system) of this process's children that have been
/// waited for (a redis-benchmark run, once it has exited).
pub fn children_cpu() -> std::time::Duration {
    // SAFETY: getrusage writes the struct passed to it; zeroed is a valid rusage.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &raw mut ru) } != 0 {
        return std::time::Duration::ZERO;
    }
    let tv = |t: libc::timeval| {
        std::time::Duration::new(
            u64::try_from(t.tv_sec).unwrap_or(0),
            u32::try_from(t.tv_usec).unwrap_or(0) * 1_000,
        )
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Sends SIGTERM to a child process.
pub fn terminate(pid: u32) {
    // A pid the kernel gave out always fits pid_t.
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill() with a pid we spawned and a valid signal number.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_cpu_times_of_a_stat_line() {
        // A name with a space and a parenthesis; utime 250, stime 50 ticks.
        let stat = "1234 (logkv (x) y) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 8 0";
        assert_eq!(
            parse_stat_cpu(stat, 100),
            Some(std::time::Duration::from_secs(3))
        );
        assert_eq!(parse_stat_cpu("1234 (x) S 1 2", 100), None);
        assert!(process_cpu(std::process::id()).is_some());
    }

    #[test]
    fn reads_kb_fields() {
        let status = "Name:\tx\nRssAnon:\t    1234 kB\nRssFile:\t 10 kB\n";
        assert_eq!(parse_status_kb(status, "RssAnon:"), Some(1234 * 1024));
        assert_eq!(parse_status_kb(status, "VmSwap:"), None);
        assert!(rss_anon().unwrap() > 0);
    }

    #[test]
    fn reads_another_process_status() {
        let me = std::process::id();
        assert!(proc_status_field(me, "Threads:").unwrap() >= 1);
        assert!(proc_status_field(me, "VmRSS:").unwrap() > 4096);
        assert!(proc_status_field(me, "NoSuchField:").is_none());
        assert!(open_fds(me).unwrap() >= 3);
    }

    #[test]
    fn disk_usage_counts_written_blocks() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("sub/a"), vec![1u8; 64 << 10]).unwrap();
        let f = std::fs::File::create(d.path().join("sparse")).unwrap();
        f.set_len(64 << 20).unwrap();
        let used = disk_usage(d.path()).unwrap();
        assert!(used >= 64 << 10, "{used}");
        assert!(used < 1 << 20, "{used}");
    }
}
