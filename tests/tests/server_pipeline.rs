//! Pipelines: consecutive writes go to the engine together, yet every reply
//! keeps its request's order and every read sees the writes before it.

mod common;

use common::server::{Frame, Srv};

#[test]
fn mixed_pipeline_keeps_order_and_read_your_writes() {
    let srv = Srv::start();
    let mut c = srv.raw();
    let cmds: Vec<Vec<&str>> = vec![
        vec!["SET", "a", "1"],
        vec!["PUT", "b", "x"],
        vec!["GET", "a"],              // sees the SET before it
        vec!["CREATE", "a", "2"],      // EXISTS
        vec!["PUT", "bad..key", "v"],  // BADKEY, from parsing
        vec!["UPDATE", "a", "3", "1"], // a is at revision 1
        vec!["DEL", "b", "REV", "99"], // WRONGREV
        vec!["PUT", "c"],              // wrong number of arguments
        vec!["GET", "a"],
        vec!["GETDEL", "b"],
        vec!["GET", "b"],
        vec!["NOSUCHVERB"],
        vec!["PUT", "d", "4"],
    ];
    let mut bytes = Vec::new();
    for c in &cmds {
        bytes.extend_from_slice(format!("*{}\r\n", c.len()).as_bytes());
        for a in c {
            bytes.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
        }
    }
    c.send(&bytes);
    let replies: Vec<Frame> = (0..cmds.len()).map(|_| c.read()).collect();
    assert_eq!(replies[0], Frame::ok());
    assert_eq!(replies[1].int(), 2);
    assert_eq!(replies[2], Frame::bulk("1"));
    assert!(replies[3].is_error_code("EXISTS"), "{:?}", replies[3]);
    assert!(replies[4].is_error_code("BADKEY"), "{:?}", replies[4]);
    assert_eq!(replies[5].int(), 3);
    assert!(replies[6].is_error_code("WRONGREV"), "{:?}", replies[6]);
    assert_eq!(
        replies[6],
        Frame::Error("WRONGREV expected 99, latest 2".into())
    );
    assert!(replies[7].is_error_code("ERR"), "{:?}", replies[7]);
    assert_eq!(replies[8], Frame::bulk("3"));
    assert_eq!(replies[9], Frame::bulk("x"));
    assert_eq!(replies[10], Frame::Null);
    assert!(replies[11].is_error_code("ERR"));
    assert_eq!(replies[12].int(), 5); // SET 1, PUT 2, UPDATE 3, GETDEL 4
                                      // A second connection sees everything.
    let mut other = srv.raw();
    assert_eq!(other.cmd(&["GET", "d"]), Frame::bulk("4"));
}

/// What a reply of [`long_get_pipelines_see_everything_before_them`] must be.
#[derive(Debug, PartialEq)]
enum Want {
    Is(Frame),
    Int,
    Error(&'static str),
}

/// A long pipeline of GETs, parsed ahead of running a window at a time and their keys
/// looked up together: every GET still sees exactly the writes, the bucket switch and the
/// errors before it, across window boundaries, and nothing after QUIT runs.
#[test]
fn long_get_pipelines_see_everything_before_them() {
    fn resp(args: &[&str]) -> Vec<u8> {
        let mut bytes = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            bytes.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
        }
        bytes
    }
    let srv = Srv::start();
    let mut c = srv.raw();
    assert_eq!(c.cmd(&["BUCKET", "CREATE", "other"]), Frame::ok());
    let mut reqs: Vec<(Vec<u8>, Want)> = Vec::new();
    let ok = || Want::Is(Frame::ok());
    let value_of = |v: &Option<String>| Want::Is(v.as_deref().map_or(Frame::Null, Frame::bulk));
    let mut model: Vec<Option<String>> = vec![None; 40];
    for (i, m) in model.iter_mut().enumerate().filter(|(i, _)| i % 2 == 0) {
        let value = format!("v{i}");
        reqs.push((resp(&["SET", &format!("k{i}"), &value]), ok()));
        *m = Some(value);
    }
    for round in 0..5 {
        for (i, m) in model.iter_mut().enumerate() {
            let key = format!("k{i}");
            if i % 9 == round {
                // A write between GETs of the same window: the GET after it sees it.
                let value = format!("w{round}-{i}");
                reqs.push((resp(&["SET", &key, &value]), ok()));
                *m = Some(value);
            } else if i % 13 == round {
                reqs.push((resp(&["DEL", &key]), Want::Int));
                *m = None;
            }
            reqs.push((resp(&["GET", &key]), value_of(m)));
        }
    }
    // Another bucket in the middle of a window: its GETs read it, not the default.
    reqs.push((resp(&["USE", "other"]), ok()));
    reqs.push((resp(&["SET", "k1", "in-other"]), ok()));
    reqs.push((resp(&["GET", "k1"]), Want::Is(Frame::bulk("in-other"))));
    reqs.push((resp(&["GET", "k2"]), Want::Is(Frame::Null)));
    reqs.push((resp(&["USE", "default"]), ok()));
    reqs.push((resp(&["GET", "bad..key"]), Want::Error("BADKEY")));
    reqs.push((resp(&["GET"]), Want::Error("ERR")));
    // An inline line that cannot be split: its error, and the requests after it run.
    reqs.push((b"GET \"unbalanced\r\n".to_vec(), Want::Error("ERR")));
    reqs.push((resp(&["GET", "k1"]), value_of(&model[1])));
    reqs.push((resp(&["QUIT"]), ok()));
    reqs.push((resp(&["SET", "k0", "after-quit"]), ok()));
    let bytes: Vec<u8> = reqs.iter().flat_map(|(r, _)| r.clone()).collect();
    c.send(&bytes);
    for (n, (_, want)) in reqs.iter().take(reqs.len() - 1).enumerate() {
        let got = c.read();
        match want {
            Want::Is(frame) => assert_eq!(&got, frame, "reply {n}"),
            Want::Int => assert!(matches!(got, Frame::Int(_)), "reply {n}: {got:?}"),
            Want::Error(code) => assert!(got.is_error_code(code), "reply {n}: {got:?}"),
        }
    }
    assert!(c.closed());
    // Nothing after QUIT ran.
    let mut other = srv.raw();
    assert_eq!(Want::Is(other.cmd(&["GET", "k0"])), value_of(&model[0]));
}
