//! Point reads: one key's latest value, one retained revision, its TTL.
//!
//! A read takes the index read lock only to find where the record is and to
//! pin its segment; it decodes the record after releasing the lock, and
//! checks it (checksum, revision, key) on every read.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;

use super::BucketCore;
use crate::entry::{Entry, Op, Ttl};
use crate::error::{Error, Result};
use crate::index::{Index, RecordRef};
use crate::key::validate_key;
use crate::log::record::{decode, Decoded, Record};
use crate::log::segment::Segment;
use crate::prefetch;

/// Bytes of a record [`BucketCore::prefetch`] asks for: its header, key and
/// the start of its value; the CPU's own prefetcher follows a longer value as
/// it is read.
const PREFETCH_RECORD_BYTES: usize = 512;

impl BucketCore {
    /// The segments records in these slots are in, for reading them after
    /// the index lock is released.
    pub(super) fn segments_of(
        &self,
        slots: impl Iterator<Item = u32>,
    ) -> HashMap<u32, Arc<Segment>> {
        let mut out = HashMap::new();
        for slot in slots {
            if let std::collections::hash_map::Entry::Vacant(v) = out.entry(slot) {
                if let Some(s) = self.log.segment(slot) {
                    v.insert(s);
                }
            }
        }
        out
    }

    /// The record `at` points to in `seg`, checked: its checksum, and that it is
    /// revision `at.revision` of `key`.
    fn record_at<'s>(
        &self,
        seg: Option<&'s Arc<Segment>>,
        key: &str,
        at: &RecordRef,
    ) -> Result<Record<'s>> {
        let corrupt = |path: PathBuf, why: &str| Error::Corrupt {
            path,
            offset: u64::from(at.offset),
            reason: why.to_string(),
        };
        let seg = seg.ok_or_else(|| {
            corrupt(
                self.dir.clone(),
                &format!("segment slot {} missing", at.slot),
            )
        })?;
        let bytes = seg
            .bytes(u64::from(at.offset), at.len())
            .ok_or_else(|| corrupt(seg.path.clone(), "record outside segment"))?;
        match decode(bytes, seg.header.salt) {
            Decoded::Record(r) if r.header.revision == at.revision && r.key == key.as_bytes() => {
                Ok(r)
            }
            Decoded::Record(_) => Err(corrupt(seg.path.clone(), "index points at another record")),
            Decoded::End => Err(corrupt(
                seg.path.clone(),
                "index points past the end of data",
            )),
            Decoded::Invalid(why) => Err(corrupt(seg.path.clone(), &why.to_string())),
        }
    }

    /// Decodes the record `at` points to in `seg` into an entry of `key`.
    pub(super) fn load_from(
        &self,
        seg: Option<&Arc<Segment>>,
        key: &str,
        at: &RecordRef,
    ) -> Result<Entry> {
        let r = self.record_at(seg, key, at)?;
        Ok(Entry {
            bucket: Arc::clone(&self.name),
            key: key.to_string(),
            value: Bytes::copy_from_slice(r.value),
            revision: at.revision,
            created_ms: r.header.created_ms,
            op: r.header.op,
            delta: 0,
            expires_ms: at.expires_ms,
        })
    }

    /// Loads the record `at` of `key`, looked up in the index earlier and without
    /// the index lock held since (a writer checking a precondition). A compaction
    /// pass may have moved the record meanwhile and retired the segment it was in:
    /// then it is read where the index has it now, found by its revision and pinned
    /// under the index lock, as readers pin theirs.
    pub(super) fn load_looked_up(&self, key: &str, at: &RecordRef) -> Result<Entry> {
        // A segment still in the table stays readable once pinned, even if a pass
        // retires it after this (slots are never reused).
        if let Some(seg) = self.log.segment(at.slot) {
            return self.load_from(Some(&seg), key, at);
        }
        let found = {
            let ix = self.index.read();
            ix.find(key.as_bytes(), at.revision)
                .map(|now| (now, self.log.segment(now.slot)))
        };
        match found {
            Some((now, seg)) => self.load_from(seg.as_ref(), key, &now),
            None => self.load_from(None, key, at),
        }
    }

    /// Loads the record of `key` that `pick` chooses from the index.
    fn read_one(
        &self,
        key: &str,
        pick: impl FnOnce(&Index) -> Option<RecordRef>,
    ) -> Result<Option<Entry>> {
        let found = {
            let ix = self.index.read();
            pick(&ix).map(|at| (at, self.log.segment(at.slot)))
        };
        match found {
            Some((at, seg)) => self.load_from(seg.as_ref(), key, &at).map(Some),
            None => Ok(None),
        }
    }

    /// The latest entry of `key` if it is a live value.
    pub(crate) fn get(&self, key: &str) -> Result<Option<Entry>> {
        self.check_open()?;
        let found = self.read_one(key, |ix| ix.latest(key.as_bytes()).filter(|r| self.live(r)))?;
        missing_key_checked(key, found)
    }

    /// Whether `r` is a live value now; reads the clock only for entries that expire.
    #[inline]
    pub(super) fn live(&self, r: &RecordRef) -> bool {
        r.op() == Op::Put && (r.expires_ms == 0 || !r.expired(self.now()))
    }

    /// Calls `f` with the live value of `key`, read in place from the log
    /// (no copy); returns `None` if the key has no live value.
    pub(crate) fn get_with<T>(&self, key: &str, f: impl FnOnce(&[u8]) -> T) -> Result<Option<T>> {
        self.check_open()?;
        let found = {
            let ix = self.index.read();
            ix.latest(key.as_bytes())
                .filter(|r| self.live(r))
                .map(|at| (at, self.log.segment(at.slot)))
        };
        let Some((at, seg)) = found else {
            validate_key(key)?;
            return Ok(None);
        };
        let r = self.record_at(seg.as_ref(), key, &at)?;
        Ok(Some(f(r.value)))
    }

    /// Starts loading into the CPU cache what reads of `keys` will touch: a
    /// round of [`prefetch::ROUND`] keys at a time, first their index entries
    /// (all the round's lookups in flight at once), then, once those have
    /// arrived, the start of their records. Only a hint (see
    /// [`crate::Bucket::prefetch`]).
    pub(crate) fn prefetch<K: AsRef<[u8]>>(&self, keys: impl IntoIterator<Item = K>) {
        if self.check_open().is_err() {
            return;
        }
        let ix = self.index.read();
        prefetch::in_rounds(keys.into_iter(), |round| {
            let mut hashes = [0u64; prefetch::ROUND];
            for (key, hash) in round.iter().zip(&mut hashes) {
                if let Some(key) = key {
                    *hash = ix.prefetch_entry(key.as_ref());
                }
            }
            let mut found = [None; prefetch::ROUND];
            for ((key, hash), at) in round.iter().zip(&hashes).zip(&mut found) {
                if let Some(key) = key {
                    *at = ix.latest_hashed(key.as_ref(), *hash);
                }
            }
            let records = found.iter().flatten();
            self.log.prefetch_records(
                records.map(|r| (r.slot, u64::from(r.offset), r.len())),
                PREFETCH_RECORD_BYTES,
            );
        });
    }

    /// Retained revision `revision` of `key` (markers included), unless expired.
    pub(crate) fn get_revision(&self, key: &str, revision: u64) -> Result<Option<Entry>> {
        self.get_revision_at(key, revision, self.now())
    }

    /// [`BucketCore::get_revision`] as of `now` (a write's planning time: on a replica,
    /// the leader's, so that every node finds the same entry).
    pub(crate) fn get_revision_at(
        &self,
        key: &str,
        revision: u64,
        now: u64,
    ) -> Result<Option<Entry>> {
        self.check_open()?;
        let found = self.read_one(key, |ix| {
            ix.find(key.as_bytes(), revision)
                .filter(|r| r.expires_ms == 0 || !r.expired(now))
        })?;
        missing_key_checked(key, found)
    }

    /// Time left on `key`'s value.
    pub(crate) fn ttl(&self, key: &str) -> Result<Ttl> {
        self.check_open()?;
        validate_key(key)?;
        let now = self.now();
        Ok(match self.index.read().latest(key.as_bytes()) {
            Some(r) if r.live(now) && r.expires_ms == 0 => Ttl::Forever,
            Some(r) if r.live(now) => Ttl::Remaining(r.expires_ms - now),
            _ => Ttl::Missing,
        })
    }

    /// The lowest revision still retained (0 when the bucket is empty).
    pub(super) fn first_retained_revision(&self) -> u64 {
        let ix = self.index.read();
        ix.all_revs().map(|r| r.revision).min().unwrap_or(0)
    }
}

/// A read that found nothing still has to tell an invalid key (`BadKey`)
/// from a missing one. Found keys are valid: only valid keys are stored.
fn missing_key_checked<T>(key: &str, found: Option<T>) -> Result<Option<T>> {
    if found.is_none() {
        validate_key(key)?;
    }
    Ok(found)
}
