//! Connection and server verbs: PING HELLO AUTH SYNC COMPACT INFO CONFIG.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use logkv::{Bucket, FsyncPolicy};
use tracing::{info, warn};

use super::{is, preview, text_arg, uint_arg, wrong_args, Verb};
use crate::protocol::Reply;
use crate::reply::{self, engine_error};
use crate::session::{Flow, Session};

/// Compares two secrets in constant time: their SHA-256 digests (32 bytes whatever the
/// lengths) with `subtle`'s constant-time equality, so the time taken tells neither where
/// they differ nor how long the configured one is.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    Sha256::digest(a).ct_eq(&Sha256::digest(b)).into()
}

/// COMPACT, in one place: a compaction pass over `bucket`, then `+OK`.
pub(crate) fn compact_bucket(bucket: &Bucket) -> Reply {
    match bucket.compact() {
        Ok(report) => {
            info!(
                bucket = bucket.name(),
                segments_in = report.segments_in,
                reclaimed = report.reclaimed(),
                "compaction pass finished"
            );
            Reply::ok()
        }
        Err(e) => engine_error(&e),
    }
}

impl Session {
    /// `PING [msg]`
    pub(crate) fn ping(&mut self, args: &[Bytes], out: &mut Vec<u8>) -> Result<Flow, Reply> {
        match args.get(1) {
            Some(msg) => reply::bulk(out, msg),
            None => out.extend_from_slice(b"+PONG\r\n"),
        }
        Ok(Flow::Continue)
    }

    /// Checks a password; logs failures.
    fn check_password(&mut self, given: &[u8]) -> Result<(), Reply> {
        let Some(want) = self.shared.config.password.as_deref() else {
            return Err(super::err(
                "ERR",
                "AUTH called without any password configured (start the server with \
                 --password to require one)",
            ));
        };
        if same_secret(given, want.as_bytes()) {
            self.authed = true;
            Ok(())
        } else {
            warn!(peer = %self.peer, id = self.id, "failed AUTH: invalid password");
            Err(super::err("NOAUTH", "invalid password"))
        }
    }

    /// `AUTH [username] password` (the username, if any, is ignored).
    pub(crate) fn auth(&mut self, args: &[Bytes], out: &mut Vec<u8>) -> Result<Flow, Reply> {
        let given = &args[args.len() - 1];
        self.check_password(given)?;
        Reply::ok().encode(self.proto, out);
        Ok(Flow::Continue)
    }

    /// `HELLO [2|3 [AUTH username password] [SETNAME name]]`
    pub(crate) fn hello(&mut self, args: &[Bytes], out: &mut Vec<u8>) -> Result<Flow, Reply> {
        let mut proto = self.proto;
        if let Some(v) = args.get(1) {
            proto = match uint_arg(v, "protocol version") {
                Ok(2) => 2,
                Ok(3) => 3,
                _ => {
                    return Err(Reply::err(
                        "ERR",
                        format!(
                            "unsupported protocol version '{}': use HELLO 2 or HELLO 3",
                            preview(v)
                        ),
                    ))
                }
            };
        }
        let mut rest = args.get(2..).unwrap_or_default();
        let mut password: Option<&Bytes> = None;
        while let [word, tail @ ..] = rest {
            if is(word, "AUTH") && tail.len() >= 2 {
                password = Some(&tail[1]);
                rest = &tail[2..];
            } else if is(word, "SETNAME") && !tail.is_empty() {
                rest = &tail[1..];
            } else {
                return Err(super::syntax(Verb::Hello, word));
            }
        }
        if let Some(p) = password {
            self.check_password(p)?;
        }
        self.proto = proto;
        let f = |name: &'static str| Reply::Bulk(Bytes::from_static(name.as_bytes()));
        let facts = Reply::Map(vec![
            (f("server"), f("logkv")),
            (f("version"), f(crate::VERSION)),
            (f("proto"), Reply::Int(i64::from(proto))),
            (
                f("id"),
                Reply::Int(i64::try_from(self.id).unwrap_or(i64::MAX)),
            ),
            (f("mode"), f("standalone")),
            (f("role"), f("master")),
            (f("modules"), Reply::Array(Vec::new())),
        ]);
        facts.encode(self.proto, out);
        Ok(Flow::Continue)
    }

    /// `SYNC`: everything acknowledged before it is on stable storage.
    pub(crate) fn sync(&mut self) -> Flow {
        let store = self.shared.store.clone();
        Flow::Blocking(Box::new(move || match store.sync() {
            Ok(()) => Reply::ok(),
            Err(e) => engine_error(&e),
        }))
    }

    /// `COMPACT`: a compaction pass over the current bucket.
    pub(crate) fn compact(&mut self) -> Flow {
        if let Err(e) = self.with_bucket(|b| b.ttl("_").map(|_| ())) {
            return Flow::Blocking(Box::new(move || engine_error(&e)));
        }
        let bucket = self.bucket.clone();
        Flow::Blocking(Box::new(move || compact_bucket(&bucket)))
    }

    /// `INFO [section]`: `name:value` lines.
    pub(crate) fn info(&mut self) -> Flow {
        let shared = std::sync::Arc::clone(&self.shared);
        Flow::Blocking(Box::new(move || {
            let (mut keys, mut bytes, mut segments, mut compactions, mut fsyncs) = (0, 0, 0, 0, 0);
            let names = shared.store.bucket_names();
            for name in &names {
                // A bucket dropped meanwhile is simply left out.
                // Counters only: INFO must not walk every key.
                if let Ok(s) = shared.store.bucket(name).map(|b| b.stats()) {
                    keys += s.keys;
                    bytes += s.bytes;
                    segments += s.segments;
                    compactions += s.compactions;
                    fsyncs += s.fsyncs;
                }
            }
            let st = &shared.stats;
            let mut text = String::with_capacity(512);
            let _ = write!(
                text,
                "# logkv\r\nversion:{}\r\nuptime:{}\r\nconnections:{}\r\ncommands:{}\r\n\
                 buckets:{}\r\nkeys:{keys}\r\nbytes:{bytes}\r\nsegments:{segments}\r\n\
                 compactions:{compactions}\r\nfsyncs:{fsyncs}\r\nwatchers:{}\r\n\
                 client_memory:{}\r\nclient_memory_budget:{}\r\nevicted_clients:{}\r\n",
                crate::VERSION,
                st.started.elapsed().as_secs(),
                st.connections.load(Ordering::Relaxed),
                st.commands.load(Ordering::Relaxed),
                names.len(),
                st.watchers.load(Ordering::Relaxed),
                shared.client_memory.total(),
                shared.client_memory.budget(),
                shared.client_memory.evicted(),
            );
            Reply::bulk(text)
        }))
    }

    /// `CONFIG GET name [name ...]`: a map (RESP2: flat array) of the matching settings.
    pub(crate) fn config(&mut self, args: &[Bytes], out: &mut Vec<u8>) -> Result<Flow, Reply> {
        if !is(&args[1], "GET") {
            return Err(Reply::err(
                "ERR",
                format!(
                    "CONFIG {} is not supported: only CONFIG GET (settings are command-line flags)",
                    preview(&args[1])
                ),
            ));
        }
        if args.len() < 3 {
            return Err(wrong_args(Verb::Config));
        }
        let c = &self.shared.config;
        let fsync = match c.fsync {
            FsyncPolicy::Always => "always",
            FsyncPolicy::Interval(_) => "everysec",
            FsyncPolicy::Never => "no",
        };
        let settings: [(&str, String); 6] = [
            ("save", String::new()),
            ("appendonly", "yes".into()),
            ("appendfsync", fsync.into()),
            ("maxclients", c.max_connections.to_string()),
            ("proto-max-bulk-len", c.limits.max_bulk.to_string()),
            ("databases", "1".into()),
        ];
        let mut found: Vec<(&str, &str)> = Vec::new();
        for pattern in &args[2..] {
            let pattern = text_arg(pattern, "pattern")?.to_ascii_lowercase();
            let glob = logkv::Glob::new(&pattern).ok();
            for (name, value) in &settings {
                let hit = match &glob {
                    Some(g) => g.matches(name),
                    None => pattern == *name,
                };
                if hit && !found.iter().any(|(n, _)| n == name) {
                    found.push((name, value));
                }
            }
        }
        reply::map(out, self.proto, found.len());
        for (name, value) in found {
            reply::bulk(out, name.as_bytes());
            reply::bulk(out, value.as_bytes());
        }
        Ok(Flow::Continue)
    }
}

#[cfg(test)]
mod tests {
    use super::same_secret;

    #[test]
    fn secrets() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
        assert!(!same_secret(b"", b"a"));
        assert!(same_secret(b"", b""));
        assert!(!same_secret(b"abc", b"ab"));
        assert!(!same_secret(b"abc", b"ABC"));
        let long = vec![b'x'; 10_000];
        assert!(same_secret(&long, &long.clone()));
        assert!(!same_secret(&long, &long[..9_999]));
    }
}
