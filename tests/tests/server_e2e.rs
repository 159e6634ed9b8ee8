//! End-to-end tests of the server: a real server on a loopback port, spoken to with the
//! `redis` crate (what programs use) and with raw RESP / inline bytes (what people type).
#![allow(
    clippy::too_many_lines,
    reason = "a test reads as one scenario, top to bottom"
)]

mod common;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write;
use std::time::Duration;

use common::server::{redis_err, Frame, Raw, Srv};
use redis::{cmd, Value};

fn code_of(r: redis::RedisResult<Value>) -> (String, String) {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => redis_err(&e),
    }
}

#[test]
fn kv_verbs_over_a_redis_client() {
    let srv = Srv::start();
    let mut c = srv.redis();
    let r1: i64 = cmd("PUT")
        .arg("user.1.name")
        .arg("ada")
        .query(&mut c)
        .unwrap();
    assert_eq!(r1, 1);
    let v: Option<String> = cmd("GET").arg("user.1.name").query(&mut c).unwrap();
    assert_eq!(v.as_deref(), Some("ada"));
    let v: Option<String> = cmd("GET").arg("missing").query(&mut c).unwrap();
    assert_eq!(v, None);
    // Verbs are case-insensitive, keys are not.
    let v: Option<String> = cmd("get").arg("USER.1.NAME").query(&mut c).unwrap();
    assert_eq!(v, None);

    // SET is Redis-compatible.
    let ok: String = cmd("SET").arg("s").arg("one").query(&mut c).unwrap();
    assert_eq!(ok, "OK");
    let prev: Option<String> = cmd("SET")
        .arg("s")
        .arg("two")
        .arg("GET")
        .query(&mut c)
        .unwrap();
    assert_eq!(prev.as_deref(), Some("one"));
    let prev: Option<String> = cmd("SET")
        .arg("fresh")
        .arg("x")
        .arg("GET")
        .query(&mut c)
        .unwrap();
    assert_eq!(prev, None);
    let _: () = cmd("SET")
        .arg("e")
        .arg("v")
        .arg("EX")
        .arg(100)
        .query(&mut c)
        .unwrap();
    let ttl: i64 = cmd("TTL").arg("e").query(&mut c).unwrap();
    assert!(ttl > 90_000 && ttl <= 100_000, "{ttl}");
    let _: () = cmd("SET")
        .arg("p")
        .arg("v")
        .arg("PX")
        .arg(50_000)
        .query(&mut c)
        .unwrap();
    let ttl: i64 = cmd("TTL").arg("p").query(&mut c).unwrap();
    assert!(ttl > 40_000 && ttl <= 50_000, "{ttl}");
    assert_eq!(cmd("TTL").arg("s").query::<i64>(&mut c).unwrap(), -1);
    assert_eq!(cmd("TTL").arg("nothing").query::<i64>(&mut c).unwrap(), -2);
    let (code, _) = code_of(cmd("SET").arg("e").arg("v").arg("EX").arg(0).query(&mut c));
    assert_eq!(code, "BADARG");
    let (code, _) = code_of(cmd("SET").arg("e").arg("v").arg("NX").query(&mut c));
    assert_eq!(code, "ERR");

    // PUT with a TTL.
    let r: i64 = cmd("PUT")
        .arg("t")
        .arg("v")
        .arg("TTL")
        .arg(60_000)
        .query(&mut c)
        .unwrap();
    let ttl: i64 = cmd("TTL").arg("t").query(&mut c).unwrap();
    assert!(ttl > 50_000 && ttl <= 60_000, "{ttl}");
    let (code, msg) = code_of(
        cmd("PUT")
            .arg("t")
            .arg("v")
            .arg("TTL")
            .arg("soon")
            .query(&mut c),
    );
    assert_eq!(code, "BADARG", "{msg}");
    let (code, _) = code_of(cmd("PUT").arg("t").arg("v").arg("TTL").arg(0).query(&mut c));
    assert_eq!(code, "BADARG");
    let (code, _) = code_of(cmd("PUT").arg("t").arg("v").arg("FOR").arg(1).query(&mut c));
    assert_eq!(code, "ERR");

    // CREATE
    let (code, _) = code_of(cmd("CREATE").arg("t").arg("x").query(&mut c));
    assert_eq!(code, "EXISTS");
    let rc: i64 = cmd("CREATE").arg("new.key").arg("x").query(&mut c).unwrap();
    assert_eq!(rc, r + 1);

    // UPDATE and WRONGREV with its exact message.
    let (code, msg) = code_of(cmd("UPDATE").arg("new.key").arg("y").arg(999).query(&mut c));
    assert_eq!(
        (code.as_str(), msg.as_str()),
        ("WRONGREV", "expected 999, latest 8")
    );
    let (code, msg) = code_of(
        cmd("UPDATE")
            .arg("never.seen")
            .arg("y")
            .arg(3)
            .query(&mut c),
    );
    assert_eq!(
        (code.as_str(), msg.as_str()),
        ("WRONGREV", "expected 3, latest 0")
    );
    let ru: i64 = cmd("UPDATE")
        .arg("new.key")
        .arg("y")
        .arg(rc)
        .query(&mut c)
        .unwrap();
    assert_eq!(ru, rc + 1);
    let r0: i64 = cmd("UPDATE")
        .arg("zero.key")
        .arg("z")
        .arg(0)
        .query(&mut c)
        .unwrap();
    assert_eq!(r0, ru + 1);

    // CAS
    let (code, _) = code_of(
        cmd("CAS")
            .arg("new.key")
            .arg("z")
            .arg("wrong")
            .query(&mut c),
    );
    assert_eq!(code, "MISMATCH");
    let _: i64 = cmd("CAS")
        .arg("new.key")
        .arg("z")
        .arg("y")
        .query(&mut c)
        .unwrap();
    let (code, _) = code_of(cmd("CAS").arg("new.key").arg("w").query(&mut c));
    assert_eq!(code, "MISMATCH");
    let _: i64 = cmd("CAS").arg("cas.fresh").arg("w").query(&mut c).unwrap();

    // DEL, DEL REV, PURGE, GETDEL
    let rd: i64 = cmd("DEL").arg("cas.fresh").query(&mut c).unwrap();
    assert!(rd > 0);
    let v: Option<String> = cmd("GET").arg("cas.fresh").query(&mut c).unwrap();
    assert_eq!(v, None);
    let _: i64 = cmd("DEL").arg("never.existed").query(&mut c).unwrap();
    let (code, msg) = code_of(cmd("DEL").arg("new.key").arg("REV").arg(1).query(&mut c));
    assert_eq!(code, "WRONGREV", "{msg}");
    let entry: Value = cmd("ENTRY").arg("new.key").query(&mut c).unwrap();
    let latest = match entry {
        Value::Array(items) => match &items[7] {
            Value::Int(n) => *n,
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    };
    let _: i64 = cmd("DEL")
        .arg("new.key")
        .arg("REV")
        .arg(latest)
        .query(&mut c)
        .unwrap();
    let _: i64 = cmd("PURGE").arg("s").query(&mut c).unwrap();
    assert_eq!(
        cmd("GET").arg("s").query::<Option<String>>(&mut c).unwrap(),
        None
    );
    let got: Option<String> = cmd("GETDEL").arg("user.1.name").query(&mut c).unwrap();
    assert_eq!(got.as_deref(), Some("ada"));
    let got: Option<String> = cmd("GETDEL").arg("user.1.name").query(&mut c).unwrap();
    assert_eq!(got, None);

    // BADKEY, unknown verbs, arity.
    for bad in ["bad key", ".lead", "trail.", "a..b", "wild*", "x>y", ""] {
        let (code, _) = code_of(cmd("PUT").arg(bad).arg("v").query(&mut c));
        assert_eq!(code, "BADKEY", "{bad:?}");
    }
    let (code, _) = code_of(cmd("GET").arg(&b"\xff\xfe"[..]).query(&mut c));
    assert_eq!(code, "BADKEY");
    let (code, msg) = code_of(cmd("FROBNICATE").arg("x").query(&mut c));
    assert_eq!(code, "ERR");
    assert!(msg.contains("unknown command"), "{msg}");
    let (code, msg) = code_of(cmd("GET").query(&mut c));
    assert_eq!(
        (code.as_str(), msg.as_str()),
        ("ERR", "wrong number of arguments for 'get' command")
    );
    let (code, _) = code_of(
        cmd("PUT")
            .arg("a")
            .arg("b")
            .arg("c")
            .arg("d")
            .arg("e")
            .arg("f")
            .query(&mut c),
    );
    assert_eq!(code, "ERR");

    // Binary-safe values.
    let blob: Vec<u8> = (0..=255u8).collect();
    let _: i64 = cmd("PUT").arg("bin").arg(&blob[..]).query(&mut c).unwrap();
    let back: Vec<u8> = cmd("GET").arg("bin").query(&mut c).unwrap();
    assert_eq!(back, blob);
}

#[test]
fn history_revisions_entries_and_revert() {
    let srv = Srv::start();
    let mut c = srv.raw();
    assert_eq!(
        c.cmd(&["BUCKET", "CREATE", "hist", "HISTORY", "5"]),
        Frame::ok()
    );
    assert_eq!(c.cmd(&["USE", "hist"]), Frame::ok());
    assert_eq!(c.cmd(&["PUT", "k", "v1"]).int(), 1);
    assert_eq!(c.cmd(&["PUT", "k", "v2"]).int(), 2);
    assert_eq!(c.cmd(&["DEL", "k"]).int(), 3);
    assert_eq!(c.cmd(&["GET", "k"]), Frame::Null);
    assert_eq!(c.cmd(&["GET", "k", "REV", "1"]), Frame::bulk("v1"));
    assert_eq!(
        c.cmd(&["GET", "k", "rev", "3"]),
        Frame::Null,
        "a DEL has no value"
    );
    assert_eq!(c.cmd(&["GET", "k", "REV", "77"]), Frame::Null);
    assert_eq!(c.cmd(&["ENTRY", "k"]), Frame::Null);
    let marker = c.cmd(&["ENTRY", "k", "REV", "3"]);
    let fields: Vec<String> = marker.pairs().into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        fields,
        ["bucket", "key", "value", "revision", "created", "op", "delta", "expires"]
    );
    assert_eq!(marker.field("op"), Frame::bulk("DEL"));
    assert_eq!(marker.field("value"), Frame::bulk(""));
    assert_eq!(marker.field("bucket"), Frame::bulk("hist"));
    assert_eq!(marker.field("revision").int(), 3);
    assert!(marker.field("created").int() > 1_600_000_000_000);
    assert_eq!(marker.field("expires").int(), 0);

    let hist = c.cmd(&["HISTORY", "k"]);
    let revs: Vec<i64> = hist
        .items()
        .iter()
        .map(|e| e.field("revision").int())
        .collect();
    assert_eq!(revs, [1, 2, 3]);
    assert_eq!(c.cmd(&["HISTORY", "nothing.>"]), Frame::Array(vec![]));

    // REVERT brings back an old value as a new PUT; undeleting by UPDATE on the marker.
    assert_eq!(c.cmd(&["REVERT", "k", "1"]).int(), 4);
    assert_eq!(c.cmd(&["GET", "k"]), Frame::bulk("v1"));
    assert!(c.cmd(&["REVERT", "k", "3"]).is_error_code("NOTFOUND"));
    assert!(c.cmd(&["REVERT", "k", "99"]).is_error_code("NOTFOUND"));
    assert!(c.cmd(&["REVERT", "k", "x"]).is_error_code("BADARG"));
    assert_eq!(c.cmd(&["DEL", "k"]).int(), 5);
    assert_eq!(c.cmd(&["UPDATE", "k", "back", "5"]).int(), 6);
    assert_eq!(c.cmd(&["CREATE", "gone", "1"]).int(), 7);
    assert_eq!(c.cmd(&["DEL", "gone"]).int(), 8);
    assert_eq!(
        c.cmd(&["CREATE", "gone", "2"]).int(),
        9,
        "a deleted key can be created"
    );

    // PURGE drops the earlier history.
    assert_eq!(c.cmd(&["PURGE", "k"]).int(), 10);
    let hist = c.cmd(&["HISTORY", "k"]);
    assert_eq!(hist.items().len(), 1);
    assert_eq!(hist.items()[0].field("op"), Frame::bulk("PURGE"));
    // Every bucket counts its own revisions.
    assert_eq!(c.cmd(&["USE", "default"]), Frame::ok());
    assert_eq!(c.cmd(&["PUT", "k", "d"]).int(), 1);
}

#[test]
fn buckets_status_and_limits() {
    let srv = Srv::start();
    let mut c = srv.raw();
    assert_eq!(
        c.cmd(&["BUCKET", "CREATE", "small", "MAXBYTES", "300", "MAXVALUE", "10", "TTL", "0"]),
        Frame::ok()
    );
    assert!(c
        .cmd(&["BUCKET", "CREATE", "small"])
        .is_error_code("EXISTS"));
    assert!(c
        .cmd(&["BUCKET", "CREATE", "bad name!"])
        .is_error_code("BADARG"));
    assert!(c
        .cmd(&["BUCKET", "CREATE", "h", "HISTORY", "0"])
        .is_error_code("BADARG"));
    assert!(c
        .cmd(&["BUCKET", "CREATE", "h", "HISTORY", "65"])
        .is_error_code("BADARG"));
    assert!(c
        .cmd(&["BUCKET", "CREATE", "h", "HISTORY"])
        .is_error_code("ERR"));
    assert!(c
        .cmd(&["BUCKET", "CREATE", "h", "COLOR", "red"])
        .is_error_code("ERR"));
    assert!(c.cmd(&["BUCKET", "RENAME", "h"]).is_error_code("ERR"));
    assert_eq!(
        c.cmd(&["BUCKET", "LIST"]),
        Frame::Array(vec![Frame::bulk("default"), Frame::bulk("small")])
    );
    assert!(c.cmd(&["USE", "nope"]).is_error_code("NOBUCKET"));
    assert_eq!(c.cmd(&["USE", "small"]), Frame::ok());
    assert!(c
        .cmd(&["PUT", "big", "01234567890"])
        .is_error_code("TOOLARGE"));
    assert_eq!(c.cmd(&["PUT", "a", "0123456789"]).int(), 1);
    let mut full = false;
    for i in 0..20 {
        let r = c.cmd(&["PUT", &format!("k{i}"), "0123456789"]);
        if r.is_error_code("FULL") {
            full = true;
            break;
        }
        assert!(matches!(r, Frame::Int(_)), "{r:?}");
    }
    assert!(full, "MAXBYTES was never reached");
    // DEL is always accepted.
    assert!(matches!(c.cmd(&["DEL", "a"]), Frame::Int(_)));

    let st = c.cmd(&["STATUS"]);
    let names: Vec<String> = st.pairs().into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        names,
        [
            "bucket", "values", "keys", "bytes", "history", "ttl", "maxbytes", "maxvalue",
            "firstrev", "lastrev"
        ]
    );
    assert_eq!(st.field("bucket"), Frame::bulk("small"));
    assert_eq!(st.field("maxbytes").int(), 300);
    assert_eq!(st.field("maxvalue").int(), 10);
    assert_eq!(st.field("history").int(), 1);
    assert!(st.field("lastrev").int() >= 2);
    let st = c.cmd(&["STATUS", "default"]);
    assert_eq!(st.field("bucket"), Frame::bulk("default"));
    assert_eq!(st.field("lastrev").int(), 0);
    assert!(c.cmd(&["STATUS", "nope"]).is_error_code("NOBUCKET"));

    // Dropping: the current bucket is gone for this connection too.
    let mut other = srv.raw();
    assert_eq!(other.cmd(&["BUCKET", "DROP", "small"]), Frame::ok());
    assert!(other
        .cmd(&["BUCKET", "DROP", "small"])
        .is_error_code("NOBUCKET"));
    assert!(other
        .cmd(&["BUCKET", "DROP", "default"])
        .is_error_code("BADARG"));
    assert!(c.cmd(&["GET", "a"]).is_error_code("NOBUCKET"));
    // Re-created under the same name: the connection follows the name.
    assert_eq!(other.cmd(&["BUCKET", "CREATE", "small"]), Frame::ok());
    assert_eq!(c.cmd(&["PUT", "a", "again"]).int(), 1);
    assert!(!srv
        .dir
        .path()
        .join("buckets")
        .join("small.dropped")
        .exists());
}

#[test]
fn keys_search_scan_and_delglob() {
    let srv = Srv::start();
    let mut c = srv.raw();
    for k in [
        "user.1.name",
        "user.1.mail",
        "user.2.name",
        "order.9",
        "zeta",
    ] {
        assert!(matches!(
            c.cmd(&["PUT", k, &format!("v-{k}")]),
            Frame::Int(_)
        ));
    }
    let keys = |c: &mut Raw, args: &[&str]| -> Vec<String> {
        c.cmd(args).items().iter().map(Frame::text).collect()
    };
    assert_eq!(
        keys(&mut c, &["KEYS"]),
        [
            "order.9",
            "user.1.mail",
            "user.1.name",
            "user.2.name",
            "zeta"
        ]
    );
    assert_eq!(
        keys(&mut c, &["KEYS", "user.*.name"]),
        ["user.1.name", "user.2.name"]
    );
    assert_eq!(keys(&mut c, &["KEYS", "user.>"]).len(), 3);
    assert!(keys(&mut c, &["KEYS", "nomatch.>"]).is_empty());
    assert!(c.cmd(&["KEYS", "a..b"]).is_error_code("BADKEY"));

    let found = c.cmd(&["SEARCH", "user.?.n*"]);
    let ks: Vec<String> = found
        .items()
        .iter()
        .map(|e| e.field("key").text())
        .collect();
    assert_eq!(ks, ["user.1.name", "user.2.name"]);
    assert_eq!(
        found.items()[0].field("value"),
        Frame::bulk("v-user.1.name")
    );
    let found = c.cmd(&["SEARCH", "*", "LIMIT", "2"]);
    assert_eq!(found.items().len(), 2);
    assert!(c.cmd(&["SEARCH", "*", "LIMIT"]).is_error_code("ERR"));
    assert!(c
        .cmd(&["SEARCH", "*", "LIMIT", "x"])
        .is_error_code("BADARG"));
    assert_eq!(c.cmd(&["BUCKET", "CREATE", "other"]), Frame::ok());
    assert_eq!(c.cmd(&["USE", "other"]), Frame::ok());
    assert_eq!(c.cmd(&["PUT", "user.3.name", "x"]).int(), 1);
    let found = c.cmd(&["SEARCH", "user.*.name", "IN", "*"]);
    let pairs: Vec<(String, String)> = found
        .items()
        .iter()
        .map(|e| (e.field("bucket").text(), e.field("key").text()))
        .collect();
    assert_eq!(
        pairs,
        [
            ("default".into(), "user.1.name".into()),
            ("default".into(), "user.2.name".into()),
            ("other".into(), "user.3.name".into())
        ]
    );
    assert_eq!(
        c.cmd(&["SEARCH", "user.*", "IN", "oth?r", "LIMIT", "5"])
            .items()
            .len(),
        1
    );
    assert_eq!(c.cmd(&["USE", "default"]), Frame::ok());

    // SCAN pages
    let page = c.cmd(&["SCAN", "LIMIT", "2"]);
    assert_eq!(page.items().len(), 2);
    assert_eq!(page.items()[0], Frame::bulk("user.1.name"), "the next FROM");
    let ks: Vec<String> = page.items()[1]
        .items()
        .iter()
        .map(|e| e.field("key").text())
        .collect();
    assert_eq!(ks, ["order.9", "user.1.mail"]);
    let page = c.cmd(&["SCAN", "FROM", "user.1.name", "LIMIT", "10"]);
    assert_eq!(page.items()[0], Frame::Null);
    assert_eq!(page.items()[1].items().len(), 3);
    let page = c.cmd(&["SCAN", "FROM", "user", "TO", "user.2"]);
    let ks: Vec<String> = page.items()[1]
        .items()
        .iter()
        .map(|e| e.field("key").text())
        .collect();
    assert_eq!(ks, ["user.1.mail", "user.1.name"]);
    assert_eq!(c.cmd(&["SCAN"]).items()[1].items().len(), 5);
    assert!(c.cmd(&["SCAN", "LIMIT", "0"]).is_error_code("BADARG"));
    assert!(c.cmd(&["SCAN", "FROM"]).is_error_code("ERR"));

    assert_eq!(c.cmd(&["DELGLOB", "user.*"]).int(), 3);
    assert_eq!(c.cmd(&["DELGLOB", "user.*"]).int(), 0);
    assert_eq!(keys(&mut c, &["KEYS"]), ["order.9", "zeta"]);
    // Deleted as by DEL: history markers exist.
    assert_eq!(c.cmd(&["ENTRY", "user.1.name"]), Frame::Null);
}

#[test]
fn admin_verbs() {
    let srv = Srv::start();
    let mut c = srv.raw();
    assert_eq!(c.cmd(&["PING"]), Frame::Simple("PONG".into()));
    assert_eq!(c.cmd(&["PING", "hello world"]), Frame::bulk("hello world"));
    assert_eq!(c.cmd(&["PUT", "a", "1"]).int(), 1);
    assert_eq!(c.cmd(&["SYNC"]), Frame::ok());
    for i in 0..50 {
        c.cmd(&["PUT", "churn", &i.to_string()]);
    }
    assert_eq!(c.cmd(&["COMPACT"]), Frame::ok());
    assert_eq!(c.cmd(&["GET", "churn"]), Frame::bulk("49"));
    let info = c.cmd(&["INFO"]).text();
    let fields: HashMap<&str, &str> = info
        .lines()
        .filter_map(|l| l.trim_end().split_once(':'))
        .collect();
    for f in [
        "version",
        "uptime",
        "connections",
        "commands",
        "keys",
        "bytes",
        "segments",
        "compactions",
        "compacting",
        "fsyncs",
        "watchers",
    ] {
        assert!(fields.contains_key(f), "INFO lacks {f}: {info}");
    }
    assert_eq!(fields["keys"], "2");
    assert_eq!(fields["compacting"], "0", "no compaction pass runs");
    assert_eq!(fields["watchers"], "0");
    assert_eq!(fields["connections"], "1");
    assert!(fields["fsyncs"].parse::<u64>().unwrap() >= 1);
    assert_eq!(
        c.cmd(&["CONFIG", "GET", "save"]),
        Frame::Array(vec![Frame::bulk("save"), Frame::bulk("")])
    );
    let ao = c.cmd(&["CONFIG", "GET", "appendonly"]);
    assert_eq!(ao.items()[0], Frame::bulk("appendonly"));
    assert_eq!(ao.items().len(), 2);
    assert_eq!(
        c.cmd(&["config", "get", "no-such-thing"]),
        Frame::Array(vec![])
    );
    assert!(c.cmd(&["CONFIG", "SET", "save", ""]).is_error_code("ERR"));
    assert!(c.cmd(&["CONFIG", "GET"]).is_error_code("ERR"));
    let hello = c.cmd(&["HELLO"]);
    assert_eq!(hello.field("server"), Frame::bulk("logkv"));
    assert_eq!(hello.field("proto").int(), 2);
    assert!(matches!(hello, Frame::Array(_)), "RESP2: a flat array");
    assert!(c.cmd(&["HELLO", "4"]).is_error_code("ERR"));
    for args in [
        &["CLUSTER", "INFO"][..],
        &["CLUSTER", "ADD", "2", "127.0.0.1:1"],
        &["CLUSTER", "ADD", "2", "127.0.0.1:1", "LEARNER"],
        &["CLUSTER", "REMOVE", "2"],
        &["CLUSTER", "LEADER", "2"],
    ] {
        assert_eq!(
            c.cmd(args),
            Frame::Error("ERR not a cluster".into()),
            "{args:?}"
        );
    }
    assert_eq!(c.cmd(&["QUIT"]), Frame::ok());
    assert!(c.closed());
}

#[test]
fn hello_3_switches_to_maps_nulls_and_back() {
    let srv = Srv::start();
    let mut c = srv.raw();
    c.cmd(&["PUT", "k", "v"]);
    let hello = c.cmd(&["HELLO", "3"]);
    let Frame::Map(_) = &hello else {
        panic!("HELLO 3 must reply with a map: {hello:?}")
    };
    assert_eq!(hello.field("server"), Frame::bulk("logkv"));
    assert_eq!(hello.field("proto").int(), 3);
    assert!(matches!(hello.field("version"), Frame::Bulk(_)));
    let e = c.cmd(&["ENTRY", "k"]);
    let Frame::Map(pairs) = &e else {
        panic!("{e:?}")
    };
    assert_eq!(pairs.len(), 8);
    assert_eq!(e.field("value"), Frame::bulk("v"));
    assert_eq!(c.cmd(&["GET", "nope"]), Frame::Null);
    c.send(b"GET nope\r\n");
    let mut raw = [0u8; 3];
    std::io::Read::read_exact(&mut c.reader, &mut raw).unwrap();
    assert_eq!(&raw, b"_\r\n", "RESP3 null");
    assert!(matches!(c.cmd(&["STATUS"]), Frame::Map(_)));
    assert!(matches!(c.cmd(&["CONFIG", "GET", "save"]), Frame::Map(_)));
    let page = c.cmd(&["SCAN"]);
    assert_eq!(page.items()[0], Frame::Null);
    let back = c.cmd(&["HELLO", "2"]);
    assert!(matches!(back, Frame::Array(_)));
    assert_eq!(back.field("proto").int(), 2);
    c.send(b"GET nope\r\n");
    let mut raw = [0u8; 5];
    std::io::Read::read_exact(&mut c.reader, &mut raw).unwrap();
    assert_eq!(&raw, b"$-1\r\n", "RESP2 null");

    // The redis crate, in RESP3 mode, gets maps.
    let mut r3 = srv.redis_resp3();
    let v: Value = cmd("ENTRY").arg("k").query(&mut r3).unwrap();
    assert!(matches!(v, Value::Map(ref m) if m.len() == 8), "{v:?}");
    let v: Value = cmd("GET").arg("nope").query(&mut r3).unwrap();
    assert_eq!(v, Value::Nil);
}

#[test]
fn a_multi_queue_counts_what_each_write_holds_not_only_its_arguments() {
    let srv = Srv::start_with(|c| c.max_request = 64 * 1024);
    let mut c = srv.raw();
    assert_eq!(c.cmd(&["MULTI"]), Frame::ok());
    // `DEL k` is 4 bytes of arguments: 16,384 of them would fit 64 KiB. What the
    // server holds for each queued write is counted too, so far fewer do.
    let mut queued = 0;
    loop {
        let r = c.cmd(&["DEL", "k"]);
        if let Frame::Error(e) = &r {
            assert!(e.contains("MULTI queue exceeds"), "{e}");
            break;
        }
        assert_eq!(r, Frame::Simple("QUEUED".into()));
        queued += 1;
        assert!(queued < 16_384, "the limit was never reached");
    }
    assert!(queued < 1_000, "{queued} writes queued in 64 KiB");
    assert!(c.cmd(&["EXEC"]).is_error_code("ABORTED"));
    assert_eq!(c.cmd(&["PING"]), Frame::Simple("PONG".into()));
}

#[test]
fn the_writes_of_an_evicted_connection_become_durable_and_visible() {
    let mut srv = Srv::start_with(|c| c.max_client_memory = 64 * 1024);
    // A pipeline of writes, then a request that stalls after 1 MiB of its 8 MiB value,
    // in one go: past the budget, the connection is closed, possibly with the replies of
    // its last batch of writes not sent (the writes ran; under `always` they wait for
    // their fsync to be visible).
    let mut stalled = std::net::TcpStream::connect(srv.addr).unwrap();
    let mut bytes = Vec::new();
    for i in 0..20_000 {
        bytes.extend_from_slice(format!("PUT p{i} x\r\n").as_bytes());
    }
    bytes.extend_from_slice(b"*3\r\n$3\r\nPUT\r\n$1\r\nk\r\n$8388608\r\n");
    bytes.resize(bytes.len() + (1 << 20), b'v');
    let _ = stalled.write_all(&bytes);
    let mut sink = Vec::new();
    let _ = std::io::Read::read_to_end(&mut stalled, &mut sink);
    // No other write comes to sync the log: what the evicted connection wrote must be
    // synced for its own sake. Then the keys served now are those a restart (whose
    // clean close syncs everything) finds.
    let mut c = srv.raw();
    let keys = |c: &mut common::server::Raw| c.cmd(&["STATUS"]).field("keys").int();
    let mut seen = keys(&mut c);
    let mut stable_since = std::time::Instant::now();
    while stable_since.elapsed() < std::time::Duration::from_secs(1) {
        std::thread::sleep(std::time::Duration::from_millis(50));
        let now = keys(&mut c);
        if now != seen {
            seen = now;
            stable_since = std::time::Instant::now();
        }
    }
    assert!(seen > 0, "some writes ran before the eviction");
    drop(c);
    srv.restart();
    let mut c = srv.raw();
    assert_eq!(
        keys(&mut c),
        seen,
        "writes the server ran but never made visible"
    );
}

#[test]
fn reads_of_many_keys_past_max_output_are_refused_before_they_are_built() {
    let srv = Srv::start_with(|c| c.max_output = 16 * 1024);
    let mut c = srv.raw();
    let value = "v".repeat(500);
    for i in 0..100 {
        c.cmd(&["PUT", &format!("k.{i:03}"), &value]);
    }
    for args in [
        &["SEARCH", "*"][..],
        &["HISTORY", ">"],
        &["SCAN", "LIMIT", "100"],
    ] {
        match c.cmd(args) {
            Frame::Error(e) => assert!(
                e.starts_with("ERR the result holds at least") && e.contains("read limit of 16384"),
                "{args:?}: {e}"
            ),
            other => panic!("{args:?}: {other:?}"),
        }
    }
    assert_eq!(c.cmd(&["SEARCH", "*", "LIMIT", "5"]).items().len(), 5);
    assert_eq!(c.cmd(&["KEYS"]).items().len(), 100);
}

#[test]
fn multi_exec_and_aborted() {
    let srv = Srv::start();
    let mut c = srv.raw();
    assert_eq!(c.cmd(&["PUT", "x", "0"]).int(), 1);
    assert_eq!(c.cmd(&["MULTI"]), Frame::ok());
    assert_eq!(c.cmd(&["PUT", "a", "1"]), Frame::Simple("QUEUED".into()));
    assert_eq!(
        c.cmd(&["SET", "b", "2", "GET"]),
        Frame::Simple("QUEUED".into())
    );
    assert_eq!(
        c.cmd(&["SET", "a", "3", "GET"]),
        Frame::Simple("QUEUED".into())
    );
    assert_eq!(
        c.cmd(&["UPDATE", "x", "1", "1"]),
        Frame::Simple("QUEUED".into())
    );
    assert_eq!(c.cmd(&["DEL", "x"]), Frame::Simple("QUEUED".into()));
    assert!(
        c.cmd(&["GET", "a"]).is_error_code("ERR"),
        "reads are refused in MULTI"
    );
    assert!(c.cmd(&["MULTI"]).is_error_code("ERR"));
    let r = c.cmd(&["EXEC"]);
    assert_eq!(
        r,
        Frame::Array(vec![
            Frame::Int(2),
            Frame::Null,
            Frame::bulk("1"),
            Frame::Int(5),
            Frame::Int(6)
        ])
    );
    assert_eq!(c.cmd(&["GET", "a"]), Frame::bulk("3"));

    // A failed precondition: nothing applied, ABORTED names the write.
    assert_eq!(c.cmd(&["MULTI"]), Frame::ok());
    c.cmd(&["PUT", "c", "1"]);
    c.cmd(&["CREATE", "a", "dup"]);
    c.cmd(&["PUT", "d", "1"]);
    let r = c.cmd(&["EXEC"]);
    assert_eq!(r, Frame::Error("ABORTED 1 EXISTS key exists".into()));
    assert_eq!(c.cmd(&["GET", "c"]), Frame::Null);
    assert_eq!(c.cmd(&["MULTI"]), Frame::ok());
    c.cmd(&["UPDATE", "a", "v", "2"]);
    assert_eq!(
        c.cmd(&["EXEC"]),
        Frame::Error("ABORTED 0 WRONGREV expected 2, latest 4".into())
    );
    // A malformed write inside MULTI fails the whole batch.
    assert_eq!(c.cmd(&["MULTI"]), Frame::ok());
    c.cmd(&["PUT", "e", "1"]);
    assert!(c.cmd(&["PUT", "e"]).is_error_code("ERR"));
    c.cmd(&["PUT", "f", "1"]);
    let r = c.cmd(&["EXEC"]);
    assert!(
        matches!(&r, Frame::Error(m) if m.starts_with("ABORTED 1 ERR wrong number")),
        "{r:?}"
    );
    assert_eq!(c.cmd(&["GET", "e"]), Frame::Null);
    // So do an unknown verb (a misspelt write) and an inline line that cannot be parsed:
    // the batch is not applied without them.
    assert_eq!(c.cmd(&["MULTI"]), Frame::ok());
    c.cmd(&["PUT", "e", "1"]);
    assert!(c.cmd(&["PUTT", "e2", "1"]).is_error_code("ERR"));
    let r = c.cmd(&["EXEC"]);
    assert!(
        matches!(&r, Frame::Error(m) if m.starts_with("ABORTED 1 ERR unknown command 'PUTT'")),
        "{r:?}"
    );
    assert_eq!(c.line("MULTI"), Frame::ok());
    assert!(c.line("PUT e2 \"1").message().contains("unbalanced quotes"));
    assert_eq!(c.line("PUT e3 1"), Frame::Simple("QUEUED".into()));
    let r = c.line("EXEC");
    assert!(
        matches!(&r, Frame::Error(m) if m.starts_with("ABORTED 0 ERR syntax error")),
        "{r:?}"
    );
    assert_eq!(c.cmd(&["GET", "e"]), Frame::Null);
    assert_eq!(c.cmd(&["GET", "e3"]), Frame::Null);
    // A bad key is found at EXEC.
    assert_eq!(c.cmd(&["MULTI"]), Frame::ok());
    c.cmd(&["PUT", "ok.key", "1"]);
    c.cmd(&["PUT", "bad..key", "1"]);
    let r = c.cmd(&["EXEC"]);
    assert!(
        matches!(&r, Frame::Error(m) if m.starts_with("ABORTED 1 BADKEY")),
        "{r:?}"
    );
    // DISCARD
    assert_eq!(c.cmd(&["MULTI"]), Frame::ok());
    c.cmd(&["PUT", "g", "1"]);
    assert_eq!(c.cmd(&["DISCARD"]), Frame::ok());
    assert_eq!(c.cmd(&["GET", "g"]), Frame::Null);
    assert!(c.cmd(&["EXEC"]).is_error_code("ERR"));
    assert!(c.cmd(&["DISCARD"]).is_error_code("ERR"));
    assert_eq!(c.cmd(&["MULTI"]), Frame::ok());
    assert_eq!(c.cmd(&["EXEC"]), Frame::Array(vec![]));

    // Through the redis crate: consecutive revisions.
    let mut r = srv.redis();
    let revs: Vec<i64> = redis::pipe()
        .atomic()
        .cmd("PUT")
        .arg("t1")
        .arg("a")
        .cmd("PUT")
        .arg("t2")
        .arg("b")
        .query(&mut r)
        .unwrap();
    assert_eq!(revs.len(), 2);
    assert_eq!(revs[1], revs[0] + 1);
}

#[test]
fn pipeline_of_ten_thousand_commands() {
    let srv = Srv::start();
    let mut c = srv.raw();
    let mut buf = Vec::new();
    for i in 0..5_000 {
        let (k, v) = (format!("key:{i}"), format!("value-{i}"));
        logkv_server::protocol::encode_request(&["PUT", &k, &v], &mut buf);
        logkv_server::protocol::encode_request(&["GET", &k], &mut buf);
    }
    // One write of everything, from another thread while this one reads.
    let mut writer = c.stream.try_clone().unwrap();
    let t = std::thread::spawn(move || writer.write_all(&buf).unwrap());
    for i in 0..5_000 {
        assert_eq!(c.read(), Frame::Int(i + 1));
        assert_eq!(c.read(), Frame::bulk(&format!("value-{i}")));
    }
    t.join().unwrap();
    // Inline pipelines too.
    let mut lines = String::new();
    for i in 0..1_000 {
        write!(lines, "GET key:{i}\r\n").unwrap();
    }
    c.send(lines.as_bytes());
    for i in 0..1_000 {
        assert_eq!(c.read(), Frame::bulk(&format!("value-{i}")));
    }
}

#[test]
fn a_backup_stream_in_a_pipeline_is_followed_by_the_next_reply_alone() {
    let srv = Srv::start();
    let mut c = srv.raw();
    assert_eq!(c.line("PUT a 1"), Frame::Int(1));
    // A reply before it in the output (flushed ahead of the stream), then the stream,
    // then the next request's reply and nothing else.
    c.send(b"PING\r\nBACKUP STREAM\r\nPING after\r\n");
    assert_eq!(c.read(), Frame::Simple("PONG".into()));
    let mut frames = 0;
    loop {
        let f = c.read();
        assert!(matches!(f, Frame::Array(_)), "a stream frame: {f:?}");
        frames += 1;
        if f.items().first() == Some(&Frame::bulk("end")) {
            break;
        }
    }
    assert!(frames >= 3, "header, files, end");
    assert_eq!(c.read(), Frame::bulk("after"));
    assert_eq!(c.line("PING"), Frame::Simple("PONG".into()));
}

#[test]
fn inline_requests() {
    let srv = Srv::start();
    let mut c = srv.raw();
    assert_eq!(c.line("PUT greeting \"hello world\""), Frame::Int(1));
    assert_eq!(c.line("get greeting"), Frame::bulk("hello world"));
    assert_eq!(c.line("PUT esc \"a\\tb\\n\\x41\\\\\""), Frame::Int(2));
    assert_eq!(c.line("GET esc"), Frame::Bulk(b"a\tb\nA\\".to_vec()));
    assert_eq!(c.line("PUT lit 'no \\n escapes'"), Frame::Int(3));
    assert_eq!(c.line("GET lit"), Frame::bulk("no \\n escapes"));
    // Empty lines are ignored; LF alone ends a line; tabs split words.
    c.send(b"\r\n\n   \r\nPUT\ttabbed\tv\n");
    assert_eq!(c.read(), Frame::Int(4));
    // Inline and RESP mixed on one connection.
    c.send(b"GET tabbed\r\n*2\r\n$3\r\nGET\r\n$6\r\ntabbed\r\nPING\r\n");
    assert_eq!(c.read(), Frame::bulk("v"));
    assert_eq!(c.read(), Frame::bulk("v"));
    assert_eq!(c.read(), Frame::Simple("PONG".into()));
    let e = c.line("PUT bad \"unterminated");
    assert_eq!(
        e,
        Frame::Error("ERR syntax error: unbalanced quotes in inline request".into())
    );
    assert!(c.line("PUT x \"\\q\"").is_error_code("ERR"));
    assert_eq!(
        c.line("PING"),
        Frame::Simple("PONG".into()),
        "the connection stays usable"
    );
}

#[test]
fn password_flow() {
    let srv = Srv::start_with(|c| c.password = Some("s3cret".into()));
    let mut c = srv.raw();
    assert_eq!(
        c.cmd(&["GET", "a"]),
        Frame::Error("NOAUTH Authentication required.".into())
    );
    assert!(c.cmd(&["NOSUCHVERB"]).is_error_code("NOAUTH"));
    assert_eq!(c.cmd(&["PING"]), Frame::Simple("PONG".into()));
    assert_eq!(c.cmd(&["HELLO"]).field("server"), Frame::bulk("logkv"));
    assert_eq!(
        c.cmd(&["AUTH", "wrong"]),
        Frame::Error("NOAUTH invalid password".into())
    );
    assert!(c.cmd(&["PUT", "a", "1"]).is_error_code("NOAUTH"));
    assert_eq!(c.cmd(&["AUTH", "s3cret"]), Frame::ok());
    assert_eq!(c.cmd(&["PUT", "a", "1"]), Frame::Int(1));
    // AUTH username password (the username is ignored).
    let mut c2 = srv.raw();
    assert_eq!(c2.cmd(&["AUTH", "default", "s3cret"]), Frame::ok());
    assert_eq!(c2.cmd(&["GET", "a"]), Frame::bulk("1"));
    // HELLO 3 AUTH
    let mut c3 = srv.raw();
    assert!(c3
        .cmd(&["HELLO", "3", "AUTH", "default", "nope"])
        .is_error_code("NOAUTH"));
    let h = c3.cmd(&["HELLO", "3", "AUTH", "default", "s3cret", "SETNAME", "me"]);
    assert_eq!(h.field("proto").int(), 3);
    assert_eq!(c3.cmd(&["GET", "a"]), Frame::bulk("1"));
    assert_eq!(c3.cmd(&["QUIT"]), Frame::ok());
    // The redis crate with the password in the URL.
    let client = redis::Client::open(format!("redis://:s3cret@{}/", srv.addr)).unwrap();
    let mut r = client.get_connection().unwrap();
    let v: Option<String> = cmd("GET").arg("a").query(&mut r).unwrap();
    assert_eq!(v.as_deref(), Some("1"));
    let bad = redis::Client::open(format!("redis://:wrong@{}/", srv.addr)).unwrap();
    assert!(bad.get_connection().is_err());
    // Without a password configured AUTH is an error.
    let open = Srv::start();
    assert!(open.raw().cmd(&["AUTH", "x"]).is_error_code("ERR"));
}

#[test]
fn restart_keeps_the_data() {
    let mut srv = Srv::start();
    {
        let mut c = srv.raw();
        assert_eq!(
            c.cmd(&["BUCKET", "CREATE", "keep", "HISTORY", "3"]),
            Frame::ok()
        );
        assert_eq!(c.cmd(&["USE", "keep"]), Frame::ok());
        for i in 1..=3 {
            assert_eq!(c.cmd(&["PUT", "k", &format!("v{i}")]).int(), i);
        }
        assert_eq!(c.cmd(&["USE", "default"]), Frame::ok());
        assert_eq!(c.cmd(&["PUT", "plain", "x"]).int(), 1);
    }
    srv.restart();
    let mut c = srv.raw();
    assert_eq!(c.cmd(&["GET", "plain"]), Frame::bulk("x"));
    assert_eq!(c.cmd(&["USE", "keep"]), Frame::ok());
    assert_eq!(c.cmd(&["GET", "k"]), Frame::bulk("v3"));
    assert_eq!(c.cmd(&["HISTORY", "k"]).items().len(), 3);
    assert_eq!(c.cmd(&["PUT", "k", "v4"]).int(), 4, "revisions go on");
}

#[test]
fn max_connections_turns_extra_clients_away() {
    let srv = Srv::start_with(|c| c.max_connections = 2);
    let mut a = srv.raw();
    let mut b = srv.raw();
    assert_eq!(a.cmd(&["PING"]), Frame::Simple("PONG".into()));
    assert_eq!(b.cmd(&["PING"]), Frame::Simple("PONG".into()));
    let mut c = srv.raw();
    assert_eq!(
        c.read(),
        Frame::Error("ERR max number of clients reached".into())
    );
    assert!(c.closed());
    drop(a);
    // The slot frees up once the server has seen the close.
    let mut ok = false;
    for _ in 0..200 {
        let mut d = srv.raw();
        d.send(b"PING\r\n");
        if d.read() == Frame::Simple("PONG".into()) {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(ok);
    assert_eq!(b.cmd(&["PING"]), Frame::Simple("PONG".into()));
}

#[test]
fn shutdown_finishes_and_releases_the_directory() {
    let mut srv = Srv::start();
    let mut c = srv.raw();
    assert_eq!(c.cmd(&["PUT", "a", "1"]), Frame::Int(1));
    srv.server.take().unwrap().stop().unwrap();
    assert!(c.closed(), "connections are closed at shutdown");
    // The lock is released: the engine can open the directory.
    let store = logkv::Store::open(srv.dir.path(), logkv::Options::default()).unwrap();
    assert_eq!(
        store.default_bucket().unwrap().get("a").unwrap().as_deref(),
        Some(&b"1"[..])
    );
}

#[test]
fn a_second_server_on_the_same_directory_fails() {
    let srv = Srv::start();
    let mut config = logkv_server::ServerConfig::new(srv.dir.path());
    config.listen = "127.0.0.1:0".into();
    let err = logkv_server::spawn_test_server_with(config).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("locked"), "{msg}");
    assert!(msg.contains("another logkv-server"), "{msg}");
}

#[test]
fn protected_mode_in_process() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = logkv_server::ServerConfig::new(dir.path());
    config.listen = "0.0.0.0:0".into();
    let err = logkv_server::spawn_test_server_with(config).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("--password") && msg.contains("--unprotected"),
        "{msg}"
    );
}
