#![no_main]
//! Fuzz target `record`: the body is `logkv_tests::fuzz_targets::record`, which the
//! corpus test in `tests/tests/fuzz_corpus.rs` also runs on stable.

libfuzzer_sys::fuzz_target!(|data: &[u8]| logkv_tests::fuzz_targets::record(data));
