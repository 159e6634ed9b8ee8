//! WATCH over the socket: initial data, `ready`, live events, options, RESP2 and RESP3
//! framing, the RESP2 watch-mode rule, UNWATCH, a dropped bucket, and a watcher that does
//! not read.
#![allow(
    clippy::many_single_char_names,
    reason = "b, k, v, r, e (bucket, key, value, revision, entry) as throughout the tests"
)]

mod common;

use common::server::{Frame, Raw, Srv};

/// Reads one watch frame and checks its prefix: `["watch", id, ...]`.
fn event(c: &mut Raw, id: i64) -> Frame {
    let f = c.read();
    let items = f.items();
    assert_eq!(items[0], Frame::bulk("watch"), "{f:?}");
    assert_eq!(items[1], Frame::Int(id), "{f:?}");
    f
}

fn expect_entry(c: &mut Raw, id: i64, key: &str, op: &str, delta: i64) -> Frame {
    let f = event(c, id);
    let e = f.items()[2].clone();
    assert_eq!(e.field("key"), Frame::bulk(key), "{f:?}");
    assert_eq!(e.field("op"), Frame::bulk(op), "{f:?}");
    assert_eq!(e.field("delta").int(), delta, "{f:?}");
    e
}

fn expect_ready(c: &mut Raw, id: i64) {
    let f = event(c, id);
    assert_eq!(f.items()[2], Frame::bulk("ready"), "{f:?}");
}

#[test]
fn resp2_watch_initial_data_ready_and_live_events() {
    let srv = Srv::start();
    let mut w = srv.raw();
    let mut c = srv.raw();
    c.cmd(&["PUT", "user.1", "a"]);
    c.cmd(&["PUT", "user.2", "b"]);
    c.cmd(&["PUT", "other", "x"]);
    c.cmd(&["DEL", "user.2"]);
    assert_eq!(w.cmd(&["WATCH", "user.>"]), Frame::Int(1));
    let e = expect_entry(&mut w, 1, "user.1", "PUT", 1);
    assert_eq!(e.field("value"), Frame::bulk("a"));
    assert!(matches!(w.read(), Frame::Array(_)), "RESP2: a plain array");
    // (the DEL of user.2 is the latest entry of that key, delta 0)
    expect_ready(&mut w, 1);

    // RESP2 watch mode: only WATCH, UNWATCH, PING and QUIT.
    let err = w.cmd(&["GET", "user.1"]);
    assert!(err.is_error_code("ERR"), "{err:?}");
    assert!(err.message().contains("WATCH, UNWATCH, PING and QUIT"));
    assert_eq!(w.cmd(&["PING"]), Frame::Simple("PONG".into()));

    assert_eq!(c.cmd(&["PUT", "user.3", "c"]), Frame::Int(5));
    let e = expect_entry(&mut w, 1, "user.3", "PUT", 0);
    assert_eq!(e.field("revision").int(), 5);
    assert_eq!(e.field("bucket"), Frame::bulk("default"));
    c.cmd(&["PUT", "other", "y"]);
    c.cmd(&["DEL", "user.1"]);
    let e = expect_entry(&mut w, 1, "user.1", "DEL", 0);
    assert_eq!(e.field("value"), Frame::bulk(""));
    c.cmd(&["PURGE", "user.3"]);
    expect_entry(&mut w, 1, "user.3", "PURGE", 0);

    // A second watch on the same connection, then UNWATCH by id and all.
    assert_eq!(w.cmd(&["WATCH", "other", "UPDATESONLY"]), Frame::Int(2));
    expect_ready(&mut w, 2);
    c.cmd(&["PUT", "other", "z"]);
    expect_entry(&mut w, 2, "other", "PUT", 0);
    assert_eq!(w.cmd(&["UNWATCH", "2"]), Frame::Int(1));
    assert_eq!(w.cmd(&["UNWATCH", "42"]), Frame::Int(1));
    assert_eq!(w.cmd(&["UNWATCH"]), Frame::Int(0));
    // Back to normal.
    c.cmd(&["PUT", "user.9", "q"]);
    assert_eq!(w.cmd(&["GET", "user.9"]), Frame::bulk("q"));
    let info = c.cmd(&["INFO"]).text();
    assert!(info.contains("watchers:0"), "{info}");
}

#[test]
fn resp3_watch_pushes_and_mixes_with_commands() {
    let srv = Srv::start();
    let mut w = srv.raw();
    let mut c = srv.raw();
    c.cmd(&["PUT", "cfg.a", "1"]);
    assert_eq!(w.cmd(&["HELLO", "3"]).field("proto").int(), 3);
    assert_eq!(w.cmd(&["WATCH", "cfg.*"]), Frame::Int(1));
    let f = w.read();
    let Frame::Push(items) = &f else {
        panic!("RESP3 watch frames are pushes: {f:?}")
    };
    assert!(matches!(items[2], Frame::Map(_)), "{f:?}");
    expect_ready(&mut w, 1);
    // Commands still work on a RESP3 connection with watches.
    assert_eq!(w.cmd(&["GET", "cfg.a"]), Frame::bulk("1"));
    c.cmd(&["PUT", "cfg.b", "2"]);
    let f = w.read();
    assert!(matches!(f, Frame::Push(_)), "{f:?}");
    assert_eq!(f.items()[2].field("key"), Frame::bulk("cfg.b"));
    // A write from the watching connection itself is seen too; its reply and the push
    // may come in either order.
    w.send_cmd(&[b"PUT", b"cfg.c", b"3"]);
    let (a, b) = (w.read(), w.read());
    let (reply, push) = if matches!(a, Frame::Push(_)) {
        (b, a)
    } else {
        (a, b)
    };
    assert_eq!(reply, Frame::Int(3));
    assert_eq!(push.items()[2].field("key"), Frame::bulk("cfg.c"));
    assert_eq!(w.cmd(&["UNWATCH"]), Frame::Int(0));
}

#[test]
fn watch_options() {
    let srv = Srv::start();
    let mut c = srv.raw();
    assert_eq!(
        c.cmd(&["BUCKET", "CREATE", "h", "HISTORY", "10"]),
        Frame::ok()
    );
    assert_eq!(c.cmd(&["USE", "h"]), Frame::ok());
    c.cmd(&["PUT", "k", "1"]);
    c.cmd(&["PUT", "k", "2"]);
    c.cmd(&["PUT", "j", "x"]);
    c.cmd(&["DEL", "j"]);

    // HISTORY: every retained entry, in revision order, delta counting down.
    let mut w = srv.raw();
    w.cmd(&["USE", "h"]);
    assert_eq!(w.cmd(&["WATCH", ">", "HISTORY"]), Frame::Int(1));
    for (key, op, delta) in [
        ("k", "PUT", 3),
        ("k", "PUT", 2),
        ("j", "PUT", 1),
        ("j", "DEL", 0),
    ] {
        expect_entry(&mut w, 1, key, op, delta);
    }
    expect_ready(&mut w, 1);
    w.cmd(&["UNWATCH"]);

    // Latest only, NODELETES, METAONLY (no value field at all).
    assert_eq!(
        w.cmd(&["WATCH", ">", "NODELETES", "METAONLY"]),
        Frame::Int(2)
    );
    let e = expect_entry(&mut w, 2, "k", "PUT", 0);
    assert!(!e.pairs().iter().any(|(k, _)| k == "value"), "{e:?}");
    assert_eq!(e.field("revision").int(), 2);
    expect_ready(&mut w, 2);
    c.cmd(&["DEL", "k"]);
    c.cmd(&["PUT", "k", "3"]);
    let e = expect_entry(&mut w, 2, "k", "PUT", 0);
    assert_eq!(e.field("revision").int(), 6, "the DEL was skipped");
    w.cmd(&["UNWATCH"]);

    // FROM rev: every retained entry from there, then ready, then live.
    assert_eq!(w.cmd(&["WATCH", "k", "FROM", "2"]), Frame::Int(3));
    let revs: Vec<i64> = (0..3)
        .map(|_| event(&mut w, 3).items()[2].field("revision").int())
        .collect();
    assert_eq!(revs, [2, 5, 6]);
    expect_ready(&mut w, 3);
    c.cmd(&["PUT", "k", "4"]);
    assert_eq!(event(&mut w, 3).items()[2].field("revision").int(), 7);
    w.cmd(&["UNWATCH"]);

    // Errors.
    assert!(w.cmd(&["WATCH", "a..b"]).is_error_code("BADKEY"));
    assert!(w.cmd(&["WATCH", ">", "SOMETIMES"]).is_error_code("ERR"));
    assert!(w.cmd(&["WATCH", ">", "FROM"]).is_error_code("ERR"));
    assert!(w.cmd(&["WATCH", ">", "FROM", "x"]).is_error_code("BADARG"));
}

#[test]
fn inline_clients_see_resp2_frames() {
    let srv = Srv::start();
    let mut w = srv.raw();
    assert_eq!(w.line("WATCH greet.* UPDATESONLY"), Frame::Int(1));
    let mut c = srv.raw();
    // ready first, as a plain array
    let f = w.read();
    assert_eq!(
        f,
        Frame::Array(vec![
            Frame::bulk("watch"),
            Frame::Int(1),
            Frame::bulk("ready")
        ])
    );
    c.line("PUT greet.en hello");
    let f = w.read();
    assert!(matches!(f, Frame::Array(_)));
    assert_eq!(f.items()[2].field("value"), Frame::bulk("hello"));
}

/// Creates bucket `name`, watches all of it on a second connection (until `ready`), then
/// drops the bucket; returns the (dropping, watching) connections.
fn watch_then_drop(srv: &Srv, name: &str) -> (Raw, Raw) {
    let mut c = srv.raw();
    c.cmd(&["BUCKET", "CREATE", name]);
    let mut w = srv.raw();
    w.cmd(&["USE", name]);
    assert_eq!(w.cmd(&["WATCH", ">"]), Frame::Int(1));
    expect_ready(&mut w, 1);
    assert_eq!(c.cmd(&["BUCKET", "DROP", name]), Frame::ok());
    (c, w)
}

#[test]
fn dropping_the_bucket_ends_its_watches() {
    let srv = Srv::start();
    let (_c, mut w) = watch_then_drop(&srv, "tmp");
    let f = event(&mut w, 1);
    assert_eq!(f.items()[2], Frame::bulk("lost"));
    assert_eq!(f.items()[3], Frame::Int(0));
    // The watch is gone: the RESP2 connection is back to normal commands.
    assert!(w.cmd(&["GET", "x"]).is_error_code("NOBUCKET"));
    assert_eq!(w.cmd(&["USE", "default"]), Frame::ok());
    assert_eq!(w.cmd(&["GET", "x"]), Frame::Null);
}

#[test]
fn a_bucket_dropped_and_created_again_wakes_its_new_watchers() {
    let srv = Srv::start();
    let (mut c, mut w) = watch_then_drop(&srv, "again");
    assert_eq!(event(&mut w, 1).items()[2], Frame::bulk("lost"));
    // A new bucket of the same name: its watchers are woken by its writes, not the old one's.
    c.cmd(&["BUCKET", "CREATE", "again"]);
    c.cmd(&["USE", "again"]);
    let mut w2 = srv.raw();
    w2.cmd(&["USE", "again"]);
    assert_eq!(w2.cmd(&["WATCH", ">"]), Frame::Int(1));
    expect_ready(&mut w2, 1);
    assert_eq!(c.cmd(&["PUT", "k", "v1"]), Frame::Int(1));
    expect_entry(&mut w2, 1, "k", "PUT", 0);
}

#[test]
fn watchers_leaving_and_coming_back_are_woken() {
    let srv = Srv::start();
    let mut c = srv.raw();
    // The last watcher of the bucket leaves (its connection closes): a new one must still
    // be woken by the next write, and the one after it too.
    for round in 0..3 {
        let mut w = srv.raw();
        assert_eq!(w.cmd(&["WATCH", ">", "UPDATESONLY"]), Frame::Int(1));
        expect_ready(&mut w, 1);
        let key = format!("k{round}");
        c.cmd(&["PUT", key.as_str(), "v"]);
        expect_entry(&mut w, 1, &key, "PUT", 0);
        if round == 1 {
            // This time the watch ends by UNWATCH instead of a closed connection.
            assert_eq!(w.cmd(&["UNWATCH"]), Frame::Int(0));
        }
    }
}

#[test]
fn a_watcher_that_never_reads_does_not_block_writers() {
    let srv = Srv::start_with(|c| c.fsync = logkv::FsyncPolicy::Never);
    let mut lazy = srv.raw();
    assert_eq!(lazy.cmd(&["WATCH", ">"]), Frame::Int(1));
    // ~40 MB of events that the lazy watcher does not read: far more than socket buffers
    // and the server's high-water mark.
    let value = "v".repeat(4096);
    let mut writer = srv.raw();
    let mut batch = Vec::new();
    for round in 0..10 {
        batch.clear();
        for i in 0..1000 {
            let key = format!("k.{round}.{i}");
            logkv_server::protocol::encode_request(&["PUT", &key, &value], &mut batch);
        }
        writer.send(&batch);
        for i in 0..1000 {
            assert_eq!(writer.read(), Frame::Int(round * 1000 + i + 1));
        }
    }
    // Other clients are served meanwhile.
    assert_eq!(srv.raw().cmd(&["GET", "k.0.0"]), Frame::bulk(&value));
    // The lazy watcher still gets everything, in order, when it finally reads.
    expect_ready(&mut lazy, 1);
    for rev in 1..=10_000 {
        let f = event(&mut lazy, 1);
        assert_eq!(f.items()[2].field("revision").int(), rev);
    }
}

#[test]
fn an_expiry_is_seen_as_a_del() {
    let srv = Srv::start();
    let mut w = srv.raw();
    assert_eq!(w.cmd(&["WATCH", "session.*", "UPDATESONLY"]), Frame::Int(1));
    expect_ready(&mut w, 1);
    let mut c = srv.raw();
    assert_eq!(
        c.cmd(&["PUT", "session.1", "token", "TTL", "100"]),
        Frame::Int(1)
    );
    let e = expect_entry(&mut w, 1, "session.1", "PUT", 0);
    assert!(e.field("expires").int() > 0);
    // The background sweep writes the DEL marker (within about a second).
    let e = expect_entry(&mut w, 1, "session.1", "DEL", 0);
    assert_eq!(e.field("revision").int(), 2);
    assert_eq!(c.cmd(&["GET", "session.1"]), Frame::Null);
}

/// Events written to an idle connection by the watch pump and replies written by the
/// connection itself share one socket: under concurrent writers, a watcher that also sends
/// commands gets every reply in request order and every event exactly once, in revision
/// order (the pump's deliveries and the connection's own writes never cross).
#[test]
fn pushed_events_and_replies_share_the_socket_without_loss_or_reorder() {
    const WRITERS: usize = 3;
    const PER_WRITER: usize = 600;
    const PINGS: usize = 300;
    let srv = Srv::start_with(|c| c.fsync = logkv::FsyncPolicy::Never);
    let mut w = srv.raw();
    assert_eq!(w.cmd(&["HELLO", "3"]).field("proto").int(), 3);
    assert_eq!(w.cmd(&["WATCH", ">", "UPDATESONLY"]), Frame::Int(1));
    expect_ready(&mut w, 1);
    let value = "x".repeat(300);
    let writers: Vec<_> = (0..WRITERS)
        .map(|t| {
            let mut c = srv.raw();
            let value = value.clone();
            std::thread::spawn(move || {
                for i in 0..PER_WRITER {
                    let key = format!("w{t}.{i}");
                    assert!(matches!(c.cmd(&["PUT", &key, &value]), Frame::Int(_)));
                }
            })
        })
        .collect();
    let mut next_rev = 1;
    let take_push = |f: &Frame, next_rev: &mut i64| {
        assert_eq!(f.items()[1], Frame::Int(1), "{f:?}");
        assert_eq!(f.items()[2].field("revision").int(), *next_rev, "{f:?}");
        *next_rev += 1;
    };
    for p in 0..PINGS {
        let msg = format!("ping-{p}");
        w.send_cmd(&[b"PING", msg.as_bytes()]);
        loop {
            let f = w.read();
            if matches!(f, Frame::Push(_)) {
                take_push(&f, &mut next_rev);
            } else {
                assert_eq!(f, Frame::bulk(&msg), "replies in request order");
                break;
            }
        }
    }
    for h in writers {
        h.join().expect("writer");
    }
    let total = i64::try_from(WRITERS * PER_WRITER).expect("small");
    while next_rev <= total {
        let f = w.read();
        assert!(matches!(f, Frame::Push(_)), "only events are left: {f:?}");
        take_push(&f, &mut next_rev);
    }
    assert_eq!(
        w.cmd(&["PING"]),
        Frame::Simple("PONG".into()),
        "nothing more"
    );
}

/// A write watched by more connections than one share of a delivery (the pump then sends
/// from several threads at once) reaches every watcher, once, in revision order.
#[test]
fn a_large_fan_out_reaches_every_watcher_in_order() {
    const WATCHERS: usize = 600;
    const WRITES: i64 = 20;
    let srv = Srv::start_with(|c| c.fsync = logkv::FsyncPolicy::Never);
    let mut watchers: Vec<Raw> = (0..WATCHERS)
        .map(|_| {
            let mut w = srv.raw();
            assert_eq!(w.cmd(&["WATCH", ">", "UPDATESONLY"]), Frame::Int(1));
            expect_ready(&mut w, 1);
            w
        })
        .collect();
    let mut c = srv.raw();
    for rev in 1..=WRITES {
        let key = format!("fan.{rev}");
        assert_eq!(c.cmd(&["PUT", &key, "v"]), Frame::Int(rev));
    }
    for w in &mut watchers {
        for rev in 1..=WRITES {
            let e = expect_entry(w, 1, &format!("fan.{rev}"), "PUT", 0);
            assert_eq!(e.field("revision").int(), rev);
        }
        assert_eq!(
            w.cmd(&["PING"]),
            Frame::Simple("PONG".into()),
            "nothing more"
        );
    }
}

/// Watchers that read the same writes differently (RESP2 or RESP3, with or without values,
/// a narrower pattern, no deletes, a second watch on the connection) each get their own
/// frames from one delivery. The pump encodes the events once for the watchers that read
/// alike and sends those bytes to each of them: no watcher may be handed frames meant for
/// another kind.
/// `(watch id, pattern, options)` of each watch one connection starts.
type WatchSpecs = &'static [(i64, &'static str, &'static [&'static str])];

#[test]
fn a_fan_out_to_watchers_of_every_kind_gives_each_its_own_frames() {
    const WATCHERS: usize = 600;
    const WRITES: usize = 30;
    let key = |i: usize| {
        if i.is_multiple_of(2) {
            format!("fan.even.{i}")
        } else {
            format!("fan.odd.{i}")
        }
    };
    // Write i has revision i + 1; every fifth deletes the key written two before it.
    let writes: Vec<(String, &str)> = (0..WRITES)
        .map(|i| {
            if i % 5 == 4 {
                (key(i - 2), "DEL")
            } else {
                (key(i), "PUT")
            }
        })
        .collect();
    let srv = Srv::start_with(|c| c.fsync = logkv::FsyncPolicy::Never);
    // (watch id, pattern, options) of each kind's watches, and whether it speaks RESP3.
    let kinds: [(WatchSpecs, bool); 6] = [
        (&[(1, ">", &[])], false),
        (&[(1, ">", &[])], true),
        (&[(1, ">", &["METAONLY"])], false),
        (&[(1, "fan.odd.>", &[]), (2, ">", &[])], false),
        (&[(1, "fan.odd.>", &[])], true),
        (&[(1, ">", &["NODELETES"])], false),
    ];
    let mut watchers: Vec<(usize, Raw)> = (0..WATCHERS)
        .map(|n| {
            // Runs of one kind (watchers that read alike and share frames), then the
            // kinds in turn (more kinds than a sending thread keeps frames for).
            let kind = if n < WATCHERS / 2 { n / 10 } else { n } % kinds.len();
            let (specs, resp3) = kinds[kind];
            let mut w = srv.raw();
            if resp3 {
                assert_eq!(w.cmd(&["HELLO", "3"]).field("proto").int(), 3);
            }
            for (id, pattern, opts) in specs {
                let mut args = vec!["WATCH", pattern, "UPDATESONLY"];
                args.extend_from_slice(opts);
                assert_eq!(w.cmd(&args), Frame::Int(*id));
                expect_ready(&mut w, *id);
            }
            (kind, w)
        })
        .collect();
    let mut c = srv.raw();
    for (k, op) in &writes {
        let reply = c.cmd(&[op, k.as_str(), "v"][..if *op == "PUT" { 3 } else { 2 }]);
        assert!(!matches!(reply, Frame::Error(_)), "{op} {k}: {reply:?}");
    }
    // (key, op, revision) of what a watch on `pattern` with `opts` sees, in order.
    let expected = |pattern: &str, opts: &[&str]| -> Vec<(String, String, i64)> {
        writes
            .iter()
            .zip(1..)
            .filter(|((k, op), _)| {
                (pattern == ">" || k.starts_with("fan.odd."))
                    && !(opts.contains(&"NODELETES") && *op == "DEL")
            })
            .map(|((k, op), rev)| (k.clone(), (*op).to_string(), rev))
            .collect()
    };
    for (n, (kind, w)) in watchers.iter_mut().enumerate() {
        let (specs, resp3) = kinds[*kind];
        // A connection with two watches gets each one's frames in order, the two
        // interleaved as deliveries fall: read them all, then pick each watch's.
        let total: usize = specs
            .iter()
            .map(|(_, pattern, opts)| expected(pattern, opts).len())
            .sum();
        let frames: Vec<Frame> = (0..total).map(|_| w.read()).collect();
        for (id, pattern, opts) in specs {
            let meta_only = opts.contains(&"METAONLY");
            let got: Vec<(String, String, i64)> = frames
                .iter()
                .filter(|f| f.items()[1] == Frame::Int(*id))
                .map(|f| {
                    assert_eq!(matches!(f, Frame::Push(_)), resp3, "watcher {n}: {f:?}");
                    assert_eq!(f.items()[0], Frame::bulk("watch"), "{f:?}");
                    let e = &f.items()[2];
                    let fields = e.pairs();
                    let has_value = fields.iter().any(|(name, _)| name == "value");
                    assert_eq!(has_value, !meta_only, "watcher {n}, watch {id}: {f:?}");
                    let op = e.field("op").text();
                    if op == "PUT" && !meta_only {
                        assert_eq!(e.field("value"), Frame::bulk("v"), "{f:?}");
                    }
                    (e.field("key").text(), op, e.field("revision").int())
                })
                .collect();
            assert_eq!(
                got,
                expected(pattern, opts),
                "watcher {n} (kind {kind}), watch {id}"
            );
        }
        assert_eq!(
            w.cmd(&["PING"]),
            Frame::Simple("PONG".into()),
            "watcher {n}: nothing more"
        );
    }
}

/// Caps the kernel's receive buffer of `stream` (on loopback it grows to many MiB), so
/// that what the kernel holds on the way is small next to a backlog of events.
fn small_receive_buffer(stream: &std::net::TcpStream) {
    use std::os::fd::AsRawFd as _;
    let size: libc::c_int = 64 * 1024;
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).expect("small");
    // SAFETY: an open socket's descriptor, and an int option given with its size.
    let ret = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&raw const size).cast(),
            len,
        )
    };
    assert_eq!(ret, 0, "SO_RCVBUF: {}", std::io::Error::last_os_error());
}

/// A watcher whose watch has a backlog of many rounds of events (far past the output's
/// high-water mark) and that sends UNWATCH gets the reply after about a round more, not
/// after the whole backlog: the connection reads its input between rounds. Nothing comes
/// after the reply; nor after QUIT's, sent the same way. Before, a pull that stopped at the high-water mark was followed by the
/// next one without reading anything: the reply came after all 10,001 events.
#[test]
fn unwatch_is_answered_in_the_middle_of_a_backlog_of_events() {
    use std::io::Read as _;

    const WRITES: usize = 10_000;
    let srv = Srv::start_with(|c| c.fsync = logkv::FsyncPolicy::Never);
    // ~40 MB of history: about 40 rounds of the server's 1 MiB high-water mark.
    let value = "v".repeat(4096);
    let mut writer = srv.raw();
    let mut batch = Vec::new();
    for round in 0..10 {
        batch.clear();
        for i in 0..WRITES / 10 {
            let key = format!("k.{round}.{i}");
            logkv_server::protocol::encode_request(&["PUT", &key, &value], &mut batch);
        }
        writer.send(&batch);
        for _ in 0..WRITES / 10 {
            assert!(matches!(writer.read(), Frame::Int(_)));
        }
    }
    let mut w = srv.raw();
    small_receive_buffer(&w.stream);
    assert_eq!(w.cmd(&["HELLO", "3"]).field("proto").int(), 3);
    assert_eq!(w.cmd(&["WATCH", ">", "FROM", "1"]), Frame::Int(1));
    let mut events = 0;
    for _ in 0..10 {
        let f = w.read();
        assert!(matches!(f, Frame::Push(_)), "{f:?}");
        events += 1;
    }
    w.send_cmd(&[b"UNWATCH"]);
    loop {
        match w.read() {
            Frame::Push(_) => events += 1,
            reply => {
                assert_eq!(reply, Frame::Int(0), "UNWATCH's reply");
                break;
            }
        }
    }
    // What was on the way: a round of the server's (about 256 events of 4 KiB), the
    // kernel's buffers (up to about 4 MiB on the server's side) and what was read first.
    assert!(
        events < WRITES / 4,
        "{events} of the {} events (every write, then ready) came before UNWATCH's reply",
        WRITES + 1
    );
    assert_eq!(
        w.cmd(&["PING"]),
        Frame::Simple("PONG".into()),
        "nothing after UNWATCH's reply"
    );

    // QUIT alike, and the connection closes right after its reply.
    assert_eq!(w.cmd(&["WATCH", ">", "FROM", "1"]), Frame::Int(2));
    let mut events = 0;
    w.send_cmd(&[b"QUIT"]);
    loop {
        match w.read() {
            Frame::Push(_) => events += 1,
            reply => {
                assert_eq!(reply, Frame::ok(), "QUIT's reply");
                break;
            }
        }
    }
    assert!(
        events < WRITES / 4,
        "{events} events came before QUIT's reply"
    );
    let mut rest = Vec::new();
    w.reader.read_to_end(&mut rest).expect("read to the end");
    assert!(rest.is_empty(), "{} bytes after QUIT's reply", rest.len());
}

/// A watcher that stops reading is closed once it has taken no byte for
/// `--watch-send-timeout`, ending its watch (which held the log segments it reads).
/// Before, its task waited on the socket for ever. The watcher here reads its first
/// event, then nothing: INFO's `watchers` goes back to 0.
#[test]
fn a_watcher_that_stops_reading_is_closed_after_the_send_timeout() {
    const WRITES: usize = 5_000;
    let srv = Srv::start_with(|c| {
        c.fsync = logkv::FsyncPolicy::Never;
        c.watch_send_timeout = std::time::Duration::from_secs(1);
    });
    // ~20 MB of history, far more than the socket buffers hold.
    let value = "v".repeat(4096);
    let mut writer = srv.raw();
    let mut batch = Vec::new();
    for i in 0..WRITES {
        logkv_server::protocol::encode_request(&["PUT", &format!("k.{i}"), &value], &mut batch);
    }
    writer.send(&batch);
    for _ in 0..WRITES {
        assert!(matches!(writer.read(), Frame::Int(_)));
    }
    let mut w = srv.raw();
    small_receive_buffer(&w.stream);
    assert_eq!(w.cmd(&["HELLO", "3"]).field("proto").int(), 3);
    assert_eq!(w.cmd(&["WATCH", ">", "FROM", "1"]), Frame::Int(1));
    assert!(matches!(w.read(), Frame::Push(_)));
    let watchers = |c: &mut common::server::Raw| {
        let info = c.cmd(&["INFO"]).text();
        info.lines()
            .find_map(|l| l.strip_prefix("watchers:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no watchers in {info}"))
    };
    assert_eq!(watchers(&mut writer), 1);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while watchers(&mut writer) > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the stalled watcher is still there after 60 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    drop(w);
}
