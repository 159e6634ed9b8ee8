//! `BACKUP STREAM`: a checkpoint of the store sent as a sequence of RESP frames (each an
//! array whose first element names it; the same bytes in RESP2 and RESP3):
//!
//! ```text
//! *5 $6 backup :1 :<files> :<bytes> *<2n> [$<bucket> :<revision>]...   header
//! *3 $4 file $<path> :<size>                                            a file begins
//! *2 $4 data $<up to 512 KiB of its bytes>                               repeated
//! *2 $3 crc :<crc32 (IEEE) of the file's bytes>                          the file ends
//! *3 $3 end :<files> :<bytes>                                            the stream ends
//! ```
//!
//! The files are those [`logkv::Store::checkpoint_source`] captured, read from what the
//! capture pinned while the store goes on. An error reading them ends the stream with a
//! `-ERR` frame in place of the next frame.

use bytes::Bytes;
use logkv::CheckpointSource;

use super::STREAM_VERSION;
use crate::protocol::{Reply, RespVersion};

/// Bytes of file data per `data` frame.
pub const CHUNK: usize = 512 * 1024;

fn word(w: &'static str) -> Reply {
    Reply::Bulk(Bytes::from_static(w.as_bytes()))
}

fn int(n: u64) -> Reply {
    Reply::Int(i64::try_from(n).unwrap_or(i64::MAX))
}

/// Where a stream is.
enum At {
    /// Nothing sent yet.
    Start,
    /// Between files: the next to send.
    Between(usize),
    /// Inside file `index`, `offset` bytes sent, their checksum so far.
    Inside {
        index: usize,
        offset: u64,
        crc: crc32fast::Hasher,
    },
    /// The end frame is sent.
    Done,
}

/// The frames of one `BACKUP STREAM`, produced a batch at a time.
pub(crate) struct BackupStream {
    source: CheckpointSource,
    at: At,
}

impl BackupStream {
    pub fn new(source: CheckpointSource) -> BackupStream {
        BackupStream {
            source,
            at: At::Start,
        }
    }

    /// Appends frames to `out` until it holds at least `budget` bytes or the stream is
    /// over; returns whether it is over. Reads files: call it off the event loop.
    pub fn fill(&mut self, out: &mut Vec<u8>, budget: usize) -> Result<bool, logkv::Error> {
        let v = RespVersion::Resp2;
        let files = self.source.files();
        while out.len() < budget {
            self.at = match std::mem::replace(&mut self.at, At::Done) {
                At::Start => {
                    let revisions = self
                        .source
                        .revisions()
                        .iter()
                        .flat_map(|(name, rev)| [Reply::bulk(name.clone()), int(*rev)])
                        .collect();
                    Reply::Array(vec![
                        word("backup"),
                        Reply::Int(STREAM_VERSION),
                        int(files.len() as u64),
                        int(self.source.bytes()),
                        Reply::Array(revisions),
                    ])
                    .encode(v, out);
                    At::Between(0)
                }
                At::Between(index) => {
                    if let Some(file) = files.get(index) {
                        let path = file.path().to_string_lossy().into_owned();
                        Reply::Array(vec![word("file"), Reply::bulk(path), int(file.len())])
                            .encode(v, out);
                        At::Inside {
                            index,
                            offset: 0,
                            crc: crc32fast::Hasher::new(),
                        }
                    } else {
                        Reply::Array(vec![
                            word("end"),
                            int(files.len() as u64),
                            int(self.source.bytes()),
                        ])
                        .encode(v, out);
                        At::Done
                    }
                }
                At::Inside {
                    index,
                    offset,
                    mut crc,
                } => {
                    let Some(file) = files.get(index) else {
                        return Ok(true);
                    };
                    if offset == file.len() {
                        Reply::Array(vec![word("crc"), int(u64::from(crc.finalize()))])
                            .encode(v, out);
                        At::Between(index + 1)
                    } else {
                        let n =
                            usize::try_from(file.len() - offset).map_or(CHUNK, |n| n.min(CHUNK));
                        let mut chunk = vec![0; n];
                        file.read_at(offset, &mut chunk)?;
                        crc.update(&chunk);
                        Reply::Array(vec![word("data"), Reply::Bulk(Bytes::from(chunk))])
                            .encode(v, out);
                        At::Inside {
                            index,
                            offset: offset + n as u64,
                            crc,
                        }
                    }
                }
                At::Done => return Ok(true),
            };
        }
        Ok(matches!(self.at, At::Done))
    }
}
