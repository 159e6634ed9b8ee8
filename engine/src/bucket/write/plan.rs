//! Step 1 of a write: plan. Each write is checked (key, size, TTL before any
//! lock; then, under the writer lock, its precondition and the bucket's max
//! bytes) against the key's state as the index and the earlier writes of the
//! same call leave it, and gets its revision.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;

use super::WriteMode;
use crate::bucket::pending::{retention, Pending};
use crate::bucket::query::ReadBudget;
use crate::bucket::{effective_expiry, BucketCore};
use crate::entry::{Entry, Kind, Op, WriteOp, Written};
use crate::error::{Error, Result};
use crate::index::RecordRef;
use crate::key::validate_key;
use crate::log::record;

/// One write that passed its checks, as it will be logged.
pub(super) struct PlannedWrite<'a> {
    /// The key written.
    pub(super) key: &'a str,
    /// The revision the write gets.
    pub(super) revision: u64,
    /// What the record says: PUT, DEL or PURGE.
    pub(super) op: Op,
    /// The value logged (a revert logs the value of the revision it reverts to).
    pub(super) value: Bytes,
    /// The key's own expiry, ms since the epoch (0 for none), as the record
    /// carries it; the bucket's max age is applied on top when indexed.
    pub(super) key_expires_ms: u64,
}

impl PlannedWrite<'_> {
    /// Bytes of the write's record in the log.
    pub(super) fn encoded_len(&self) -> usize {
        record::encoded_len(self.key.len(), self.value.len())
    }
}

/// The outcome of planning one call.
pub(super) struct Plan<'a> {
    /// The writes to log, in order, with consecutive revisions.
    pub(super) writes: Vec<PlannedWrite<'a>>,
    /// Each write's result, in the order of the call.
    pub(super) results: Vec<Result<Written>>,
    /// What the writes change the bytes the bucket holds by (their records, less
    /// the older entries they drop): counted only in a bucket with max bytes.
    pub(super) bytes_net: i64,
}

/// A key's state as a write sees it: as the index has it, or as an earlier
/// write of the same call left it.
#[derive(Clone)]
enum KeyState {
    /// A record in the log.
    Stored(RecordRef),
    /// A write planned earlier in this call, not logged yet.
    Planned {
        revision: u64,
        op: Op,
        expires_ms: u64,
        created_ms: u64,
        value: Bytes,
    },
}

impl KeyState {
    fn revision(&self) -> u64 {
        match self {
            KeyState::Stored(r) => r.revision,
            KeyState::Planned { revision, .. } => *revision,
        }
    }

    /// Bytes of its record, as the index counts them.
    fn record_len(&self, key: &str) -> u64 {
        match self {
            KeyState::Stored(r) => r.len() as u64,
            KeyState::Planned { value, .. } => record_len(key, value),
        }
    }

    /// Whether it is a value expired at `now` (see `RecordRef::expired_value`).
    fn expired_value(&self, now: u64) -> bool {
        match self {
            KeyState::Stored(r) => r.expired_value(now),
            KeyState::Planned { op, expires_ms, .. } => {
                *op == Op::Put && *expires_ms != 0 && *expires_ms <= now
            }
        }
    }

    fn live(&self, now: u64) -> bool {
        match self {
            KeyState::Stored(r) => r.live(now),
            KeyState::Planned { op, expires_ms, .. } => {
                *op == Op::Put && (*expires_ms == 0 || *expires_ms > now)
            }
        }
    }
}

/// For the keys that the call writes more than once (see
/// [`keys_written_again`]), once an earlier write touched them: their retained
/// entries as the call has left them (the index's, then each write with the
/// same retention rule as `Index::apply`), latest last.
struct Overlay<'a> {
    keys: HashMap<&'a str, Vec<KeyState>>,
    history: usize,
}

impl<'a> Overlay<'a> {
    /// The retained entries of `key` if an earlier write of the call touched it
    /// and the call writes it again.
    fn retained(&self, key: &str) -> Option<&[KeyState]> {
        self.keys.get(key).map(Vec::as_slice)
    }

    /// Adds a planned write of `key`, made at `now`, to what the next writes of
    /// the call see.
    fn add(
        &mut self,
        core: &BucketCore,
        pending: &Pending,
        key: &'a str,
        written: KeyState,
        now: u64,
    ) {
        let list = self.keys.entry(key).or_insert_with(|| {
            core.retained_for_writer(pending, key)
                .into_iter()
                .map(KeyState::Stored)
                .collect()
        });
        let only_new =
            self.history <= 1 || matches!(written, KeyState::Planned { op: Op::Purge, .. });
        retention(
            list,
            written,
            only_new,
            |s| s.expired_value(now),
            self.history,
            drop,
        );
    }
}

/// The bucket's max bytes, as the writes of a call use it up. What counts is
/// what the bucket would hold after each write, as the index counts it: every
/// retained record (markers too), less the older entries a write drops from
/// retention (so a write that replaces a value needs room only for what it
/// adds), with the earlier writes of the call and the pending ones applied.
struct Room {
    /// Bytes the bucket holds with the call's writes so far (0 when it has no limit).
    used: u64,
    /// `used` before the call's writes.
    before: u64,
    /// The limit; 0 for none.
    max: u64,
}

impl Room {
    fn of(core: &BucketCore, pending: &Pending) -> Room {
        let max = core.config.max_bytes;
        let used = if max > 0 {
            let indexed = i64::try_from(core.index.read().bytes()).unwrap_or(i64::MAX);
            u64::try_from(indexed.saturating_add(pending.bytes_net())).unwrap_or(0)
        } else {
            0
        };
        Room {
            used,
            before: used,
            max,
        }
    }

    /// What the call's writes change the bytes the bucket holds by.
    fn net(&self) -> i64 {
        let signed = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        signed(self.used) - signed(self.before)
    }

    /// Whether the bucket has a limit (else nothing is counted).
    fn limited(&self) -> bool {
        self.max > 0
    }

    /// Fails with [`Error::Full`] if a PUT record of `len` bytes, which drops
    /// `freed` bytes of its key's older entries, would leave the bucket over its
    /// max bytes. DEL and PURGE are always accepted.
    fn check(&self, op: Op, len: u64, freed: u64) -> Result<()> {
        let rest = self.used.saturating_sub(freed);
        if op == Op::Put && self.max > 0 && rest.saturating_add(len) > self.max {
            return Err(Error::Full {
                used: rest,
                adding: len,
                max: self.max,
            });
        }
        Ok(())
    }

    /// Counts a planned record of `len` bytes that drops `freed` bytes.
    fn take(&mut self, len: u64, freed: u64) {
        if self.max > 0 {
            self.used = self.used.saturating_sub(freed).saturating_add(len);
        }
    }
}

/// Whether `r` is a DEL or PURGE marker past the bucket's max age. A marker
/// has no TTL of its own, so its expiry is its max age: once expired it is no
/// longer retained, though it stays in the index until the next sweep or open
/// drops it. A writer must not see it meanwhile, or a precondition's answer
/// (UPDATE's "latest", whether `UPDATE k <marker>` undeletes) would depend on
/// when the sweep last ran, and differ after a restart, which drops it at open.
fn aged_marker(r: &RecordRef, now: u64) -> bool {
    r.op() != Op::Put && r.expired(now)
}

/// The error of write `index` of a batch that fails: wrapped in
/// [`Error::Batch`] when the call has more than one write.
fn batch_error(writes: usize, index: usize, e: Error) -> Error {
    if writes > 1 {
        Error::Batch {
            index,
            source: Box::new(e),
        }
    } else {
        e
    }
}

/// The keys that more than one write of `ops` touches, if a write of `ops` looks at its
/// key's state, or if `counted` (the bucket has max bytes: each write counts what it
/// drops from its key's entries); else none: nothing reads what an earlier write left.
fn keys_written_again(ops: &[WriteOp], counted: bool) -> HashSet<&str> {
    let mut again = HashSet::new();
    if ops.len() < 2 || !counted && ops.iter().all(WriteOp::is_blind) {
        return again;
    }
    let mut seen = HashSet::with_capacity(ops.len());
    for op in ops {
        if !seen.insert(op.key.as_str()) {
            again.insert(op.key.as_str());
        }
    }
    again
}

/// The record length of a key and a value, as the byte counts use it.
fn record_len(key: &str, value: &[u8]) -> u64 {
    u64::try_from(record::encoded_len(key.len(), value.len())).unwrap_or(u64::MAX)
}

impl BucketCore {
    /// Checks each write's key, value size and TTL, before any lock: for each
    /// write, why it fails, if it does. In [`WriteMode::Batch`] the first
    /// failure is the error of the call.
    pub(super) fn validate(&self, ops: &[WriteOp], mode: WriteMode) -> Result<Vec<Option<Error>>> {
        let mut invalid = Vec::with_capacity(ops.len());
        for (i, op) in ops.iter().enumerate() {
            match self.validate_op(op) {
                Ok(()) => invalid.push(None),
                Err(e) if mode == WriteMode::Batch => return Err(batch_error(ops.len(), i, e)),
                Err(e) => invalid.push(Some(e)),
            }
        }
        Ok(invalid)
    }

    /// Checks a write's key, value size and TTL.
    fn validate_op(&self, op: &WriteOp) -> Result<()> {
        validate_key(&op.key)?;
        let max_value = self.config.max_value_size;
        let size = op.value.len();
        let over_bucket_max = max_value > 0 && u64::try_from(size).map_or(true, |s| s > max_value);
        if size > record::MAX_VALUE_LEN || over_bucket_max {
            let max = if max_value > 0 {
                usize::try_from(max_value).unwrap_or(usize::MAX)
            } else {
                record::MAX_VALUE_LEN
            };
            return Err(Error::TooLarge { size, max });
        }
        if op.ttl.is_some_and(|t| t.is_zero()) {
            return Err(Error::BadArgument("TTL must be positive".into()));
        }
        Ok(())
    }

    /// Plans the writes of one call under the writer lock: checks each
    /// against its key's state and the bucket's max bytes, and gives the ones
    /// that pass consecutive revisions from `first_revision` on. `invalid`:
    /// what [`BucketCore::validate`] found. In [`WriteMode::Batch`] the first
    /// failure is the error of the call.
    pub(super) fn plan<'a>(
        &self,
        ops: &'a [WriteOp],
        invalid: Vec<Option<Error>>,
        pending: &Pending,
        first_revision: u64,
        mode: WriteMode,
        now: u64,
    ) -> Result<Plan<'a>> {
        // Later writes of the call see the earlier ones through the overlay, which only a
        // write that looks at its key's state reads, and only for a key an earlier write of
        // the same call touched: the overlay, and the index searches that fill it, are kept
        // for the keys written more than once (none in a pipeline of SETs, or of UPDATEs of
        // distinct keys).
        let repeated = keys_written_again(ops, self.config.max_bytes > 0);
        let mut overlay = Overlay {
            keys: HashMap::new(),
            history: usize::from(self.config.history),
        };
        let mut room = Room::of(self, pending);
        // A batch is one reply: the previous values it returns count together against the
        // read limit, and a batch past it is refused before anything is applied. Not on a
        // replica, where the limit is each node's own setting and every node must decide
        // alike.
        let mut returned = ReadBudget::new(if mode == WriteMode::Batch && !self.replicated {
            self.max_read_bytes
        } else {
            0
        });
        let mut plan = Plan {
            writes: Vec::with_capacity(ops.len()),
            results: Vec::with_capacity(ops.len()),
            bytes_net: 0,
        };
        for (i, (op, invalid)) in ops.iter().zip(invalid).enumerate() {
            if let Some(e) = invalid {
                plan.results.push(Err(e));
                continue;
            }
            let revision = first_revision + plan.writes.len() as u64;
            let retained = overlay.retained(&op.key);
            // A blind write (PUT, DEL, PURGE with no precondition, nothing to
            // return) needs no look at the key: one index search, not two.
            let cur = match retained {
                _ if op.is_blind() => None,
                Some(list) => list.last().cloned(),
                None => self
                    .latest_for_writer(pending, &op.key)
                    .filter(|r| !aged_marker(r, now))
                    .map(KeyState::Stored),
            };
            let checked = self
                .check_precondition(op, cur.as_ref(), retained, pending, now)
                .and_then(|value| {
                    let rop = op.record_op();
                    let len = record_len(&op.key, &value);
                    let freed = if room.limited() {
                        self.freed_by(&op.key, rop, retained, pending, now)
                    } else {
                        0
                    };
                    room.check(rop, len, freed)?;
                    Ok((rop, value, len, freed))
                });
            let (rop, value, len, freed) = match checked {
                Ok(v) => v,
                Err(e) if mode == WriteMode::Batch => return Err(batch_error(ops.len(), i, e)),
                Err(e) => {
                    plan.results.push(Err(e));
                    continue;
                }
            };
            let previous = match (&cur, op.return_previous) {
                (Some(c), true) if c.live(now) => {
                    let entry = self.current_entry(&op.key, c)?;
                    if let Err(e) = returned.take(entry.value.len() as u64) {
                        return Err(batch_error(ops.len(), i, e));
                    }
                    Some(entry)
                }
                _ => None,
            };
            let key_expires_ms = match (rop, op.ttl) {
                // As the record stores it: the index, replies and replay agree.
                (Op::Put, Some(ttl)) => now
                    .saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
                    .min(record::MAX_TIME_MS),
                _ => 0,
            };
            room.take(len, freed);
            if repeated.contains(op.key.as_str()) {
                let planned = KeyState::Planned {
                    revision,
                    op: rop,
                    expires_ms: effective_expiry(key_expires_ms, now, self.config.ttl_ms()),
                    created_ms: now,
                    value: value.clone(),
                };
                overlay.add(self, pending, &op.key, planned, now);
            }
            plan.writes.push(PlannedWrite {
                key: &op.key,
                revision,
                op: rop,
                value,
                key_expires_ms,
            });
            plan.results.push(Ok(Written { revision, previous }));
        }
        plan.bytes_net = room.net();
        Ok(plan)
    }

    /// Checks `op`'s precondition against the key's current state; returns the value to write.
    /// `retained`: the key's retained entries as earlier writes of the same
    /// call left them, if there were any (else the index is the truth).
    fn check_precondition(
        &self,
        op: &WriteOp,
        cur: Option<&KeyState>,
        retained: Option<&[KeyState]>,
        pending: &Pending,
        now: u64,
    ) -> Result<Bytes> {
        let live = cur.is_some_and(|c| c.live(now));
        let latest = cur.map_or(0, KeyState::revision);
        match &op.kind {
            Kind::Put | Kind::Delete(None) | Kind::Purge => {}
            Kind::Create => {
                if live {
                    return Err(Error::Exists);
                }
            }
            Kind::Update(expected) | Kind::Delete(Some(expected)) => {
                // Latest 0: the key has no retained entry (UPDATE creates it, DEL
                // writes a marker as a plain DEL does).
                let ok = match (expected, cur) {
                    (0, None) => true,
                    (0, Some(_)) | (_, None) => false,
                    (e, Some(_)) => *e == latest,
                };
                if !ok {
                    return Err(Error::WrongRevision {
                        expected: *expected,
                        latest,
                    });
                }
            }
            Kind::Cas(expected) => {
                let matches = match (expected, cur) {
                    (None, _) => !live,
                    (Some(_), None) => false,
                    (Some(want), Some(c)) => live && self.current_entry(&op.key, c)?.value == *want,
                };
                if !matches {
                    return Err(Error::Mismatch);
                }
            }
            Kind::Revert(revision) => {
                let found = match retained {
                    Some(list) => match list.iter().find(|c| c.revision() == *revision) {
                        Some(c) if c.live(now) => Some(self.current_entry(&op.key, c)?.value),
                        _ => None,
                    },
                    None => match pending.retained(op.key.as_bytes()) {
                        Some(list) => match list.iter().find(|r| r.revision == *revision) {
                            Some(r) if r.live(now) => {
                                Some(self.current_entry(&op.key, &KeyState::Stored(*r))?.value)
                            }
                            _ => None,
                        },
                        None => match self.get_revision_at(&op.key, *revision, now)? {
                            Some(e) if e.op == Op::Put => Some(e.value),
                            _ => None,
                        },
                    },
                };
                return found.ok_or(Error::NotFound);
            }
        }
        Ok(op.value.clone())
    }

    /// A key's latest entry as the writer sees it: pending writes first, then the index.
    fn latest_for_writer(&self, pending: &Pending, key: &str) -> Option<RecordRef> {
        match pending.retained(key.as_bytes()) {
            Some(list) => list.last().copied(),
            None => self.index.read().latest(key.as_bytes()),
        }
    }

    /// Bytes of `key`'s retained entries (as the call has left them, if it
    /// wrote the key before: `retained`) that a new record carrying `op`,
    /// made at `now`, drops, by the index's retention rule: a PURGE, or a
    /// history of one, keeps only the new entry; otherwise the values expired
    /// by `now` leave and the last `history` are kept.
    fn freed_by(
        &self,
        key: &str,
        op: Op,
        retained: Option<&[KeyState]>,
        pending: &Pending,
        now: u64,
    ) -> u64 {
        // Each entry's length, and whether it is a value expired by now.
        let mut entries: Vec<(u64, bool)> = match retained {
            Some(list) => list
                .iter()
                .map(|s| (s.record_len(key), s.expired_value(now)))
                .collect(),
            None => self
                .retained_for_writer(pending, key)
                .iter()
                .map(|r| (r.len() as u64, r.expired_value(now)))
                .collect(),
        };
        let history = usize::from(self.config.history);
        let only_new = op == Op::Purge || history <= 1;
        let mut freed = 0;
        let left = |(len, _): (u64, bool)| freed += len;
        retention(&mut entries, (0, false), only_new, |e| e.1, history, left);
        freed
    }

    /// A key's retained entries as the writer sees them, oldest first.
    fn retained_for_writer(&self, pending: &Pending, key: &str) -> Vec<RecordRef> {
        match pending.retained(key.as_bytes()) {
            Some(list) => list.to_vec(),
            None => self.index.read().revisions(key.as_bytes()),
        }
    }

    /// The entry a key's state stands for.
    fn current_entry(&self, key: &str, state: &KeyState) -> Result<Entry> {
        match state {
            KeyState::Stored(at) => self.load_looked_up(key, at),
            KeyState::Planned {
                revision,
                op,
                expires_ms,
                created_ms,
                value,
            } => Ok(Entry {
                bucket: Arc::clone(&self.name),
                key: key.to_string(),
                value: value.clone(),
                revision: *revision,
                created_ms: *created_ms,
                op: *op,
                delta: 0,
                expires_ms: *expires_ms,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{keys_written_again, KeyState};
    use crate::bucket::test_util::{aged_config, manual_options, writers_latest};
    use crate::entry::WriteOp;
    use crate::{FsyncPolicy, ManualClock, Options, Store};

    /// The overlay is kept only for keys a call writes twice, and only when some write of
    /// the call reads its key's state, or the bucket counts its bytes.
    #[test]
    fn only_keys_written_again_by_a_reading_call_get_an_overlay() {
        let keys = |ops: &[WriteOp]| {
            let mut k: Vec<&str> = keys_written_again(ops, false).into_iter().collect();
            k.sort_unstable();
            k.join(",")
        };
        let puts = [WriteOp::put("a", "1"), WriteOp::put("a", "2")];
        assert_eq!(keys(&puts), "", "blind writes read nothing");
        assert!(
            keys_written_again(&puts, true).contains("a"),
            "a write in a bucket with max bytes counts what the earlier one left"
        );
        let distinct = [
            WriteOp::update("a", "1", 1),
            WriteOp::update("b", "1", 2),
            WriteOp::put("c", "1"),
        ];
        assert_eq!(keys(&distinct), "", "no key twice");
        let again = [
            WriteOp::put("a", "1"),
            WriteOp::update("b", "1", 2),
            WriteOp::update("a", "2", 9),
            WriteOp::delete("b"),
            WriteOp::put("c", "1"),
        ];
        assert_eq!(keys(&again), "a,b");
        assert_eq!(keys(&[WriteOp::update("a", "1", 1)]), "", "one write");
    }

    /// A writer checking a precondition (CAS, `SET ... GET`, REVERT) looks the key up in
    /// the index, lets go of its lock, then reads the record. A compaction pass in
    /// between moves the record and retires its segment: the read failed with "segment
    /// slot N missing", a corruption error (`-ERR`, or `-ABORTED <i> ERR` from EXEC, to a
    /// client). Found by the server's SIGKILL torture under concurrent clients.
    #[test]
    fn a_record_looked_up_before_a_compaction_pass_is_read_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options {
            background: false,
            fsync: FsyncPolicy::Never,
            segment_size: 4096,
            ..Default::default()
        };
        let store = Store::open(dir.path(), opts).unwrap();
        let b = store.default_bucket().unwrap();
        b.put("k", "kept").unwrap();
        for i in 0..100 {
            b.put("filler", format!("{i}")).unwrap();
        }
        let core = b.core();
        let at = core.index.read().latest(b"k").unwrap();
        b.compact().unwrap();
        assert!(
            core.log.segment(at.slot).is_none(),
            "the pass retired the segment the lookup found"
        );
        let e = core.current_entry("k", &KeyState::Stored(at)).unwrap();
        assert_eq!((&e.value[..], e.revision), (&b"kept"[..], at.revision));
    }

    /// A DEL marker past the bucket's max age is dropped from the index by the sweep,
    /// and by an open: a store that stayed up and has not swept yet still held it, and
    /// its writers saw it. `UPDATE k v <marker>` undid the delete there, while the same
    /// store reopened said `WRONGREV expected <marker>, latest 0`. Found by the
    /// power-loss harness (`never`): its reference, reopened at an earlier time than
    /// the sweep the subject had run, disagreed with it on such an UPDATE.
    #[test]
    fn a_marker_past_the_max_age_is_gone_for_writers_before_any_sweep() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(1_000_000);
        let latest = |store: &Store| writers_latest(store, "k");
        let store = Store::open(dir.path(), manual_options(&clock)).unwrap();
        let b = store.create_bucket("b", aged_config(5_000)).unwrap();
        b.put("k", "v").unwrap();
        let marker = b.delete("k").unwrap();
        assert_eq!(
            latest(&store),
            marker,
            "a marker within the max age is retained"
        );
        clock.advance(6_000);
        assert_eq!(latest(&store), 0, "live, before any sweep");
        let live = b
            .update("k", "undeleted", marker)
            .map_err(|e| e.to_string());
        drop(b);
        store.close().unwrap();
        let store = Store::open(dir.path(), manual_options(&clock)).unwrap();
        assert_eq!(latest(&store), 0, "reopened (the marker left at open)");
        let reopened = store
            .bucket("b")
            .unwrap()
            .update("k", "undeleted", marker)
            .map_err(|e| e.to_string());
        assert_eq!(live, reopened);
        assert_eq!(
            live,
            Err(format!("expected {marker}, latest 0")),
            "nothing left to undelete"
        );
    }
}
