//! Backups: `BACKUP name` (a checkpoint written into `--backup-dir`), `BACKUP STREAM` (the
//! same checkpoint streamed to the client as a sequence of frames), and the command that
//! receives such a stream, `logkv-server backup --from HOST:PORT --to DIR`.
//!
//! * `stream`: the frames, as the server produces them (format in docs/PROTOCOL.md).
//! * [`client`]: the receiving side: connects, authenticates, reads the frames, checks
//!   every file's checksum and writes the copy under a temporary name, renamed into place.
//! * `resp`: the small RESP reader the receiving side reads frames with.

pub mod client;
mod resp;
pub(crate) mod stream;

use std::path::{Component, Path, PathBuf};

/// Version of the stream format, sent in its header frame.
pub const STREAM_VERSION: i64 = 1;

/// Whether `name` is a plain name for a backup or a file of one: 1–255 characters of
/// `[A-Za-z0-9_.-]`, not `.` or `..` (so it can never leave the directory it names
/// something in).
pub fn is_plain_name(name: &[u8]) -> bool {
    (1..=255).contains(&name.len())
        && name != b"."
        && name != b".."
        && name
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// A relative path made only of plain names (see [`is_plain_name`]), at most `depth`
/// deep: `None` for anything that could point outside the directory it is joined to.
pub fn plain_relative_path(path: &[u8], depth: usize) -> Option<PathBuf> {
    let text = std::str::from_utf8(path).ok()?;
    let parts: Vec<&str> = text.split('/').collect();
    if parts.is_empty() || parts.len() > depth || !parts.iter().all(|p| is_plain_name(p.as_bytes()))
    {
        return None;
    }
    let out: PathBuf = parts.iter().collect();
    // Belt and braces: only normal components.
    out.components()
        .all(|c| matches!(c, Component::Normal(_)))
        .then_some(out)
}

/// Fsyncs a directory (its entries become durable).
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names() {
        for ok in [
            "a",
            "nightly-2024.01.01",
            "A_b.c-d",
            "...",
            ".hidden",
            "x".repeat(255).as_str(),
        ] {
            assert!(is_plain_name(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "/abs",
            "a\\b",
            "a b",
            "é",
            "a\0",
            "x".repeat(256).as_str(),
        ] {
            assert!(!is_plain_name(bad.as_bytes()), "{bad:?}");
        }
    }

    #[test]
    fn plain_paths() {
        assert_eq!(
            plain_relative_path(b"buckets/default/index.snap", 3),
            Some(PathBuf::from("buckets/default/index.snap"))
        );
        for bad in [
            &b"../x"[..],
            b"/etc/passwd",
            b"buckets/../../x",
            b"buckets//x",
            b"buckets/./x",
            b"a/b/c/d",
            b"",
            b"buckets/x/",
            b"\xff",
        ] {
            assert_eq!(
                plain_relative_path(bad, 3),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
