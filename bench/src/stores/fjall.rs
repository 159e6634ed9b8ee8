//! fjall: one keyspace of a database, with a 1 GiB block cache (fjall's advice: 20–25 % of
//! memory, or more if the data fits; redb and sled default to 1 GiB too).
//!
//! Not durable: the default journal mode, which hands each write to the OS (survives a
//! crash of the process); `flush` is `persist(SyncAll)`. Durable: insert, then
//! `persist(PersistMode::SyncData)` (fdatasync, the fastest documented durable mode;
//! fjall has no group commit).

use std::path::Path;

use ::fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use super::{KvStore, Result};

/// An open fjall database and its keyspace.
pub struct Fjall {
    db: Database,
    ks: Keyspace,
}

impl KvStore for Fjall {
    fn open(dir: &Path, _durable: bool) -> Result<Fjall> {
        let db = Database::builder(dir).cache_size(1 << 30).open()?;
        let ks = db.keyspace("bench", KeyspaceCreateOptions::default)?;
        Ok(Fjall { db, ks })
    }

    fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.ks.insert(key, value)?;
        Ok(())
    }

    fn put_durable(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.ks.insert(key, value)?;
        self.db.persist(PersistMode::SyncData)?;
        Ok(())
    }

    fn get(&self, key: &[u8], out: &mut Vec<u8>) -> Result<bool> {
        out.clear();
        match self.ks.get(key)? {
            Some(v) => {
                out.extend_from_slice(&v);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn flush(&self) -> Result<()> {
        self.db.persist(PersistMode::SyncAll)?;
        Ok(())
    }

    fn compact(&mut self) -> Result<()> {
        // Flush the memtable to a table, then merge every table into one (a major
        // compaction drops the overwritten versions).
        self.ks.rotate_memtable_and_wait()?;
        self.ks.major_compact()?;
        self.flush()
    }

    fn close(self: Box<Self>) -> Result<()> {
        self.flush()?;
        let Fjall { db, ks } = *self;
        drop(ks);
        drop(db);
        Ok(())
    }
}
