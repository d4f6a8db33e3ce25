//! `firn ingest`: Kafka records → minute rows → Parquet → Iceberg appends,
//! exactly once (see [`worker`]).

pub mod batch;
pub mod flush;
mod membership;
pub mod reset;
pub mod shards;
pub mod worker;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use self::batch::TableSink;
pub use self::reset::ResetOffsets;
pub use self::worker::IngestReport;
use crate::catalog::Catalog;
use crate::clock::Clock;
use crate::error::{Error, ErrorKind, Result};
use crate::retry::RetryPolicy;
use crate::schema::decl::TableDecl;
use crate::tables;
use crate::telemetry::IngestMetrics;

/// Runtime knobs of an ingest worker. `Debug` shows the names of the
/// librdkafka properties, not their values (`sasl.password`).
#[derive(Clone)]
pub struct IngestOptions {
    /// Kafka bootstrap servers.
    pub brokers: String,
    /// Consumer group (also the key of the offsets in the table).
    pub group: String,
    /// Extra librdkafka properties.
    pub kafka: BTreeMap<String, String>,
    /// Flush at least this often.
    pub commit_interval: Duration,
    /// Flush when this many rows (and rejects) are buffered.
    pub max_buffered_rows: usize,
    /// Flush when this many payload bytes were consumed since the last flush.
    pub max_buffered_bytes: u64,
    /// Accept events at most this far in the future.
    pub future_skew: Duration,
    /// Target size of a data file.
    pub target_file_size: usize,
    /// Stop (after a final flush) once the assigned partitions are caught up
    /// with their high watermarks and no record arrived for this long since
    /// they were assigned.
    pub stop_when_idle: Option<Duration>,
    /// Kafka static membership (`group.instance.id`): a worker restarted
    /// under the same id gets its partitions back without a rebalance or a
    /// wait for its old session, and does not leave the group when it stops.
    pub instance_id: Option<String>,
    /// Retries of commits (conflicts) and of catalog reads (`[retry]` in
    /// the configuration).
    pub retry: RetryPolicy,
    /// Serve `/metrics`, `/healthz` and `/readyz` here.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Where to start when the table holds no offsets for the group (or, with
    /// explicit offsets, to move it); see [`reset`].
    pub reset_offsets: Option<ResetOffsets>,
    /// Threads decoding and aggregating records ([`shards`]); 1 does it on
    /// the consumer thread.
    pub threads: usize,
}

impl std::fmt::Debug for IngestOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngestOptions")
            .field("brokers", &self.brokers)
            .field("group", &self.group)
            .field("kafka", &self.kafka.keys())
            .field("commit_interval", &self.commit_interval)
            .field("max_buffered_rows", &self.max_buffered_rows)
            .field("max_buffered_bytes", &self.max_buffered_bytes)
            .field("future_skew", &self.future_skew)
            .field("target_file_size", &self.target_file_size)
            .field("stop_when_idle", &self.stop_when_idle)
            .field("instance_id", &self.instance_id)
            .field("retry", &self.retry)
            .field("metrics_addr", &self.metrics_addr)
            .field("reset_offsets", &self.reset_offsets)
            .field("threads", &self.threads)
            .finish_non_exhaustive()
    }
}

impl Default for IngestOptions {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            group: "firn-ingest".into(),
            kafka: BTreeMap::new(),
            commit_interval: Duration::from_secs(60),
            max_buffered_rows: 200_000,
            max_buffered_bytes: 256 * 1024 * 1024,
            future_skew: crate::events::DEFAULT_FUTURE_SKEW,
            target_file_size: crate::write::DEFAULT_TARGET_FILE_SIZE,
            stop_when_idle: None,
            instance_id: None,
            retry: RetryPolicy::default(),
            metrics_addr: None,
            reset_offsets: None,
            threads: shards::default_threads(),
        }
    }
}

/// Run an ingest worker for `decls` until `shutdown` resolves (SIGTERM,
/// SIGINT) or it is idle as `opts.stop_when_idle` says; then flush, commit
/// and return what it did.
pub async fn run(
    catalog: Arc<dyn Catalog>,
    decls: Vec<TableDecl>,
    opts: IngestOptions,
    clock: Arc<dyn Clock>,
    metrics: IngestMetrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<IngestReport> {
    let mut sinks = HashMap::new();
    for decl in decls {
        let ident = tables::ident(&decl)?;
        let rejects = tables::rejects_ident(&decl)?;
        for t in [&ident, &rejects] {
            if !catalog.exists(t).await? {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!(
                        "table {t} (declared in {}) does not exist; run `firn tables sync`",
                        decl.source.display()
                    ),
                ));
            }
        }
        tables::check_matches(&decl, &catalog.load(&ident).await?.metadata)?;
        sinks.insert(decl.topic.clone(), TableSink::new(decl, ident, rejects));
    }
    let kafka_source = crate::kafka::KafkaSource {
        brokers: opts.brokers.clone(),
        properties: opts.kafka.clone(),
        timeout: Duration::from_secs(30),
    };
    for (topic, sink) in &sinks {
        reset::prepare(
            catalog.as_ref(),
            &sink.ident,
            topic,
            &opts.group,
            opts.reset_offsets.as_ref(),
            &kafka_source,
            opts.retry,
        )
        .await?;
    }

    let metrics = metrics.with_clock(clock.clone());
    let health = metrics.health().clone();
    let server = match opts.metrics_addr {
        Some(addr) => Some(
            crate::telemetry::serve(
                addr,
                metrics.registry().clone(),
                health.clone(),
                opts.commit_interval * 3,
            )
            .await?,
        ),
        None => None,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let stop_on_signal = stop.clone();
    let watcher = tokio::spawn(async move {
        shutdown.await;
        stop_on_signal.store(true, Ordering::Relaxed);
    });

    let handle = tokio::runtime::Handle::current();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("firn-consumer".into())
        .spawn(move || {
            let result = worker::run_blocking(handle, catalog, sinks, opts, clock, metrics, stop);
            let _ = tx.send(result);
        })
        .map_err(|e| Error::new(ErrorKind::Internal, "starting consumer thread").with_source(e))?;
    let result = rx.await.unwrap_or_else(|_| {
        Err(Error::new(
            ErrorKind::Internal,
            "consumer thread ended without a result",
        ))
    });
    watcher.abort();
    if let Some(s) = server {
        s.abort();
    }
    result
}
