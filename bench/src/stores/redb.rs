//! redb: one table of `&[u8] -> &[u8]` in `db.redb`, default 1 GiB cache.
//!
//! Each put is its own write transaction (like a logkv put: atomic and visible on return).
//! Not durable: `Durability::None` commits (kept in memory until a durable commit; `flush`
//! commits an empty transaction with `Durability::Immediate`), redb's documented fast path.
//! Durable: the default `Durability::Immediate` (one fsync per commit; no group commit).

use std::path::Path;

use ::redb::{Database, Durability, ReadableDatabase, TableDefinition};

use super::{KvStore, Result};

const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("bench");

/// An open redb database.
pub struct Redb {
    db: Database,
}

impl Redb {
    fn put_with(&self, key: &[u8], value: &[u8], durability: Durability) -> Result<()> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(durability)?;
        {
            let mut t = tx.open_table(TABLE)?;
            t.insert(key, value)?;
        }
        tx.commit()?;
        Ok(())
    }
}

impl KvStore for Redb {
    fn open(dir: &Path, _durable: bool) -> Result<Redb> {
        std::fs::create_dir_all(dir)?;
        let db = Database::create(dir.join("db.redb"))?;
        // Create the table so that reads of an empty database find it.
        let tx = db.begin_write()?;
        tx.open_table(TABLE)?;
        tx.commit()?;
        Ok(Redb { db })
    }

    fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.put_with(key, value, Durability::None)
    }

    fn put_durable(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.put_with(key, value, Durability::Immediate)
    }

    fn get(&self, key: &[u8], out: &mut Vec<u8>) -> Result<bool> {
        out.clear();
        let tx = self.db.begin_read()?;
        let t = tx.open_table(TABLE)?;
        match t.get(key)? {
            Some(v) => {
                out.extend_from_slice(v.value());
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn flush(&self) -> Result<()> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        tx.commit()?;
        Ok(())
    }

    fn compact(&mut self) -> Result<()> {
        self.flush()?;
        // Database::compact returns false once nothing more can be done.
        for _ in 0..16 {
            if !self.db.compact()? {
                break;
            }
        }
        Ok(())
    }

    fn close(self: Box<Self>) -> Result<()> {
        self.flush()?;
        drop(self);
        Ok(())
    }
}
