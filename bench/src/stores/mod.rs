//! The stores compared in the embedded suite, behind one trait.
//!
//! Each implementation uses its store's documented fastest settings for the durability
//! asked at open:
//! - not durable (`durable = false`): writes survive a crash of the process where the
//!   store allows it cheaply, not a crash of the machine; `flush` makes them durable.
//! - durable (`durable = true`): [`KvStore::put_durable`] returns only once the write
//!   is on stable storage.

use std::path::Path;

#[cfg(feature = "peers")]
pub mod fjall;
pub mod logkv;
#[cfg(feature = "peers")]
pub mod redb;
#[cfg(feature = "peers")]
pub mod sled;

/// Errors of any store.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Results of store calls.
pub type Result<T> = std::result::Result<T, BoxError>;

/// What the harness needs of a key-value store.
pub trait KvStore: Send + Sync {
    /// Opens (creating if needed) the store kept in `dir`.
    fn open(dir: &Path, durable: bool) -> Result<Self>
    where
        Self: Sized;

    /// Stores a value; durable only after [`KvStore::flush`].
    fn put(&self, key: &[u8], value: &[u8]) -> Result<()>;

    /// Stores a value and returns once it is durable (as far as the store can tell).
    fn put_durable(&self, key: &[u8], value: &[u8]) -> Result<()>;

    /// Copies the value of `key` into `out`; false if there is none.
    fn get(&self, key: &[u8], out: &mut Vec<u8>) -> Result<bool>;

    /// Makes every write so far durable.
    fn flush(&self) -> Result<()>;

    /// Reclaims the space of overwritten values, as the store offers it.
    fn compact(&mut self) -> Result<()>;

    /// Closes the store cleanly.
    fn close(self: Box<Self>) -> Result<()>;

    /// fdatasync/fsync calls the store counted, if it counts them.
    fn fsyncs(&self) -> Option<u64> {
        None
    }
}

/// Every store name the harness knows, peers included.
pub const ALL: &[&str] = &["logkv", "redb", "fjall", "sled"];

/// The stores built into this binary.
pub fn available() -> Vec<&'static str> {
    if cfg!(feature = "peers") {
        ALL.to_vec()
    } else {
        vec!["logkv"]
    }
}

/// Whether the store's durable put really waits for stable storage. sled 0.34's
/// `flush()` calls `sync_file_range`, not fdatasync, so its W4 rows are marked not durable.
pub fn durable_is_real(name: &str) -> bool {
    name != "sled"
}

/// Opens a store by name.
pub fn open(name: &str, dir: &Path, durable: bool) -> Result<Box<dyn KvStore>> {
    match name {
        "logkv" => Ok(Box::new(logkv::Logkv::open(dir, durable)?)),
        #[cfg(feature = "peers")]
        "redb" => Ok(Box::new(redb::Redb::open(dir, durable)?)),
        #[cfg(feature = "peers")]
        "fjall" => Ok(Box::new(fjall::Fjall::open(dir, durable)?)),
        #[cfg(feature = "peers")]
        "sled" => Ok(Box::new(sled::Sled::open(dir, durable)?)),
        other if ALL.contains(&other) => Err(format!(
            "{other} is a peer store: build with `--features peers` to compare against it"
        )
        .into()),
        other => Err(format!("unknown store {other:?} (known: {})", ALL.join(", ")).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys;

    /// Every built-in store passes the same small round trip.
    #[test]
    fn every_available_store_round_trips() {
        for name in available() {
            let dir = tempfile::tempdir().unwrap();
            let mut s = open(name, dir.path(), false).unwrap();
            let (mut kb, mut vb) = ([0; keys::KEY_LEN], [0; keys::VALUE_LEN]);
            for i in 0..100 {
                let k = keys::key(i, &mut kb).as_bytes().to_vec();
                s.put(&k, keys::value(i, 0, &mut vb)).unwrap();
            }
            let k = keys::key(3, &mut kb).as_bytes().to_vec();
            s.put(&k, keys::value(3, 1, &mut vb)).unwrap();
            s.flush().unwrap();
            s.compact().unwrap();
            let mut out = Vec::new();
            assert!(s.get(&k, &mut out).unwrap(), "{name}");
            assert!(keys::check_value(&out, 3, 1), "{name}");
            assert!(!s.get(b"key:999999999999", &mut out).unwrap(), "{name}");
            s.close().unwrap();
            let s = open(name, dir.path(), true).unwrap();
            let k2 = keys::key(100, &mut kb).as_bytes().to_vec();
            s.put_durable(&k2, keys::value(100, 0, &mut vb)).unwrap();
            assert!(s.get(&k, &mut out).unwrap(), "{name} after reopen");
            assert!(keys::check_value(&out, 3, 1), "{name} after reopen");
            s.close().unwrap();
        }
    }

    #[test]
    fn unknown_and_unbuilt_stores_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(open("nosuch", dir.path(), false).is_err());
        if !cfg!(feature = "peers") {
            let e = open("redb", dir.path(), false).err().unwrap().to_string();
            assert!(e.contains("--features peers"), "{e}");
        }
    }
}
