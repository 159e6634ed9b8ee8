//! Cross-crate integration tests for logkv live in `tests/tests/` (see `tests/README.md`).
//!
//! This library holds what the test binaries share with the fuzz targets: the bodies of
//! the fuzz targets, used by the cargo-fuzz crate in `fuzz/` and by
//! `tests/tests/fuzz_corpus.rs` (which replays the saved corpora as plain tests on
//! stable Rust), the options of test stores, the crash copy of a store directory (re-exported by
//! `tests/tests/common`), and the scratch directories of the fuzz targets.

pub mod fuzz_targets;
pub mod options;
pub mod scratch;
pub mod store_dir;
