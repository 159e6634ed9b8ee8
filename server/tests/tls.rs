//! TLS on the listen address, against the real binary: a rustls client, `redis-cli --tls`,
//! the Python redis client with `ssl=True`, client certificates with `--tls-ca`, plain-text
//! clients turned away, and clear startup errors for bad certificate files.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::certs::Certs;
use common::{have_python_module, read_reply, roundtrip_on, skip, BinaryServer};
use rustls::pki_types::ServerName;

type TlsClient = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn tls_connect(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> TlsClient {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(config, name).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

fn start(certs: &Certs, client_ca: bool) -> BinaryServer {
    let flags = certs.server_flags(client_ca);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    BinaryServer::start(&flags)
}

/// Reads until the server closes the connection; what it sent. Panics if it stays open
/// for 15 s (a hang).
fn read_until_closed(s: &mut impl Read) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return got,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("the server kept the connection open: {e}")
            }
            // A TLS client sees the server's alert or a bad record as an error: closed.
            Err(_) => return got,
        }
    }
}

#[test]
fn tls_clients_work_and_plain_clients_are_closed() {
    let certs = Certs::new();
    let server = start(&certs, false);
    let mut tls = tls_connect(server.addr, certs.client_config(None));
    assert_eq!(roundtrip_on(&mut tls, b"PING\r\n"), "+PONG\r\n");
    assert_eq!(roundtrip_on(&mut tls, b"PUT greeting hello\r\n"), ":1\r\n");
    assert_eq!(
        roundtrip_on(&mut tls, b"*2\r\n$3\r\nGET\r\n$8\r\ngreeting\r\n"),
        "$5\r\nhello\r\n"
    );
    // A pipeline larger than one TLS record comes back whole and in order.
    let mut pipeline = Vec::new();
    for i in 0..2000 {
        pipeline.extend_from_slice(format!("PUT k{i} {}\r\n", "v".repeat(40)).as_bytes());
    }
    tls.write_all(&pipeline).unwrap();
    for i in 0..2000 {
        let mut line = Vec::new();
        while !line.ends_with(b"\r\n") {
            let mut b = [0u8; 1];
            tls.read_exact(&mut b).unwrap();
            line.push(b[0]);
        }
        assert_eq!(line, format!(":{}\r\n", i + 2).as_bytes());
    }

    // A plain-text client: the handshake fails on its first bytes and the connection closes.
    let mut plain = TcpStream::connect(server.addr).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    plain.write_all(b"PING\r\n").unwrap();
    let got = read_until_closed(&mut plain);
    assert!(
        !got.windows(4).any(|w| w == b"PONG"),
        "a plain client was answered: {}",
        got.escape_ascii()
    );
    server.wait_for_log("TLS handshake failed");
    // A plain RESP array fares no better, and nothing it sent ran.
    let mut plain = TcpStream::connect(server.addr).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    plain
        .write_all(b"*3\r\n$3\r\nPUT\r\n$5\r\nplain\r\n$1\r\nx\r\n")
        .unwrap();
    read_until_closed(&mut plain);
    assert_eq!(roundtrip_on(&mut tls, b"GET plain\r\n"), "$-1\r\n");

    // A client that sends nothing at all is closed once the handshake times out.
    let mut silent = TcpStream::connect(server.addr).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    read_until_closed(&mut silent);
    // The TLS client was never disturbed.
    assert_eq!(
        roundtrip_on(&mut tls, b"GET k1999\r\n"),
        format!("$40\r\n{}\r\n", "v".repeat(40))
    );
}

/// A TLS port that is full closes a new connection before the handshake, writing
/// nothing: it wrote its plain-text refusal, which a TLS client takes for a broken
/// handshake. From a review.
#[test]
fn a_full_tls_port_closes_without_plain_text() {
    let certs = Certs::new();
    let mut flags = certs.server_flags(false);
    flags.extend(["--max-connections".to_string(), "1".to_string()]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let server = BinaryServer::start(&flags);
    let mut tls = tls_connect(server.addr, certs.client_config(None));
    assert_eq!(roundtrip_on(&mut tls, b"PING\r\n"), "+PONG\r\n");
    let mut second = TcpStream::connect(server.addr).unwrap();
    second
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let got = read_until_closed(&mut second);
    assert!(got.is_empty(), "it wrote {}", got.escape_ascii());
    server.wait_for_log("max number of clients reached");
    assert_eq!(roundtrip_on(&mut tls, b"PING\r\n"), "+PONG\r\n");
}

/// A watcher over TLS is woken by the pump and pulls its events itself (the pump writes
/// only to plain sockets): every live event arrives, in revision order.
#[test]
fn watches_over_tls_get_every_event() {
    let certs = Certs::new();
    let server = start(&certs, false);
    let mut watcher = tls_connect(server.addr, certs.client_config(None));
    assert_eq!(
        roundtrip_on(&mut watcher, b"WATCH > UPDATESONLY\r\n"),
        ":1\r\n"
    );
    let mut ready = Vec::new();
    read_reply(&mut watcher, &mut ready);
    assert!(
        ready.ends_with(b"$5\r\nready\r\n"),
        "{}",
        ready.escape_ascii()
    );
    let mut writer = tls_connect(server.addr, certs.client_config(None));
    for rev in 1..=50 {
        let put = format!("PUT tls.{rev} v{rev}\r\n");
        assert_eq!(
            roundtrip_on(&mut writer, put.as_bytes()),
            format!(":{rev}\r\n")
        );
    }
    for rev in 1..=50 {
        let mut frame = Vec::new();
        read_reply(&mut watcher, &mut frame);
        let frame = String::from_utf8_lossy(&frame).into_owned();
        let key = format!("tls.{rev}");
        assert!(
            frame.contains(&format!("$3\r\nkey\r\n${}\r\n{key}\r\n", key.len())),
            "event {rev}: {frame}"
        );
        assert!(
            frame.contains(&format!("$8\r\nrevision\r\n:{rev}\r\n")),
            "{frame}"
        );
    }
    assert_eq!(
        roundtrip_on(&mut watcher, b"PING\r\n"),
        "+PONG\r\n",
        "nothing more"
    );
}

#[test]
fn client_certificates_are_required_with_tls_ca() {
    let certs = Certs::new();
    let server = start(&certs, true);
    let mut with_cert = tls_connect(
        server.addr,
        certs.client_config(Some((&certs.client_cert, &certs.client_key))),
    );
    assert_eq!(roundtrip_on(&mut with_cert, b"PUT a 1\r\n"), ":1\r\n");

    // Without a certificate, or with one from another CA: the server refuses the handshake
    // (TLS 1.3 clients learn it on their first read) and nothing runs.
    let strangers = [
        certs.client_config(None),
        certs.client_config(Some((&certs.stranger_cert, &certs.stranger_key))),
    ];
    for config in strangers {
        let mut client = tls_connect(server.addr, config);
        let _ = client.write_all(b"PUT a 2\r\n");
        let _ = client.flush();
        let got = read_until_closed(&mut client);
        assert!(got.is_empty(), "answered: {}", got.escape_ascii());
    }
    assert_eq!(roundtrip_on(&mut with_cert, b"GET a\r\n"), "$1\r\n1\r\n");
}

/// Whether this redis-cli was built with TLS.
fn redis_cli_with_tls() -> bool {
    Command::new("redis-cli")
        .arg("--help")
        .output()
        .is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout).contains("--tls")
                || String::from_utf8_lossy(&o.stderr).contains("--tls")
        })
}

fn redis_cli(addr: SocketAddr, tls: &[&Path], args: &[&str]) -> (bool, String) {
    let mut cmd = Command::new("redis-cli");
    cmd.args(["-h", "127.0.0.1", "-p", &addr.port().to_string(), "--tls"]);
    let names = ["--cacert", "--cert", "--key"];
    for (flag, path) in names.iter().zip(tls) {
        cmd.arg(flag).arg(path);
    }
    let out = cmd.args(args).output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text.trim().to_string())
}

#[test]
fn redis_cli_over_tls() {
    if !redis_cli_with_tls() {
        skip("redis-cli with TLS support is not installed (apt-get install redis-tools)");
        return;
    }
    let certs = Certs::new();
    let server = start(&certs, false);
    let ca = [certs.ca.as_path()];
    assert_eq!(redis_cli(server.addr, &ca, &["PUT", "k", "v"]).1, "1");
    assert_eq!(redis_cli(server.addr, &ca, &["GET", "k"]).1, "v");
    drop(server);

    let server = start(&certs, true);
    let full = [
        certs.ca.as_path(),
        certs.client_cert.as_path(),
        certs.client_key.as_path(),
    ];
    assert_eq!(redis_cli(server.addr, &full, &["PUT", "k", "w"]).1, "1");
    assert_eq!(redis_cli(server.addr, &full, &["GET", "k"]).1, "w");
    // Without its certificate redis-cli gets no reply.
    let (_, text) = redis_cli(server.addr, &ca, &["GET", "k"]);
    assert_ne!(text, "w");
    assert!(!text.is_empty(), "redis-cli said nothing about the failure");
}

const PYTHON_CLIENT: &str = r#"
import sys, redis
port, ca = int(sys.argv[1]), sys.argv[2]
extra = {}
if len(sys.argv) > 3:
    extra = dict(ssl_certfile=sys.argv[3], ssl_keyfile=sys.argv[4])
r = redis.Redis(host="localhost", port=port, ssl=True, ssl_ca_certs=ca, **extra)
print(r.execute_command("PUT", "py", "value"))
print(r.get("py").decode())
"#;

fn python(args: &[String]) -> Option<(bool, String)> {
    let out = Command::new("python3")
        .arg("-c")
        .arg(PYTHON_CLIENT)
        .args(args)
        .output()
        .ok()?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    Some((out.status.success(), text))
}

#[test]
fn python_redis_client_over_tls() {
    if !have_python_module("redis") {
        return;
    }
    let certs = Certs::new();
    let path = |p: &Path| p.display().to_string();
    let server = start(&certs, false);
    let args = [server.addr.port().to_string(), path(&certs.ca)];
    let (ok, text) = python(&args).unwrap();
    assert!(ok, "{text}");
    assert_eq!(text.lines().collect::<Vec<_>>(), ["1", "value"]);
    drop(server);

    let server = start(&certs, true);
    let port = server.addr.port().to_string();
    let with_cert = [
        port.clone(),
        path(&certs.ca),
        path(&certs.client_cert),
        path(&certs.client_key),
    ];
    let (ok, text) = python(&with_cert).unwrap();
    assert!(ok, "{text}");
    assert_eq!(text.lines().collect::<Vec<_>>(), ["1", "value"]);
    let (ok, text) = python(&[port, path(&certs.ca)]).unwrap();
    assert!(!ok, "a client without a certificate got in: {text}");
}

/// Runs the binary with `flags` and expects it to refuse to start, saying `expected`.
fn refuses(flags: &[&str], expected: &str) {
    let dir = tempfile::tempdir().unwrap();
    let out = common::binary(dir.path())
        .args(["--listen", "127.0.0.1:0"])
        .args(flags)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "it started with {flags:?}");
    assert!(
        stderr.contains(expected),
        "{flags:?}: no {expected:?} in:\n{stderr}"
    );
}

#[test]
fn bad_certificate_files_are_startup_errors() {
    let certs = Certs::new();
    let dir = certs.dir.path();
    let s = |p: &Path| p.display().to_string();
    let missing = s(&dir.join("missing.pem"));
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let garbage = s(&garbage);
    let (cert, key) = (s(&certs.server_cert), s(&certs.server_key));
    let other_key = s(&certs.client_key);

    refuses(
        &["--tls-cert", &missing, "--tls-key", &key],
        &format!("cannot read the certificate {missing}"),
    );
    refuses(
        &["--tls-cert", &garbage, "--tls-key", &key],
        "no certificate in it",
    );
    refuses(
        &["--tls-cert", &cert, "--tls-key", &missing],
        &format!("cannot read the private key {missing}"),
    );
    refuses(
        &["--tls-cert", &cert, "--tls-key", &garbage],
        "no PEM private key in it",
    );
    refuses(
        &["--tls-cert", &cert, "--tls-key", &other_key],
        "invalid TLS configuration",
    );
    refuses(
        &["--tls-cert", &cert, "--tls-key", &key, "--tls-ca", &garbage],
        "cannot read the client CA",
    );
    refuses(&["--tls-cert", &cert], "--tls-key");
}
