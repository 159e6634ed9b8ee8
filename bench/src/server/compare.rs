//! The redis-benchmark comparison: logkv-server against redis-server at both durability
//! pairs, over a preloaded keyspace of random keys (and the one-key case as `.onekey` rows).
//!
//! For each pair both servers start fresh, are preloaded with every key of the keyspace
//! (`key:%012d`, values of `--value-size` bytes, by [`preload`], pipelined over RESP) and the
//! key count is checked (logkv `STATUS`, redis `DBSIZE`). Then, for `--rounds` rounds, the
//! two servers take turns (which goes first alternates) under
//! `redis-benchmark -t set,get -c 50 -P p -r keyspace -d value-size` at `-P 1` and `-P 16`:
//! SET overwrites a random key, GET hits. With the part `onekey`, the same without `-r`
//! follows each run: every request to the one key `key:__rand_int__`. Before each run the
//! server is left to finish its background work (logkv's compaction, redis's AOF rewrite:
//! [`quiet`]), so that no turn shares the cores with what an earlier one left running.

use std::path::Path;
use std::time::Instant;

use super::process::{quiet_hold, start_logkv, start_redis, Running};
use super::{expect_ok, row, Config};
use crate::embedded::medians;
use crate::keys::{self, KEY_LEN};
use crate::redisbench::{self, Load};
use crate::report::{Extra, Reporter, Row};
use crate::resp::{Client, Value};
use crate::stores::BoxError;

const PIPELINES: [u32; 2] = [1, 16];
/// Requests per batch the preloader sends before reading the replies.
const PRELOAD_DEPTH: u64 = 1000;

/// A durability pair: the row label, logkv's `--fsync`, redis's `appendfsync`.
struct Pair {
    label: &'static str,
    logkv: &'static str,
    redis: &'static str,
    requests: u64,
}

/// SETs every key `key:0..keyspace` (12 digits) with a `value_size`-byte value, pipelined
/// [`PRELOAD_DEPTH`] deep on one connection; then checks the server holds `keyspace` keys.
pub fn preload(server: &Running, keyspace: u64, value_size: usize) -> Result<(), BoxError> {
    let t = Instant::now();
    let mut c = Client::connect(&server.addr())?;
    let value = vec![b'x'; value_size];
    let mut kb = [0u8; KEY_LEN];
    let mut i = 0;
    while i < keyspace {
        let batch = PRELOAD_DEPTH.min(keyspace - i);
        for j in i..i + batch {
            c.queue(&[b"SET", keys::key(j, &mut kb).as_bytes(), &value]);
        }
        c.flush()?;
        for _ in 0..batch {
            expect_ok(c.read()?, "SET")?;
        }
        i += batch;
    }
    let count = match server.name {
        "redis-server" => c.call(&[b"DBSIZE"])?.as_int(),
        _ => expect_ok(c.call(&[b"STATUS"])?, "STATUS")?
            .field("keys")
            .and_then(Value::as_int),
    };
    let count = count.ok_or("the server did not say how many keys it holds")?;
    if u64::try_from(count).ok() != Some(keyspace) {
        return Err(format!(
            "{} holds {count} keys after the preload of {keyspace}",
            server.name
        )
        .into());
    }
    eprintln!(
        "    {}: preloaded {keyspace} keys of {value_size} bytes in {:.1} s",
        server.name,
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The comparison at both durability pairs; rows go to `rep`.
pub fn compare(
    cfg: &Config,
    bench: &Path,
    logkv_bin: Option<&Path>,
    redis_bin: Option<&Path>,
    base: &Path,
    rep: &mut Reporter,
) -> Result<(), BoxError> {
    let pairs = [
        Pair {
            label: "everysec",
            logkv: "interval=1000",
            redis: "everysec",
            requests: cfg.n,
        },
        Pair {
            label: "always",
            logkv: "always",
            redis: "always",
            requests: cfg.n_durable,
        },
    ];
    for pair in pairs {
        let mut servers: Vec<(&str, Running, &str)> = Vec::new();
        if let Some(b) = logkv_bin {
            servers.push(("logkv", start_logkv(b, pair.logkv, base)?, pair.logkv));
        }
        if let Some(b) = redis_bin {
            servers.push(("redis", start_redis(b, pair.redis, base)?, pair.redis));
        }
        for (_, server, _) in &servers {
            preload(server, cfg.keyspace, cfg.value_size)
                .map_err(|e| format!("{}: {e}\n{}", server.name, server.log_tail()))?;
        }
        let mut runs: Vec<Row> = Vec::new();
        for round in 0..cfg.rounds {
            for (i, p) in PIPELINES.into_iter().enumerate() {
                let mut order: Vec<&(&str, Running, &str)> = servers.iter().collect();
                // Alternate which server goes first.
                if (round + i) % 2 == 1 {
                    order.reverse();
                }
                for &(store, ref server, fsync) in order {
                    let mut cases = vec![("", Some(cfg.keyspace))];
                    if cfg.wants("onekey") {
                        cases.push((".onekey", None));
                    }
                    for (suffix, keyspace) in cases {
                        let load = Load {
                            tests: "set,get",
                            clients: cfg.clients,
                            requests: pair.requests,
                            pipeline: p,
                            keyspace,
                            value_size: cfg.value_size,
                            command: Vec::new(),
                        };
                        eprintln!(
                            "[round {}/{}] redis-benchmark -h 127.0.0.1 {} against {store} ({fsync})",
                            round + 1,
                            cfg.rounds,
                            load.args().join(" ")
                        );
                        quiet(server)?;
                        let results = redisbench::run(bench, server.port, &load, cfg.bench_timeout)
                            .map_err(|e| format!("{store}: {e}\n{}", server.log_tail()))?;
                        for r in results {
                            let w = format!(
                                "{}.P{p}.{}{suffix}",
                                r.test.to_ascii_lowercase(),
                                pair.label
                            );
                            let tag = |row: Row| {
                                let row = row
                                    .with("clients", Extra::count(cfg.clients))
                                    .with("pipeline", Extra::count(p))
                                    .with("fsync", Extra::Str(fsync.to_string()))
                                    .with("value_size", Extra::count(cfg.value_size));
                                match keyspace {
                                    Some(k) => row.with("keyspace", Extra::count(k)),
                                    None => row.with("keyspace", Extra::Str("onekey".into())),
                                }
                            };
                            let n = pair.requests;
                            runs.push(tag(row(store, &w, r.rps, "ops/s", n)));
                            if let Some(x) = r.p50_ms {
                                runs.push(tag(row(store, &format!("{w}.p50"), x, "ms", n)));
                            }
                            if let Some(x) = r.p99_ms {
                                runs.push(tag(row(store, &format!("{w}.p99"), x, "ms", n)));
                            }
                        }
                    }
                }
            }
        }
        let med = medians(runs);
        for r in &med {
            rep.emit(r.clone());
        }
        for r in ratios(&med) {
            rep.emit(r);
        }
    }
    Ok(())
}

/// Waits until `server` runs no background work (see [`Running::wait_quiet`]), saying so
/// when that took a while: a turn does not share the cores with the compaction or AOF
/// rewrite an earlier turn left running.
pub fn quiet(server: &Running) -> Result<(), BoxError> {
    let waited = server
        .wait_quiet()
        .map_err(|e| format!("{e}\n{}", server.log_tail()))?;
    if waited > quiet_hold(server.name) + std::time::Duration::from_millis(100) {
        eprintln!(
            "    waited {:.1} s for {}'s background work to end",
            waited.as_secs_f64(),
            server.name
        );
    }
    Ok(())
}

/// `logkv/redis` rows: for each logkv ops/s row, its ratio to redis's row of the same workload.
pub fn ratios(rows: &[Row]) -> Vec<Row> {
    rows.iter()
        .filter(|r| r.store == "logkv" && r.unit == "ops/s")
        .filter_map(|r| {
            let other = rows
                .iter()
                .find(|o| o.store == "redis" && o.workload == r.workload && o.unit == "ops/s")?;
            let mut ratio = Row::new(
                "server",
                "logkv/redis",
                &r.workload,
                r.value / other.value,
                "ratio",
                r.n,
            );
            for k in ["pipeline", "keyspace", "rounds"] {
                if let Some(v) = r.extra(k) {
                    ratio = ratio.with(k, v.clone());
                }
            }
            Some(ratio)
        })
        .collect()
}

#[cfg(test)]
#[allow(
    clippy::float_cmp,
    reason = "a ratio of two exact binary fractions is exact"
)]
mod tests {
    use super::*;

    #[test]
    fn ratios_pair_logkv_with_redis() {
        let r = |store: &str, w: &str, v: f64, unit: &str| {
            Row::new("server", store, w, v, unit, 10)
                .with("pipeline", Extra::Int(16))
                .with("keyspace", Extra::Int(1_000_000))
        };
        let rows = vec![
            r("logkv", "set.P16.always", 300.0, "ops/s"),
            r("logkv", "set.P16.always.p99", 2.0, "ms"),
            r("redis", "set.P16.always.p99", 1.0, "ms"),
            r("redis", "set.P16.always", 200.0, "ops/s"),
            r("logkv", "get.P16.always", 5.0, "ops/s"),
        ];
        let out = ratios(&rows);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].store, "logkv/redis");
        assert_eq!(out[0].workload, "set.P16.always");
        assert_eq!(out[0].value, 1.5);
        assert_eq!(out[0].unit, "ratio");
        assert_eq!(out[0].extra("pipeline"), Some(&Extra::Int(16)));
        assert_eq!(out[0].extra("keyspace"), Some(&Extra::Int(1_000_000)));
    }
}
