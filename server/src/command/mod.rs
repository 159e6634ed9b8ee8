//! Dispatch: verb lookup, arity, the authentication / MULTI / RESP2-watch gates, and the
//! argument helpers shared by the verb modules.

pub(crate) mod admin;
pub(crate) mod bucket;
pub(crate) mod kv;
pub(crate) mod query;
pub(crate) mod txn;
pub(crate) mod watch;

use std::borrow::Cow;

use bytes::Bytes;

use crate::protocol::Reply;
use crate::session::{Flow, Session};

/// Every verb of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verb {
    Ping,
    Hello,
    Auth,
    Quit,
    Bucket,
    Use,
    Status,
    Put,
    Set,
    Get,
    Entry,
    GetDel,
    Create,
    Update,
    Cas,
    Del,
    Purge,
    Multi,
    Exec,
    Discard,
    Revert,
    History,
    Keys,
    Search,
    DelGlob,
    Scan,
    Ttl,
    Watch,
    Unwatch,
    Sync,
    Compact,
    Info,
    Config,
}

impl Verb {
    /// Finds a verb, case-insensitively, without allocating.
    pub fn lookup(name: &[u8]) -> Option<Verb> {
        let mut buf = [0u8; 8];
        if name.len() > buf.len() {
            return None;
        }
        let up = &mut buf[..name.len()];
        up.copy_from_slice(name);
        up.make_ascii_uppercase();
        Some(match &*up {
            b"PING" => Verb::Ping,
            b"HELLO" => Verb::Hello,
            b"AUTH" => Verb::Auth,
            b"QUIT" => Verb::Quit,
            b"BUCKET" => Verb::Bucket,
            b"USE" => Verb::Use,
            b"STATUS" => Verb::Status,
            b"PUT" => Verb::Put,
            b"SET" => Verb::Set,
            b"GET" => Verb::Get,
            b"ENTRY" => Verb::Entry,
            b"GETDEL" => Verb::GetDel,
            b"CREATE" => Verb::Create,
            b"UPDATE" => Verb::Update,
            b"CAS" => Verb::Cas,
            b"DEL" => Verb::Del,
            b"PURGE" => Verb::Purge,
            b"MULTI" => Verb::Multi,
            b"EXEC" => Verb::Exec,
            b"DISCARD" => Verb::Discard,
            b"REVERT" => Verb::Revert,
            b"HISTORY" => Verb::History,
            b"KEYS" => Verb::Keys,
            b"SEARCH" => Verb::Search,
            b"DELGLOB" => Verb::DelGlob,
            b"SCAN" => Verb::Scan,
            b"TTL" => Verb::Ttl,
            b"WATCH" => Verb::Watch,
            b"UNWATCH" => Verb::Unwatch,
            b"SYNC" => Verb::Sync,
            b"COMPACT" => Verb::Compact,
            b"INFO" => Verb::Info,
            b"CONFIG" => Verb::Config,
            _ => return None,
        })
    }

    /// Lower-case name, for error messages (as Redis words them).
    pub fn name(self) -> &'static str {
        match self {
            Verb::Ping => "ping",
            Verb::Hello => "hello",
            Verb::Auth => "auth",
            Verb::Quit => "quit",
            Verb::Bucket => "bucket",
            Verb::Use => "use",
            Verb::Status => "status",
            Verb::Put => "put",
            Verb::Set => "set",
            Verb::Get => "get",
            Verb::Entry => "entry",
            Verb::GetDel => "getdel",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Cas => "cas",
            Verb::Del => "del",
            Verb::Purge => "purge",
            Verb::Multi => "multi",
            Verb::Exec => "exec",
            Verb::Discard => "discard",
            Verb::Revert => "revert",
            Verb::History => "history",
            Verb::Keys => "keys",
            Verb::Search => "search",
            Verb::DelGlob => "delglob",
            Verb::Scan => "scan",
            Verb::Ttl => "ttl",
            Verb::Watch => "watch",
            Verb::Unwatch => "unwatch",
            Verb::Sync => "sync",
            Verb::Compact => "compact",
            Verb::Info => "info",
            Verb::Config => "config",
        }
    }

    /// Allowed number of arguments, the verb included: `(min, max)`.
    fn arity(self) -> (usize, usize) {
        match self {
            Verb::Ping => (1, 2),
            Verb::Hello => (1, 7),
            Verb::Auth => (2, 3),
            Verb::Quit | Verb::Multi | Verb::Exec | Verb::Discard | Verb::Sync => (1, 1),
            Verb::Compact => (1, 1),
            Verb::Bucket => (2, 12),
            Verb::Use | Verb::GetDel | Verb::Purge | Verb::History | Verb::DelGlob | Verb::Ttl => {
                (2, 2)
            }
            Verb::Status | Verb::Keys | Verb::Unwatch | Verb::Info => (1, 2),
            Verb::Put | Verb::Create => (3, 5),
            Verb::Set => (3, 6),
            Verb::Get | Verb::Entry | Verb::Del => (2, 4),
            Verb::Update => (4, 4),
            Verb::Cas => (3, 4),
            Verb::Revert => (3, 3),
            Verb::Search => (2, 6),
            Verb::Scan => (1, 7),
            Verb::Watch => (2, 9),
            Verb::Config => (2, 64),
        }
    }

    /// The verbs MULTI queues.
    pub fn is_write(self) -> bool {
        matches!(
            self,
            Verb::Put
                | Verb::Set
                | Verb::Create
                | Verb::Update
                | Verb::Cas
                | Verb::Del
                | Verb::Purge
                | Verb::Revert
        )
    }
}

/// `-ERR wrong number of arguments for '<verb>' command`.
pub(crate) fn wrong_args(verb: Verb) -> Reply {
    Reply::err(
        "ERR",
        format!("wrong number of arguments for '{}' command", verb.name()),
    )
}

/// `-ERR syntax error`, with what was not understood.
pub(crate) fn syntax(verb: Verb, arg: &[u8]) -> Reply {
    Reply::err(
        "ERR",
        format!(
            "syntax error in '{}' command near '{}'",
            verb.name(),
            preview(arg)
        ),
    )
}

/// A short, printable rendering of client bytes for error messages.
pub(crate) fn preview(arg: &[u8]) -> String {
    let mut s: String = arg
        .iter()
        .take(64)
        .flat_map(|b| b.escape_ascii())
        .map(char::from)
        .collect();
    if arg.len() > 64 {
        s.push_str("...");
    }
    s
}

/// A key argument: its bytes must be text (the engine checks the rest).
pub(crate) fn key_arg(arg: &[u8]) -> Result<&str, Reply> {
    std::str::from_utf8(arg).map_err(|_| {
        Reply::err(
            "BADKEY",
            format!("invalid key: not printable ASCII: \"{}\"", preview(arg)),
        )
    })
}

/// A text argument (pattern, bucket name, cursor).
pub(crate) fn text_arg<'a>(arg: &'a [u8], what: &str) -> Result<&'a str, Reply> {
    std::str::from_utf8(arg).map_err(|_| Reply::err("BADARG", format!("invalid {what}: not UTF-8")))
}

/// A non-negative integer argument.
pub(crate) fn uint_arg(arg: &[u8], what: &str) -> Result<u64, Reply> {
    std::str::from_utf8(arg)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| {
            Reply::err(
                "BADARG",
                format!(
                    "invalid {what} '{}': not a non-negative integer",
                    preview(arg)
                ),
            )
        })
}

/// Case-insensitive keyword comparison.
pub(crate) fn is(arg: &[u8], word: &str) -> bool {
    arg.eq_ignore_ascii_case(word.as_bytes())
}

fn noauth() -> Reply {
    Reply::err("NOAUTH", "Authentication required.")
}

impl Session {
    /// Executes one request and appends its reply to `out`.
    pub fn execute(&mut self, args: Vec<Bytes>, out: &mut Vec<u8>) -> Flow {
        let Some(name) = args.first() else {
            return Flow::Continue;
        };
        self.commands += 1;
        let verb = Verb::lookup(name);
        // Only a write that reaches `dispatch` joins the queued writes; every
        // other path below replies at once, so the queue goes first.
        let joins_queue = self.multi.is_none()
            && self.authed
            && !(self.proto < 3 && self.watches.active())
            && verb.is_some_and(|v| v.is_write() || v == Verb::GetDel)
            && verb.is_some_and(|v| {
                let (min, max) = v.arity();
                (min..=max).contains(&args.len())
            });
        if !joins_queue {
            self.apply_pending(out);
        }
        self.reply_start = out.len();
        if !self.authed
            && !matches!(
                verb,
                Some(Verb::Hello | Verb::Ping | Verb::Quit | Verb::Auth)
            )
        {
            noauth().encode(self.proto, out);
            return Flow::Continue;
        }
        let Some(verb) = verb else {
            let msg = format!("unknown command '{}'", preview(name));
            Reply::err("ERR", msg).encode(self.proto, out);
            return Flow::Continue;
        };
        let (min, max) = verb.arity();
        if args.len() < min || args.len() > max {
            let reply = wrong_args(verb);
            if verb.is_write() {
                if let Some(m) = &mut self.multi {
                    m.fail(&reply);
                }
            }
            reply.encode(self.proto, out);
            return Flow::Continue;
        }
        if self.proto < 3
            && self.watches.active()
            && !matches!(verb, Verb::Watch | Verb::Unwatch | Verb::Ping | Verb::Quit)
        {
            Reply::err(
                "ERR",
                format!(
                    "'{}' is not allowed while this RESP2 connection has watches: only WATCH, \
                     UNWATCH, PING and QUIT are (UNWATCH first, or switch to RESP3 with HELLO 3)",
                    verb.name()
                ),
            )
            .encode(self.proto, out);
            return Flow::Continue;
        }
        if self.multi.is_some() {
            match verb {
                Verb::Exec | Verb::Discard | Verb::Quit => {}
                Verb::Multi => {
                    Reply::err("ERR", "MULTI calls can not be nested").encode(self.proto, out);
                    return Flow::Continue;
                }
                v if v.is_write() => {
                    self.queue(verb, args, out);
                    return Flow::Continue;
                }
                v => {
                    Reply::err(
                        "ERR",
                        format!(
                            "'{}' is not allowed inside MULTI: only write verbs (PUT, SET, \
                             CREATE, UPDATE, CAS, DEL, PURGE, REVERT) are queued; EXEC or \
                             DISCARD first",
                            v.name()
                        ),
                    )
                    .encode(self.proto, out);
                    return Flow::Continue;
                }
            }
        }
        match self.dispatch(verb, args, out) {
            Ok(flow) => flow,
            Err(reply) => {
                self.apply_pending(out);
                self.reply_start = out.len();
                reply.encode(self.proto, out);
                Flow::Continue
            }
        }
    }

    /// Runs a verb. An `Err` is an error reply to encode.
    fn dispatch(&mut self, verb: Verb, args: Vec<Bytes>, out: &mut Vec<u8>) -> Result<Flow, Reply> {
        match verb {
            Verb::Ping => self.ping(&args, out),
            Verb::Hello => self.hello(&args, out),
            Verb::Auth => self.auth(&args, out),
            Verb::Quit => {
                Reply::ok().encode(self.proto, out);
                Ok(Flow::Close)
            }
            Verb::Bucket => self.bucket_cmd(&args, out),
            Verb::Use => self.use_bucket(&args, out),
            Verb::Status => self.status(&args),
            Verb::Get => self.get(&args, out),
            Verb::Entry => self.entry(&args, out),
            Verb::Ttl => self.ttl(&args, out),
            Verb::GetDel => {
                let cmd = kv::getdel(&args)?;
                self.write_one(cmd)
            }
            // Listed, not guarded by `is_write`, so the compiler checks every verb is handled.
            Verb::Put
            | Verb::Set
            | Verb::Create
            | Verb::Update
            | Verb::Cas
            | Verb::Del
            | Verb::Purge
            | Verb::Revert => {
                let cmd = kv::parse_write(verb, args)?;
                self.write_one(cmd)
            }
            Verb::Multi => self.multi(out),
            Verb::Exec => self.exec(out),
            Verb::Discard => self.discard(out),
            Verb::History => self.history(&args, out),
            Verb::Keys => self.keys(&args, out),
            Verb::Search => self.search(&args, out),
            Verb::DelGlob => self.delglob(&args),
            Verb::Scan => self.scan(&args, out),
            Verb::Watch => self.watch(&args, out),
            Verb::Unwatch => self.unwatch(&args, out),
            Verb::Sync => Ok(self.sync()),
            Verb::Compact => Ok(self.compact()),
            Verb::Info => Ok(self.info()),
            Verb::Config => self.config(&args, out),
        }
    }
}

/// A static error message.
pub(crate) fn err(code: &'static str, msg: &'static str) -> Reply {
    Reply::err(code, Cow::Borrowed(msg))
}
