//! `CLUSTER INFO | ADD id raft_addr [LEARNER] | REMOVE id | LEADER id`, and INFO's
//! `# Cluster` section. A single node answers `-ERR not a cluster` to every `CLUSTER` verb.

use std::fmt::Write as _;

use logkv_cluster::{ClusterInfo, ClusterNode};

use super::{is_word, preview, ArgCursor, Flow};
use crate::cluster::error_reply;
use crate::protocol::Reply;
use crate::session::Session;

/// A parsed `CLUSTER` verb.
pub(crate) enum ClusterCmd {
    Info,
    Add {
        id: u64,
        raft_addr: String,
        learner: bool,
    },
    Remove(u64),
    Leader(u64),
}

impl ClusterCmd {
    pub fn parse(args: &mut ArgCursor<'_>) -> Result<ClusterCmd, Reply> {
        let sub = args.next_bytes()?;
        let cmd = if is_word(sub, "INFO") {
            ClusterCmd::Info
        } else if is_word(sub, "ADD") {
            let id = args.next_uint("node id")?;
            let raft_addr = args.next_text("raft address")?.to_string();
            let learner = match args.next() {
                None => false,
                Some(w) if is_word(w, "LEARNER") => true,
                Some(w) => return Err(args.syntax(w)),
            };
            ClusterCmd::Add {
                id,
                raft_addr,
                learner,
            }
        } else if is_word(sub, "REMOVE") {
            ClusterCmd::Remove(args.next_uint("node id")?)
        } else if is_word(sub, "LEADER") {
            ClusterCmd::Leader(args.next_uint("node id")?)
        } else {
            return Err(Reply::err(
                "ERR",
                format!(
                    "unknown CLUSTER subcommand '{}': use INFO, ADD, REMOVE or LEADER",
                    preview(sub)
                ),
            ));
        };
        args.finish_arity()?;
        Ok(cmd)
    }

    pub fn apply(self, s: &mut Session, out: &mut Vec<u8>) -> Result<Flow, Reply> {
        let Some(node) = s.shared.cluster.clone() else {
            return Err(Reply::err("ERR", "not a cluster"));
        };
        let version = s.version;
        let run = |f: std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<(), logkv_cluster::ClusterError>> + Send>,
        >| {
            Flow::Await(Box::pin(async move {
                let mut out = Vec::new();
                match f.await {
                    Ok(()) => Reply::ok(),
                    Err(e) => error_reply(&e),
                }
                .encode(version, &mut out);
                out
            }))
        };
        Ok(match self {
            ClusterCmd::Info => {
                info_reply(&node.info()).encode(version, out);
                Flow::Continue
            }
            ClusterCmd::Add {
                id,
                raft_addr,
                learner,
            } => run(Box::pin(
                async move { node.add(id, &raft_addr, learner).await },
            )),
            ClusterCmd::Remove(id) => run(Box::pin(async move { node.remove(id).await })),
            ClusterCmd::Leader(id) => run(Box::pin(async move { node.transfer_leader(id).await })),
        })
    }
}

fn f(s: &'static str) -> Reply {
    Reply::bulk(s)
}

fn int(n: u64) -> Reply {
    Reply::Int(i64::try_from(n).unwrap_or(i64::MAX))
}

fn opt_text(s: Option<&str>) -> Reply {
    s.filter(|s| !s.is_empty())
        .map_or(Reply::Null, |s| Reply::bulk(s.to_string()))
}

/// `CLUSTER INFO` as the contract has it.
fn info_reply(i: &ClusterInfo) -> Reply {
    let members = i
        .members
        .iter()
        .map(|m| {
            Reply::Map(vec![
                (f("id"), int(m.id)),
                (f("raft_addr"), Reply::bulk(m.raft_addr.clone())),
                (f("client_addr"), opt_text(Some(&m.client_addr))),
                (f("voter"), Reply::Int(i64::from(m.voter))),
                (f("matched"), m.matched.map_or(Reply::Null, int)),
            ])
        })
        .collect();
    Reply::Map(vec![
        (f("node"), int(i.node)),
        (f("role"), f(i.role)),
        (f("leader"), i.leader.map_or(Reply::Null, int)),
        (f("leader_addr"), opt_text(i.leader_addr.as_deref())),
        (f("term"), int(i.term)),
        (f("commit"), int(i.commit)),
        (f("applied"), int(i.applied)),
        (f("members"), Reply::Array(members)),
    ])
}

/// INFO's `# Cluster` section.
pub(crate) fn info_section(node: &ClusterNode) -> String {
    let i = node.info();
    let mut t = String::from("# Cluster\r\n");
    let _ = write!(
        t,
        "cluster_node:{}\r\ncluster_role:{}\r\ncluster_leader:{}\r\ncluster_leader_addr:{}\r\n\
         cluster_term:{}\r\ncluster_commit:{}\r\ncluster_applied:{}\r\ncluster_members:{}\r\n",
        i.node,
        i.role,
        i.leader.map_or_else(String::new, |l| l.to_string()),
        i.leader_addr.unwrap_or_default(),
        i.term,
        i.commit,
        i.applied,
        i.members.len(),
    );
    for m in &i.members {
        let _ = write!(
            t,
            "member_{}:raft_addr={},client_addr={},voter={},matched={}\r\n",
            m.id,
            m.raft_addr,
            m.client_addr,
            u8::from(m.voter),
            m.matched.map_or_else(String::new, |x| x.to_string())
        );
    }
    t
}
