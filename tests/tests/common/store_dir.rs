//! Copies of store directories.

use std::path::Path;

/// [`logkv_tests::store_dir::copy_store_dir`] (what a process killed at this instant
/// leaves behind), failing the test if the copy fails.
pub fn copy_store_dir(from: &Path, to: &Path) {
    logkv_tests::store_dir::copy_store_dir(from, to)
        .unwrap_or_else(|e| panic!("copying {} to {}: {e}", from.display(), to.display()));
}
