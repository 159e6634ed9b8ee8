//! Three cluster nodes in this process: what main's connection and gateway code does on a
//! cluster node. A pipeline's read sees the pipeline's earlier writes on a follower, the
//! HTTP gateway's writes are proposed (forwarded from a follower) and its reads pass the
//! read barrier, `/metrics` reports the node's role, and a node without a quorum answers
//! `NOLEADER` on both transports.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::roundtrip;
use logkv_server::{spawn_test_server_with, ClusterConfig, ServerConfig, TestServer};
use tempfile::TempDir;

fn free_port() -> SocketAddr {
    logkv_server::free_loopback_addr()
}

struct Node {
    server: Option<TestServer>,
    client: SocketAddr,
    http: SocketAddr,
}

/// Three nodes, each with the HTTP gateway.
fn start_cluster(dir: &TempDir) -> BTreeMap<u64, Node> {
    let raft: BTreeMap<u64, SocketAddr> = (1..=3).map(|id| (id, free_port())).collect();
    let initial: BTreeMap<u64, String> = raft.iter().map(|(id, a)| (*id, a.to_string())).collect();
    let mut nodes = BTreeMap::new();
    for (id, raft_addr) in &raft {
        let http = free_port();
        let mut config = ServerConfig::new(dir.path().join(format!("n{id}")));
        config.listen = free_port().to_string();
        config.http_listen = Some(http.to_string());
        config.cluster = Some(ClusterConfig {
            node_id: *id,
            raft_listen: raft_addr.to_string(),
            initial: initial.clone(),
            advertise: None,
        });
        let (client, server) = spawn_test_server_with(config).unwrap();
        nodes.insert(
            *id,
            Node {
                server: Some(server),
                client,
                http,
            },
        );
    }
    nodes
}

fn resp(args: &[&str]) -> Vec<u8> {
    let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
    let mut out = Vec::new();
    logkv_server::protocol::encode_request(&args, &mut out);
    out
}

/// The leader the nodes in `ids` agree on.
fn leader(nodes: &BTreeMap<u64, Node>, ids: &[u64]) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let seen: Vec<String> = ids
            .iter()
            .map(|id| {
                let mut s = TcpStream::connect(nodes[id].client).unwrap();
                let info = roundtrip(&mut s, &resp(&["INFO"]));
                info.lines()
                    .find_map(|l| l.strip_prefix("cluster_leader:"))
                    .unwrap_or("")
                    .trim()
                    .to_string()
            })
            .collect();
        if let Ok(l) = seen[0].parse::<u64>() {
            if seen.iter().all(|s| *s == seen[0]) && ids.contains(&l) {
                return l;
            }
        }
        assert!(Instant::now() < deadline, "no agreed leader: {seen:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One HTTP/1.1 request (Connection: close): status and body.
fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

#[test]
fn main_s_connection_and_gateway_on_a_cluster_node() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = start_cluster(&dir);
    let all = [1, 2, 3];
    let lead = leader(&nodes, &all);
    let followers: Vec<u64> = all.iter().copied().filter(|id| *id != lead).collect();
    let (f1, f2) = (followers[0], followers[1]);

    // A pipeline on a follower: its GET sees its SET (proposed, then the read barrier).
    let mut s = TcpStream::connect(nodes[&f1].client).unwrap();
    let mut pipeline = resp(&["SET", "p", "1"]);
    pipeline.extend(resp(&["GET", "p"]));
    pipeline.extend(resp(&["PUT", "p", "2"]));
    pipeline.extend(resp(&["GET", "p"]));
    s.write_all(&pipeline).unwrap();
    let replies: Vec<String> = (0..4).map(|_| common::read_one(&mut s)).collect();
    assert_eq!(replies, ["+OK\r\n", "$1\r\n1\r\n", ":2\r\n", "$1\r\n2\r\n"]);

    // The gateway: a PUT on a follower is proposed; a GET on the other follower sees it.
    let (status, body) = http(nodes[&f1].http, "PUT", "/v1/buckets/default/keys/web", "v1");
    assert_eq!((status, body.as_str()), (200, r#"{"revision":3}"#));
    let (status, body) = http(
        nodes[&f2].http,
        "GET",
        "/v1/buckets/default/keys/web?raw",
        "",
    );
    assert_eq!((status, body.as_str()), (200, "v1"));
    // A precondition checked at apply, on the leader: the same answer as a single node.
    let (status, body) = http(
        nodes[&f2].http,
        "PUT",
        "/v1/buckets/default/keys/web?rev=1",
        "v2",
    );
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("WRONGREV"), "{body}");
    let (status, body) = http(
        nodes[&f2].http,
        "DELETE",
        "/v1/buckets/default/keys/web",
        "",
    );
    assert_eq!((status, body.as_str()), (200, r#"{"revision":4}"#));
    let (status, body) = http(nodes[&lead].http, "GET", "/v1/buckets/default/keys", "");
    assert_eq!((status, body.as_str()), (200, r#"{"keys":["p"]}"#));
    // A write to a missing bucket fails at apply with the engine's error.
    let (status, body) = http(nodes[&f1].http, "PUT", "/v1/buckets/nope/keys/k", "v");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("NOBUCKET"), "{body}");

    // Metrics: the role of each node, its term and indexes.
    for (id, role) in [(lead, "leader"), (f1, "follower")] {
        let (status, text) = http(nodes[&id].http, "GET", "/metrics", "");
        assert_eq!(status, 200);
        let line = format!("logkv_cluster_role{{role=\"{role}\"}} 1");
        assert!(text.contains(&line), "node {id} lacks {line}:\n{text}");
        assert!(text.contains("logkv_cluster_applied_index "), "{text}");
    }
    let (_, health) = http(nodes[&f2].http, "GET", "/healthz", "");
    assert!(health.contains("serving"), "{health}");

    // Without a quorum: NOLEADER on both transports, nothing applied.
    for id in [lead, f1] {
        if let Some(server) = nodes.get_mut(&id).and_then(|n| n.server.take()) {
            server.stop().unwrap();
        }
    }
    let (status, body) = http(nodes[&f2].http, "PUT", "/v1/buckets/default/keys/x", "v");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("NOLEADER"), "{body}");
    let (status, body) = http(nodes[&f2].http, "GET", "/v1/buckets/default/keys/p", "");
    assert_eq!(status, 503, "{body}");
    let mut s = TcpStream::connect(nodes[&f2].client).unwrap();
    let reply = roundtrip(&mut s, &resp(&["GET", "p"]));
    assert!(reply.starts_with("-NOLEADER"), "{reply}");
    let reply = roundtrip(&mut s, &resp(&["READONLY"]));
    assert_eq!(reply, "+OK\r\n");
    let reply = roundtrip(&mut s, &resp(&["GET", "p"]));
    assert_eq!(reply, "$1\r\n2\r\n", "a local read needs no leader");
}
