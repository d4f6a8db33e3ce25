//! Telemetry as named events: each thing worth counting is one function that
//! updates its Prometheus metric. Labels stay bounded (table, topic, reason,
//! outcome, job, step), never a file or an offset.
//!
//! Every metric firn exports is declared once in [`INGEST_METRICS`] or
//! [`RUN_METRICS`]; the registries are built from those declarations, and
//! `firn metrics` prints them.

mod http;
pub mod run;

pub use http::{Health, serve};

use prometheus::{
    GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
};
use serde::Serialize;

use crate::clock::{Clock, SystemClock};

/// One exported metric: what operators find in `/metrics`, the Pushgateway
/// or the textfile, and what README.md lists.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct MetricInfo {
    /// Full name (counters end in `_total`).
    pub name: &'static str,
    /// `counter`, `gauge` or `histogram`.
    pub kind: &'static str,
    /// What it measures.
    pub help: &'static str,
    /// Its labels (all bounded).
    pub labels: &'static [&'static str],
}

const fn metric(
    name: &'static str,
    kind: &'static str,
    labels: &'static [&'static str],
    help: &'static str,
) -> MetricInfo {
    MetricInfo {
        name,
        kind,
        help,
        labels,
    }
}

/// Served by `firn ingest --metrics-addr` on `/metrics`.
pub const INGEST_METRICS: &[MetricInfo] = &[
    metric(
        "firn_ingest_events_consumed_total",
        "counter",
        &["table", "topic"],
        "Kafka records consumed (accepted or rejected), re-deliveries not counted.",
    ),
    metric(
        "firn_ingest_events_rejected_total",
        "counter",
        &["table", "reason"],
        "Records sent to the rejects table, by reason.",
    ),
    metric(
        "firn_ingest_rows_written_total",
        "counter",
        &["table"],
        "Minute rows committed to the table.",
    ),
    metric(
        "firn_ingest_bytes_written_total",
        "counter",
        &["table"],
        "Bytes of Parquet data files committed to the table.",
    ),
    metric(
        "firn_ingest_files_committed_total",
        "counter",
        &["table"],
        "Data files committed to the table.",
    ),
    metric(
        "firn_ingest_commits_total",
        "counter",
        &["table", "outcome"],
        "Flush commits by outcome: committed, fenced (another worker committed the range; re-read), failed (re-read).",
    ),
    metric(
        "firn_ingest_commit_conflicts_total",
        "counter",
        &["table"],
        "Commit attempts that lost the catalog's compare-and-set to another writer and were retried.",
    ),
    metric(
        "firn_ingest_flush_duration_seconds",
        "histogram",
        &["table"],
        "Time to write one flush's Parquet files (and its rejects).",
    ),
    metric(
        "firn_ingest_commit_duration_seconds",
        "histogram",
        &["table"],
        "Time of one flush's catalog commit, conflict retries included.",
    ),
    metric(
        "firn_ingest_last_commit_timestamp_seconds",
        "gauge",
        &["table"],
        "Unix time of this worker's last successful commit to the table.",
    ),
    metric(
        "firn_ingest_buffered_rows",
        "gauge",
        &["table"],
        "Minute rows and rejects buffered and not yet committed.",
    ),
    metric(
        "firn_ingest_consumer_lag_records",
        "gauge",
        &["table", "topic"],
        "Records between the offsets the table holds and the high watermarks, over this worker's assigned partitions (sum over workers for the group).",
    ),
    metric(
        "firn_ingest_assigned_partitions",
        "gauge",
        &["topic"],
        "Partitions assigned to this worker.",
    ),
];

/// Published by batch commands with `--pushgateway` or `--metrics-file`.
/// On a Pushgateway, `job` (and `shard` when sharded) is the grouping key.
pub const RUN_METRICS: &[MetricInfo] = &[
    metric(
        "firn_job_duration_seconds",
        "gauge",
        &["job"],
        "Wall time of the last run.",
    ),
    metric(
        "firn_job_last_run_timestamp_seconds",
        "gauge",
        &["job"],
        "Unix time the last run ended.",
    ),
    metric(
        "firn_job_last_success_timestamp_seconds",
        "gauge",
        &["job"],
        "Unix time the last successful run ended (kept when a later run fails).",
    ),
    metric(
        "firn_job_success",
        "gauge",
        &["job"],
        "1 if the last run succeeded, 0 if it failed.",
    ),
    metric(
        "firn_job_partitions",
        "gauge",
        &["job", "table", "step"],
        "Partitions the step rewrote, dropped or wrote in the last run.",
    ),
    metric(
        "firn_job_commits",
        "gauge",
        &["job", "table", "step"],
        "Iceberg commits the step made in the last run.",
    ),
    metric(
        "firn_job_rows_in",
        "gauge",
        &["job", "table", "step"],
        "Rows (or, for backfill, events) the step read in the last run.",
    ),
    metric(
        "firn_job_rows_out",
        "gauge",
        &["job", "table", "step"],
        "Rows the step wrote in the last run.",
    ),
    metric(
        "firn_job_bytes_reclaimed",
        "gauge",
        &["job", "table", "step"],
        "Bytes the step freed in the last run: data files removed minus written, files deleted by expiry or orphan removal.",
    ),
    metric(
        "firn_job_failed_tasks",
        "gauge",
        &["job", "table", "step"],
        "Tasks of the step that failed in the last run (1 for a step that stopped with an error).",
    ),
    metric(
        "firn_table_orphan_bytes",
        "gauge",
        &["table"],
        "Bytes of files under the table's location that nothing references, as found by the last orphan removal (before deleting).",
    ),
    metric(
        "firn_audit_inconsistent_days",
        "gauge",
        &["table"],
        "Days the last `firn audit` of the table found inconsistent (0: every commit accounted for, every day's totals as its history says).",
    ),
];

/// Every metric firn exports.
pub fn exported_metrics() -> Vec<MetricInfo> {
    INGEST_METRICS.iter().chain(RUN_METRICS).copied().collect()
}

fn info(name: &str) -> &'static MetricInfo {
    INGEST_METRICS
        .iter()
        .chain(RUN_METRICS)
        .find(|m| m.name == name)
        .unwrap_or_else(|| panic!("metric {name} is declared"))
}

fn register<C: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: C) -> C {
    registry
        .register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn counter(registry: &Registry, name: &str) -> IntCounterVec {
    let m = info(name);
    register(
        registry,
        IntCounterVec::new(Opts::new(m.name, m.help), m.labels).expect("valid metric"),
    )
}

fn int_gauge(registry: &Registry, name: &str) -> IntGaugeVec {
    let m = info(name);
    register(
        registry,
        IntGaugeVec::new(Opts::new(m.name, m.help), m.labels).expect("valid metric"),
    )
}

fn gauge(registry: &Registry, name: &str, labels: &[&str]) -> GaugeVec {
    let m = info(name);
    register(
        registry,
        GaugeVec::new(Opts::new(m.name, m.help), labels).expect("valid metric"),
    )
}

fn histogram(registry: &Registry, name: &str, buckets: Vec<f64>) -> HistogramVec {
    let m = info(name);
    register(
        registry,
        HistogramVec::new(
            HistogramOpts::new(m.name, m.help).buckets(buckets),
            m.labels,
        )
        .expect("valid metric"),
    )
}

/// Ingest metrics, registered in one registry.
#[derive(Debug, Clone)]
pub struct IngestMetrics {
    registry: Registry,
    events_consumed: IntCounterVec,
    events_rejected: IntCounterVec,
    rows_written: IntCounterVec,
    bytes_written: IntCounterVec,
    files_committed: IntCounterVec,
    commits: IntCounterVec,
    commit_conflicts: IntCounterVec,
    flush_seconds: HistogramVec,
    commit_seconds: HistogramVec,
    last_commit: GaugeVec,
    buffered_rows: IntGaugeVec,
    consumer_lag: IntGaugeVec,
    assigned: IntGaugeVec,
    health: std::sync::Arc<Health>,
    clock: std::sync::Arc<dyn Clock>,
}

impl Default for IngestMetrics {
    fn default() -> Self {
        Self::new(Registry::new())
    }
}

/// What one committed flush did, for [`IngestMetrics::flush_committed`].
#[derive(Debug, Clone, Copy, Default)]
pub struct FlushStats {
    /// Minute rows committed.
    pub rows: u64,
    /// Data files committed.
    pub files: usize,
    /// Their bytes.
    pub bytes: u64,
    /// Commit attempts (1 without conflicts).
    pub attempts: u32,
    /// Seconds writing files.
    pub write_seconds: f64,
    /// Seconds committing.
    pub commit_seconds: f64,
}

impl IngestMetrics {
    /// Register ingest metrics in `registry`.
    pub fn new(registry: Registry) -> Self {
        let seconds = vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
        Self {
            events_consumed: counter(&registry, "firn_ingest_events_consumed_total"),
            events_rejected: counter(&registry, "firn_ingest_events_rejected_total"),
            rows_written: counter(&registry, "firn_ingest_rows_written_total"),
            bytes_written: counter(&registry, "firn_ingest_bytes_written_total"),
            files_committed: counter(&registry, "firn_ingest_files_committed_total"),
            commits: counter(&registry, "firn_ingest_commits_total"),
            commit_conflicts: counter(&registry, "firn_ingest_commit_conflicts_total"),
            flush_seconds: histogram(
                &registry,
                "firn_ingest_flush_duration_seconds",
                seconds.clone(),
            ),
            commit_seconds: histogram(&registry, "firn_ingest_commit_duration_seconds", seconds),
            last_commit: gauge(
                &registry,
                "firn_ingest_last_commit_timestamp_seconds",
                &["table"],
            ),
            buffered_rows: int_gauge(&registry, "firn_ingest_buffered_rows"),
            consumer_lag: int_gauge(&registry, "firn_ingest_consumer_lag_records"),
            assigned: int_gauge(&registry, "firn_ingest_assigned_partitions"),
            registry,
            health: std::sync::Arc::new(Health::new(std::sync::Arc::new(SystemClock))),
            clock: std::sync::Arc::new(SystemClock),
        }
    }

    /// The same metrics, with commit times and health ages read from `clock`
    /// (the worker's) instead of the system clock.
    pub fn with_clock(self, clock: std::sync::Arc<dyn Clock>) -> Self {
        Self {
            health: std::sync::Arc::new(Health::new(clock.clone())),
            clock,
            ..self
        }
    }

    /// The worker's health (for `/readyz`).
    pub fn health(&self) -> &std::sync::Arc<Health> {
        &self.health
    }

    /// The registry (for `/metrics`).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// A record was consumed.
    pub fn consumed(&self, table: &str, topic: &str) {
        self.events_consumed
            .with_label_values(&[table, topic])
            .inc();
    }

    /// `n` records were consumed.
    pub fn consumed_many(&self, table: &str, topic: &str, n: u64) {
        self.events_consumed
            .with_label_values(&[table, topic])
            .inc_by(n);
    }

    /// `n` records were rejected for `reason`.
    pub fn rejected_many(&self, table: &str, reason: &str, n: u64) {
        self.events_rejected
            .with_label_values(&[table, reason])
            .inc_by(n);
    }

    /// A record was rejected.
    pub fn rejected(&self, table: &str, reason: &str) {
        self.events_rejected
            .with_label_values(&[table, reason])
            .inc();
    }

    /// Rows currently buffered for a table.
    pub fn buffered(&self, table: &str, rows: usize) {
        self.buffered_rows
            .with_label_values(&[table])
            .set(rows as i64);
    }

    /// A flush committed.
    pub fn flush_committed(&self, table: &str, stats: FlushStats) {
        self.rows_written
            .with_label_values(&[table])
            .inc_by(stats.rows);
        self.bytes_written
            .with_label_values(&[table])
            .inc_by(stats.bytes);
        self.files_committed
            .with_label_values(&[table])
            .inc_by(stats.files as u64);
        self.commits.with_label_values(&[table, "committed"]).inc();
        self.commit_conflicts
            .with_label_values(&[table])
            .inc_by(u64::from(stats.attempts.saturating_sub(1)));
        self.flush_seconds
            .with_label_values(&[table])
            .observe(stats.write_seconds);
        self.commit_seconds
            .with_label_values(&[table])
            .observe(stats.commit_seconds);
        self.last_commit
            .with_label_values(&[table])
            .set(self.clock.now().timestamp_millis() as f64 / 1000.0);
    }

    /// A flush did not commit (`fenced` or `failed`).
    pub fn flush_failed(&self, table: &str, outcome: &'static str) {
        self.commits.with_label_values(&[table, outcome]).inc();
    }

    /// Lag and assigned partitions of one topic, as last measured.
    pub fn topic_position(&self, table: &str, topic: &str, partitions: usize, lag: i64) {
        self.consumer_lag
            .with_label_values(&[table, topic])
            .set(lag);
        self.assigned
            .with_label_values(&[topic])
            .set(partitions as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_registered_metric_is_declared_and_named_alike() {
        let m = IngestMetrics::default();
        m.consumed("t", "x");
        m.rejected("t", "not_json");
        m.flush_committed("t", FlushStats::default());
        m.flush_failed("t", "fenced");
        m.buffered("t", 1);
        m.topic_position("t", "x", 1, 0);
        let names: Vec<String> = m
            .registry()
            .gather()
            .iter()
            .map(|f| f.name().to_string())
            .collect();
        let declared: Vec<&str> = INGEST_METRICS.iter().map(|m| m.name).collect();
        assert_eq!(names.len(), declared.len(), "{names:?}");
        for n in &names {
            assert!(declared.contains(&n.as_str()), "{n} is not declared");
        }
        for m in exported_metrics() {
            assert!(m.name.starts_with("firn_"), "{}", m.name);
            assert_eq!(
                m.kind == "counter",
                m.name.ends_with("_total"),
                "{}",
                m.name
            );
            assert!(["counter", "gauge", "histogram"].contains(&m.kind));
        }
    }

    #[test]
    fn readme_lists_every_metric_with_its_labels() {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
        for m in exported_metrics() {
            let row = format!("| `{}{{{}}}` | {} |", m.name, m.labels.join(","), m.kind);
            assert!(readme.contains(&row), "README.md lacks the row {row}");
        }
    }

    #[test]
    fn commit_retries_count_as_conflicts_and_failed_flushes_by_outcome() {
        let m = IngestMetrics::default();
        let stats = |attempts| FlushStats {
            rows: 10,
            files: 2,
            bytes: 300,
            attempts,
            ..FlushStats::default()
        };
        m.flush_committed("t", stats(1));
        m.flush_committed("t", stats(3));
        m.flush_failed("t", "fenced");
        let mut text = String::new();
        prometheus::TextEncoder::new()
            .encode_utf8(&m.registry().gather(), &mut text)
            .unwrap();
        for line in [
            "firn_ingest_commit_conflicts_total{table=\"t\"} 2",
            "firn_ingest_commits_total{outcome=\"committed\",table=\"t\"} 2",
            "firn_ingest_commits_total{outcome=\"fenced\",table=\"t\"} 1",
            "firn_ingest_rows_written_total{table=\"t\"} 20",
            "firn_ingest_files_committed_total{table=\"t\"} 4",
            "firn_ingest_bytes_written_total{table=\"t\"} 600",
            "firn_ingest_commit_duration_seconds_count{table=\"t\"} 2",
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
        }
    }
}
