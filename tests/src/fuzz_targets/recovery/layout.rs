//! A bucket's segment files read from outside: where each record lies, and
//! how far the durability mark says the last segment was durable.

use std::io;
use std::path::{Path, PathBuf};

use logkv::log::mark::{Mark, MARK_AREA_LEN};
use logkv::log::record::{decode, Decoded};
use logkv::log::segment::{SegmentHeader, SegmentId};

/// One segment file's bytes.
#[derive(Debug, Clone)]
pub struct SegmentFile {
    pub path: PathBuf,
    pub bytes: Vec<u8>,
}

/// Where a record lies in its segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Located {
    pub offset: usize,
    pub len: usize,
    pub revision: u64,
}

impl Located {
    pub fn end(&self) -> usize {
        self.offset + self.len
    }
}

impl SegmentFile {
    /// The header, if it reads back.
    pub fn header(&self) -> Option<SegmentHeader> {
        SegmentHeader::decode(&self.bytes).ok()
    }

    /// Where records start (0 if the header does not read back).
    pub fn data_start(&self) -> usize {
        self.header()
            .and_then(|h| usize::try_from(h.data_start()).ok())
            .unwrap_or(0)
    }

    /// Below this offset the newest valid durability mark says everything was
    /// durable (where records start if there is no valid mark).
    pub fn mark_end(&self) -> usize {
        let Some(header) = self.header() else {
            return 0;
        };
        let at = header.encoded_len();
        let mark = self
            .bytes
            .get(at..at + MARK_AREA_LEN)
            .and_then(|area| Mark::latest(area, header.salt));
        let end = mark.and_then(|m| usize::try_from(m.end).ok()).unwrap_or(0);
        end.max(self.data_start())
    }

    /// The records from the start of the data up to the first position that
    /// is not one.
    pub fn records(&self) -> Vec<Located> {
        let Some(header) = self.header() else {
            return Vec::new();
        };
        let mut at = self.data_start();
        let mut out = Vec::new();
        while let Some(rest) = self.bytes.get(at..) {
            let Decoded::Record(r) = decode(rest, header.salt) else {
                break;
            };
            let len = r.header.record_len();
            out.push(Located {
                offset: at,
                len,
                revision: r.header.revision,
            });
            at += len;
        }
        out
    }

    /// Where the records end.
    pub fn data_end(&self) -> usize {
        self.records()
            .last()
            .map_or(self.data_start(), Located::end)
    }
}

/// The segment files of the bucket in `dir`, in log order.
pub fn read_segments(dir: &Path) -> io::Result<Vec<SegmentFile>> {
    let mut ids: Vec<SegmentId> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok()?.file_name().to_str().and_then(SegmentId::parse))
        .collect();
    ids.sort();
    ids.into_iter()
        .map(|id| {
            let path = dir.join(id.file_name());
            let bytes = std::fs::read(&path)?;
            Ok(SegmentFile { path, bytes })
        })
        .collect()
}
