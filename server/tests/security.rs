//! What the server defends against, through raw sockets: HTTP requests sent to the
//! RESP port (cross-protocol attacks from web pages) and clients whose buffers would
//! exhaust the server's memory (`--max-client-memory`).

mod common;

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use common::{info_field, roundtrip, start_server, BinaryServer};

/// Sends `bytes` and reads until the server closes; returns what it replied.
fn send_until_closed(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The server may close before it has read everything: a failed write is expected then.
    let _ = s.write_all(bytes);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            // A reset is also a close (the server did not read all the client sent).
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("the server did not close the connection: {e}"),
        }
    }
}

/// The reply of an inline `GET key` on a fresh connection.
fn get(addr: SocketAddr, key: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    roundtrip(&mut s, format!("GET {key}\r\n").as_bytes())
}

#[test]
fn http_requests_are_closed_before_anything_runs() {
    let (server, addr, _dir) = start_server(|_| {});
    // A client that is there all along.
    let mut other = TcpStream::connect(addr).unwrap();
    assert_eq!(roundtrip(&mut other, b"PUT before-attacks 1\r\n"), ":1\r\n");

    let attacks: [(&str, &[u8]); 6] = [
        (
            "the request of the issue",
            b"POST / HTTP/1.1\r\nHost: 127.0.0.1:7379\r\nContent-Type: text/plain\r\n\
              Content-Length: 14\r\n\r\nPUT pwned yes\n",
        ),
        (
            "GET with a query string and headers, then a command",
            b"GET /?x=1 HTTP/1.1\r\nHost: 127.0.0.1:7379\r\nUser-Agent: test\r\n\
              Accept: */*\r\n\r\nPUT pwned yes\r\n",
        ),
        (
            "a body of RESP arrays",
            b"POST /submit HTTP/1.1\r\nHost: localhost:7379\r\nContent-Type: text/plain\r\n\
              Content-Length: 33\r\n\r\n*3\r\n$3\r\nPUT\r\n$5\r\npwned\r\n$3\r\nyes\r\n",
        ),
        (
            "a lower-case method",
            b"put /v1/buckets/default/keys/pwned http/1.1\r\nhost: x\r\n\r\nPUT pwned yes\r\n",
        ),
        (
            "a Host: line first",
            b"Host: 127.0.0.1:7379\r\nPUT pwned yes\r\n",
        ),
        (
            "a request line that does not split into words",
            b"GET /?q=\"x HTTP/1.1\r\nHost: y\r\n\r\nPUT pwned yes\r\n",
        ),
    ];
    for (what, request) in attacks {
        let replied = send_until_closed(addr, request);
        assert!(
            replied.is_empty(),
            "{what}: replied {:?}",
            replied.escape_ascii().to_string()
        );
        assert_eq!(get(addr, "pwned"), "$-1\r\n", "{what}: the body ran");
    }
    // Nothing ran from the body of any request, however it was written.
    assert_eq!(
        roundtrip(&mut other, b"KEYS\r\n"),
        "*1\r\n$14\r\nbefore-attacks\r\n"
    );

    // Per line, as Redis checks per command: what came before the request line ran.
    let replied = send_until_closed(
        addr,
        b"PUT earlier yes\r\nPOST / HTTP/1.1\r\nHost: x\r\n\r\nPUT later yes\r\n",
    );
    assert!(replied.is_empty(), "{}", replied.escape_ascii());
    assert_eq!(get(addr, "earlier"), "$3\r\nyes\r\n");
    assert_eq!(get(addr, "later"), "$-1\r\n");

    // The other client was not disturbed, and inline GET / PUT are still commands.
    assert_eq!(roundtrip(&mut other, b"PUT k v\r\n"), ":3\r\n");
    assert_eq!(roundtrip(&mut other, b"GET k\r\n"), "$1\r\nv\r\n");
    assert_eq!(roundtrip(&mut other, b"get k\r\n"), "$1\r\nv\r\n");
    // RESP arrays are never taken for HTTP: a program may store the word.
    assert_eq!(
        roundtrip(
            &mut other,
            b"*3\r\n$3\r\nPUT\r\n$4\r\npath\r\n$8\r\nHTTP/1.1\r\n"
        ),
        ":4\r\n"
    );
    assert_eq!(roundtrip(&mut other, b"GET path\r\n"), "$8\r\nHTTP/1.1\r\n");
    server.stop().unwrap();
}

#[test]
fn the_binary_logs_the_peer_of_an_http_request() {
    let server = BinaryServer::start(&[]);
    let mut s = TcpStream::connect(server.addr).unwrap();
    let peer = s.local_addr().unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\n\r\nPUT pwned yes\r\n")
        .unwrap();
    let line = server.wait_for_log("possible cross-protocol attack");
    assert!(line.contains(&peer.to_string()), "{line}");
    assert_eq!(get(server.addr, "pwned"), "$-1\r\n");
}

/// `PUT before<i> 1`, then the header of `PUT k <value of 8 MiB>`, then `sent` bytes of
/// the value, never the rest: all in one write.
fn stalled_put(addr: SocketAddr, i: usize, sent: usize) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    let mut request = format!("PUT before{i} 1\r\n").into_bytes();
    request.extend_from_slice(b"*3\r\n$3\r\nPUT\r\n$1\r\nk\r\n$8388608\r\n");
    request.resize(request.len() + sent, b'v');
    // An evicted client sees its writes fail: that is the point.
    let _ = s.write_all(&request);
    s
}

/// Waits (30 s at most) until INFO on `good` counts `at_least` evicted clients; returns
/// that INFO.
fn wait_for_evictions(good: &mut TcpStream, at_least: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut info = roundtrip(good, b"INFO\r\n");
    while info_field(&info, "evicted_clients") < at_least {
        assert!(Instant::now() < deadline, "not evicted: {info}");
        thread::sleep(Duration::from_millis(50));
        info = roundtrip(good, b"INFO\r\n");
    }
    info
}

/// Whether the server closed `s` (end of stream or reset) within a few seconds.
fn closed_by_server(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut buf = [0u8; 64];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            // The server sends nothing to a stalled upload; read on until it closes or not.
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn stalled_clients_are_evicted_past_the_client_memory_budget() {
    const BUDGET: usize = 24 << 20;
    const STALLED: usize = 8;
    const SENT: usize = 6 << 20;
    let (server, addr, _dir) = start_server(|c| c.max_client_memory = BUDGET);
    let mut good = TcpStream::connect(addr).unwrap();
    assert_eq!(roundtrip(&mut good, b"PUT good 1\r\n"), ":1\r\n");

    let stalled: Vec<TcpStream> = (0..STALLED)
        .map(|i| thread::spawn(move || stalled_put(addr, i, SENT)))
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    // 48 MiB sent in all, twice the budget: at least the excess must be closed, and the
    // server reads what is left in the sockets meanwhile.
    let may_stay = BUDGET / SENT;
    let deadline = Instant::now() + Duration::from_secs(30);
    let info = wait_for_evictions(&mut good, (STALLED - may_stay) as u64);
    let held = info_field(&info, "client_memory");
    println!("client buffers held: {held} bytes; {info}");
    assert!(held <= BUDGET as u64, "{held} over the budget {BUDGET}");
    assert_eq!(info_field(&info, "client_memory_budget"), BUDGET as u64);
    let evicted = info_field(&info, "evicted_clients");

    // Exactly the evicted ones were closed; the others still hold their partial request.
    // The server may still have been reading the sockets' last bytes (and evicting) when
    // INFO answered: count the evictions again once every socket has settled.
    let closed = stalled
        .into_iter()
        .filter_map(|mut s| closed_by_server(&mut s).then_some(()))
        .count();
    let settled = info_field(&roundtrip(&mut good, b"INFO\r\n"), "evicted_clients");
    assert!(settled >= evicted);
    assert_eq!(closed as u64, settled);

    // The write each stalled client made before its stalled upload becomes visible (under
    // `always`, once durable), also when its connection was evicted before its reply went
    // out: the evicted connection's writes are made durable by a task of their own, not
    // left for some later write's sync.
    for i in 0..STALLED {
        let key = format!("GET before{i}\r\n");
        while roundtrip(&mut good, key.as_bytes()) != "$1\r\n1\r\n" {
            assert!(Instant::now() < deadline, "before{i} never became visible");
            thread::sleep(Duration::from_millis(20));
        }
    }

    // The well-behaved client kept working all along.
    assert_eq!(
        roundtrip(&mut good, b"PUT good 2\r\n"),
        format!(":{}\r\n", STALLED + 2)
    );
    assert_eq!(roundtrip(&mut good, b"GET good\r\n"), "$1\r\n2\r\n");
    let mut late = TcpStream::connect(addr).unwrap();
    assert_eq!(roundtrip(&mut late, b"GET good\r\n"), "$1\r\n2\r\n");
    server.stop().unwrap();
}

/// A watch lists the keys of its initial data when it starts, some 60 bytes a key besides
/// the key itself: that counts against the budget until it is sent. A client that asks
/// for many watches of a large bucket and reads nothing is closed past the budget (each
/// watch held its list outside the budget before, up to 1,024 of them per connection).
#[test]
fn watches_initial_data_counts_against_the_client_memory_budget() {
    const KEYS: usize = 20_000;
    const BUDGET: usize = 16 << 20;
    let http = logkv_server::free_loopback_addr();
    let (server, addr, _dir) = start_server(|c| {
        c.max_client_memory = BUDGET;
        c.fsync = logkv::FsyncPolicy::Never;
        c.http_listen = Some(http.to_string());
    });
    let mut good = TcpStream::connect(addr).unwrap();
    let prefix = "k".repeat(150);
    let mut load = Vec::new();
    for i in 0..KEYS {
        write!(load, "PUT {prefix}{i} v\r\n").unwrap();
    }
    good.write_all(&load).unwrap();
    let mut replies = BufReader::new(good.try_clone().unwrap());
    let mut reply = Vec::new();
    for _ in 0..KEYS {
        common::read_reply(&mut replies, &mut reply);
    }
    // One watch of it (about 4 MB of keys and their places) is within the budget, and
    // its initial data is all read.
    let mut watcher = TcpStream::connect(addr).unwrap();
    assert!(roundtrip(&mut watcher, b"HELLO 3\r\n").contains("logkv"));
    assert_eq!(roundtrip(&mut watcher, b"WATCH >\r\n"), ":1\r\n");
    let mut pushes = BufReader::new(watcher.try_clone().unwrap());
    let mut events = Vec::new();
    for _ in 0..=KEYS {
        events.clear();
        common::read_reply(&mut pushes, &mut events);
    }
    assert!(
        String::from_utf8_lossy(&events).contains("ready"),
        "{events:?}"
    );
    // Eight watches asked for at once and nothing read: over the budget.
    let mut greedy = TcpStream::connect(addr).unwrap();
    greedy.write_all(b"HELLO 3\r\n").unwrap();
    greedy.write_all(&b"WATCH >\r\n".repeat(8)).unwrap();
    assert!(closed_by_server(&mut greedy), "not closed");
    let info = roundtrip(&mut good, b"INFO\r\n");
    assert_eq!(info_field(&info, "evicted_clients"), 1, "{info}");
    // The same over the gateway: six event streams of it (some 24 MB) not read, against
    // 16 MiB: the two over the budget at least are closed.
    let streams: Vec<TcpStream> = (0..6)
        .map(|_| {
            let mut s = TcpStream::connect(http).unwrap();
            let get = format!("GET /v1/buckets/default/watch HTTP/1.1\r\nHost: {http}\r\n\r\n");
            s.write_all(get.as_bytes()).unwrap();
            s
        })
        .collect();
    wait_for_evictions(&mut good, 3);
    drop(streams);
    // The others go on.
    assert_eq!(
        roundtrip(&mut good, b"PUT after 1\r\n"),
        format!(":{}\r\n", KEYS + 1)
    );
    let mut live = Vec::new();
    common::read_reply(&mut pushes, &mut live);
    assert!(String::from_utf8_lossy(&live).contains("after"), "{live:?}");
    server.stop().unwrap();
}

/// A watch whose list of initial data alone would pass the whole budget is refused while
/// the list is made, with an error that says how to narrow it (RESP) or a 400 (HTTP),
/// instead of being made and then having its connection closed.
#[test]
fn a_watch_larger_than_the_budget_is_refused_before_it_is_listed() {
    const KEYS: usize = 10_000;
    let http = logkv_server::free_loopback_addr();
    let (server, addr, _dir) = start_server(|c| {
        c.max_client_memory = 1 << 20;
        c.fsync = logkv::FsyncPolicy::Never;
        c.http_listen = Some(http.to_string());
    });
    let mut c = TcpStream::connect(addr).unwrap();
    let prefix = "k".repeat(100);
    let mut replies = BufReader::new(c.try_clone().unwrap());
    // Loaded in pipelines under the 64 KiB that the budget counts in.
    for chunk in 0..KEYS / 250 {
        let mut load = Vec::new();
        for i in chunk * 250..(chunk + 1) * 250 {
            write!(load, "PUT {prefix}{i} v\r\n").unwrap();
        }
        c.write_all(&load).unwrap();
        let mut reply = Vec::new();
        for _ in 0..250 {
            common::read_reply(&mut replies, &mut reply);
        }
    }
    // 10,000 keys of some 105 bytes, and their places: over 1 MiB.
    let refused = roundtrip(&mut c, b"WATCH >\r\n");
    assert!(
        refused.starts_with("-ERR the watch's initial data lists at least")
            && refused.contains("UPDATESONLY"),
        "{refused}"
    );
    // Updates only: started.
    assert_eq!(roundtrip(&mut c, b"WATCH > UPDATESONLY\r\n"), ":1\r\n");
    let mut s = TcpStream::connect(http).unwrap();
    let get = format!("GET /v1/buckets/default/watch HTTP/1.1\r\nHost: {http}\r\n\r\n");
    s.write_all(get.as_bytes()).unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 400");
    let info = roundtrip(&mut TcpStream::connect(addr).unwrap(), b"INFO\r\n");
    assert_eq!(info_field(&info, "evicted_clients"), 0, "{info}");
    server.stop().unwrap();
}

/// Values uploaded over the HTTP gateway count against the budget while they arrive, as
/// RESP input does: clients that send half of an 8 MiB body and stop are closed past the
/// budget. (Read whole by an extractor, a body counted for nothing until it had all come.)
#[test]
fn stalled_http_uploads_are_evicted_past_the_client_memory_budget() {
    const STALLED: usize = 6;
    const SENT: usize = 4 << 20;
    let server = BinaryServer::start(&[
        "--http-listen",
        "127.0.0.1:0",
        "--max-client-memory",
        "8MiB",
    ]);
    let http = server.http_addr();
    let mut good = TcpStream::connect(server.addr).unwrap();
    let stalled: Vec<TcpStream> = (0..STALLED)
        .map(|_| {
            thread::spawn(move || {
                let mut s = TcpStream::connect(http).unwrap();
                let mut request = format!(
                    "PUT /v1/buckets/default/keys/big HTTP/1.1\r\nHost: {http}\r\n\
                     Content-Length: {}\r\n\r\n",
                    8 << 20
                )
                .into_bytes();
                request.resize(request.len() + SENT, b'v');
                // An evicted client's write may fail: that is the point.
                let _ = s.write_all(&request);
                s
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    // 24 MiB sent against 8 MiB: at most two such uploads fit.
    let info = wait_for_evictions(&mut good, (STALLED - 2) as u64);
    let held = info_field(&info, "client_memory");
    assert!(held <= 8 << 20, "{held} over the budget");
    let closed = stalled
        .into_iter()
        .filter_map(|mut s| closed_by_server(&mut s).then_some(()))
        .count();
    let settled = info_field(&roundtrip(&mut good, b"INFO\r\n"), "evicted_clients");
    assert_eq!(closed as u64, settled);
    // Nothing half uploaded was written, and the server still answers.
    assert_eq!(roundtrip(&mut good, b"GET big\r\n"), "$-1\r\n");
    assert_eq!(roundtrip(&mut good, b"PUT after 1\r\n"), ":1\r\n");
}

/// A gateway upload that stops arriving is answered 408 after `--http-timeout` without a
/// byte, nothing written, so it does not hold its connection forever; one that is slow but
/// keeps coming (each pause shorter than the timeout, the whole longer) is written.
#[test]
fn an_http_body_that_stops_arriving_times_out_and_a_slow_one_does_not() {
    let server = BinaryServer::start(&["--http-listen", "127.0.0.1:0", "--http-timeout", "1"]);
    let http = server.http_addr();
    let put = |key: &str| {
        let mut s = TcpStream::connect(http).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let head = format!(
            "PUT /v1/buckets/default/keys/{key} HTTP/1.1\r\nHost: {http}\r\n\
             Content-Length: 8\r\n\r\n"
        );
        s.write_all(head.as_bytes()).unwrap();
        s
    };
    let answer = |s: &mut TcpStream| {
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).expect("no answer within 20 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };

    let mut stalled = put("stalled");
    stalled.write_all(b"half").unwrap();
    let reply = answer(&mut stalled);
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(
        reply.contains("\"TIMEOUT\"") && reply.contains("after 4 bytes"),
        "{reply}"
    );

    let mut slow = put("slow");
    for pair in [b"sl", b"ow", b"ly", b"!!"] {
        thread::sleep(Duration::from_millis(400));
        slow.write_all(pair).unwrap();
    }
    let reply = answer(&mut slow);
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");

    // Headers that stop arriving, and a kept-alive connection with no next request, are
    // closed after the timeout (the 20 s read timeout would fail the test first).
    let mut headers = TcpStream::connect(http).unwrap();
    headers
        .write_all(format!("GET /healthz HTTP/1.1\r\nHost: {http}\r\n").as_bytes())
        .unwrap();
    for s in [&mut headers, &mut slow] {
        let (got, closed) = read_until_closed(s, Duration::from_secs(20));
        assert!(
            closed && got.is_empty(),
            "{}",
            String::from_utf8_lossy(&got)
        );
    }

    let mut resp = TcpStream::connect(server.addr).unwrap();
    assert_eq!(roundtrip(&mut resp, b"GET stalled\r\n"), "$-1\r\n");
    assert_eq!(roundtrip(&mut resp, b"GET slow\r\n"), "$8\r\nslowly!!\r\n");
}

/// A PUT refused for its parameters holds none of its body against the budget, during or
/// after the answer: the parameters are checked before the body is read, and a body read is
/// released however its request ends. (It stayed counted, up to --max-bulk, for as long as
/// a keep-alive connection lived.)
#[test]
fn a_refused_http_put_leaves_nothing_counted() {
    const BODY: usize = 4 << 20;
    let server = BinaryServer::start(&["--http-listen", "127.0.0.1:0"]);
    let http = server.http_addr();
    let mut refused = TcpStream::connect(http).unwrap();
    refused
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut request = format!(
        "PUT /v1/buckets/default/keys/k?ttl=0 HTTP/1.1\r\nHost: {http}\r\n\
         Content-Length: {BODY}\r\n\r\n"
    )
    .into_bytes();
    request.resize(request.len() + BODY, b'v');
    let mut writer = refused.try_clone().unwrap();
    // The server may answer and close without reading the body: the rest may fail.
    let sender = thread::spawn(move || {
        let _ = writer.write_all(&request);
        writer
    });
    let mut buf = vec![0u8; 4096];
    let n = refused.read(&mut buf).expect("no answer within 20 s");
    let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(
        reply.starts_with("HTTP/1.1 400") && reply.contains("ttl"),
        "{reply}"
    );
    let _writer = sender.join().unwrap();
    // The connection may still be open: nothing of it is counted.
    let mut resp = TcpStream::connect(server.addr).unwrap();
    let info = roundtrip(&mut resp, b"INFO\r\n");
    let held = info_field(&info, "client_memory");
    assert!(
        held < 1 << 20,
        "{held} bytes still counted after the answer"
    );
    assert_eq!(roundtrip(&mut resp, b"GET k\r\n"), "$-1\r\n");
}

/// A memory line of /proc/<pid>/status, in bytes.
fn proc_status_bytes(pid: u32, name: &str) -> u64 {
    common::proc_status(pid, name) * 1024
}

/// The measurement, on the real binary: 40 clients each send 7 MB of an 8 MB
/// value and stop. Without a budget the server grew from 4 MB to 285 MB; with
/// `--max-client-memory 32MiB` the excess clients are closed and its peak memory stays
/// near the budget.
#[test]
fn the_binary_stays_near_its_client_memory_budget() {
    const BUDGET: u64 = 32 << 20;
    let server = BinaryServer::start(&["--max-client-memory", "32MiB"]);
    let pid = server.pid();
    let start_rss = proc_status_bytes(pid, "VmRSS:");
    let mut good = TcpStream::connect(server.addr).unwrap();
    let stalled: Vec<TcpStream> = (0..40)
        .map(|i| {
            let addr = server.addr;
            thread::spawn(move || stalled_put(addr, i, 7_000_000))
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    // 280 MB sent against a 32 MiB budget: at most four such clients can stay.
    let info = wait_for_evictions(&mut good, 36);
    let line = server.wait_for_log("closing the connection holding the most");
    assert!(
        line.contains("peer=127.0.0.1:") && line.contains("bytes="),
        "{line}"
    );
    let held = info_field(&info, "client_memory");
    let peak = proc_status_bytes(pid, "VmHWM:");
    let rss = proc_status_bytes(pid, "VmRSS:");
    println!(
        "RSS at start {start_rss} B, peak {peak} B, now {rss} B; accounted client buffers \
         {held} B of a {BUDGET} B budget; {info}"
    );
    assert!(held <= BUDGET);
    // The budget plus the server's own memory plus allocator slack; far below the 280 MB
    // that 40 clients sent.
    assert!(peak < start_rss + 3 * BUDGET, "peak RSS {peak} B");
    // A revision (after however many of the stalled clients' first writes ran).
    let reply = roundtrip(&mut good, b"PUT good 1\r\n");
    assert!(
        reply.starts_with(':') && reply.ends_with("\r\n"),
        "{reply:?}"
    );
    drop(stalled);
}

/// Writes `keys` values of `len` bytes (`k0000`, `k0001`, ...) into the default bucket of
/// an empty server; returns the connection.
fn put_values(addr: SocketAddr, keys: usize, len: usize) -> TcpStream {
    let mut load = TcpStream::connect(addr).unwrap();
    let value = "v".repeat(len);
    for i in 0..keys {
        let put = format!("*3\r\n$3\r\nPUT\r\n$5\r\nk{i:04}\r\n${len}\r\n{value}\r\n");
        assert_eq!(
            roundtrip(&mut load, put.as_bytes()),
            format!(":{}\r\n", i + 1)
        );
    }
    load
}

/// Reads from `s` until it is closed (end or reset) or a read waits `wait` in vain;
/// returns what was read and whether it was closed.
fn read_until_closed(s: &mut TcpStream, wait: Duration) -> (Vec<u8>, bool) {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (got, true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (got, true),
            Err(_) => return (got, false),
        }
    }
}

/// A `BACKUP STREAM` whose client stops reading is ended after --backup-stream-timeout,
/// its connection closed, so that the files it holds open are let go; one whose client
/// reads, pausing for less than the timeout, gets all of it. (The stalled stream waited
/// forever.) The RESP latency histogram counts a stream until it begins (it counted the
/// whole transfer).
#[test]
fn a_backup_stream_whose_client_stops_reading_is_ended() {
    const VALUE: usize = 256 << 10;
    const KEYS: usize = 128; // 32 MiB: more than the sockets' buffers take
    let server = BinaryServer::start(&[
        "--backup-stream-timeout",
        "3",
        "--http-listen",
        "127.0.0.1:0",
    ]);
    let addr = server.addr;
    let mut load = put_values(addr, KEYS, VALUE);
    let end_frame = b"$3\r\nend\r\n";
    let ends = |got: &[u8]| got.windows(end_frame.len()).any(|w| w == end_frame);

    let mut stalled = TcpStream::connect(addr).unwrap();
    stalled.write_all(b"BACKUP STREAM\r\n").unwrap();
    thread::sleep(Duration::from_secs(6));
    let (got, closed) = read_until_closed(&mut stalled, Duration::from_secs(10));
    assert!(closed, "the stalled stream's connection is still open");
    assert!(
        !ends(&got) && got.len() < KEYS * VALUE,
        "the stalled stream was sent whole ({} bytes)",
        got.len()
    );

    let mut reader = TcpStream::connect(addr).unwrap();
    reader.write_all(b"BACKUP STREAM\r\nPING\r\n").unwrap();
    reader
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    // A pause shorter than the timeout, once the sockets' buffers are full.
    thread::sleep(Duration::from_secs(2));
    while !got.ends_with(b"+PONG\r\n") {
        let n = reader.read(&mut buf).expect("the stream stopped");
        assert!(n > 0, "closed after {} bytes", got.len());
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        ends(&got) && got.len() > KEYS * VALUE,
        "{} bytes",
        got.len()
    );
    let info = roundtrip(&mut load, b"INFO\r\n");
    assert!(info_field(&info, "client_memory") < 1 << 20, "{info}");

    // The latency histogram counts each stream until it began, not its transfer (the
    // whole one took over 2 s).
    let mut http = TcpStream::connect(server.http_addr()).unwrap();
    let request = format!(
        "GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        server.http_addr()
    );
    http.write_all(request.as_bytes()).unwrap();
    let (metrics, _) = read_until_closed(&mut http, Duration::from_secs(10));
    let metrics = String::from_utf8(metrics).unwrap();
    let sum = metrics
        .lines()
        .find(|l| {
            l.starts_with("logkv_request_duration_seconds_sum") && l.contains("verb=\"backup\"")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no backup latency in {metrics}"));
    assert!(sum < 1.5, "BACKUP STREAM counted {sum} s");
}

/// Gateway replies count against the budget until the socket takes them, and a client that
/// takes nothing of its reply for --http-timeout is closed. (A reply, up to --max-output,
/// was held outside the budget for as long as its client read nothing.)
#[test]
fn unread_http_replies_count_against_the_budget_and_time_out() {
    const VALUE: usize = 1 << 20;
    const KEYS: usize = 40; // a scan reply of over 40 MiB
    const BUDGET: u64 = 64 << 20;
    let server = BinaryServer::start(&[
        "--http-listen",
        "127.0.0.1:0",
        "--http-timeout",
        "3",
        "--max-client-memory",
        "64MiB",
    ]);
    let (addr, http) = (server.addr, server.http_addr());
    let mut load = put_values(addr, KEYS, VALUE);
    let scan = format!("GET /v1/buckets/default/scan?limit=1000 HTTP/1.1\r\nHost: {http}\r\n\r\n");
    // Three clients ask and read nothing: over twice the budget between them.
    let mut stalled: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut s = TcpStream::connect(http).unwrap();
            s.write_all(scan.as_bytes()).unwrap();
            s
        })
        .collect();
    let info = wait_for_evictions(&mut load, 1);
    assert!(info_field(&info, "client_memory") <= BUDGET, "{info}");
    // The ones left are closed once they have taken nothing for 3 s, letting go of their
    // replies. Nothing is read until then: a client that reads is not stalled (reading
    // right after the eviction, before the 3 s had passed, took the whole reply).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let info = roundtrip(&mut load, b"INFO\r\n");
        if info_field(&info, "client_memory") < 1 << 20 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the stalled replies are still held after 60 s: {info}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for s in &mut stalled {
        let (got, closed) = read_until_closed(s, Duration::from_secs(10));
        assert!(closed, "a stalled reply's connection is still open");
        assert!(got.len() < KEYS * VALUE, "{} bytes", got.len());
    }
    let info = roundtrip(&mut load, b"INFO\r\n");
    assert!(info_field(&info, "client_memory") < 1 << 20, "{info}");

    // A reply to HEAD has no body to send: nothing stays counted for it while its
    // connection lives on.
    let mut head = TcpStream::connect(http).unwrap();
    head.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    head.write_all(scan.replacen("GET", "HEAD", 1).as_bytes())
        .unwrap();
    let mut headers = Vec::new();
    let mut byte = [0u8; 1];
    while !headers.ends_with(b"\r\n\r\n") {
        head.read_exact(&mut byte).unwrap();
        headers.push(byte[0]);
    }
    assert!(
        headers.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&headers)
    );
    let info = roundtrip(&mut load, b"INFO\r\n");
    assert!(
        info_field(&info, "client_memory") < 1 << 20,
        "after HEAD: {info}"
    );

    // A client that reads, pausing less than the timeout, gets its reply whole.
    let mut reader = TcpStream::connect(http).unwrap();
    reader
        .write_all(
            scan.replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
    thread::sleep(Duration::from_secs(2));
    let (got, closed) = read_until_closed(&mut reader, Duration::from_secs(20));
    assert!(closed && got.starts_with(b"HTTP/1.1 200"));
    assert!(got.len() > KEYS * VALUE, "{} bytes", got.len());
}
