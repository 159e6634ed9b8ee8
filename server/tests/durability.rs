//! Durability and visibility through the server (`--fsync always`, the default):
//! a connection reads its own writes, and durability waits follow the bucket's
//! identity, not its name.

mod common;

use std::io::Write;
use std::net::TcpStream;

use common::{read_one, roundtrip, start_server};

/// Issue 10, item 4: durability tickets were matched by bucket name, so this
/// pipeline (a bucket dropped and created again between two writes) got no reply
/// at all, ever, while the server burned CPU.
#[test]
fn a_pipeline_across_a_bucket_dropped_and_created_again_gets_every_reply() {
    let (_server, addr, _dir) = start_server(|_| {});
    let mut c = TcpStream::connect(addr).unwrap();
    c.write_all(
        b"BUCKET CREATE b\r\nUSE b\r\nPUT k v\r\nBUCKET DROP b\r\nBUCKET CREATE b\r\nPUT k2 v2\r\n",
    )
    .unwrap();
    let replies: Vec<String> = (0..6).map(|_| read_one(&mut c)).collect();
    assert_eq!(
        replies,
        ["+OK\r\n", "+OK\r\n", ":1\r\n", "+OK\r\n", "+OK\r\n", ":1\r\n"]
    );
    let mut other = TcpStream::connect(addr).unwrap();
    assert_eq!(roundtrip(&mut other, b"USE b\r\n"), "+OK\r\n");
    assert_eq!(roundtrip(&mut other, b"GET k2\r\n"), "$2\r\nv2\r\n");
    assert_eq!(
        roundtrip(&mut other, b"GET k\r\n"),
        "$-1\r\n",
        "k went with the old b"
    );
}

/// Item 6: a write is visible only once durable, but a connection still reads its own
/// writes: a read that follows a write in one pipeline waits for that write's durability.
#[test]
fn a_read_in_a_pipeline_sees_the_writes_before_it() {
    let (_server, addr, _dir) = start_server(|_| {});
    let mut c = TcpStream::connect(addr).unwrap();
    c.write_all(b"PUT k v1\r\nGET k\r\nPUT k v2\r\nPUT j w\r\nGET k\r\nKEYS\r\n")
        .unwrap();
    let replies: Vec<String> = (0..6).map(|_| read_one(&mut c)).collect();
    assert_eq!(
        replies,
        [
            ":1\r\n",
            "$2\r\nv1\r\n",
            ":2\r\n",
            ":3\r\n",
            "$2\r\nv2\r\n",
            "*2\r\n$1\r\nj\r\n$1\r\nk\r\n"
        ]
    );
}

/// Damage below what was durable stops the server with the file and offset;
/// `--repair` starts it keeping every valid record and logs what it skipped.
#[test]
fn corruption_stops_the_server_and_repair_starts_it() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = logkv::Store::open(dir.path(), logkv::Options::default()).unwrap();
        let b = store.default_bucket().unwrap();
        b.put("first", "damaged-value").unwrap();
        b.put("second", "kept").unwrap();
        store.close().unwrap();
    }
    let seg = std::fs::read_dir(dir.path().join("buckets/default"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "seg"))
        .unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    let at = bytes
        .windows(13)
        .position(|w| w == b"damaged-value")
        .unwrap();
    bytes[at] ^= 0xFF;
    std::fs::write(&seg, &bytes).unwrap();
    // Also remove the index snapshot: recovery must read the damaged record.
    let _ = std::fs::remove_file(dir.path().join("buckets/default/index.snap"));

    let out = common::binary(dir.path())
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "the server must refuse a corrupt log"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("corrupt log") && stderr.contains(&*seg.to_string_lossy()),
        "{stderr}"
    );
    assert!(
        stderr.contains("--repair"),
        "the message says how to repair: {stderr}"
    );

    let server = common::BinaryServer::start_in(dir.path(), &["--repair"]);
    server.wait_for_log("repair skipped a damaged region");
    let mut c = TcpStream::connect(server.addr).unwrap();
    assert_eq!(roundtrip(&mut c, b"GET second\r\n"), "$4\r\nkept\r\n");
    assert_eq!(roundtrip(&mut c, b"GET first\r\n"), "$-1\r\n");
}

/// Durability waits are served by a fixed pool of syncer threads: writing under
/// `--fsync always` to hundreds of buckets does not start a thread per bucket.
#[test]
fn writes_to_many_buckets_share_a_fixed_pool_of_sync_threads() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::BinaryServer::start_in(dir.path(), &[]);
    let mut c = TcpStream::connect(server.addr).unwrap();
    let threads = || common::proc_status(server.pid(), "Threads:");
    let before = threads();
    for i in 0..300 {
        let name = format!("b{i}");
        assert_eq!(
            roundtrip(&mut c, format!("BUCKET CREATE {name}\r\n").as_bytes()),
            "+OK\r\n"
        );
        assert_eq!(
            roundtrip(&mut c, format!("USE {name}\r\n").as_bytes()),
            "+OK\r\n"
        );
        assert_eq!(roundtrip(&mut c, b"PUT k v\r\n"), ":1\r\n");
    }
    let after = threads();
    assert!(
        after <= before + 16,
        "{before} threads before, {after} after writing to 300 buckets"
    );
}
