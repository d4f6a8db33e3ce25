//! Telemetry as named events: each thing worth counting is one function that
//! both logs and updates its Prometheus metric. Labels stay bounded (table,
//! topic, reason, outcome), never a file or an offset.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

/// Ingest metrics, registered in one registry.
#[derive(Debug, Clone)]
pub struct IngestMetrics {
    registry: Registry,
    events_consumed: IntCounterVec,
    events_rejected: IntCounterVec,
    rows_written: IntCounterVec,
    files_committed: IntCounterVec,
    commits: IntCounterVec,
    commit_seconds: HistogramVec,
    buffered_rows: IntGaugeVec,
    health: std::sync::Arc<Health>,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    registry
        .register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

impl Default for IngestMetrics {
    fn default() -> Self {
        Self::new(Registry::new())
    }
}

impl IngestMetrics {
    /// Register ingest metrics in `registry`.
    pub fn new(registry: Registry) -> Self {
        let commit_seconds = HistogramVec::new(
            HistogramOpts::new(
                "firn_ingest_commit_duration_seconds",
                "Time to write and commit one flush, per table.",
            )
            .buckets(vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            &["table"],
        )
        .expect("valid metric definition");
        registry
            .register(Box::new(commit_seconds.clone()))
            .expect("metric registered once");
        let buffered_rows = IntGaugeVec::new(
            Opts::new(
                "firn_ingest_buffered_rows",
                "Minute rows buffered and not yet committed.",
            ),
            &["table"],
        )
        .expect("valid metric definition");
        registry
            .register(Box::new(buffered_rows.clone()))
            .expect("metric registered once");
        Self {
            events_consumed: counter(
                &registry,
                "firn_ingest_events_consumed_total",
                "Kafka records consumed (accepted or rejected).",
                &["table", "topic"],
            ),
            events_rejected: counter(
                &registry,
                "firn_ingest_events_rejected_total",
                "Records sent to the rejects table, by reason.",
                &["table", "reason"],
            ),
            rows_written: counter(
                &registry,
                "firn_ingest_rows_written_total",
                "Minute rows committed to the table.",
                &["table"],
            ),
            files_committed: counter(
                &registry,
                "firn_ingest_files_committed_total",
                "Data files committed to the table.",
                &["table"],
            ),
            commits: counter(
                &registry,
                "firn_ingest_commits_total",
                "Flush commits by outcome (committed, fenced, failed).",
                &["table", "outcome"],
            ),
            commit_seconds,
            buffered_rows,
            registry,
            health: Default::default(),
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
    pub fn flush_committed(&self, table: &str, rows: u64, files: usize, seconds: f64) {
        self.rows_written.with_label_values(&[table]).inc_by(rows);
        self.files_committed
            .with_label_values(&[table])
            .inc_by(files as u64);
        self.commits.with_label_values(&[table, "committed"]).inc();
        self.commit_seconds
            .with_label_values(&[table])
            .observe(seconds);
    }

    /// A flush did not commit (`fenced` or `failed`).
    pub fn flush_failed(&self, table: &str, outcome: &'static str) {
        self.commits.with_label_values(&[table, outcome]).inc();
    }
}

/// Liveness and readiness of an ingest worker, shared with `/readyz`.
#[derive(Debug, Default)]
pub struct Health {
    assigned: std::sync::atomic::AtomicUsize,
    last_commit_ms: std::sync::atomic::AtomicI64,
    idle_since_ms: std::sync::atomic::AtomicI64,
}

impl Health {
    /// Partitions currently assigned.
    pub fn set_assigned(&self, n: usize) {
        self.assigned.store(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// A flush committed now.
    pub fn committed(&self) {
        self.last_commit_ms.store(
            chrono::Utc::now().timestamp_millis(),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Whether nothing is buffered (caught up); cleared when records arrive.
    pub fn set_idle(&self, idle: bool) {
        let v = if idle {
            chrono::Utc::now().timestamp_millis()
        } else {
            0
        };
        self.idle_since_ms
            .store(v, std::sync::atomic::Ordering::Relaxed);
    }

    /// Ready: partitions assigned and a commit within `fresh` (or nothing to
    /// commit since one).
    pub fn ready(&self, fresh: std::time::Duration) -> Result<(), String> {
        use std::sync::atomic::Ordering::Relaxed;
        if self.assigned.load(Relaxed) == 0 {
            return Err("no partitions assigned".into());
        }
        let last = self.last_commit_ms.load(Relaxed);
        if last == 0 {
            return Err("no commit yet".into());
        }
        let age = chrono::Utc::now().timestamp_millis() - last;
        if age > fresh.as_millis() as i64 && self.idle_since_ms.load(Relaxed) == 0 {
            return Err(format!("last commit {age} ms ago"));
        }
        Ok(())
    }
}

/// Serve `/metrics` (Prometheus text), `/healthz` (alive) and `/readyz`
/// (assigned and committing) on `addr` until `shutdown` resolves.
pub async fn serve(
    addr: std::net::SocketAddr,
    registry: Registry,
    health: std::sync::Arc<Health>,
    fresh: std::time::Duration,
) -> crate::Result<tokio::task::JoinHandle<()>> {
    use axum::http::StatusCode;
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move {
                    let mut out = String::new();
                    let encoder = prometheus::TextEncoder::new();
                    match encoder.encode_utf8(&registry.gather(), &mut out) {
                        Ok(()) => (StatusCode::OK, out),
                        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
                    }
                }
            }),
        )
        .route("/healthz", get(|| async { (StatusCode::OK, "ok\n") }))
        .route(
            "/readyz",
            get(move || {
                let health = health.clone();
                async move {
                    match health.ready(fresh) {
                        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
                        Err(why) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("not ready: {why}\n"),
                        ),
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        crate::Error::new(
            crate::ErrorKind::Io,
            format!("binding the metrics endpoint {addr}"),
        )
        .with_source(e)
    })?;
    tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics endpoint stopped");
        }
    }))
}
