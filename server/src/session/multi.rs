//! The transaction a connection queues between MULTI and EXEC.

use logkv_cluster::Op as WriteOp;

use crate::encode::WriteShape;
use crate::protocol::Reply;

/// The first queued command that failed: EXEC then applies nothing and reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MultiFailure {
    /// Its position in the queue, from 0.
    pub index: usize,
    /// Its error code.
    pub code: &'static str,
    /// Its error message.
    pub msg: String,
}

/// A transaction being queued.
#[derive(Debug, Default)]
pub(crate) struct MultiQueue {
    ops: Vec<WriteOp>,
    shapes: Vec<WriteShape>,
    /// Bytes held (see [`MultiQueue::bytes`]).
    bytes: usize,
    failed: Option<MultiFailure>,
}

impl MultiQueue {
    /// What a queued write holds besides its arguments' bytes: the operation and its
    /// reply shape, and the allocator's header of the key it owns (a queue of a million
    /// `DEL k` holds far more than its four bytes of arguments each).
    pub const PER_WRITE: usize =
        std::mem::size_of::<WriteOp>() + std::mem::size_of::<WriteShape>() + 32;

    /// Bytes the queue holds, as counted against the limits: the arguments' bytes and
    /// [`MultiQueue::PER_WRITE`] for each write.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether one more write of `size` bytes of arguments keeps the queue within `max`
    /// bytes, as counted against the limits.
    pub fn fits(&self, size: usize, max: usize) -> bool {
        self.bytes + Self::cost(size) <= max
    }

    /// What a write of `size` bytes of arguments counts in the queue.
    fn cost(size: usize) -> usize {
        size + Self::PER_WRITE
    }

    /// Queues a write (its operation and reply shape) that came as `size` bytes of
    /// arguments.
    pub fn push(&mut self, op: WriteOp, shape: WriteShape, size: usize) {
        self.bytes += Self::cost(size);
        self.ops.push(op);
        self.shapes.push(shape);
    }

    /// Marks the transaction as failed at the next queue position (the first failure wins).
    pub fn fail(&mut self, reply: &Reply) {
        if self.failed.is_none() {
            if let Reply::Error { code, msg } = reply {
                self.failed = Some(MultiFailure {
                    index: self.ops.len(),
                    code,
                    msg: msg.to_string(),
                });
            }
        }
    }

    /// The queued writes and how each result is shown, or the first failure.
    pub fn into_writes(self) -> Result<(Vec<WriteOp>, Vec<WriteShape>), MultiFailure> {
        match self.failed {
            Some(failure) => Err(failure),
            None => Ok((self.ops, self.shapes)),
        }
    }
}
