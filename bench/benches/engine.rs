//! Criterion micro-benchmarks of the engine, for developers (`cargo bench -p logkv-bench`).
//! Small and quick: each runs about two seconds. The side-by-side comparison is the
//! `logkv-bench` binary, not this.
#![allow(
    clippy::many_single_char_names,
    reason = "b, k, v, g, c: bucket, key, value, group, criterion, as in every bench here"
)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use logkv::{Bucket, FsyncPolicy, Options, Store, WatchEvent, WatchOptions, WriteOp};
use logkv_bench::keys::{self, KEY_LEN, VALUE_LEN};

const PRELOAD: u64 = 10_000;

fn open(dir: &std::path::Path) -> (Store, Bucket) {
    let store = Store::open(
        dir,
        Options {
            fsync: FsyncPolicy::Never,
            background: false,
            ..Options::default()
        },
    )
    .expect("open store");
    let bucket = store.default_bucket().expect("default bucket");
    (store, bucket)
}

fn preload(b: &Bucket, n: u64) {
    let (mut kb, mut vb) = ([0u8; KEY_LEN], [0u8; VALUE_LEN]);
    for i in 0..n {
        b.put(keys::key(i, &mut kb), keys::value(i, 0, &mut vb).to_vec())
            .expect("put");
    }
}

#[allow(
    clippy::too_many_lines,
    reason = "one benchmark group, its cases in order"
)]
fn engine(c: &mut Criterion) {
    let mut g = c.benchmark_group("engine");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20);

    // put: one 16-byte key, 100-byte value, FsyncPolicy::Never.
    {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_store, bucket) = open(dir.path());
        let (mut kb, mut vb) = ([0u8; KEY_LEN], [0u8; VALUE_LEN]);
        let mut i = 0u64;
        g.throughput(Throughput::Elements(1));
        g.bench_function("put", |b| {
            b.iter(|| {
                i += 1;
                let k = keys::key(i % 1_000_000, &mut kb);
                black_box(
                    bucket
                        .put(k, keys::value(i, 0, &mut vb).to_vec())
                        .expect("put"),
                )
            });
        });
    }

    // get: a key that exists, among 10,000.
    {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_store, bucket) = open(dir.path());
        preload(&bucket, PRELOAD);
        let mut kb = [0u8; KEY_LEN];
        let mut rng = keys::Rng::new(1);
        g.throughput(Throughput::Elements(1));
        g.bench_function("get_hit", |b| {
            b.iter(|| {
                let k = keys::key(rng.below(PRELOAD), &mut kb);
                black_box(bucket.get(k).expect("get").expect("hit"))
            });
        });
    }

    // A batch of 10 puts, applied atomically.
    {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_store, bucket) = open(dir.path());
        let (mut kb, mut vb) = ([0u8; KEY_LEN], [0u8; VALUE_LEN]);
        let mut i = 0u64;
        g.throughput(Throughput::Elements(10));
        g.bench_function("batch_10_puts", |b| {
            b.iter_batched(
                || {
                    (0..10)
                        .map(|_| {
                            i += 1;
                            WriteOp::put(
                                keys::key(i % 1_000_000, &mut kb),
                                keys::value(i, 0, &mut vb).to_vec(),
                            )
                        })
                        .collect::<Vec<_>>()
                },
                |ops| black_box(bucket.write(&ops).expect("write")),
                BatchSize::SmallInput,
            );
        });
    }

    // Watch throughput: events read with try_next from the log (writes not timed).
    {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_store, bucket) = open(dir.path());
        let (mut kb, mut vb) = ([0u8; KEY_LEN], [0u8; VALUE_LEN]);
        g.throughput(Throughput::Elements(1));
        g.bench_function("watch_try_next", |b| {
            b.iter_custom(|iters| {
                let opts = WatchOptions {
                    updates_only: true,
                    ..WatchOptions::default()
                };
                let mut w = bucket.watch(">", opts).expect("watch");
                for i in 0..iters {
                    bucket
                        .put(
                            keys::key(i % 100_000, &mut kb),
                            keys::value(i, 0, &mut vb).to_vec(),
                        )
                        .expect("put");
                }
                let t = Instant::now();
                let mut got = 0;
                while got < iters {
                    match w.try_next().expect("try_next") {
                        Some(WatchEvent::Entry(e)) => {
                            black_box(e);
                            got += 1;
                        }
                        Some(_) => {}
                        None => panic!("watch ran dry after {got} of {iters} events"),
                    }
                }
                t.elapsed()
            });
        });
    }

    // A scan page of 100 entries, starting at a random key among 10,000.
    {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_store, bucket) = open(dir.path());
        preload(&bucket, PRELOAD);
        let mut kb = [0u8; KEY_LEN];
        let mut rng = keys::Rng::new(2);
        g.throughput(Throughput::Elements(100));
        g.bench_function("scan_page_100", |b| {
            b.iter(|| {
                let from = keys::key(rng.below(PRELOAD - 100), &mut kb);
                let page = bucket.scan(Some(from), None, 100).expect("scan");
                assert_eq!(page.entries.len(), 100);
                black_box(page)
            });
        });
    }
    g.finish();
}

criterion_group!(benches, engine);
criterion_main!(benches);
