//! `BACKUP name` and `BACKUP STREAM`.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use logkv::Checkpoint;

use super::args::{is, Args};
use super::Flow;
use crate::backup::is_plain_name;
use crate::backup::stream::BackupStream;
use crate::encode::engine_error;
use crate::protocol::Reply;
use crate::session::Session;

/// `BACKUP name | STREAM`
pub(crate) enum Backup {
    /// A checkpoint into `<backup-dir>/name`.
    Local(String),
    /// The same checkpoint, streamed to the client.
    Stream,
}

impl Backup {
    pub fn parse(args: &mut Args<'_>) -> Result<Backup, Reply> {
        let name = args.next_bytes()?;
        args.finish()?;
        if is(name, "STREAM") {
            return Ok(Backup::Stream);
        }
        if !is_plain_name(name) {
            return Err(Reply::err(
                "ERR",
                "a backup name is 1-255 characters of A-Z a-z 0-9 _ . - (not . or ..)",
            ));
        }
        // Plain ASCII, checked above.
        Ok(Backup::Local(String::from_utf8_lossy(name).into_owned()))
    }

    pub fn apply(self, s: &mut Session) -> Result<Flow, Reply> {
        let store = s.shared.store();
        match self {
            Backup::Local(name) => {
                let Some(dir) = s.shared.config.backup_dir.clone() else {
                    return Err(Reply::err(
                        "ERR",
                        "BACKUP is disabled: start the server with --backup-dir DIR (or use \
                         logkv-server backup --from HOST:PORT --to DIR, which streams it)",
                    ));
                };
                let shared = Arc::clone(&s.shared);
                Ok(Flow::Blocking(Box::new(move || {
                    match store.checkpoint(dir.join(&name)) {
                        Ok(cp) => {
                            tracing::info!(path = %cp.path.display(), bytes = cp.bytes, linked = cp.linked_bytes, "backup written");
                            reply(&cp)
                        }
                        Err(e) => {
                            // Its wait for durability may find a poisoned log.
                            shared.health.observe(&e);
                            engine_error(&e)
                        }
                    }
                })))
            }
            Backup::Stream => Ok(Flow::Stream(Box::new(move || {
                store.checkpoint_source().map(BackupStream::new)
            }))),
        }
    }
}

/// The reply to `BACKUP name`: a map `path`, `buckets`, `bytes`, `revisions`.
fn reply(cp: &Checkpoint) -> Reply {
    let word = |w: &'static str| Reply::Bulk(Bytes::from_static(w.as_bytes()));
    let int = |n: u64| Reply::Int(i64::try_from(n).unwrap_or(i64::MAX));
    let path: PathBuf = cp.path.clone();
    Reply::Map(vec![
        (
            word("path"),
            Reply::bulk(path.to_string_lossy().into_owned()),
        ),
        (word("buckets"), int(cp.buckets as u64)),
        (word("bytes"), int(cp.bytes)),
        (
            word("revisions"),
            Reply::Map(
                cp.revisions
                    .iter()
                    .map(|(name, rev)| (Reply::bulk(name.clone()), int(*rev)))
                    .collect(),
            ),
        ),
    ])
}
