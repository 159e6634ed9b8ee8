//! What a node answers its peers: Raft's messages, snapshots, forwarded requests.

use std::io::Write;
use std::sync::{Arc, Weak};

use futures_util::future::BoxFuture;
use openraft::storage::Snapshot;
use tokio::sync::mpsc;

use super::Raft;
use super::{ClusterNode, NodeInner};
use crate::net::message::{Reply, Request};
use crate::net::{Chunk, Handler};
use crate::sm::snapshot::{check_relative, SnapshotDir, SnapshotInfo};
use crate::types::{Node, NodeId, Vote};

/// How long a snapshot being received may go without a byte before it is given up (a
/// sender that vanished without a word: its link may stay up for other traffic).
const CHUNK_IDLE: std::time::Duration = std::time::Duration::from_secs(30);

/// Serves a node's incoming requests.
pub(crate) struct NodeHandler {
    raft: Raft,
    node: Weak<NodeInner>,
}

impl NodeHandler {
    pub(crate) fn new(node: &ClusterNode) -> NodeHandler {
        NodeHandler {
            raft: node.inner.raft.clone(),
            node: Arc::downgrade(&node.inner),
        }
    }
}

fn stopped() -> Reply {
    Reply::Unavailable("the node is stopping".into())
}

impl Handler for NodeHandler {
    fn handle(&self, _from: NodeId, req: Request) -> BoxFuture<'static, Reply> {
        let raft = self.raft.clone();
        let node = self.node.clone();
        Box::pin(async move {
            match req {
                Request::Append(r) => {
                    Reply::Append(raft.append_entries(r).await.map_err(|e| e.to_string()))
                }
                Request::Vote(r) => Reply::Vote(raft.vote(r).await.map_err(|e| e.to_string())),
                Request::PreVote(r) => {
                    Reply::Vote(raft.pre_vote(r).await.map_err(|e| e.to_string()))
                }
                Request::TransferLeader(r) => Reply::TransferLeader(
                    raft.handle_transfer_leader(r)
                        .await
                        .map_err(|e| e.to_string()),
                ),
                Request::Snapshot { .. } => {
                    Reply::Unavailable("a snapshot comes with its stream".into())
                }
                Request::Forward(f) => match node.upgrade() {
                    Some(inner) => Reply::Forward(ClusterNode { inner }.serve_forward(f).await),
                    None => stopped(),
                },
                Request::Describe => match node.upgrade() {
                    Some(n) => Reply::Describe(Node {
                        raft_addr: n.cfg.raft_addr.clone(),
                        client_addr: n.cfg.client_addr.clone(),
                    }),
                    None => stopped(),
                },
            }
        })
    }

    fn snapshot(
        &self,
        from: NodeId,
        vote: Vote,
        info: SnapshotInfo,
        chunks: mpsc::Receiver<Chunk>,
    ) -> BoxFuture<'static, Reply> {
        let raft = self.raft.clone();
        let node = self.node.clone();
        Box::pin(async move {
            let Some(n) = node.upgrade() else {
                return stopped();
            };
            // A node whose Raft stopped could only fail the install, after the whole
            // transfer: refused before a byte of it is read.
            if let Some(why) = (ClusterNode { inner: n.clone() }).failure() {
                return Reply::Snapshot(Err(format!(
                    "refusing a snapshot: this node stopped: {why}"
                )));
            }
            let dir = match n.sm.scratch() {
                Ok(d) => d,
                Err(e) => return Reply::Snapshot(Err(e.to_string())),
            };
            drop(n);
            let received = receive(&dir, &info, chunks).await;
            let result = match received {
                Ok(()) => {
                    let meta = info.meta.clone();
                    raft.install_full_snapshot(
                        vote,
                        Snapshot {
                            meta,
                            snapshot: dir.clone(),
                        },
                    )
                    .await
                    .map_err(|e| e.to_string())
                }
                Err(e) => Err(e),
            };
            if let Err(e) = &result {
                tracing::warn!(from, "snapshot not installed: {e}");
            }
            // Adopted snapshots were moved away; whatever is left here is not needed.
            if dir.path.exists() {
                let _ = std::fs::remove_dir_all(&dir.path);
            }
            Reply::Snapshot(result)
        })
    }
}

/// Writes the snapshot's files from the stream into `dir` and checks them.
async fn receive(
    dir: &SnapshotDir,
    info: &SnapshotInfo,
    mut chunks: mpsc::Receiver<Chunk>,
) -> Result<(), String> {
    for f in &info.files {
        check_relative(&f.path).map_err(|e| e.to_string())?;
    }
    let data = dir.data();
    let mut files = info.files.iter();
    let open = |f: &crate::sm::snapshot::FileInfo| -> Result<std::fs::File, String> {
        let path = data.join(&f.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
        }
        let file = std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        if f.size == 0 {
            // Written: nothing. Its creation is made durable here (its directory's, below).
            file.sync_all()
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        Ok(file)
    };
    // The file being written and the bytes it still needs.
    let mut current: Option<(std::fs::File, u64)> = None;
    let mut next = |current: &mut Option<(std::fs::File, u64)>| -> Result<bool, String> {
        for f in files.by_ref() {
            let file = open(f)?;
            if f.size > 0 {
                *current = Some((file, f.size));
                return Ok(true);
            }
        }
        Ok(false)
    };
    let mut more = next(&mut current)?;
    loop {
        let Ok(chunk) = tokio::time::timeout(CHUNK_IDLE, chunks.recv()).await else {
            return Err(format!(
                "no snapshot bytes for {} s: the sender is gone",
                CHUNK_IDLE.as_secs()
            ));
        };
        match chunk {
            None => return Err("the snapshot stream was cut".into()),
            Some(Chunk::Abort(why)) => return Err(why),
            Some(Chunk::End) => break,
            Some(Chunk::Data(bytes)) => {
                let mut rest = &bytes[..];
                while !rest.is_empty() {
                    let Some((file, left)) = current.as_mut() else {
                        return Err("more snapshot bytes than its files hold".into());
                    };
                    let take = usize::try_from(*left).unwrap_or(usize::MAX).min(rest.len());
                    file.write_all(&rest[..take]).map_err(|e| e.to_string())?;
                    *left -= take as u64;
                    rest = &rest[take..];
                    if *left == 0 {
                        if let Some((f, _)) = current.take() {
                            f.sync_all().map_err(|e| e.to_string())?;
                        }
                        more = next(&mut current)?;
                    }
                }
            }
        }
    }
    if more || current.is_some() {
        return Err("the snapshot stream ended early".into());
    }
    let (dir, info) = (dir.clone(), info.clone());
    tokio::task::spawn_blocking(move || {
        dir.verify(&info)?;
        // The files are synced as written; the directories holding them, before the info
        // that makes the snapshot whole is written: after a power cut, a snapshot whose
        // info is there has every file.
        crate::sm::snapshot::sync_dirs(&dir.path)?;
        dir.write_info(&info)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sm::snapshot::{manifest, SnapshotStore};
    use crate::types::SnapshotMeta;

    /// A snapshot of two files, one empty, in a store of its own: its info and bytes, and
    /// a store to receive it in.
    struct Sample {
        info: SnapshotInfo,
        bytes: Vec<u8>,
        snaps: SnapshotStore,
        _dirs: (tempfile::TempDir, tempfile::TempDir),
    }

    fn sample() -> Sample {
        let from = tempfile::tempdir().unwrap();
        let snaps = SnapshotStore::open(from.path()).unwrap();
        let s = snaps.scratch("tmp").unwrap();
        std::fs::create_dir_all(s.data().join("b")).unwrap();
        std::fs::write(s.data().join("b/f"), b"hello").unwrap();
        std::fs::write(s.data().join("empty"), b"").unwrap();
        let info = SnapshotInfo {
            meta: SnapshotMeta::default(),
            time_ms: 1,
            files: manifest(&s.data()).unwrap(),
        };
        let to = tempfile::tempdir().unwrap();
        Sample {
            info,
            bytes: b"hello".to_vec(),
            snaps: SnapshotStore::open(to.path()).unwrap(),
            _dirs: (from, to),
        }
    }

    /// A transfer of the sample begun: where it goes, and its sender and receiver with the
    /// first two bytes sent.
    async fn begun(s: &Sample) -> (SnapshotDir, mpsc::Sender<Chunk>, mpsc::Receiver<Chunk>) {
        let dir = s.snaps.scratch("incoming").unwrap();
        let (tx, rx) = mpsc::channel(4);
        tx.send(Chunk::Data(s.bytes[..2].to_vec())).await.unwrap();
        (dir, tx, rx)
    }

    #[tokio::test]
    async fn a_snapshot_is_received_whole_or_the_senders_reason_is_given() {
        let s = sample();
        // Whole: every file, the empty one too, and the info.
        let (dir, tx, rx) = begun(&s).await;
        tx.send(Chunk::Data(s.bytes[2..].to_vec())).await.unwrap();
        tx.send(Chunk::End).await.unwrap();
        receive(&dir, &s.info, rx).await.unwrap();
        assert_eq!(dir.info().unwrap(), s.info);
        assert!(dir.data().join("empty").exists());

        // The sender gave up half way: its reason, at once.
        let (dir, tx, rx) = begun(&s).await;
        tx.send(Chunk::Abort("the sender gave up: gone".into()))
            .await
            .unwrap();
        let err = receive(&dir, &s.info, rx).await.unwrap_err();
        assert!(err.contains("gone"), "{err}");
        assert!(dir.info().is_err(), "no info: not a snapshot");
    }

    /// A node whose Raft stopped on a storage error refuses a snapshot sent to it before
    /// reading any of it. Before, it received the whole transfer, then failed the install.
    /// (The node is stopped by a snapshot of its own that cannot be written: its
    /// `snapshots/` directory is a file for a while.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stopped_node_refuses_a_snapshot_before_reading_it() {
        let dir = tempfile::tempdir().unwrap();
        let net = crate::testing::MemNet::new();
        let mut cfg = crate::node::NodeConfig::new(1, "mem-1", dir.path());
        cfg.initial_members = std::collections::BTreeMap::from([(1, "mem-1".to_string())]);
        cfg.snapshot_every = 5;
        let node = ClusterNode::start(cfg, net.transport()).await.unwrap();
        let snapshots = dir.path().join("snapshots");
        std::fs::remove_dir_all(&snapshots).unwrap();
        std::fs::write(&snapshots, b"not a directory").unwrap();
        let mut i = 0;
        while node.failure().is_none() {
            assert!(i < 100, "the node did not stop");
            let put = crate::command::Command::Write {
                bucket: "default".into(),
                atomic: false,
                ops: vec![crate::command::Op::put(format!("k{i}"), "v".to_string())],
            };
            let _ = node.write(put).await;
            i += 1;
        }
        // A directory to receive in again: only the stop refuses the snapshot now.
        std::fs::remove_file(&snapshots).unwrap();
        std::fs::create_dir(&snapshots).unwrap();

        let s = sample();
        let (tx, rx) = mpsc::channel(4);
        tx.send(Chunk::Data(s.bytes.clone())).await.unwrap();
        tx.send(Chunk::End).await.unwrap();
        let reply = NodeHandler::new(&node)
            .snapshot(2, Vote::new(9, 2), s.info.clone(), rx)
            .await;
        match reply {
            Reply::Snapshot(Err(e)) => {
                assert!(
                    e.starts_with("refusing a snapshot: this node stopped"),
                    "{e}"
                );
            }
            other => panic!("{other:?}"),
        }
        node.shutdown().await;
    }

    /// A sender that goes silent with its stream still open (its link kept up by other
    /// traffic) is given up after `CHUNK_IDLE`, not waited for forever. Time is paused, so
    /// the wait passes at once.
    #[tokio::test(start_paused = true)]
    async fn a_snapshot_whose_sender_goes_silent_is_given_up() {
        let s = sample();
        let (dir, tx, rx) = begun(&s).await;
        let started = tokio::time::Instant::now();
        let err = receive(&dir, &s.info, rx).await.unwrap_err();
        assert!(err.contains("the sender is gone"), "{err}");
        assert_eq!(started.elapsed().as_secs(), CHUNK_IDLE.as_secs());
        assert!(dir.info().is_err(), "no info: not a snapshot");
        drop(tx);
    }
}
