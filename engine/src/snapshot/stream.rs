//! Writing a snapshot's file while it is encoded.
//!
//! The encoding (under the index's read lock) appends to a chunk; each full
//! chunk goes to a thread that writes it to the temporary file and adds it to
//! the checksum, while the next is encoded, so a close waits for about the
//! longer of the two instead of their sum. The channel is unbounded: the
//! encoding never waits for the disk with the lock held (a slow disk costs
//! memory, at most the snapshot's size, as an encoding kept whole in memory
//! did). A snapshot that fits one chunk is written on the caller's thread,
//! with no thread started (a store of thousands of small buckets closes
//! without thousands of threads).
//!
//! The header goes in last, at the start of the file: it holds where the
//! second part begins, known only once the first is encoded. Its checksum is
//! combined with the body's, so the file's checksum covers it all as before.
//! Nothing here is visible until [`Stream::finish`]'s caller renames the file
//! into place.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{unbounded, Receiver, Sender};

use crate::error::{Error, Result};
use crate::io::{File, OpenMode, Storage};

/// Bytes the encoding gathers before handing them to the writing thread.
pub(super) const CHUNK: usize = 1 << 20;

/// The body of a snapshot (every byte after its header), on its way to the
/// temporary file.
pub(super) struct Stream {
    file: Arc<File>,
    path: PathBuf,
    /// Offset in the file of the body's first byte (the header's length).
    body_at: u64,
    /// The bytes encoded and not handed on yet.
    chunk: Vec<u8>,
    /// Bytes of the body handed on so far.
    sent: u64,
    /// The writing thread, once a chunk filled.
    writer: Option<Writer>,
    /// Checksum of the chunks written on the caller's thread (all of a small
    /// snapshot; those before the thread started, if it could not at first).
    here: crc32fast::Hasher,
}

struct Writer {
    chunks: Sender<Vec<u8>>,
    /// Chunks written, to be filled again (no fresh memory per chunk).
    spare: Receiver<Vec<u8>>,
    done: JoinHandle<std::io::Result<crc32fast::Hasher>>,
}

/// A body written in full: its length and checksum.
pub(super) struct Body {
    pub len: u64,
    pub crc: crc32fast::Hasher,
}

impl Stream {
    /// Creates (or truncates) the file at `path`, for a body that starts at
    /// `body_at`.
    pub fn create(storage: &Storage, path: &Path, body_at: u64) -> Result<Stream> {
        let file = storage
            .open(path, OpenMode::Create)
            .map_err(|e| Error::io(path, e))?;
        Ok(Stream {
            file: Arc::new(file),
            path: path.to_path_buf(),
            body_at,
            chunk: Vec::with_capacity(CHUNK),
            sent: 0,
            writer: None,
            here: crc32fast::Hasher::new(),
        })
    }

    /// The chunk the encoding appends to.
    pub fn buf(&mut self) -> &mut Vec<u8> {
        &mut self.chunk
    }

    /// Offset in the file of the next byte appended.
    pub fn position(&self) -> u64 {
        self.body_at + self.sent + self.chunk.len() as u64
    }

    /// Hands the chunk on if it is full (called between keys: a key never
    /// spans two chunks, which does not matter to the file).
    pub fn key_done(&mut self) -> Result<()> {
        if self.chunk.len() < CHUNK {
            return Ok(());
        }
        if self.sent == 0 {
            // The first chunk filled: the snapshot is large enough for a thread.
            self.writer = self.start_writer();
        }
        let Some(w) = &self.writer else {
            // No thread (it could not start): written here, the encoding waits.
            return self.write_here();
        };
        let next = w
            .spare
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(CHUNK));
        let full = std::mem::replace(&mut self.chunk, next);
        self.sent += full.len() as u64;
        // A thread stopped by an error drops the rest (`finish` reports the error).
        let _ = w.chunks.send(full);
        Ok(())
    }

    /// Writes the chunk at its place on this thread (no writing thread).
    fn write_here(&mut self) -> Result<()> {
        let at = self.body_at + self.sent;
        self.file
            .write_all_at(&self.chunk, at)
            .map_err(|e| Error::io(&self.path, e))?;
        self.here.update(&self.chunk);
        self.sent += self.chunk.len() as u64;
        self.chunk.clear();
        Ok(())
    }

    /// Starts the writing thread; `None` if it cannot start (the chunks are
    /// then written on the caller's thread).
    fn start_writer(&self) -> Option<Writer> {
        let (chunks, to_write) = unbounded::<Vec<u8>>();
        let (give_back, spare) = unbounded::<Vec<u8>>();
        let file = Arc::clone(&self.file);
        let mut at = self.body_at + self.sent;
        let done = std::thread::Builder::new()
            .name("logkv-snapshot".into())
            .spawn(move || {
                let mut crc = crc32fast::Hasher::new();
                for chunk in to_write {
                    file.write_all_at(&chunk, at)?;
                    crc.update(&chunk);
                    at += chunk.len() as u64;
                    let mut chunk = chunk;
                    chunk.clear();
                    // The encoding may be over: a chunk nobody takes is dropped.
                    let _ = give_back.send(chunk);
                }
                Ok(crc)
            })
            .map_err(|e| tracing::warn!(error = %e, "could not start a thread to write an index snapshot"))
            .ok()?;
        Some(Writer {
            chunks,
            spare,
            done,
        })
    }

    /// Writes what is left and waits for every chunk to be written: the
    /// body's length and checksum.
    pub fn finish(mut self) -> Result<(Arc<File>, Body)> {
        let mut crc = match self.writer.take() {
            None => {
                self.write_here()?;
                crc32fast::Hasher::new()
            }
            Some(w) => {
                let last = std::mem::take(&mut self.chunk);
                self.sent += last.len() as u64;
                let sent = w.chunks.send(last).is_ok();
                drop(w.chunks);
                let written = w
                    .done
                    .join()
                    .map_err(|_| Error::Internal("the snapshot's writing thread panicked".into()))?
                    .map_err(|e| Error::io(&self.path, e))?;
                if !sent {
                    return Err(Error::Internal(
                        "the snapshot's writing thread stopped early".into(),
                    ));
                }
                written
            }
        };
        // The chunks written here, if any, came first.
        let mut all = self.here.clone();
        all.combine(&crc);
        crc = all;
        Ok((
            self.file,
            Body {
                len: self.sent,
                crc,
            },
        ))
    }
}
