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
