//! Limit rows: what the hardware and the standard library allow, measured in the same run.
//!
//! - `limit-append`: the W1 records (key, value and a 6-byte length header) appended to one
//!   file through a 64 KiB buffer, one fdatasync at the end: the ceiling of a log's load.
//! - `limit-btreemap.insert` / `.get`: `BTreeMap<Vec<u8>, Vec<u8>>`, the naive in-memory
//!   index, with the W1 insert order and W2 read order; `.memory` is its `RssAnon` per key.
//! - `limit-fdatasync`: 128-byte writes, each followed by fdatasync, into a file written in
//!   full and synced beforehand; `.append` writes past the end instead, so each fdatasync
//!   must also write the inode (its size); `.append-cost` = pre-sized / append. The two run
//!   in alternating chunks of 250 writes.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::keys::{self, check_value, DURABLE_OPS, KEY_LEN, VALUE_LEN};
use crate::report::{out, Row};
use crate::stores::BoxError;
use crate::sys;

const SYNC_WRITE: usize = 128;
const FDATASYNC_CHUNKS: usize = 8;

fn row(workload: &str, value: f64, unit: &str, n: u64) -> Row {
    Row::new("embedded", "limit", workload, value, unit, n)
}

/// Runs one limit workload.
pub fn run(workload: &str, n: u32, seed: u64, dir: &Path) -> Result<(), BoxError> {
    match workload {
        "limit-append" => append(n, seed, dir),
        "limit-btreemap" => btreemap(n, seed),
        "limit-fdatasync" => fdatasync(dir),
        other => Err(format!("unknown limit workload {other}").into()),
    }
}

fn append(n: u32, seed: u64, dir: &Path) -> Result<(), BoxError> {
    let order = keys::permutation(n, seed);
    let (mut kb, mut vb) = ([0u8; KEY_LEN], [0u8; VALUE_LEN]);
    let path = dir.join("append.log");
    let t = Instant::now();
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)?;
    let mut w = BufWriter::with_capacity(64 << 10, file);
    for &i in &order {
        let k = keys::key(u64::from(i), &mut kb).as_bytes();
        let v = keys::value(u64::from(i), 0, &mut vb);
        w.write_all(&u16::try_from(k.len())?.to_le_bytes())?;
        w.write_all(&u32::try_from(v.len())?.to_le_bytes())?;
        w.write_all(k)?;
        w.write_all(v)?;
    }
    let file = w
        .into_inner()
        .map_err(std::io::IntoInnerError::into_error)?;
    file.sync_data()?;
    let d = t.elapsed();
    out(&row(
        "limit-append",
        f64::from(n) / d.as_secs_f64(),
        "ops/s",
        u64::from(n),
    ));
    Ok(())
}

fn btreemap(n: u32, seed: u64) -> Result<(), BoxError> {
    let insert_order = keys::permutation(n, seed);
    let read_order = keys::permutation(n, seed ^ 0x5EED_0001);
    let (mut kb, mut vb) = ([0u8; KEY_LEN], [0u8; VALUE_LEN]);
    let rss_before = sys::rss_anon();
    let mut map: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let t = Instant::now();
    for &i in &insert_order {
        let k = keys::key(u64::from(i), &mut kb).as_bytes().to_vec();
        map.insert(k, keys::value(u64::from(i), 0, &mut vb).to_vec());
    }
    let d = t.elapsed();
    let n64 = u64::from(n);
    out(&row(
        "limit-btreemap.insert",
        f64::from(n) / d.as_secs_f64(),
        "ops/s",
        n64,
    ));
    if let (Some(a), Some(b)) = (rss_before, sys::rss_anon()) {
        out(&row(
            "limit-btreemap.memory",
            b.saturating_sub(a) as f64 / n64.max(1) as f64,
            "bytes/key",
            n64,
        ));
    }
    let mut out_v = Vec::with_capacity(VALUE_LEN);
    let t = Instant::now();
    for &i in &read_order {
        let k = keys::key(u64::from(i), &mut kb).as_bytes();
        // Copy the value out, as the stores' gets do.
        out_v.clear();
        match map.get(k) {
            Some(v) => out_v.extend_from_slice(v),
            None => return Err(format!("BTreeMap lost item {i}").into()),
        }
        if !check_value(&out_v, u64::from(i), 0) {
            return Err(format!("BTreeMap returned the wrong value for item {i}").into());
        }
    }
    let d = t.elapsed();
    out(&row(
        "limit-btreemap.get",
        f64::from(n) / d.as_secs_f64(),
        "ops/s",
        n64,
    ));
    drop(map);
    Ok(())
}

fn fdatasync(dir: &Path) -> Result<(), BoxError> {
    let ops = DURABLE_OPS as usize;
    let buf = [0xA5u8; SYNC_WRITE];
    // Pre-sized: every block written and synced before the clock starts.
    let presized = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(dir.join("presized"))?;
    presized.write_all_at(&vec![0u8; ops * SYNC_WRITE], 0)?;
    presized.sync_all()?;
    // Appending: the file grows with every write.
    let appended = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(dir.join("appended"))?;
    appended.sync_all()?;
    // The two alternate in chunks, so that a slow spell of the shared disk hits both.
    let (mut t_pre, mut t_app) = (Duration::ZERO, Duration::ZERO);
    let chunk = ops.div_ceil(FDATASYNC_CHUNKS);
    let mut done = 0;
    while done < ops {
        let k = chunk.min(ops - done);
        for (file, total) in [(&presized, &mut t_pre), (&appended, &mut t_app)] {
            let t = Instant::now();
            for i in done..done + k {
                file.write_all_at(&buf, (i * SYNC_WRITE) as u64)?;
                file.sync_data()?;
            }
            *total += t.elapsed();
        }
        done += k;
    }
    let pre = ops as f64 / t_pre.as_secs_f64();
    let app = ops as f64 / t_app.as_secs_f64();
    out(&row("limit-fdatasync", pre, "ops/s", ops as u64));
    out(&row("limit-fdatasync.append", app, "ops/s", ops as u64));
    out(&row(
        "limit-fdatasync.append-cost",
        pre / app,
        "ratio",
        ops as u64,
    ));
    Ok(())
}
