//! Wire protocol: request parsing (RESP arrays and inline lines) and reply encoding
//! (RESP2 and RESP3).
//!
//! This module is pure: no I/O, no engine, no async. The connection layer feeds the bytes it
//! has read to [`parse_request`] and writes what [`encode`] produced.

pub mod http;
pub mod parse;
pub mod reply;

pub use parse::{encode_request, parse_request, InlineSyntax, Limits, ParseError, Request};
pub use reply::{encode, Reply, RespVersion};
