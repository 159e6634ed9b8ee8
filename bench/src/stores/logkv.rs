//! logkv, through its public API: the `default` bucket of a store.
//!
//! Not durable: [`FsyncPolicy::Never`] (every write goes to the page cache with pwrite, so it
//! survives a crash of the process; `Store::sync` makes it durable). Durable:
//! [`FsyncPolicy::Always`] (each write waits for an fdatasync that concurrent writers share).

use std::path::Path;

use logkv::{Bucket, FsyncPolicy, Options, Store};

use super::{KvStore, Result};

/// An open logkv store and its default bucket.
pub struct Logkv {
    store: Store,
    bucket: Bucket,
}

fn key_str(key: &[u8]) -> Result<&str> {
    Ok(std::str::from_utf8(key)?)
}

impl KvStore for Logkv {
    fn open(dir: &Path, durable: bool) -> Result<Logkv> {
        let opts = Options {
            fsync: if durable {
                FsyncPolicy::Always
            } else {
                FsyncPolicy::Never
            },
            ..Options::default()
        };
        let store = Store::open(dir, opts)?;
        let bucket = store.default_bucket()?;
        Ok(Logkv { store, bucket })
    }

    fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.bucket.put(key_str(key)?, value.to_vec())?;
        Ok(())
    }

    fn put_durable(&self, key: &[u8], value: &[u8]) -> Result<()> {
        // With FsyncPolicy::Always, put returns once the write is durable.
        self.put(key, value)
    }

    fn get(&self, key: &[u8], out: &mut Vec<u8>) -> Result<bool> {
        out.clear();
        match self.bucket.get(key_str(key)?)? {
            Some(v) => {
                out.extend_from_slice(&v);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn flush(&self) -> Result<()> {
        Ok(self.store.sync()?)
    }

    fn compact(&mut self) -> Result<()> {
        self.bucket.compact()?;
        Ok(())
    }

    fn close(self: Box<Self>) -> Result<()> {
        let Logkv { store, bucket } = *self;
        drop(bucket);
        // The store syncs; dropping its last handle writes the index snapshot.
        store.close()?;
        Ok(())
    }

    fn fsyncs(&self) -> Option<u64> {
        self.bucket.status().ok().map(|s| s.fsyncs)
    }
}
