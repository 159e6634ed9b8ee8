//! Bucket verbs: BUCKET CREATE / DROP / LIST, USE, STATUS.

use std::time::Duration;

use bytes::Bytes;
use logkv::{BucketConfig, BucketStatus};

use super::{is, syntax, text_arg, uint_arg, wrong_args, Verb};
use crate::protocol::Reply;
use crate::reply::{self, engine_error};
use crate::session::{Flow, Session};

fn parse_config(opts: &[Bytes]) -> Result<BucketConfig, Reply> {
    let mut c = BucketConfig::default();
    let mut rest = opts;
    while let [word, value, tail @ ..] = rest {
        if is(word, "HISTORY") {
            let n = uint_arg(value, "HISTORY")?;
            c.history = match u8::try_from(n) {
                Ok(h @ 1..=64) => h,
                _ => return Err(Reply::err("BADARG", format!("HISTORY {n} outside 1-64"))),
            };
        } else if is(word, "TTL") {
            let ms = uint_arg(value, "TTL")?;
            c.ttl = (ms > 0).then(|| Duration::from_millis(ms));
        } else if is(word, "MAXBYTES") {
            c.max_bytes = uint_arg(value, "MAXBYTES")?;
        } else if is(word, "MAXVALUE") {
            c.max_value_size = uint_arg(value, "MAXVALUE")?;
        } else {
            return Err(syntax(Verb::Bucket, word));
        }
        rest = tail;
    }
    if let [word] = rest {
        return Err(syntax(Verb::Bucket, word));
    }
    Ok(c)
}

/// The STATUS map, fields in the order of the protocol.
pub(crate) fn status_reply(s: &BucketStatus) -> Reply {
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

impl Session {
    /// `BUCKET CREATE name [opts] | BUCKET DROP name | BUCKET LIST`
    pub(crate) fn bucket_cmd(&mut self, args: &[Bytes], out: &mut Vec<u8>) -> Result<Flow, Reply> {
        let sub = &args[1];
        let store = self.shared.store.clone();
        if is(sub, "LIST") {
            if args.len() != 2 {
                return Err(wrong_args(Verb::Bucket));
            }
            let names = store.bucket_names();
            reply::array(out, names.len());
            for n in &names {
                reply::bulk(out, n.as_bytes());
            }
            return Ok(Flow::Continue);
        }
        let Some(name) = args.get(2) else {
            return Err(wrong_args(Verb::Bucket));
        };
        let name = text_arg(name, "bucket name")?.to_string();
        if is(sub, "CREATE") {
            let config = parse_config(&args[3..])?;
            Ok(Flow::Blocking(Box::new(move || {
                match store.create_bucket(&name, config) {
                    Ok(_) => Reply::ok(),
                    Err(e) => engine_error(&e),
                }
            })))
        } else if is(sub, "DROP") {
            if args.len() != 3 {
                return Err(wrong_args(Verb::Bucket));
            }
            Ok(Flow::Blocking(Box::new(move || {
                match store.drop_bucket(&name) {
                    Ok(()) => Reply::ok(),
                    Err(e) => engine_error(&e),
                }
            })))
        } else {
            Err(Reply::err(
                "ERR",
                format!(
                    "unknown BUCKET subcommand '{}': use CREATE, DROP or LIST",
                    super::preview(sub)
                ),
            ))
        }
    }

    /// `USE name`
    pub(crate) fn use_bucket(&mut self, args: &[Bytes], out: &mut Vec<u8>) -> Result<Flow, Reply> {
        let name = text_arg(&args[1], "bucket name")?;
        self.bucket = self
            .shared
            .store
            .bucket(name)
            .map_err(|e| engine_error(&e))?;
        Reply::ok().encode(self.proto, out);
        Ok(Flow::Continue)
    }

    /// `STATUS [name]` (walks the bucket's index: runs on the blocking pool).
    pub(crate) fn status(&mut self, args: &[Bytes]) -> Result<Flow, Reply> {
        let bucket = match args.get(1) {
            Some(name) => {
                let name = text_arg(name, "bucket name")?;
                self.shared
                    .store
                    .bucket(name)
                    .map_err(|e| engine_error(&e))?
            }
            None => {
                self.with_bucket(|b| b.ttl("_").map(|_| ()))
                    .map_err(|e| engine_error(&e))?;
                self.bucket.clone()
            }
        };
        Ok(Flow::Blocking(Box::new(move || match bucket.status() {
            Ok(s) => status_reply(&s),
            Err(e) => engine_error(&e),
        })))
    }
}
