//! Independent writes of concurrent clients grouped into one Raft entry, on the leader.
//!
//! Every entry costs the same fixed work on every node, whatever it carries: openraft's
//! bookkeeping, a record in the Raft log, and at apply a call into the bucket that takes its
//! writer lock and logs a batch ending with a replication tag. So while [`IN_FLIGHT`] groups
//! are being proposed, the pipelines of independent writes (`Command::Write` with `atomic:
//! false`) that reach the leader wait, and go as one entry per bucket when a slot frees: their
//! writes concatenated in arrival order, at most [`MAX_GROUP_OPS`] writes or
//! [`MAX_GROUP_BYTES`] of values in one. The applied entry's per-write results are split
//! back to each pipeline. Under light load a write goes at once, alone.
//!
//! A client sees no difference: independent writes succeed or fail one by one, in order,
//! exactly as if each pipeline were its own entry applied at the group's time (the leader's
//! clock when it proposes the group, no earlier than each write's arrival); a connection has
//! one pipeline in flight at a time, so its own writes keep their order. A group's outcome
//! when nothing is applied (`NOLEADER`, not the leader) or when it is unknown (`INDOUBT`) is
//! every member's.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::ClusterNode;
use crate::command::{Command, Op, Response};
use crate::net::message::Outcome;

/// Groups proposed at once at most; writes arriving meanwhile wait for the next group.
/// Fewer makes bigger groups but a shallower replication pipeline: in C1 (50 clients) two
/// cost a quarter of the leader's SET -P 16 rate against no grouping, eight about a tenth,
/// while both gained about a tenth at -P 1.
pub const IN_FLIGHT: usize = 8;
/// Writes in one group at most.
pub const MAX_GROUP_OPS: usize = 4096;
/// Bytes of keys and values in one group at most (a pipeline larger than that goes alone).
pub const MAX_GROUP_BYTES: usize = 4 << 20;

/// A pipeline waiting for the next group.
struct Waiting {
    command: Arc<Command>,
    /// Its writes and their bytes.
    ops: usize,
    bytes: usize,
    reply: oneshot::Sender<Outcome>,
}

#[derive(Default)]
struct State {
    /// Groups (or single pipelines) being proposed.
    in_flight: usize,
    queue: VecDeque<Waiting>,
}

/// The leader's grouping of independent writes (see the module documentation).
#[derive(Default)]
pub(crate) struct Grouper {
    state: Mutex<State>,
}

/// What a group carries: a write's bucket and ops, if it may join one.
fn groupable(command: &Command) -> Option<(&str, &[Op])> {
    match command {
        Command::Write {
            bucket,
            atomic: false,
            ops,
        } => Some((bucket, ops)),
        _ => None,
    }
}

fn size(ops: &[Op]) -> usize {
    ops.iter().map(|o| o.key.len() + o.value.len()).sum()
}

/// Holds one of the [`IN_FLIGHT`] slots; dropping it passes the slot to the waiting writes
/// (proposed on a task of their own) or frees it.
struct Slot {
    node: ClusterNode,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let node = self.node.clone();
        let Some(group) = node.take_group() else {
            return;
        };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let slot = Slot { node };
                slot.node.propose_group(group).await;
                drop(slot);
            });
        } else {
            // No runtime: the node is going away. Nothing of these was proposed.
            for w in group {
                let _ = w
                    .reply
                    .send(Outcome::NoLeader("the node is stopping".into()));
            }
            node.inner.group.state.lock().in_flight -= 1;
        }
    }
}

impl ClusterNode {
    /// Proposes `command` as the leader, grouped with other independent writes if it is one
    /// and slots are busy.
    pub(crate) async fn propose_grouping(&self, command: Arc<Command>) -> Outcome {
        let Some((ops, bytes)) = groupable(&command).map(|(_, o)| (o.len(), size(o))) else {
            return self.propose_local(command).await;
        };
        let slot = {
            let mut st = self.inner.group.state.lock();
            if st.in_flight < IN_FLIGHT && st.queue.is_empty() {
                st.in_flight += 1;
                Ok(command)
            } else {
                let (reply, rx) = oneshot::channel();
                st.queue.push_back(Waiting {
                    command,
                    ops,
                    bytes,
                    reply,
                });
                Err(rx)
            }
        };
        match slot {
            Ok(command) => {
                let _slot = Slot { node: self.clone() };
                self.propose_local(command).await
            }
            Err(rx) => rx.await.unwrap_or_else(|_| {
                Outcome::InDoubt(
                    "the leader's proposal of this write was abandoned; check with ENTRY".into(),
                )
            }),
        }
    }

    /// Takes the next group off the queue, keeping the caller's slot for it; or frees the
    /// slot when nothing waits.
    fn take_group(&self) -> Option<Vec<Waiting>> {
        let mut st = self.inner.group.state.lock();
        if st.queue.is_empty() {
            st.in_flight -= 1;
            return None;
        }
        let mut group = Vec::new();
        let (mut ops, mut bytes) = (0, 0);
        while let Some(next) = st.queue.front() {
            let fits = ops + next.ops <= MAX_GROUP_OPS && bytes + next.bytes <= MAX_GROUP_BYTES;
            if !group.is_empty() && !fits {
                break;
            }
            ops += next.ops;
            bytes += next.bytes;
            group.extend(st.queue.pop_front());
        }
        Some(group)
    }

    /// Proposes the waiting pipelines of `group` as one entry per bucket and answers each.
    async fn propose_group(&self, group: Vec<Waiting>) {
        let mut buckets: Vec<(String, Vec<Waiting>)> = Vec::new();
        for w in group {
            let Some((bucket, _)) = groupable(&w.command) else {
                continue;
            };
            match buckets.iter_mut().find(|(b, _)| b == bucket) {
                Some((_, members)) => members.push(w),
                None => buckets.push((bucket.to_string(), vec![w])),
            }
        }
        let proposals = buckets
            .into_iter()
            .map(|(bucket, members)| self.propose_members(bucket, members));
        futures_util::future::join_all(proposals).await;
    }

    async fn propose_members(&self, bucket: String, mut members: Vec<Waiting>) {
        if members.len() == 1 {
            if let Some(w) = members.pop() {
                let outcome = self.propose_local(w.command).await;
                let _ = w.reply.send(outcome);
            }
            return;
        }
        let mut counts = Vec::with_capacity(members.len());
        let mut replies = Vec::with_capacity(members.len());
        let mut ops = Vec::with_capacity(members.iter().map(|w| w.ops).sum());
        for w in members {
            // A pipeline's writes are moved into the group (copied only if the command is
            // still shared, e.g. kept for a retry).
            let own = match Arc::try_unwrap(w.command) {
                Ok(Command::Write { ops, .. }) => ops,
                Ok(_) => Vec::new(),
                Err(shared) => groupable(&shared)
                    .map(|(_, o)| o.to_vec())
                    .unwrap_or_default(),
            };
            counts.push(own.len());
            ops.extend(own);
            replies.push(w.reply);
        }
        let total = ops.len();
        let merged = Command::Write {
            bucket,
            atomic: false,
            ops,
        };
        let outcome = self.propose_local(Arc::new(merged)).await;
        for (reply, outcome) in replies.into_iter().zip(split(outcome, &counts, total)) {
            let _ = reply.send(outcome);
        }
    }
}

/// Each member's share of a group's outcome: its own writes' results; the whole outcome
/// when it is not per write.
fn split(outcome: Outcome, counts: &[usize], total: usize) -> Vec<Outcome> {
    match outcome {
        Outcome::Applied {
            response: Response::Each(results),
            index,
        } => {
            if results.len() != total {
                let why = format!(
                    "entry {index} gave {} results for {total} writes; check with ENTRY",
                    results.len()
                );
                return counts
                    .iter()
                    .map(|_| Outcome::InDoubt(why.clone()))
                    .collect();
            }
            let mut results = results.into_iter();
            counts
                .iter()
                .map(|&n| Outcome::Applied {
                    response: Response::Each(results.by_ref().take(n).collect()),
                    index,
                })
                .collect()
        }
        other => counts.iter().map(|_| other.clone()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{OpError, WrittenData};

    fn written(revision: u64) -> WrittenData {
        WrittenData {
            revision,
            previous: None,
        }
    }

    #[test]
    fn a_group_outcome_is_split_by_pipeline() {
        let results: Vec<Result<WrittenData, OpError>> = (1..=5).map(|r| Ok(written(r))).collect();
        let outcome = Outcome::Applied {
            response: Response::Each(results),
            index: 9,
        };
        let parts = split(outcome, &[2, 0, 3], 5);
        let revisions: Vec<Vec<u64>> = parts
            .iter()
            .map(|o| match o {
                Outcome::Applied {
                    response: Response::Each(r),
                    index: 9,
                } => r.iter().map(|w| w.as_ref().unwrap().revision).collect(),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(revisions, vec![vec![1, 2], vec![], vec![3, 4, 5]]);

        let whole = split(Outcome::NoLeader("x".into()), &[1, 2], 3);
        assert_eq!(whole, vec![Outcome::NoLeader("x".into()); 2]);

        let short = Outcome::Applied {
            response: Response::Each(vec![Ok(written(1))]),
            index: 3,
        };
        assert!(split(short, &[1, 1], 2)
            .iter()
            .all(|o| matches!(o, Outcome::InDoubt(_))));
    }
}
