//! Bucket verbs: BUCKET CREATE / DROP / LIST, USE, STATUS.

use std::sync::Arc;

use std::time::Duration;

use bytes::Bytes;
use logkv::{BucketConfig, BucketStatus};

use super::args::{is, preview, text, uint, Args};
use super::Flow;
use crate::encode::{self, engine_error};
use crate::protocol::Reply;
use crate::session::Session;

/// `BUCKET CREATE name [HISTORY n] [TTL ms] [MAXBYTES n] [MAXVALUE n] | BUCKET DROP name |
/// BUCKET LIST`
pub(crate) enum BucketCmd {
    List,
    Create { name: String, config: BucketConfig },
    Drop { name: String },
}

impl BucketCmd {
    pub fn parse(args: &mut Args<'_>) -> Result<BucketCmd, Reply> {
        let sub = args.next_bytes()?;
        if is(sub, "LIST") {
            args.finish_arity()?;
            return Ok(BucketCmd::List);
        }
        let name = args.next_text("bucket name")?.to_string();
        if is(sub, "CREATE") {
            let config = parse_config(args)?;
            Ok(BucketCmd::Create { name, config })
        } else if is(sub, "DROP") {
            args.finish_arity()?;
            Ok(BucketCmd::Drop { name })
        } else {
            Err(Reply::err(
                "ERR",
                format!(
                    "unknown BUCKET subcommand '{}': use CREATE, DROP or LIST",
                    preview(sub)
                ),
            ))
        }
    }

    pub fn apply(self, s: &mut Session, out: &mut Vec<u8>) -> Flow {
        let store = s.shared.store();
        match self {
            BucketCmd::List => {
                let names = store.bucket_names();
                encode::array(out, names.len());
                for n in &names {
                    encode::bulk(out, n.as_bytes());
                }
                Flow::Continue
            }
            BucketCmd::Create { name, config } if s.shared.cluster.is_some() => {
                crate::command::proposals::create_bucket(s, name, config)
            }
            BucketCmd::Drop { name } if s.shared.cluster.is_some() => {
                crate::command::proposals::drop_bucket(s, name)
            }
            BucketCmd::Create { name, config } => {
                let shared = Arc::clone(&s.shared);
                Flow::Blocking(Box::new(move || match store.create_bucket(&name, config) {
                    Ok(_) => Reply::ok(),
                    Err(e) => {
                        shared.health.observe(&e);
                        engine_error(&e)
                    }
                }))
            }
            BucketCmd::Drop { name } => {
                let shared = Arc::clone(&s.shared);
                Flow::Blocking(Box::new(move || match store.drop_bucket(&name) {
                    Ok(()) => Reply::ok(),
                    Err(e) => {
                        shared.health.observe(&e);
                        engine_error(&e)
                    }
                }))
            }
        }
    }
}

fn parse_config(args: &mut Args<'_>) -> Result<BucketConfig, Reply> {
    let mut c = BucketConfig::default();
    while let Some(word) = args.next() {
        if is(word, "HISTORY") {
            let n = uint(args.value_of(word)?, "HISTORY")?;
            c.history = match u8::try_from(n) {
                Ok(h @ 1..=64) => h,
                _ => return Err(Reply::err("BADARG", format!("HISTORY {n} outside 1-64"))),
            };
        } else if is(word, "TTL") {
            let ms = uint(args.value_of(word)?, "TTL")?;
            c.ttl = (ms > 0).then(|| Duration::from_millis(ms));
        } else if is(word, "MAXBYTES") {
            c.max_bytes = uint(args.value_of(word)?, "MAXBYTES")?;
        } else if is(word, "MAXVALUE") {
            c.max_value_size = uint(args.value_of(word)?, "MAXVALUE")?;
        } else {
            return Err(args.syntax(word));
        }
    }
    Ok(c)
}

/// `USE name`
pub(crate) struct Use<'a> {
    name: &'a str,
}

impl<'a> Use<'a> {
    pub fn parse(args: &mut Args<'a>) -> Result<Use<'a>, Reply> {
        Ok(Use {
            name: args.next_text("bucket name")?,
        })
    }

    pub fn apply(self, s: &mut Session, out: &mut Vec<u8>) -> Result<Flow, Reply> {
        s.bucket = s
            .shared
            .store()
            .bucket(self.name)
            .map_err(|e| engine_error(&e))?;
        Reply::ok().encode(s.version, out);
        Ok(Flow::Continue)
    }
}

/// `STATUS [name]` (walks the bucket's index: runs on the blocking pool).
pub(crate) struct Status<'a> {
    name: Option<&'a str>,
}

impl<'a> Status<'a> {
    pub fn parse(args: &mut Args<'a>) -> Result<Status<'a>, Reply> {
        let name = match args.next() {
            Some(name) => Some(text(name, "bucket name")?),
            None => None,
        };
        Ok(Status { name })
    }

    pub fn apply(self, s: &mut Session) -> Result<Flow, Reply> {
        let bucket = match self.name {
            Some(name) => s.shared.store().bucket(name),
            None => s.live_bucket(),
        }
        .map_err(|e| engine_error(&e))?;
        Ok(Flow::Blocking(Box::new(move || match bucket.status() {
            Ok(status) => status_reply(&status),
            Err(e) => engine_error(&e),
        })))
    }
}

/// The STATUS map, fields in the order of the protocol.
fn status_reply(s: &BucketStatus) -> Reply {
    let n = |v: u64| Reply::Int(i64::try_from(v).unwrap_or(i64::MAX));
    let f = |name: &'static str| Reply::Bulk(Bytes::from_static(name.as_bytes()));
    Reply::Map(vec![
        (f("bucket"), Reply::bulk(s.bucket.clone())),
        (f("values"), n(s.values)),
        (f("keys"), n(s.keys)),
        (f("bytes"), n(s.bytes)),
        (f("history"), n(u64::from(s.history))),
        (f("ttl"), n(s.ttl_ms)),
        (f("maxbytes"), n(s.max_bytes)),
        (f("maxvalue"), n(s.max_value_size)),
        (f("firstrev"), n(s.first_revision)),
        (f("lastrev"), n(s.last_revision)),
    ])
}
