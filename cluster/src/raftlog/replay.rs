//! Reading the Raft log back at open: the engine's recovery calls [`Replay::record`] for
//! each record; the entries past the purge point must follow each other without a gap, the
//! first of them right after the purge point, and their leaders must not go backwards.

use std::collections::VecDeque;

use logkv::log::record::{Op, Record};
use logkv::log::segment::Segment;

use super::{codec, Loc};

/// What recovery checks of each record, and the entries it keeps.
pub(super) struct Replay {
    /// The purge point's index: entries up to it are read but not kept.
    pub(super) purged_index: Option<u64>,
    /// The entries kept, in order.
    pub(super) locs: VecDeque<Loc>,
}

impl Replay {
    /// Takes in the record at `offset` of `seg`; a record out of place is corruption there.
    pub(super) fn record(
        &mut self,
        seg: &Segment,
        offset: u64,
        rec: &Record<'_>,
    ) -> logkv::Result<()> {
        let corrupt = |reason: String| logkv::Error::Corrupt {
            path: seg.path.clone(),
            offset,
            reason,
        };
        let id = codec::stored_log_id(rec.value).map_err(|e| corrupt(e.to_string()))?;
        if rec.header.op != Op::Put
            || rec.key != codec::key(id.index)
            || rec.header.revision != codec::revision(id.index)
        {
            return Err(corrupt(format!(
                "the record of entry {id} has another key or revision"
            )));
        }
        if self.purged_index.is_some_and(|p| id.index <= p) {
            return Ok(());
        }
        // Among the entries kept only, as an append checks them: a purge past the log's
        // end (a snapshot installed ahead of it) leaves the records it covers in place,
        // and those may be of a higher leader than the entries after it (an uncommitted
        // entry the snapshot's history replaced).
        if let Some(p) = self
            .locs
            .back()
            .map(|l| l.log_id)
            .filter(|p| id.leader_id < p.leader_id)
        {
            return Err(corrupt(format!(
                "entry {id} after {p} (leader goes backwards)"
            )));
        }
        match (self.locs.back(), self.purged_index) {
            (Some(last), _) if last.log_id.index + 1 != id.index => {
                return Err(corrupt(format!(
                    "entry {} where {} was due",
                    id.index,
                    last.log_id.index + 1
                )))
            }
            (None, Some(p)) if id.index != p + 1 => {
                return Err(corrupt(format!(
                    "the first entry kept is {} but the log is purged up to {p}",
                    id.index
                )))
            }
            _ => {}
        }
        self.locs.push_back(Loc {
            slot: seg.slot,
            offset,
            len: u32::try_from(rec.header.record_len())
                .map_err(|_| corrupt("a record of 4 GiB or more".into()))?,
            log_id: id,
        });
        Ok(())
    }
}
