//! Damage to segment files at offsets the input chooses, and what it changed.

use super::super::input::Input;
use super::layout::{Located, SegmentFile};

/// One damage, read from eight input bytes.
#[derive(Debug, Clone, Copy)]
pub struct Damage {
    /// Which segment: the last one when a multiple of 4, else an earlier pick.
    segment: u8,
    /// Zero, flip, truncate, garbage, duplicate.
    kind: u8,
    /// Where from: a record's start, the durability mark, the end of the
    /// records, the start of the file.
    anchor: u8,
    /// Added to the anchor.
    delta: i16,
    /// Bytes touched: 0 for the whole record picked, 255 up to the end of the
    /// file, else this many.
    len: u8,
    /// The record picked (an anchor, a length, the source of a duplicate).
    pick: u8,
    /// The byte flipped in, the seed of garbage.
    param: u8,
}

impl Damage {
    pub fn read(input: &mut Input<'_>) -> Damage {
        let [segment, kind, anchor, d0, d1, len, pick, param] = input.array();
        Damage {
            segment,
            kind,
            anchor,
            delta: i16::from_le_bytes([d0, d1]),
            len,
            pick,
            param,
        }
    }

    /// Applies the damage to `files` (the current bytes of each segment);
    /// `original` gives the record layout anchors are taken from.
    pub fn apply(self, original: &[SegmentFile], files: &mut [Vec<u8>]) {
        let count = files.len();
        if count == 0 {
            return;
        }
        let index = if self.segment.is_multiple_of(4) {
            count - 1
        } else {
            usize::from(self.segment / 4) % count
        };
        let orig = &original[index];
        let records = orig.records();
        let picked = (!records.is_empty()).then(|| records[usize::from(self.pick) % records.len()]);
        let anchor = match self.anchor % 4 {
            0 => picked.map_or(orig.data_start(), |r| r.offset),
            1 => orig.mark_end(),
            2 => orig.data_end(),
            _ => 0,
        };
        let bytes = &mut files[index];
        let at = offset(anchor, self.delta, bytes.len());
        let len = match self.len {
            0 => picked.map_or(1, |r: Located| r.len),
            255 => bytes.len().saturating_sub(at).max(1),
            n => usize::from(n),
        };
        match self.kind % 5 {
            0 => fill(bytes, at, len, |_| 0),
            1 => {
                let x = self.param.max(1);
                let end = (at + len).min(bytes.len());
                bytes[at..end].iter_mut().for_each(|b| *b ^= x);
            }
            2 => bytes.truncate(at),
            3 => {
                let mut state = u32::from(self.param) << 8 | u32::from(self.pick) | 1;
                fill(bytes, at, len, |_| {
                    // xorshift32: garbage that is not all one byte.
                    state ^= state << 13;
                    state ^= state >> 17;
                    state ^= state << 5;
                    state.to_le_bytes()[0]
                });
            }
            _ => {
                let from = picked.map_or(0, |r| r.offset).min(bytes.len());
                let src = bytes[from..(from + len).min(bytes.len())].to_vec();
                fill(bytes, at, src.len(), |i| src[i]);
            }
        }
    }
}

/// `anchor + delta`, within `0..=len`.
fn offset(anchor: usize, delta: i16, len: usize) -> usize {
    let at = if delta < 0 {
        anchor.saturating_sub(usize::from(delta.unsigned_abs()))
    } else {
        anchor + usize::from(delta.unsigned_abs())
    };
    at.min(len)
}

/// Writes `len` bytes from `byte(i)` at `at`, growing the file if needed.
fn fill(bytes: &mut Vec<u8>, at: usize, len: usize, mut byte: impl FnMut(usize) -> u8) {
    if bytes.len() < at + len {
        bytes.resize(at + len, 0);
    }
    for (i, b) in bytes[at..at + len].iter_mut().enumerate() {
        *b = byte(i);
    }
}

/// The segment files before and after the damage.
pub struct Damaged<'a> {
    pub original: &'a [SegmentFile],
    pub now: Vec<Vec<u8>>,
}

impl Damaged<'_> {
    /// The byte at `at` of segment `index` before and after, a missing byte
    /// read as zero (the last segment is pre-written with zeros: cutting them
    /// off changes nothing).
    fn pair(&self, index: usize, at: usize) -> (u8, u8) {
        let before = self.original[index].bytes.get(at).copied().unwrap_or(0);
        let after = self.now[index].get(at).copied().unwrap_or(0);
        (before, after)
    }

    /// The offsets of segment `index` the damage changed, in order. A sealed
    /// segment's length is part of it (it was cut to its data and synced):
    /// a change of length counts as a change at the shorter length.
    fn changes(&self, index: usize) -> impl Iterator<Item = usize> + '_ {
        let (before, after) = (self.original[index].bytes.len(), self.now[index].len());
        let resized = (!self.is_last(index) && before != after).then_some(before.min(after));
        let bytes = (0..before.max(after)).filter(move |&at| {
            let (b, a) = self.pair(index, at);
            b != a
        });
        let mut bytes = bytes.peekable();
        let mut resized = resized;
        std::iter::from_fn(move || match (bytes.peek(), resized) {
            (Some(&b), Some(r)) if r < b => resized.take(),
            (Some(_), _) => bytes.next(),
            (None, _) => resized.take(),
        })
    }

    /// The first offset of segment `index` the damage changed.
    pub fn first_change(&self, index: usize) -> Option<usize> {
        self.changes(index).next()
    }

    /// Whether the damage changed any byte of `[from, to)` in segment `index`.
    pub fn changed(&self, index: usize, from: usize, to: usize) -> bool {
        self.changes(index)
            .take_while(|&at| at < to)
            .any(|at| at >= from)
    }

    pub fn is_last(&self, index: usize) -> bool {
        index + 1 == self.now.len()
    }

    /// Below this offset segment `index` is durable as recovery can know it:
    /// up to the mark it now holds (a sealed segment was durable whole, but
    /// its length does not say where its data ended: cut short at a record
    /// boundary, it looks whole); all of a segment whose header no longer reads.
    pub fn durable_end(&self, index: usize) -> usize {
        let now = SegmentFile {
            path: self.original[index].path.clone(),
            bytes: self.now[index].clone(),
        };
        if now.header().is_none() {
            usize::MAX
        } else {
            now.mark_end()
        }
    }

    /// The durability mark's slots of segment `index` (a torn slot is what a
    /// power cut leaves of an unsynced mark: recovery then uses the other one).
    fn mark_area(&self, index: usize) -> std::ops::Range<usize> {
        let start = self.original[index].header().map_or(0, |h| h.encoded_len());
        start..self.original[index].data_start()
    }

    /// Whether every segment's header is as it was (repair moves a segment
    /// whose header is damaged aside, and with it what it knew of revisions).
    pub fn headers_intact(&self) -> bool {
        (0..self.now.len()).all(|i| {
            let len = self.original[i].header().map_or(0, |h| h.encoded_len());
            !self.changed(i, 0, len)
        })
    }

    /// Whether some damage lies where the data was durable: anywhere in a
    /// sealed segment (it was synced whole), below the last one's mark (the
    /// mark's own slots aside: a torn slot is what a power cut leaves of an
    /// unsynced mark). Recovery may then refuse to open. So may a last segment
    /// cut short of where its data starts: it was created whole (header, mark
    /// slots and all) and synced before it was put in place, so no power cut
    /// leaves it shorter than that.
    pub fn below_durable(&self) -> bool {
        (0..self.now.len()).any(|i| {
            if !self.is_last(i) {
                return self.first_change(i).is_some();
            }
            if self.now[i].len() < self.original[i].data_start() {
                return true;
            }
            let (end, mark) = (self.durable_end(i), self.mark_area(i));
            self.changes(i)
                .take_while(|&at| at < end)
                .any(|at| !mark.contains(&at))
        })
    }
}
