//! Cross-crate integration tests for logkv live in `tests/tests/`.
//!
//! This library holds the bodies of the fuzz targets, shared by the cargo-fuzz
//! crate in `fuzz/` and by `tests/tests/fuzz_corpus.rs`, which replays the
//! saved corpora as plain tests on stable Rust.

pub mod fuzz_targets;
