//! `/metrics` and `/healthz` on the HTTP gateway of the real binary, scraped with curl
//! before and after traffic.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;

use common::{have_curl, roundtrip, BinaryServer};

/// `curl -s` of `url` with `args`: the status and the body.
fn curl(url: &str, args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "20", "-w", "\n%{http_code}"])
        .args(args)
        .arg(url)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), body.to_string())
}

/// The value of the sample `series` (name and labels exactly as exposed), if exposed.
fn value(metrics: &str, series: &str) -> Option<String> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().to_string())
}

/// An integer sample (a count, a gauge); 0 when absent.
fn count(metrics: &str, series: &str) -> u64 {
    value(metrics, series).map_or(0, |v| {
        v.parse().unwrap_or_else(|e| panic!("{series}: {v:?}: {e}"))
    })
}

#[test]
fn metrics_move_with_traffic() {
    if !have_curl() {
        return;
    }
    let server =
        BinaryServer::start(&["--http-listen", "127.0.1:0", "--max-client-memory", "1MiB"]);
    let http = format!("http://{}", server.http_addr());
    let (status, before) = curl(&format!("{http}/metrics"), &[]);
    assert_eq!(status, 200);
    assert!(
        before.trim_end().ends_with("# EOF"),
        "not OpenMetrics text: {before}"
    );
    let get = r#"logkv_request_duration_seconds_count{transport="resp",verb="get"}"#;
    assert_eq!(count(&before, get), 0);
    assert_eq!(count(&before, r#"logkv_fsyncs_total{bucket="default"}"#), 0);

    // RESP traffic: 50 PUTs and 120 GETs pipelined, a SYNC, a COMPACT, a watch.
    let mut c = TcpStream::connect(server.addr).unwrap();
    let puts = (0..50).map(|i| format!("PUT k{i} value-{i}\r\n"));
    let gets = (0..120).map(|i| format!("GET k{}\r\n", i % 50));
    let pipeline: String = puts.chain(gets).collect();
    c.write_all(pipeline.as_bytes()).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    while got.split(|&b| b == b'\n').count() <= 50 + 2 * 120 {
        let n = c.read(&mut buf).unwrap();
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(roundtrip(&mut c, b"SYNC\r\n"), "+OK\r\n");
    assert_eq!(roundtrip(&mut c, b"PUT k0 again\r\n"), ":51\r\n");
    assert_eq!(roundtrip(&mut c, b"COMPACT\r\n"), "+OK\r\n");
    let mut watcher = TcpStream::connect(server.addr).unwrap();
    assert!(roundtrip(&mut watcher, b"HELLO 3\r\n").contains("logkv"));
    assert_eq!(
        roundtrip(&mut watcher, b"WATCH nothing.> UPDATESONLY\r\n"),
        ":1\r\n"
    );
    // HTTP traffic.
    for _ in 0..3 {
        let (status, _) = curl(&format!("{http}/v1/buckets/default/keys/k1"), &[]);
        assert_eq!(status, 200);
    }
    let (status, _) = curl(
        &format!("{http}/v1/buckets/default/keys/h"),
        &["-X", "PUT", "-d", "x"],
    );
    assert_eq!(status, 200);
    // A client that sends 2 MiB of a value and stops: over the 1 MiB budget, evicted.
    let mut greedy = TcpStream::connect(server.addr).unwrap();
    greedy
        .write_all(format!("*3\r\n$3\r\nPUT\r\n$1\r\nv\r\n${}\r\n", 4 << 20).as_bytes())
        .unwrap();
    greedy.write_all(&vec![b'x'; 2 << 20]).unwrap();
    server.wait_for_log("client buffers over --max-client-memory");

    let (_, after) = curl(&format!("{http}/metrics"), &[]);
    check_after_traffic(&after);
    drop(watcher);
}

/// The numbers after `metrics_move_with_traffic`'s traffic.
fn check_after_traffic(after: &str) {
    let resp = |verb: &str| {
        count(
            after,
            &format!(r#"logkv_request_duration_seconds_count{{transport="resp",verb="{verb}"}}"#),
        )
    };
    assert_eq!(resp("get"), 120);
    assert_eq!(resp("put"), 51);
    assert_eq!(resp("sync"), 1);
    assert_eq!(resp("watch"), 1);
    let http_count = |verb: &str| {
        count(
            after,
            &format!(r#"logkv_request_duration_seconds_count{{transport="http",verb="{verb}"}}"#),
        )
    };
    assert_eq!(http_count("get"), 3);
    assert_eq!(http_count("put"), 1);
    assert_eq!(http_count("metrics"), 1, "the first scrape is counted");
    // Every GET took some time, and fell in some bucket up to +Inf.
    let sum = r#"logkv_request_duration_seconds_sum{transport="resp",verb="get"}"#;
    assert!(value(after, sum).unwrap().parse::<f64>().unwrap() > 0.0);
    let inf = r#"logkv_request_duration_seconds_bucket{le="+Inf",transport="resp",verb="get"}"#;
    assert_eq!(count(after, inf), 120);
    assert!(count(after, "logkv_commands_total") >= 50 + 120 + 4);
    assert!(count(after, r#"logkv_fsyncs_total{bucket="default"}"#) >= 1);
    assert!(
        count(after, "logkv_fsync_seconds_count") >= 1,
        "SYNC's fsync was timed"
    );
    assert_eq!(
        count(after, r#"logkv_compactions_total{bucket="default"}"#),
        1
    );
    assert_eq!(
        value(after, r#"logkv_compacting{bucket="default"}"#).as_deref(),
        Some("0"),
        "the gauge is there, and the pass is over"
    );
    assert!(count(after, r#"logkv_bucket_bytes{bucket="default"}"#) > 500);
    assert_eq!(count(after, r#"logkv_bucket_keys{bucket="default"}"#), 51);
    assert_eq!(
        count(after, r#"logkv_bucket_revision{bucket="default"}"#),
        52
    );
    assert_eq!(count(after, "logkv_watchers"), 1);
    assert!(count(after, r#"logkv_connections{transport="resp"}"#) >= 2);
    assert_eq!(count(after, r#"logkv_connections{transport="http"}"#), 1);
    assert_eq!(count(after, "logkv_evicted_clients_total"), 1);
    assert_eq!(count(after, "logkv_healthy"), 1);
}

/// Under `--fsync always` each group-commit round records how many waiting
/// connections it served, and each fsync how long it took.
#[test]
fn group_commit_rounds_and_fsync_latency_are_measured() {
    if !have_curl() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = BinaryServer::start_in(dir.path(), &["--http-listen", "127.0.0.1:0"]);
    let writers: Vec<_> = (0..4)
        .map(|t| {
            let addr = server.addr;
            std::thread::spawn(move || {
                let mut c = TcpStream::connect(addr).unwrap();
                for i in 0..25 {
                    assert!(roundtrip(&mut c, format!("PUT t{t}.{i} v\r\n").as_bytes())
                        .starts_with(':'));
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let (status, after) = curl(&format!("http://{}/metrics", server.http_addr()), &[]);
    assert_eq!(status, 200);
    let rounds = count(&after, "logkv_group_commit_connections_count");
    let connections = value(&after, "logkv_group_commit_connections_sum")
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(rounds >= 1, "{after}");
    assert!(
        connections >= rounds as f64,
        "every round served at least one connection"
    );
    // A round finds its writes durable already when another round's fsync covered them.
    assert!(count(&after, "logkv_fsync_seconds_count") >= 1);
}

#[test]
fn healthz_is_open_and_metrics_need_the_password() {
    if !have_curl() {
        return;
    }
    let server = BinaryServer::start(&["--http-listen", "127.0.1:0", "--password", "pw"]);
    let http = format!("http://{}", server.http_addr());
    let (status, body) = curl(&format!("{http}/healthz"), &[]);
    assert_eq!((status, body.as_str()), (200, r#"{"status":"serving"}"#));
    assert_eq!(curl(&format!("{http}/metrics"), &[]).0, 401);
    let (status, body) = curl(
        &format!("{http}/metrics"),
        &["-H", "Authorization: Bearer pw"],
    );
    assert_eq!(status, 200);
    assert_eq!(count(&body, "logkv_healthy"), 1);
    // A bad Host is refused on /healthz too.
    let (status, _) = curl(&format!("{http}/healthz"), &["-H", "Host: evil.test"]);
    assert_eq!(status, 421);
}
