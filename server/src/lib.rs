//! logkv-server: a thin TCP front end over the `logkv` engine.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod protocol;
