//! WATCH / UNWATCH. The watches themselves, and the delivery of their events, are the
//! session's (`crate::session::Watches`).

use logkv::WatchOptions;

use super::args::{is, Args};
use super::Flow;
use crate::encode::{self, engine_error};
use crate::protocol::Reply;
use crate::session::{Session, MAX_WATCHES};

/// `WATCH pattern [HISTORY] [METAONLY] [NODELETES] [UPDATESONLY] [FROM rev]`
pub(crate) struct Watch<'a> {
    pattern: &'a str,
    opts: WatchOptions,
}

impl<'a> Watch<'a> {
    pub fn parse(args: &mut Args<'a>) -> Result<Watch<'a>, Reply> {
        let pattern = args.next_text("pattern")?;
        let mut opts = WatchOptions::default();
        while let Some(word) = args.next() {
            if is(word, "HISTORY") {
                opts.include_history = true;
            } else if is(word, "METAONLY") {
                opts.meta_only = true;
            } else if is(word, "NODELETES") {
                opts.ignore_deletes = true;
            } else if is(word, "UPDATESONLY") {
                opts.updates_only = true;
            } else if is(word, "FROM") {
                let rev = args.value_of(word)?;
                opts.from_revision = Some(super::args::uint(rev, "revision")?);
            } else {
                return Err(args.syntax(word));
            }
        }
        Ok(Watch { pattern, opts })
    }

    pub fn apply(self, s: &mut Session, out: &mut Vec<u8>) -> Result<Flow, Reply> {
        if s.watches.len() >= MAX_WATCHES {
            return Err(Reply::err(
                "ERR",
                format!("too many watches on this connection (limit {MAX_WATCHES})"),
            ));
        }
        let bucket = s.live_bucket().map_err(|e| engine_error(&e))?;
        // The generation the bucket's store has, or an older one (see `Watches::add`):
        // the session's, which the lookup just brought up to date, rather than one read
        // before it, which an install in between would leave older than the bucket
        // (a needless `lost` at the first pull).
        let generation = s.generation();
        let id = s
            .watches
            .add(&bucket, generation, self.pattern, self.opts)
            .map_err(|e| engine_error(&e))?;
        encode::uint(out, id);
        Ok(Flow::Continue)
    }
}

/// `UNWATCH [id]`: `:watches left`.
pub(crate) struct Unwatch {
    id: Option<u64>,
}

impl Unwatch {
    pub fn parse(args: &mut Args<'_>) -> Result<Unwatch, Reply> {
        let id = match args.next() {
            Some(id) => Some(super::args::uint(id, "watch id")?),
            None => None,
        };
        Ok(Unwatch { id })
    }

    pub fn apply(self, s: &mut Session, out: &mut Vec<u8>) -> Flow {
        match self.id {
            Some(id) => s.watches.remove_id(id),
            None => s.watches.clear(),
        }
        encode::uint(out, s.watches.len() as u64);
        Flow::Continue
    }
}
