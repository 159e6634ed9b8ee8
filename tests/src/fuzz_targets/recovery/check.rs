//! What a recovered bucket must hold, given what was written and what the
//! damage changed.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use logkv::{Bucket, Error, Op};

use super::damage::Damaged;
use super::generate::{Write, KEYS};
use super::layout::Located;

/// What a bucket shows after recovery: every retained entry by revision,
/// and the revisions whose records could not be read (only where the index
/// came from a snapshot and the record under it was damaged).
#[derive(Default, PartialEq, Eq)]
pub struct Seen {
    entries: BTreeMap<u64, (String, Op, Vec<u8>)>,
    unreadable: BTreeSet<u64>,
}

impl std::fmt::Debug for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let entries: Vec<String> = self
            .entries
            .iter()
            .map(|(rev, (key, op, value))| format!("{rev} {op:?} {key} ({} bytes)", value.len()))
            .collect();
        f.debug_struct("Seen")
            .field("entries", &entries)
            .field("unreadable", &self.unreadable)
            .finish()
    }
}

impl Seen {
    /// Reads every retained entry of `bucket`; a key whose history cannot be
    /// read is read revision by revision.
    ///
    /// # Panics
    ///
    /// On an error other than `Corrupt`, or a revision listed twice.
    pub fn read(bucket: &Bucket, writes: &[Write]) -> Seen {
        let mut seen = Seen::default();
        match bucket.history(">") {
            Ok(all) => all.into_iter().for_each(|e| seen.add(e)),
            Err(Error::Corrupt { .. }) => {
                for key in KEYS {
                    seen.read_key(bucket, key, writes);
                }
            }
            Err(e) => panic!("reading the history: {e}"),
        }
        seen
    }

    fn read_key(&mut self, bucket: &Bucket, key: &str, writes: &[Write]) {
        match bucket.history(key) {
            Ok(all) => all.into_iter().for_each(|e| self.add(e)),
            Err(Error::Corrupt { .. }) => {
                for w in writes.iter().filter(|w| w.key == key) {
                    match bucket.entry_at(key, w.revision) {
                        Ok(Some(e)) => self.add(e),
                        Ok(None) => {}
                        Err(Error::Corrupt { .. }) => {
                            self.unreadable.insert(w.revision);
                        }
                        Err(e) => panic!("reading {key} at {}: {e}", w.revision),
                    }
                }
            }
            Err(e) => panic!("reading the history of {key}: {e}"),
        }
    }

    fn add(&mut self, e: logkv::Entry) {
        let rev = e.revision;
        let old = self.entries.insert(rev, (e.key, e.op, e.value.to_vec()));
        assert!(old.is_none(), "revision {rev} is listed twice");
    }

    fn present(&self, w: &Write) -> bool {
        self.entries.contains_key(&w.revision)
    }

    /// The highest revision seen.
    pub fn last(&self) -> u64 {
        self.entries.keys().next_back().copied().unwrap_or(0)
    }
}

/// The written records with where they lie in the log before the damage.
pub struct Expect<'a> {
    pub writes: &'a [Write],
    /// By revision: (segment index, the record's place).
    pub at: HashMap<u64, (usize, Located)>,
    pub damaged: &'a Damaged<'a>,
}

impl Expect<'_> {
    /// Prints the writes, where they lie and what the damage changed.
    pub fn describe(&self) {
        for w in self.writes {
            let (seg, loc) = self.at[&w.revision];
            eprintln!(
                "revision {} {:?} {} ({} bytes of value), call {}, synced {}: segment {seg}, {}..{}",
                w.revision,
                w.op,
                w.key,
                w.value.len(),
                w.batch,
                w.synced,
                loc.offset,
                loc.end()
            );
        }
        let d = self.damaged;
        for (i, seg) in d.original.iter().enumerate() {
            eprintln!(
                "segment {i} {}: {} bytes, mark at {}, now {} bytes, mark at {}, first change at {:?}",
                seg.path.display(),
                seg.bytes.len(),
                seg.mark_end(),
                d.now[i].len(),
                d.durable_end(i),
                d.first_change(i)
            );
        }
        eprintln!("damage below the durable point: {}", d.below_durable());
    }

    fn write(&self, rev: u64) -> Option<&Write> {
        self.writes
            .binary_search_by_key(&rev, |w| w.revision)
            .ok()
            .map(|i| &self.writes[i])
    }

    fn batch(&self, w: &Write) -> impl Iterator<Item = &Write> + '_ {
        let batch = w.batch;
        self.writes.iter().filter(move |x| x.batch == batch)
    }

    /// The segment of `w`'s batch and where the batch ends (a batch never
    /// spans two segments).
    fn batch_end(&self, w: &Write) -> (usize, usize) {
        self.batch(w)
            .map(|x| self.at[&x.revision])
            .fold((0, 0), |(_, end), (seg, loc)| (seg, end.max(loc.end())))
    }

    /// Whether the damage changed a byte of `w`'s record.
    fn changed(&self, w: &Write) -> bool {
        let (seg, loc) = self.at[&w.revision];
        self.damaged.changed(seg, loc.offset, loc.end())
    }

    /// Whether recovery may not lose `w`: its batch lies where the log was
    /// durable as recovery can know it, or before the first change to its
    /// segment.
    fn kept(&self, w: &Write) -> bool {
        let (seg, end) = self.batch_end(w);
        end <= self.damaged.durable_end(seg)
            || self.damaged.first_change(seg).is_none_or(|c| end <= c)
    }

    /// Whether a later PURGE of its key that recovery kept (readable or not)
    /// hides `w`.
    fn hidden(&self, seen: &Seen, w: &Write) -> bool {
        self.writes.iter().any(|p| {
            p.key == w.key
                && p.op == Op::Purge
                && p.revision > w.revision
                && (seen.present(p) || seen.unreadable.contains(&p.revision))
        })
    }

    /// Whether `w` is present, hidden by a later purge, or unreadable because
    /// its record was damaged.
    fn accounted(&self, seen: &Seen, w: &Write) -> bool {
        if seen.unreadable.contains(&w.revision) {
            assert!(
                self.changed(w),
                "revision {} cannot be read, yet its record is intact",
                w.revision
            );
            return true;
        }
        seen.present(w) || self.hidden(seen, w)
    }

    /// Nothing invented: every entry is a record the generator wrote.
    pub fn nothing_invented(&self, seen: &Seen) {
        for (rev, (key, op, value)) in &seen.entries {
            let w = self
                .write(*rev)
                .unwrap_or_else(|| panic!("revision {rev} ({key}) was never written"));
            assert_eq!(
                (&w.key, w.op, &w.value),
                (key, *op, value),
                "revision {rev} holds something else than was written"
            );
        }
    }

    /// Batches are all or nothing.
    pub fn batches_whole(&self, seen: &Seen) {
        for w in self.writes {
            if seen.present(w) {
                for x in self.batch(w) {
                    assert!(
                        self.accounted(seen, x),
                        "revision {} is back without revision {} of its batch",
                        w.revision,
                        x.revision
                    );
                }
            }
        }
    }

    /// Every write recovery may not lose is there (or hidden by a later purge).
    pub fn durable_kept(&self, seen: &Seen) {
        for w in self.writes {
            if self.kept(w) {
                assert!(
                    self.accounted(seen, w),
                    "revision {} ({}) was lost: it lies where the log was durable or before any damage",
                    w.revision,
                    w.key
                );
            }
        }
    }

    /// Revisions go on above everything ever given: a new write's revision is
    /// above every written one, and no revision recovered is among those the
    /// bucket says it skipped.
    ///
    /// # Panics
    ///
    /// When a revision is given again (a finding).
    pub fn revisions_go_on(&self, bucket: &Bucket, seen: &Seen) {
        for (first, last) in bucket.lost_revisions() {
            assert!(
                seen.entries.range(first..=last).next().is_none(),
                "revisions {first}-{last} are said lost, yet some are there"
            );
        }
        let rev = bucket
            .put("k.new", "after recovery")
            .expect("a write after recovery");
        let given = self.writes.last().map_or(0, |w| w.revision);
        assert!(
            rev > given.max(seen.last()),
            "revision {rev} given again (the generator had up to {given})"
        );
    }
}
