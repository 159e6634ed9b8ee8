//! The table of verbs: for each, its name, its arity, its flags and its parser. Adding a
//! verb is one line here plus its parsed struct in the file of its family.

use super::args::Args;
use super::{admin, backup, bucket, kv, query, watch, Command};
use crate::command::cluster::ClusterCmd;
use crate::protocol::Reply;

/// What a verb may do and where it may run, in the manner of Redis's command flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Flags(u8);

impl Flags {
    /// Nothing special.
    pub const NONE: Flags = Flags(0);
    /// Changes data: joins the pipeline's batch of writes.
    pub const WRITE: Flags = Flags(1);
    /// Queued by MULTI (the write verbs a transaction may hold).
    pub const QUEUED: Flags = Flags(1 << 1);
    /// Allowed before AUTH when a password is set.
    pub const NO_AUTH: Flags = Flags(1 << 2);
    /// Allowed on a RESP2 connection that has watches (as in Redis's pub/sub mode).
    pub const WATCH_MODE: Flags = Flags(1 << 3);
    /// Runs inside MULTI instead of being queued or refused (EXEC, DISCARD, QUIT, MULTI).
    pub const IN_MULTI: Flags = Flags(1 << 4);
    /// Reads data: on a cluster node a read barrier comes first (unless READONLY).
    pub const READ: Flags = Flags(1 << 5);

    const fn with(self, other: Flags) -> Flags {
        Flags(self.0 | other.0)
    }

    /// Whether every flag of `other` is set.
    pub fn has(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }
}

/// A write verb: batched, and queued by MULTI.
const QUEUED_WRITE: Flags = Flags::WRITE.with(Flags::QUEUED);
/// PING: before AUTH and in RESP2 watch mode.
const NO_AUTH_WATCH: Flags = Flags::NO_AUTH.with(Flags::WATCH_MODE);
/// QUIT: before AUTH, in RESP2 watch mode and inside MULTI.
const ANYWHERE: Flags = NO_AUTH_WATCH.with(Flags::IN_MULTI);

/// Turns a verb's arguments (verb excluded) into its command.
pub(crate) type Parser = for<'a> fn(&mut Args<'a>) -> Result<Command<'a>, Reply>;

/// One verb.
pub(crate) struct Spec {
    /// Lower-case, as error messages show it (matched case-insensitively).
    pub name: &'static str,
    /// Fewest arguments, the verb included.
    pub min: usize,
    /// Most arguments, the verb included.
    pub max: usize,
    pub flags: Flags,
    pub parse: Parser,
}

impl Spec {
    /// Whether `argc` arguments (the verb included) fit the arity.
    pub fn fits(&self, argc: usize) -> bool {
        (self.min..=self.max).contains(&argc)
    }
}

const fn verb(name: &'static str, min: usize, max: usize, flags: Flags, parse: Parser) -> Spec {
    Spec {
        name,
        min,
        max,
        flags,
        parse,
    }
}

/// Every verb of the protocol, the hot ones first.
#[rustfmt::skip]
pub(crate) static VERBS: [Spec; 38] = [
    //   name       min max  flags             parser
    verb("get",       2, 4,  Flags::READ,      |a| kv::Get::parse(a).map(Command::Get)),
    verb("set",       3, 6,  QUEUED_WRITE,     |a| kv::set(a).map(Command::Write)),
    verb("put",       3, 5,  QUEUED_WRITE,     |a| kv::put(a).map(Command::Write)),
    verb("entry",     2, 4,  Flags::READ,      |a| kv::GetEntry::parse(a).map(Command::Entry)),
    verb("getdel",    2, 2,  Flags::WRITE,     |a| kv::getdel(a).map(Command::Write)),
    verb("create",    3, 5,  QUEUED_WRITE,     |a| kv::create(a).map(Command::Write)),
    verb("update",    4, 4,  QUEUED_WRITE,     |a| kv::update(a).map(Command::Write)),
    verb("cas",       3, 4,  QUEUED_WRITE,     |a| kv::cas(a).map(Command::Write)),
    verb("del",       2, 4,  QUEUED_WRITE,     |a| kv::del(a).map(Command::Write)),
    verb("purge",     2, 2,  QUEUED_WRITE,     |a| kv::purge(a).map(Command::Write)),
    verb("revert",    3, 3,  QUEUED_WRITE,     |a| kv::revert(a).map(Command::Write)),
    verb("ttl",       2, 2,  Flags::READ,      |a| kv::Ttl::parse(a).map(Command::Ttl)),
    verb("multi",     1, 1,  Flags::IN_MULTI,  |_| Ok(Command::Multi)),
    verb("exec",      1, 1,  Flags::IN_MULTI,  |_| Ok(Command::Exec)),
    verb("discard",   1, 1,  Flags::IN_MULTI,  |_| Ok(Command::Discard)),
    verb("history",   2, 2,  Flags::READ,      |a| query::History::parse(a).map(Command::History)),
    verb("keys",      1, 2,  Flags::READ,      |a| query::Keys::parse(a).map(Command::Keys)),
    verb("search",    2, 6,  Flags::READ,      |a| query::Search::parse(a).map(Command::Search)),
    verb("scan",      1, 7,  Flags::READ,      |a| query::Scan::parse(a).map(Command::Scan)),
    verb("delglob",   2, 2,  Flags::NONE,      |a| query::DelGlob::parse(a).map(Command::DelGlob)),
    verb("watch",     2, 9,  Flags::WATCH_MODE, |a| watch::Watch::parse(a).map(Command::Watch)),
    verb("unwatch",   1, 2,  Flags::WATCH_MODE, |a| watch::Unwatch::parse(a).map(Command::Unwatch)),
    verb("bucket",    2, 12, Flags::READ,      |a| bucket::BucketCmd::parse(a).map(Command::Bucket)),
    verb("use",       2, 2,  Flags::READ,      |a| bucket::Use::parse(a).map(Command::Use)),
    verb("status",    1, 2,  Flags::READ,      |a| bucket::Status::parse(a).map(Command::Status)),
    verb("ping",      1, 2,  NO_AUTH_WATCH,    |a| Ok(Command::Ping(admin::Ping::parse(a)))),
    verb("echo",      2, 2,  Flags::NONE,      |a| Ok(Command::Ping(admin::Ping::parse(a)))),
    verb("hello",     1, 7,  Flags::NO_AUTH,   |a| admin::Hello::parse(a).map(Command::Hello)),
    verb("auth",      2, 3,  Flags::NO_AUTH,   |a| admin::Auth::parse(a).map(Command::Auth)),
    verb("quit",      1, 1,  ANYWHERE,         |_| Ok(Command::Quit)),
    verb("sync",      1, 1,  Flags::NONE,      |_| Ok(Command::Sync)),
    verb("compact",   1, 1,  Flags::NONE,      |_| Ok(Command::Compact)),
    verb("info",      1, 2,  Flags::NONE,      |_| Ok(Command::Info)),
    verb("config",    2, 64, Flags::NONE,      |a| admin::ConfigGet::parse(a).map(Command::Config)),
    verb("backup",    2, 2,  Flags::NONE,      |a| backup::Backup::parse(a).map(Command::Backup)),
    verb("cluster",   2, 5,  Flags::NONE,      |a| ClusterCmd::parse(a).map(Command::Cluster)),
    verb("readonly",  1, 1,  Flags::NONE,      |_| Ok(Command::ReadOnly(true))),
    verb("readwrite", 1, 1,  Flags::NONE,      |_| Ok(Command::ReadOnly(false))),
];

/// Finds a verb, case-insensitively, without allocating: its index in [`VERBS`].
pub(crate) fn position(name: &[u8]) -> Option<usize> {
    VERBS
        .iter()
        .position(|spec| spec.name.as_bytes().eq_ignore_ascii_case(name))
}

/// Finds a verb, case-insensitively, without allocating.
pub(crate) fn lookup(name: &[u8]) -> Option<&'static Spec> {
    position(name).and_then(|i| VERBS.get(i))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_lower_case_and_found_in_any_case() {
        for (i, spec) in VERBS.iter().enumerate() {
            assert_eq!(spec.name, spec.name.to_ascii_lowercase());
            assert!(spec.min >= 1 && spec.min <= spec.max, "{}", spec.name);
            assert!(VERBS[..i].iter().all(|other| other.name != spec.name));
            let upper = spec.name.to_ascii_uppercase();
            assert!(std::ptr::eq(lookup(upper.as_bytes()).unwrap(), spec));
        }
        assert!(lookup(b"POST").is_none());
        assert!(lookup(b"").is_none());
    }

    #[test]
    fn the_transaction_verbs() {
        let queued: Vec<&str> = VERBS
            .iter()
            .filter(|s| s.flags.has(Flags::QUEUED))
            .map(|s| s.name)
            .collect();
        assert_eq!(
            queued,
            ["set", "put", "create", "update", "cas", "del", "purge", "revert"]
        );
        // Every queued verb is a write; GETDEL is a write MULTI does not queue.
        assert!(VERBS
            .iter()
            .all(|s| !s.flags.has(Flags::QUEUED) || s.flags.has(Flags::WRITE)));
        assert!(lookup(b"getdel").unwrap().flags.has(Flags::WRITE));
    }

    #[test]
    fn every_cluster_form_fits_the_table() {
        for form in [
            &["INFO"][..],
            &["ADD", "4", "127.0.0.1:7400"],
            &["ADD", "4", "127.0.0.1:7400", "LEARNER"],
            &["REMOVE", "4"],
            &["LEADER", "4"],
        ] {
            let spec = lookup(b"cluster").unwrap();
            assert!(spec.fits(form.len() + 1), "{form:?}");
            let words: Vec<bytes::Bytes> = form
                .iter()
                .map(|w| bytes::Bytes::from_static(w.as_bytes()))
                .collect();
            let mut args = Args::new(spec.name, &words);
            assert!((spec.parse)(&mut args).is_ok(), "{form:?}");
        }
    }

    #[test]
    fn write_verbs_parse_into_writes() {
        let words: Vec<bytes::Bytes> = ["k", "1", "1"]
            .iter()
            .map(|w| bytes::Bytes::from_static(w.as_bytes()))
            .collect();
        for spec in VERBS.iter().filter(|s| s.flags.has(Flags::WRITE)) {
            let mut args = Args::new(spec.name, &words[..spec.min - 1]);
            let parsed = (spec.parse)(&mut args);
            assert!(matches!(parsed, Ok(Command::Write(_))), "{}", spec.name);
        }
    }
}
