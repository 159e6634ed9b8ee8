//! What `/metrics` shows: a `prometheus-client` collector that reads, at scrape time, the
//! server's counters, the request histograms of `crate::metrics` and each bucket's engine
//! counters (`Bucket::stats`: no walk of the index). Nothing is kept between scrapes.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use logkv::BucketStats;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

use crate::metrics::HistogramSnapshot;
use crate::shared::Shared;

/// Reads the server's state at scrape time.
pub(crate) struct ServerCollector(Arc<Shared>);

impl ServerCollector {
    /// A collector of `shared`'s state.
    pub fn new(shared: Arc<Shared>) -> ServerCollector {
        ServerCollector(shared)
    }
}

impl std::fmt::Debug for ServerCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerCollector")
    }
}

type EncodeResult = Result<(), std::fmt::Error>;

fn counter(e: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: u64) -> EncodeResult {
    e.encode_descriptor(name, help, None, MetricType::Counter)?
        .encode_counter::<NoLabelSet, u64, u64>(&v, None)
}

fn gauge(e: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: u64) -> EncodeResult {
    let v = i64::try_from(v).unwrap_or(i64::MAX);
    e.encode_descriptor(name, help, None, MetricType::Gauge)?
        .encode_gauge(&v)
}

fn histogram(
    e: &mut MetricEncoder<'_>,
    labels: &[(&str, &str)],
    h: &HistogramSnapshot,
) -> EncodeResult {
    e.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
        h.sum_seconds,
        h.count,
        &h.buckets,
        None,
    )
}

/// One labelled series per bucket of the store.
fn per_bucket(
    e: &mut DescriptorEncoder<'_>,
    stats: &[(String, BucketStats)],
    family: &BucketFamily,
) -> EncodeResult {
    let (name, help, kind, value) = *family;
    let mut m = e.encode_descriptor(name, help, None, kind)?;
    for (bucket, s) in stats {
        let labels = [("bucket", bucket.as_str())];
        let mut series = m.encode_family(&labels)?;
        let v = value(s);
        if matches!(kind, MetricType::Counter) {
            series.encode_counter::<NoLabelSet, u64, u64>(&v, None)?;
        } else {
            series.encode_gauge(&i64::try_from(v).unwrap_or(i64::MAX))?;
        }
    }
    Ok(())
}

/// A per-bucket metric: name, help, type, and how to read it from the bucket's stats.
type BucketFamily = (
    &'static str,
    &'static str,
    MetricType,
    fn(&BucketStats) -> u64,
);

const BUCKET_FAMILIES: [BucketFamily; 9] = [
    (
        "logkv_fsyncs",
        "fdatasync calls on the bucket's log since start.",
        MetricType::Counter,
        |s| s.fsyncs,
    ),
    (
        "logkv_compactions",
        "Compaction passes over the bucket since start.",
        MetricType::Counter,
        |s| s.compactions,
    ),
    (
        "logkv_compacting",
        "1 while a compaction pass over the bucket runs, else 0.",
        MetricType::Gauge,
        |s| u64::from(s.compacting),
    ),
    (
        "logkv_bucket_bytes",
        "Bytes of retained records on disk.",
        MetricType::Gauge,
        |s| s.bytes,
    ),
    (
        "logkv_bucket_dead_bytes",
        "Bytes of records no longer retained, on disk until compacted.",
        MetricType::Gauge,
        |s| s.dead_bytes,
    ),
    (
        "logkv_bucket_segments",
        "Segment files of the bucket's log.",
        MetricType::Gauge,
        |s| s.segments,
    ),
    (
        "logkv_bucket_keys",
        "Keys with a value.",
        MetricType::Gauge,
        |s| s.keys,
    ),
    (
        "logkv_bucket_values",
        "Entries stored, history included.",
        MetricType::Gauge,
        |s| s.values,
    ),
    (
        "logkv_bucket_revision",
        "The bucket's last revision.",
        MetricType::Gauge,
        |s| s.last_revision,
    ),
];

impl ServerCollector {
    /// Version, uptime, connections, commands, watchers, client memory.
    fn server(&self, e: &mut DescriptorEncoder<'_>) -> EncodeResult {
        let shared = &self.0;
        let st = &shared.stats;
        let info = [("version", crate::VERSION)];
        e.encode_descriptor(
            "logkv_build",
            "The server's version.",
            None,
            MetricType::Info,
        )?
        .encode_info(&info)?;
        let uptime = st.started.elapsed().as_secs();
        gauge(
            e,
            "logkv_uptime_seconds",
            "Seconds since the server started.",
            uptime,
        )?;
        let mut conns = e.encode_descriptor(
            "logkv_connections",
            "Open client connections, by transport.",
            None,
            MetricType::Gauge,
        )?;
        for (transport, n) in [
            ("resp", st.connections.load(Ordering::Relaxed)),
            ("http", st.http_connections.load(Ordering::Relaxed)),
        ] {
            let labels = [("transport", transport)];
            conns
                .encode_family(&labels)?
                .encode_gauge(&i64::try_from(n).unwrap_or(i64::MAX))?;
        }
        let commands = st.commands.load(Ordering::Relaxed);
        counter(
            e,
            "logkv_commands",
            "RESP requests executed (INFO commands).",
            commands,
        )?;
        let watchers = st.watchers.load(Ordering::Relaxed) as u64;
        gauge(
            e,
            "logkv_watchers",
            "Active watches: RESP watches and SSE streams.",
            watchers,
        )?;
        let memory = &shared.client_memory;
        gauge(
            e,
            "logkv_client_memory_bytes",
            "Bytes client connections hold in their buffers.",
            memory.total() as u64,
        )?;
        gauge(
            e,
            "logkv_client_memory_budget_bytes",
            "--max-client-memory.",
            memory.budget() as u64,
        )?;
        counter(
            e,
            "logkv_evicted_clients",
            "Connections closed for --max-client-memory.",
            memory.evicted(),
        )
    }

    /// Request latency histograms and the durability wait.
    fn requests(&self, e: &mut DescriptorEncoder<'_>) -> EncodeResult {
        let metrics = &self.0.metrics;
        let mut requests = e.encode_descriptor(
            "logkv_request_duration_seconds",
            "Request latency by transport and verb (RESP: from reading a batch of requests to \
             its replies being ready, for each request of the batch; HTTP: the whole request, \
             a watch until its stream starts). Requests that never ran are left out.",
            None,
            MetricType::Histogram,
        )?;
        let resp = metrics.resp().map(|(verb, h)| ("resp", verb, h));
        let http = metrics.http().map(|(route, h)| ("http", route, h));
        for (transport, verb, h) in resp.chain(http) {
            let snap = h.snapshot();
            if snap.count > 0 {
                histogram(
                    &mut requests,
                    &[("transport", transport), ("verb", verb)],
                    &snap,
                )?;
            }
        }
        let wait = metrics.durability_wait.snapshot();
        e.encode_descriptor(
            "logkv_durability_wait_seconds",
            "How long RESP replies waited for their writes' group-commit fsync.",
            None,
            MetricType::Histogram,
        )?
        .encode_histogram::<NoLabelSet>(wait.sum_seconds, wait.count, &wait.buckets, None)
    }
}

/// The roles a cluster node reports, each a series of `logkv_cluster_role`.
const ROLES: [&str; 5] = ["leader", "follower", "candidate", "learner", "shutdown"];

impl ServerCollector {
    /// On a cluster node: its role (1 on the series of the current role, 0 on the others),
    /// term, commit and applied indexes, the leader's id and the Raft log's fsyncs.
    fn cluster(&self, e: &mut DescriptorEncoder<'_>) -> EncodeResult {
        let Some(node) = &self.0.cluster else {
            return Ok(());
        };
        let info = node.info();
        let mut role = e.encode_descriptor(
            "logkv_cluster_role",
            "This node's Raft role: 1 on the current role's series.",
            None,
            MetricType::Gauge,
        )?;
        for name in ROLES {
            role.encode_family(&[("role", name)])?
                .encode_gauge(&i64::from(info.role == name))?;
        }
        gauge(e, "logkv_cluster_term", "The current Raft term.", info.term)?;
        gauge(
            e,
            "logkv_cluster_commit_index",
            "The last Raft log index known committed.",
            info.commit,
        )?;
        gauge(
            e,
            "logkv_cluster_applied_index",
            "The last Raft log index applied to the store.",
            info.applied,
        )?;
        gauge(
            e,
            "logkv_cluster_leader_id",
            "The leader's node id, 0 when none is known.",
            info.leader.unwrap_or(0),
        )?;
        counter(
            e,
            "logkv_cluster_log_fsyncs",
            "fsyncs of the Raft log.",
            node.log_fsyncs(),
        )
    }
}

impl Collector for ServerCollector {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> EncodeResult {
        let shared = &self.0;
        self.server(&mut e)?;
        self.requests(&mut e)?;
        self.cluster(&mut e)?;
        let store = shared.store();
        let stats: Vec<(String, BucketStats)> = store
            .bucket_names()
            .into_iter()
            .filter_map(|name| store.bucket(&name).ok().map(|b| (name, b.stats())))
            .collect();
        for family in &BUCKET_FAMILIES {
            per_bucket(&mut e, &stats, family)?;
        }
        let fsync = store.fsync_latencies();
        if fsync.count() > 0 {
            let buckets: Vec<(f64, u64)> = fsync
                .bounds_us
                .iter()
                .zip(&fsync.counts)
                .map(|(&b, &n)| {
                    let bound = if b == u64::MAX {
                        f64::MAX
                    } else {
                        b as f64 / 1e6
                    };
                    (bound, n)
                })
                .collect();
            e.encode_descriptor(
                "logkv_fsync_seconds",
                "How long each fsync of a bucket log took (group-commit leaders, rotations).",
                None,
                MetricType::Histogram,
            )?
            .encode_histogram::<NoLabelSet>(
                fsync.sum_us as f64 / 1e6,
                fsync.count(),
                &buckets,
                None,
            )?;
        }
        let (groups, group_sum) = shared.syncers.group_sizes().snapshot();
        let rounds: u64 = groups.iter().map(|(_, n)| n).sum();
        if rounds > 0 {
            e.encode_descriptor(
                "logkv_group_commit_connections",
                "How many waiting connections each group-commit fsync round served (--fsync always).",
                None,
                MetricType::Histogram,
            )?
            .encode_histogram::<NoLabelSet>(group_sum as f64, rounds, &groups, None)?;
        }
        let healthy = u64::from(shared.health.status().is_ok());
        gauge(
            &mut e,
            "logkv_healthy",
            "1 while /healthz answers 200.",
            healthy,
        )
    }
}
