//! Real clients beyond the Rust `redis` crate: the Python `redis` package
//! (`execute_command`, `pipeline(transaction=True)`, RESP3), node-redis (`tests/node/`)
//! `redis-benchmark` running a custom logkv verb, and `redis-cli --pipe` (mass insertion).
//! A test whose tool is not installed skips, saying so (a failure under `LOGKV_NO_SKIP=1`;
//! `.ci/run` installs them all).

mod common;

use std::process::Command;

use common::server::Srv;
use common::{command_succeeds, skip};

#[test]
fn python_redis_client() {
    if !command_succeeds("python3", &["-c", "import redis"]) {
        return skip("the Python redis package is not installed (python3 -m pip install redis)");
    }
    let srv = Srv::start();
    let script = r#"
import sys, redis
port = int(sys.argv[1])
r = redis.Redis(port=port)
assert r.ping()
base = r.execute_command("PUT", "a.b", "hello")
assert base == 1, base
assert r.execute_command("GET", "a.b") == b"hello"
assert r.set("plain", "v") and r.get("plain") == b"v"
p = r.pipeline(transaction=True)
p.execute_command("PUT", "z.1", "one")
p.execute_command("PUT", "z.2", "two")
p.execute_command("UPDATE", "z.1", "uno", 3)
assert p.execute() == [3, 4, 5]
try:
    p = r.pipeline(transaction=True)
    p.execute_command("CREATE", "z.1", "again")
    p.execute_command("PUT", "z.3", "three")
    p.execute()
    raise SystemExit("EXEC should have been aborted")
except redis.ResponseError as e:
    assert str(e).startswith("ABORTED 0 EXISTS"), e
assert r.execute_command("GET", "z.3") is None
assert r.execute_command("KEYS", "z.>") == [b"z.1", b"z.2"]
p = r.pipeline(transaction=False)
for i in range(1000):
    p.set(f"k{i}", i)
assert len(p.execute()) == 1000
r3 = redis.Redis(port=port, protocol=3)
e = r3.execute_command("ENTRY", "z.1")
assert e[b"value"] == b"uno" and e[b"revision"] == 5 and e[b"op"] == b"PUT", e
print("python client ok")
"#;
    let out = Command::new("python3")
        .args(["-c", script, &srv.addr.port().to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python client failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("python client ok"));
}

#[test]
fn node_redis_client() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("node");
    if !dir.join("node_modules/redis").is_dir() {
        return skip("node-redis is not installed (npm ci --prefix tests/node)");
    }
    let srv = Srv::start();
    let out = Command::new("node")
        .arg(dir.join("client.js"))
        .arg(srv.addr.port().to_string())
        .output();
    let out = match out {
        Ok(out) => out,
        Err(e) => return skip(&format!("node cannot be run: {e}")),
    };
    assert!(
        out.status.success(),
        "node client failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("node client ok"));
    // What the script wrote is in the store, seen through another client.
    let mut c = srv.raw();
    assert_eq!(c.cmd(&["GET", "k999"]).text(), "999");
    assert_eq!(c.cmd(&["GET", "n.b"]).text(), "two");
}

#[test]
fn redis_benchmark_with_a_logkv_verb() {
    if !command_succeeds("redis-benchmark", &["--version"]) {
        return skip("redis-benchmark is not installed (apt-get install redis-tools)");
    }
    let srv = Srv::start_with(|c| c.fsync = logkv::FsyncPolicy::Never);
    let port = srv.addr.port().to_string();
    let out = Command::new("redis-benchmark")
        .args([
            "-p",
            &port,
            "-n",
            "2000",
            "-c",
            "10",
            "-r",
            "100",
            "--csv",
            "PUT",
            "key:__rand_int__",
            "xxx",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csv = String::from_utf8_lossy(&out.stdout);
    assert!(csv.contains("PUT key:__rand_int__ xxx"), "{csv}");
    let mut c = srv.raw();
    let status = c.cmd(&["STATUS"]);
    assert_eq!(
        status.field("lastrev").int(),
        2000,
        "every PUT got a revision"
    );
    let keys = c.cmd(&["KEYS", ">"]);
    assert!(!keys.items().is_empty() && keys.items().len() <= 100);
}

/// `redis-cli --pipe`, Redis's mass insertion: it sends a file of RESP requests, then an
/// `ECHO` of 20 random bytes, and counts replies until the echo comes back.
#[test]
fn redis_cli_pipe_mass_insertion() {
    if !command_succeeds("redis-cli", &["--version"]) {
        return skip("redis-cli is not installed (apt-get install redis-tools)");
    }
    let srv = Srv::start_with(|c| c.fsync = logkv::FsyncPolicy::Never);
    let mut input = Vec::new();
    for i in 0..1000 {
        let (k, v) = (format!("pipe:{i}"), format!("value-{i}"));
        input.extend_from_slice(
            format!(
                "*3\r\n$3\r\nSET\r\n${}\r\n{k}\r\n${}\r\n{v}\r\n",
                k.len(),
                v.len()
            )
            .as_bytes(),
        );
    }
    let mut child = Command::new("redis-cli")
        .args(["-p", &srv.addr.port().to_string(), "--pipe"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), &input).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("errors: 0, replies: 1000"), "{text}");
    let mut c = srv.raw();
    assert_eq!(c.cmd(&["GET", "pipe:999"]).text(), "value-999");
    assert_eq!(c.cmd(&["ECHO", "hi there"]).text(), "hi there");
}
