//! Connection and server verbs: PING ECHO HELLO AUTH QUIT SYNC COMPACT INFO CONFIG.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use logkv::{Bucket, FsyncPolicy};
use tracing::{info, warn};

use super::args::{is, preview, text, uint, Args};
use super::Flow;
use crate::encode::{self, engine_error};
use crate::protocol::{Reply, RespVersion};
use crate::secret::same_secret;
use crate::session::Session;
use crate::shared::Shared;

/// COMPACT, in one place: a compaction pass over `bucket`, then `+OK`.
fn compact_bucket(shared: &Shared, bucket: &Bucket) -> Reply {
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
        Err(e) => {
            // A failed fsync poisons the log: the server is unhealthy.
            shared.health.observe(&e);
            engine_error(&e)
        }
    }
}

/// Checks a password and marks the session authenticated; logs failures.
fn check_password(s: &mut Session, given: &[u8]) -> Result<(), Reply> {
    let Some(want) = s.shared.config.password.as_deref() else {
        return Err(super::err(
            "ERR",
            "AUTH called without any password configured (start the server with \
             --password to require one)",
        ));
    };
    if same_secret(given, want.as_bytes()) {
        s.authed = true;
        Ok(())
    } else {
        warn!(peer = %s.peer, id = s.id, "failed AUTH: invalid password");
        Err(super::err("NOAUTH", "invalid password"))
    }
}

/// `PING [msg]`, and `ECHO msg` (the same reply: `redis-cli --pipe` ends its input
/// with an ECHO and waits for the message to come back).
pub(crate) struct Ping<'a> {
    msg: Option<&'a Bytes>,
}

impl<'a> Ping<'a> {
    pub fn parse(args: &mut Args<'a>) -> Ping<'a> {
        Ping { msg: args.next() }
    }

    pub fn apply(self, out: &mut Vec<u8>) -> Flow {
        match self.msg {
            Some(msg) => encode::bulk(out, msg),
            None => out.extend_from_slice(b"+PONG\r\n"),
        }
        Flow::Continue
    }
}

/// `AUTH [username] password` (the username, if any, is ignored).
pub(crate) struct Auth<'a> {
    password: &'a Bytes,
}

impl<'a> Auth<'a> {
    pub fn parse(args: &mut Args<'a>) -> Result<Auth<'a>, Reply> {
        let first = args.next_bytes()?;
        Ok(Auth {
            password: args.next().unwrap_or(first),
        })
    }

    pub fn apply(self, s: &mut Session, out: &mut Vec<u8>) -> Result<Flow, Reply> {
        check_password(s, self.password)?;
        Reply::ok().encode(s.version, out);
        Ok(Flow::Continue)
    }
}

/// `HELLO [2|3 [AUTH username password] [SETNAME name]]`
pub(crate) struct Hello<'a> {
    version: Option<RespVersion>,
    password: Option<&'a Bytes>,
}

impl<'a> Hello<'a> {
    pub fn parse(args: &mut Args<'a>) -> Result<Hello<'a>, Reply> {
        let version = match args.next() {
            None => None,
            Some(v) => match uint(v, "protocol version")
                .ok()
                .and_then(RespVersion::from_number)
            {
                Some(version) => Some(version),
                None => {
                    return Err(Reply::err(
                        "ERR",
                        format!(
                            "unsupported protocol version '{}': use HELLO 2 or HELLO 3",
                            preview(v)
                        ),
                    ))
                }
            },
        };
        let mut password = None;
        while let Some(word) = args.next() {
            if is(word, "AUTH") && args.remaining() >= 2 {
                let _username = args.next();
                password = args.next();
            } else if is(word, "SETNAME") && args.remaining() >= 1 {
                let _name = args.next();
            } else {
                return Err(args.syntax(word));
            }
        }
        Ok(Hello { version, password })
    }

    pub fn apply(self, s: &mut Session, out: &mut Vec<u8>) -> Result<Flow, Reply> {
        if let Some(p) = self.password {
            check_password(s, p)?;
        }
        if let Some(version) = self.version {
            s.version = version;
        }
        let f = |name: &'static str| Reply::Bulk(Bytes::from_static(name.as_bytes()));
        let facts = Reply::Map(vec![
            (f("server"), f("logkv")),
            (f("version"), f(crate::VERSION)),
            (f("proto"), Reply::Int(i64::from(s.version.number()))),
            (f("id"), Reply::Int(i64::try_from(s.id).unwrap_or(i64::MAX))),
            (f("mode"), f("standalone")),
            (f("role"), f("master")),
            (f("modules"), Reply::Array(Vec::new())),
        ]);
        facts.encode(s.version, out);
        Ok(Flow::Continue)
    }
}

/// `QUIT`: `+OK`, then close.
pub(crate) fn quit(s: &mut Session, out: &mut Vec<u8>) -> Flow {
    Reply::ok().encode(s.version, out);
    Flow::Close
}

/// `SYNC`: everything acknowledged before it is on stable storage.
pub(crate) fn sync(s: &mut Session) -> Flow {
    let store = s.shared.store();
    let shared = Arc::clone(&s.shared);
    Flow::Blocking(Box::new(move || match store.sync() {
        Ok(()) => Reply::ok(),
        Err(e) => {
            // A failed fsync poisons the log: the server is unhealthy.
            shared.health.observe(&e);
            engine_error(&e)
        }
    }))
}

/// `COMPACT`: a compaction pass over the current bucket.
pub(crate) fn compact(s: &mut Session) -> Flow {
    match s.live_bucket() {
        Ok(bucket) => {
            let shared = Arc::clone(&s.shared);
            Flow::Blocking(Box::new(move || compact_bucket(&shared, &bucket)))
        }
        Err(e) => Flow::Blocking(Box::new(move || engine_error(&e))),
    }
}

/// `INFO [section]`: `name:value` lines (the section is accepted and ignored).
pub(crate) fn info(s: &mut Session) -> Flow {
    let shared = Arc::clone(&s.shared);
    Flow::Blocking(Box::new(move || {
        let (mut keys, mut bytes, mut segments, mut compactions, mut fsyncs) = (0, 0, 0, 0, 0);
        let mut compacting = 0;
        let store = shared.store();
        let names = store.bucket_names();
        for name in &names {
            // A bucket dropped meanwhile is simply left out.
            // Counters only: INFO must not walk every key.
            if let Ok(s) = store.bucket(name).map(|b| b.stats()) {
                keys += s.keys;
                bytes += s.bytes;
                segments += s.segments;
                compactions += s.compactions;
                compacting += usize::from(s.compacting);
                fsyncs += s.fsyncs;
            }
        }
        let st = &shared.stats;
        let mut text = String::with_capacity(512);
        let _ = write!(
            text,
            "# logkv\r\nversion:{}\r\nuptime:{}\r\nconnections:{}\r\ncommands:{}\r\n\
             buckets:{}\r\nkeys:{keys}\r\nbytes:{bytes}\r\nsegments:{segments}\r\n\
             compactions:{compactions}\r\ncompacting:{compacting}\r\nfsyncs:{fsyncs}\r\n\
             watchers:{}\r\n\
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
        if let Some(node) = &shared.cluster {
            text.push_str(&crate::command::cluster::info_section(node));
        }
        Reply::bulk(text)
    }))
}

/// `CONFIG GET name [name ...]`: a map (RESP2: flat array) of the matching settings.
pub(crate) struct ConfigGet<'a> {
    patterns: Vec<&'a str>,
}

impl<'a> ConfigGet<'a> {
    pub fn parse(args: &mut Args<'a>) -> Result<ConfigGet<'a>, Reply> {
        let sub = args.next_bytes()?;
        if !is(sub, "GET") {
            return Err(Reply::err(
                "ERR",
                format!(
                    "CONFIG {} is not supported: only CONFIG GET (settings are command-line flags)",
                    preview(sub)
                ),
            ));
        }
        if args.remaining() == 0 {
            return Err(args.wrong_args());
        }
        let mut patterns = Vec::with_capacity(args.remaining());
        while let Some(p) = args.next() {
            patterns.push(text(p, "pattern")?);
        }
        Ok(ConfigGet { patterns })
    }

    pub fn apply(self, s: &mut Session, out: &mut Vec<u8>) -> Flow {
        let c = &s.shared.config;
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
        for pattern in self.patterns {
            let pattern = pattern.to_ascii_lowercase();
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
        encode::map(out, s.version, found.len());
        for (name, value) in found {
            encode::bulk(out, name.as_bytes());
            encode::bulk(out, value.as_bytes());
        }
        Flow::Continue
    }
}
