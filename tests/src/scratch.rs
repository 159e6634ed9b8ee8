//! Scratch directories for the fuzz target bodies.

use std::io;
use std::path::PathBuf;

use tempfile::TempDir;

/// Set to a directory to hold the fuzz targets' scratch stores.
pub const SCRATCH_ENV: &str = "LOGKV_SCRATCH_DIR";

/// A fresh directory for one run of a fuzz target body: under
/// `$LOGKV_SCRATCH_DIR` if set, else under `/dev/shm` where there is one, else
/// under the usual temporary directory.
///
/// The targets simulate crashes by copying a store's directory while it is
/// open (what a killed process leaves: the page cache survives), never by
/// losing the page cache, so a tmpfs changes nothing they check; it only
/// makes the syncs they do (segment creation, clean closes, explicit syncs)
/// free: on a disk the corpus replay took minutes instead of seconds.
///
/// # Errors
///
/// When the directory cannot be created.
pub fn scratch_dir() -> io::Result<TempDir> {
    let base = std::env::var_os(SCRATCH_ENV).map_or_else(
        || {
            let shm = PathBuf::from("/dev/shm");
            if shm.is_dir() {
                shm
            } else {
                std::env::temp_dir()
            }
        },
        PathBuf::from,
    );
    tempfile::Builder::new()
        .prefix("logkv-fuzz-")
        .tempdir_in(base)
}
