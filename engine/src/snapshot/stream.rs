//! Writing a snapshot's file while it is encoded.
//!
//! The encoding (under the index's read lock) appends to a chunk; each full
//! chunk goes to a thread that writes it to the temporary file and adds it to
//! the checksum, while the next is encoded, so a close waits for about the
//! longer of the two instead of their sum. The channel is unbounded: the
//! encoding never waits for the disk with the lock held (a slow disk costs
//! memory, at most the snapshot's size, as an encoding kept whole in memory
//! did). A snapshot that fits one chunk is written by the caller once the
//! encoding is over, with no thread started (a store of thousands of small
//! buckets closes without thousands of threads); if the thread cannot start,
//! the chunks wait in memory for that too. The file is created before the
//! index lock is taken: nothing under the lock waits for the file system.
//! A stream dropped unfinished stops its thread and waits for it, so no late
//! write lands in the next attempt's file (which is a new file: the old one
//! is removed first). A large index's second part, encoded into memory on
//! another thread at the same time as the first (see `encode_keys`), is
//! appended whole once the first part is in ([`Stream::append`]).
//!
//! Each chunk written is handed to the disk at once
//! ([`File::start_writeback`]), not left in the page cache for the save's
//! fsync: that fsync then waits for the last chunks only. For a million keys
//! (19 MB) it took 10 to 14 ms of a 35 ms close with the whole file left to
//! it, and about 1 ms since.
//!
//! The header goes in last, at the start of the file: it holds where the
//! second part begins, known only once the first is encoded. Its checksum is
//! combined with the body's, so the file's checksum covers it all as before.
//! Nothing here is visible until [`Stream::finish`]'s caller renames the file
//! into place.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{unbounded, Receiver, Sender};

use crate::error::{Error, Result};
use crate::fsutil::remove_if_exists;
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
    /// Full chunks kept for the caller to write at the end (no thread: it
    /// could not start).
    held: Vec<Vec<u8>>,
}

struct Writer {
    chunks: Sender<Vec<u8>>,
    /// Chunks written, to be filled again (no fresh memory per chunk).
    spare: Receiver<Vec<u8>>,
    /// Set when the stream is dropped unfinished: the rest is not written.
    abandoned: Arc<AtomicBool>,
    done: JoinHandle<std::io::Result<crc32fast::Hasher>>,
}

/// A body written in full: its length and checksum.
pub(super) struct Body {
    pub len: u64,
    pub crc: crc32fast::Hasher,
}

impl Stream {
    /// Creates the file at `path` anew (an old one, which a thread of an
    /// earlier attempt may still hold, is removed first); the body's place
    /// is set by [`Stream::begin`].
    pub fn create(storage: &Storage, path: &Path) -> Result<Stream> {
        remove_if_exists(storage, path)?;
        let file = storage
            .open(path, OpenMode::Create)
            .map_err(|e| Error::io(path, e))?;
        Ok(Stream {
            file: Arc::new(file),
            path: path.to_path_buf(),
            body_at: 0,
            chunk: Vec::with_capacity(CHUNK),
            sent: 0,
            writer: None,
            held: Vec::new(),
        })
    }

    /// Sets where the body starts: after a header of `header_len` bytes.
    pub fn begin(&mut self, header_len: u64) {
        self.body_at = header_len;
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
    pub fn key_done(&mut self) {
        if self.chunk.len() < CHUNK {
            return;
        }
        if self.sent == 0 && self.writer.is_none() {
            // The first chunk filled: the snapshot is large enough for a thread.
            self.writer = self.start_writer();
        }
        let next = match &self.writer {
            Some(w) => w.spare.try_recv().ok(),
            None => None,
        };
        let full = std::mem::replace(
            &mut self.chunk,
            next.unwrap_or_else(|| Vec::with_capacity(CHUNK)),
        );
        self.hand_on(full);
    }

    /// Appends `bytes`, encoded apart (whole keys), after what was
    /// appended so far, without copying them into a chunk.
    pub fn append(&mut self, bytes: Vec<u8>) {
        if bytes.is_empty() {
            return;
        }
        if self.sent == 0 && self.writer.is_none() && self.chunk.len() + bytes.len() >= CHUNK {
            // As in `key_done`: large enough for a thread.
            self.writer = self.start_writer();
        }
        if !self.chunk.is_empty() {
            let before = std::mem::take(&mut self.chunk);
            self.hand_on(before);
        }
        self.hand_on(bytes);
    }

    /// Hands a chunk, the next bytes of the body, to the writing thread, or
    /// keeps it for [`Stream::finish`] if there is none.
    fn hand_on(&mut self, full: Vec<u8>) {
        self.sent += full.len() as u64;
        match &self.writer {
            // A thread stopped by an error drops the rest (`finish` reports it).
            Some(w) => drop(w.chunks.send(full)),
            // No thread: kept for `finish` (the index lock is held now).
            None => self.held.push(full),
        }
    }

    /// Starts the writing thread; `None` if it cannot start.
    fn start_writer(&self) -> Option<Writer> {
        let (chunks, to_write) = unbounded::<Vec<u8>>();
        let (give_back, spare) = unbounded::<Vec<u8>>();
        let abandoned = Arc::new(AtomicBool::new(false));
        let stop = Arc::clone(&abandoned);
        let file = Arc::clone(&self.file);
        let mut at = self.body_at;
        let done = std::thread::Builder::new()
            .name("logkv-snapshot".into())
            .spawn(move || {
                let mut crc = crc32fast::Hasher::new();
                for mut chunk in to_write {
                    if stop.load(Ordering::Acquire) {
                        break;
                    }
                    file.write_all_at(&chunk, at)?;
                    let end = at + chunk.len() as u64;
                    // The save's fsync then finds most of the file on its way to
                    // the disk. Only a hint: a write that fails shows at that fsync.
                    let _ = file.start_writeback(at, end);
                    crc.update(&chunk);
                    at = end;
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
            abandoned,
            done,
        })
    }

    /// Writes what is left and waits for every chunk to be written: the
    /// file, and the body's length and checksum. Called without the index
    /// lock.
    pub fn finish(mut self) -> Result<(Arc<File>, Body)> {
        let last = std::mem::take(&mut self.chunk);
        let len = self.sent + last.len() as u64;
        let crc = match self.writer.take() {
            None => {
                let mut crc = crc32fast::Hasher::new();
                let mut at = self.body_at;
                for chunk in std::mem::take(&mut self.held).iter().chain([&last]) {
                    self.file
                        .write_all_at(chunk, at)
                        .map_err(|e| Error::io(&self.path, e))?;
                    crc.update(chunk);
                    at += chunk.len() as u64;
                }
                crc
            }
            Some(w) => {
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
        Ok((Arc::clone(&self.file), Body { len, crc }))
    }
}

impl Drop for Stream {
    /// A stream dropped unfinished (an error before its save): its thread
    /// skips what is queued and is waited for, so that it writes nothing
    /// after this.
    fn drop(&mut self) {
        if let Some(w) = self.writer.take() {
            w.abandoned.store(true, Ordering::Release);
            drop(w.chunks);
            let _ = w.done.join();
        }
    }
}
