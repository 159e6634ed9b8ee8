//! Running `redis-benchmark` and parsing its `--csv` output.
//!
//! Redis 7 prints a header and latency columns:
//! `"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"`
//! then one line per test (`"SET","86956.52","0.310",...`). Redis 6 and older print only
//! `"SET","86956.52"` lines. Both are read.
//!
//! With `-r N` redis-benchmark replaces `__rand_int__` in its keys (`key:__rand_int__`) by a
//! random number below N, written with 12 digits: the keys are `key:000000000000` to
//! `key:{N-1:012}`, the same as the harness's [`crate::keys::key`]. Without `-r` every
//! request goes to the one key `key:__rand_int__`.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::stores::BoxError;

/// What one redis-benchmark run sends.
#[derive(Debug, Clone)]
pub struct Load {
    /// `-t`: the tests, e.g. `set,get`.
    pub tests: &'static str,
    /// `-c`: connections.
    pub clients: u32,
    /// `-n`: requests per test.
    pub requests: u64,
    /// `-P`: requests pipelined per connection.
    pub pipeline: u32,
    /// `-r`: random keys below this; `None`: the one key `key:__rand_int__`.
    pub keyspace: Option<u64>,
    /// `-d`: bytes of each SET's value.
    pub value_size: usize,
    /// A command of its own instead of `-t` (its `__rand_int__` replaced as in keys).
    pub command: Vec<String>,
}

impl Load {
    /// The command-line arguments (without host and port).
    pub fn args(&self) -> Vec<String> {
        let mut a = if self.command.is_empty() {
            vec!["-t".to_string(), self.tests.to_string()]
        } else {
            Vec::new()
        };
        a.extend([
            "-c".into(),
            self.clients.to_string(),
            "-n".into(),
            self.requests.to_string(),
            "-P".into(),
            self.pipeline.to_string(),
            "-d".into(),
            self.value_size.to_string(),
        ]);
        if let Some(r) = self.keyspace {
            a.push("-r".into());
            a.push(r.to_string());
        }
        // `-e`: an error reply is printed (redis-benchmark counts it as a request done
        // either way); `run` refuses a result with any.
        a.push("-e".into());
        a.push("--csv".into());
        a.extend(self.command.iter().cloned());
        a
    }

    /// How many result lines the run must print: one per test of `-t`, or one for a
    /// command of its own.
    fn expected_results(&self) -> usize {
        if self.command.is_empty() {
            self.tests.split(',').filter(|t| !t.is_empty()).count()
        } else {
            1
        }
    }
}

/// The line redis-benchmark prints (with `-e`) for an error reply.
const ERROR_REPLY: &str = "Error from server";

/// Runs redis-benchmark against 127.0.0.1:`port` and parses its CSV; kills it after `timeout`.
pub fn run(
    program: &Path,
    port: u16,
    load: &Load,
    timeout: Duration,
) -> Result<Vec<BenchResult>, BoxError> {
    let mut child = Command::new(program)
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(load.args())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // Drain both pipes on threads so a chatty child cannot block on a full pipe.
    let mut so = child.stdout.take().ok_or("no stdout")?;
    let mut se = child.stderr.take().ok_or("no stderr")?;
    let ho = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = so.read_to_string(&mut s);
        s
    });
    let he = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = se.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("redis-benchmark took longer than {timeout:?}: killed").into());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = ho.join().unwrap_or_default();
    let stderr = he.join().unwrap_or_default();
    let results = parse_csv(&stdout);
    if !status.success() || results.len() < load.expected_results() {
        return Err(format!(
            "redis-benchmark failed ({status}, {} of {} results); stdout: {stdout:?}; \
             stderr: {stderr:?}",
            results.len(),
            load.expected_results()
        )
        .into());
    }
    // Error replies are counted as requests done: a run with any measured nothing true.
    if let Some(error) = stdout
        .lines()
        .chain(stderr.lines())
        .find(|l| l.contains(ERROR_REPLY))
    {
        return Err(format!("redis-benchmark got error replies: {error}").into());
    }
    Ok(results)
}

/// One test's result.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchResult {
    /// The test name as printed (`SET`, `GET`, …).
    pub test: String,
    /// Requests per second.
    pub rps: f64,
    /// Median latency in ms, when printed.
    pub p50_ms: Option<f64>,
    /// 99th percentile latency in ms, when printed.
    pub p99_ms: Option<f64>,
}

/// Splits one CSV line into fields (double-quoted fields, `""` inside them).
pub fn csv_fields(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.trim_end_matches(['\r', '\n']).chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => fields.push(std::mem::take(&mut cur)),
            (c, _) => cur.push(c),
        }
    }
    fields.push(cur);
    fields
}

/// Parses the whole `--csv` output; lines that are not results are skipped.
pub fn parse_csv(text: &str) -> Vec<BenchResult> {
    let mut columns: Option<Vec<String>> = None;
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let f = csv_fields(line);
        if f.first().map(String::as_str) == Some("test") {
            columns = Some(f);
            continue;
        }
        if f.len() < 2 {
            continue;
        }
        let Ok(rps) = f[1].trim().parse::<f64>() else {
            continue;
        };
        let col = |name: &str| -> Option<f64> {
            let i = columns.as_ref()?.iter().position(|c| c == name)?;
            f.get(i)?.trim().parse().ok()
        };
        out.push(BenchResult {
            test: f[0].clone(),
            rps,
            p50_ms: col("p50_latency_ms"),
            p99_ms: col("p99_latency_ms"),
        });
    }
    out
}

#[cfg(test)]
#[allow(
    clippy::float_cmp,
    reason = "figures parsed from short decimal text compare exactly with the same literals"
)]
mod tests {
    use super::*;

    #[test]
    fn parses_redis7_csv_with_header() {
        let text = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\
\"SET\",\"86956.52\",\"0.310\",\"0.096\",\"0.303\",\"0.431\",\"0.575\",\"1.191\"\n\
\"GET\",\"90090.09\",\"0.291\",\"0.072\",\"0.287\",\"0.399\",\"0.519\",\"0.879\"\n";
        let r = parse_csv(text);
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[0],
            BenchResult {
                test: "SET".into(),
                rps: 86956.52,
                p50_ms: Some(0.303),
                p99_ms: Some(0.575)
            }
        );
        assert_eq!(r[1].test, "GET");
        assert_eq!(r[1].p99_ms, Some(0.519));
    }

    #[test]
    fn parses_old_csv_without_header_and_skips_noise() {
        let text = "WARNING: Could not fetch server CONFIG\r\n\"SET\",\"1234.50\"\r\n\"GET\",\"99.00\"\r\n\n";
        let r = parse_csv(text);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].rps, 1234.5);
        assert_eq!(r[0].p50_ms, None);
        assert_eq!(r[1].test, "GET");
    }

    #[test]
    fn load_args_name_the_keyspace_only_when_asked() {
        let mut load = Load {
            tests: "set,get",
            clients: 50,
            requests: 1000,
            pipeline: 16,
            keyspace: Some(1_000_000),
            value_size: 256,
            command: Vec::new(),
        };
        assert_eq!(
            load.args().join(" "),
            "-t set,get -c 50 -n 1000 -P 16 -d 256 -r 1000000 -e --csv"
        );
        load.keyspace = None;
        assert_eq!(
            load.args().join(" "),
            "-t set,get -c 50 -n 1000 -P 16 -d 256 -e --csv"
        );
        load.command = vec!["SET".into(), "a.__rand_int__".into(), "v".into()];
        assert_eq!(
            load.args().join(" "),
            "-c 50 -n 1000 -P 16 -d 256 -e --csv SET a.__rand_int__ v"
        );
    }

    /// A run with an error reply, or without a result for every test, measured nothing
    /// true: refused. (redis-benchmark counts an error reply as a request done.) A
    /// stand-in program prints what redis-benchmark would.
    #[test]
    fn a_run_with_error_replies_or_missing_results_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let load = Load {
            tests: "set,get",
            clients: 1,
            requests: 1,
            pipeline: 1,
            keyspace: None,
            value_size: 3,
            command: Vec::new(),
        };
        let fake = |name: &str, lines: &[&str]| {
            let path = dir.path().join(name);
            let mut script = String::from("#!/bin/sh\n");
            for l in lines {
                script.push_str("echo '");
                script.push_str(l);
                script.push_str("'\n");
            }
            std::fs::write(&path, script).expect("script");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
            path
        };
        let limit = Duration::from_secs(30);
        let header = r#""test","rps""#;
        let (set, get) = (r#""SET","1000""#, r#""GET","2000""#);
        let good = fake("good", &[header, set, get]);
        assert_eq!(run(&good, 1, &load, limit).expect("good").len(), 2);
        let errors = fake("errors", &[header, "Error from server: ERR boom", set, get]);
        let refused = run(&errors, 1, &load, limit).expect_err("error replies");
        assert!(refused.to_string().contains("error replies"), "{refused}");
        let short = fake("short", &[header, set]);
        let refused = run(&short, 1, &load, limit).expect_err("a missing result");
        assert!(refused.to_string().contains("1 of 2 results"), "{refused}");
    }

    #[test]
    fn csv_fields_handle_quotes_and_commas() {
        assert_eq!(csv_fields(r#""a,b","c""d",e"#), vec!["a,b", "c\"d", "e"]);
        assert_eq!(csv_fields(""), vec![""]);
    }
}
