//! sled 0.34: the default tree, `Mode::HighThroughput` (sled's documented fast mode), default
//! 1 GiB cache and 500 ms background flush.
//!
//! Durable: insert, then `flush()`. sled 0.34's flush ends in `sync_file_range`, not
//! fdatasync, so it does not make the write durable on every file system: its W4 rows are
//! marked `"durable":false` and left out of durable comparisons. sled has no compaction call
//! (it rewrites fragmented segments in the background), so `compact` only flushes.

use std::path::Path;

use super::{KvStore, Result};

/// An open sled database.
pub struct Sled {
    db: ::sled::Db,
}

impl KvStore for Sled {
    fn open(dir: &Path, _durable: bool) -> Result<Sled> {
        let db = ::sled::Config::new()
            .path(dir)
            .mode(::sled::Mode::HighThroughput)
            .open()?;
        Ok(Sled { db })
    }

    fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.db.insert(key, value)?;
        Ok(())
    }

    fn put_durable(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.db.insert(key, value)?;
        self.db.flush()?;
        Ok(())
    }

    fn get(&self, key: &[u8], out: &mut Vec<u8>) -> Result<bool> {
        out.clear();
        match self.db.get(key)? {
            Some(v) => {
                out.extend_from_slice(&v);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }

    fn compact(&mut self) -> Result<()> {
        self.flush()
    }

    fn close(self: Box<Self>) -> Result<()> {
        self.flush()?;
        drop(self);
        Ok(())
    }
}
