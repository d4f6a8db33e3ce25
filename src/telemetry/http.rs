//! The ingest worker's HTTP endpoints: `/metrics`, `/healthz`, `/readyz`.

use std::sync::Arc;

use prometheus::Registry;

use crate::clock::Clock;

/// Liveness and readiness of an ingest worker, shared with `/readyz`.
#[derive(Debug)]
pub struct Health {
    assigned: std::sync::atomic::AtomicUsize,
    last_commit_ms: std::sync::atomic::AtomicI64,
    idle_since_ms: std::sync::atomic::AtomicI64,
    clock: Arc<dyn Clock>,
}

impl Health {
    /// A worker with nothing assigned or committed yet, ages read from `clock`.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            assigned: Default::default(),
            last_commit_ms: Default::default(),
            idle_since_ms: Default::default(),
            clock,
        }
    }

    /// Partitions currently assigned.
    pub fn set_assigned(&self, n: usize) {
        self.assigned.store(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// A flush committed now.
    pub fn committed(&self) {
        self.last_commit_ms.store(
            self.clock.now().timestamp_millis(),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Whether nothing is buffered (caught up); cleared when records arrive.
    pub fn set_idle(&self, idle: bool) {
        let v = if idle {
            self.clock.now().timestamp_millis()
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
        let age = self.clock.now().timestamp_millis() - last;
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
