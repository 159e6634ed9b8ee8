//! Fuzz target bodies. Each takes arbitrary bytes and panics only on a bug.
//!
//! The cargo-fuzz crate in `fuzz/` runs them, and `tests/tests/fuzz_corpus.rs`
//! replays the saved corpora through them on stable Rust.

mod input;
mod ops;
mod protocol;
mod record;
mod recovery;

pub use ops::ops;
pub use protocol::protocol;
pub use record::record;
pub use recovery::recovery;
