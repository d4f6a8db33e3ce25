//! Run metrics of batch commands (`maintain`, `compact`, `rollup`,
//! `retention`, `rewrite-manifests`, `expire-snapshots`, `remove-orphans`,
//! `backfill`), published when the run ends: pushed to a Prometheus
//! Pushgateway, or written as a node-exporter textfile.
//!
//! A failed run keeps the last success time: on a Pushgateway the failure is
//! POSTed without `firn_job_last_success_timestamp_seconds` (a POST replaces
//! only the metrics it carries), and a textfile carries the previous file's
//! value over.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::{GaugeVec, Registry};
use serde::Serialize;

use super::gauge;
use crate::clock::Clock;
use crate::error::{Error, ErrorKind, Result};
use crate::redact;

/// What one step did on one table.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct StepTotals {
    /// Partitions rewritten, dropped or written.
    pub partitions: u64,
    /// Commits made.
    pub commits: u64,
    /// Rows (or events) read.
    pub rows_in: u64,
    /// Rows written.
    pub rows_out: u64,
    /// Bytes freed (negative when a rewrite grew the data).
    pub bytes_reclaimed: i64,
    /// Tasks that failed.
    pub failed_tasks: u64,
}

/// Where a batch command publishes its run metrics. The Pushgateway URL may
/// carry basic-auth credentials (`https://user:password@host`, sent as an
/// `Authorization` header); it is shown with the password masked.
#[derive(Clone, Default)]
pub struct Publish {
    /// Pushgateway base URL, e.g. `http://pushgateway:9091`.
    pub pushgateway: Option<url::Url>,
    /// node-exporter textfile, e.g.
    /// `/var/lib/node_exporter/textfile_collector/firn-hourly.prom`.
    pub metrics_file: Option<PathBuf>,
}

impl std::fmt::Debug for Publish {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let gateway = self.pushgateway.as_ref();
        f.debug_struct("Publish")
            .field(
                "pushgateway",
                &gateway.map(|u| redact::credentials(u.as_str())),
            )
            .field("metrics_file", &self.metrics_file)
            .finish()
    }
}

impl Publish {
    /// Whether anything is to be published.
    pub fn is_set(&self) -> bool {
        self.pushgateway.is_some() || self.metrics_file.is_some()
    }
}

/// One batch run's metrics, gathered as it goes.
#[derive(Debug)]
pub struct Run {
    job: String,
    shard: Option<u64>,
    started: Instant,
    clock: Arc<dyn Clock>,
    steps: Vec<(String, String, StepTotals)>,
    orphan_bytes: Vec<(String, u64)>,
    audits: Vec<(String, usize)>,
}

const LAST_SUCCESS: &str = "firn_job_last_success_timestamp_seconds";

impl Run {
    /// A run of `job` (a job file's name, or the command's), of one shard
    /// when the work is sharded.
    pub fn start(job: &str, shard: Option<u64>, clock: Arc<dyn Clock>) -> Self {
        Self {
            job: job.to_string(),
            shard,
            started: Instant::now(),
            clock,
            steps: Vec::new(),
            orphan_bytes: Vec::new(),
            audits: Vec::new(),
        }
    }

    /// The job label's value.
    pub fn job(&self) -> &str {
        &self.job
    }

    /// Record what `step` did on `table`.
    pub fn step(&mut self, table: &str, step: &str, totals: StepTotals) {
        self.steps
            .push((table.to_string(), step.to_string(), totals));
    }

    /// Record the days an audit of `table` found inconsistent.
    pub fn audit(&mut self, table: &str, inconsistent_days: usize) {
        self.audits.push((table.to_string(), inconsistent_days));
    }

    /// Record the orphan bytes found under `table`'s location.
    pub fn orphans(&mut self, table: &str, bytes: u64) {
        self.orphan_bytes.push((table.to_string(), bytes));
    }

    /// The run in Prometheus text format. `job_labels` adds `job` (and
    /// `shard`) to every series (a textfile; a Pushgateway takes them from
    /// its grouping key). `last_success` is the value to report (this run's
    /// end when it succeeded, a previous one's, or none).
    pub fn render(
        &self,
        ok: bool,
        ended_at: f64,
        last_success: Option<f64>,
        job_labels: bool,
    ) -> String {
        let mut constant = HashMap::new();
        if job_labels {
            constant.insert("job".to_string(), self.job.clone());
            if let Some(i) = self.shard {
                constant.insert("shard".to_string(), i.to_string());
            }
        }
        let registry = Registry::new_custom(None, Some(constant)).expect("valid registry labels");
        let metric = |name: &str| -> GaugeVec {
            let labels: Vec<&str> = super::info(name)
                .labels
                .iter()
                .copied()
                .filter(|l| *l != "job")
                .collect();
            gauge(&registry, name, &labels)
        };
        let none: [&str; 0] = [];
        metric("firn_job_duration_seconds")
            .with_label_values(&none)
            .set(self.started.elapsed().as_secs_f64());
        metric("firn_job_last_run_timestamp_seconds")
            .with_label_values(&none)
            .set(ended_at);
        if let Some(t) = last_success {
            metric(LAST_SUCCESS).with_label_values(&none).set(t);
        }
        metric("firn_job_success")
            .with_label_values(&none)
            .set(if ok { 1.0 } else { 0.0 });
        if !self.steps.is_empty() {
            let partitions = metric("firn_job_partitions");
            let commits = metric("firn_job_commits");
            let rows_in = metric("firn_job_rows_in");
            let rows_out = metric("firn_job_rows_out");
            let reclaimed = metric("firn_job_bytes_reclaimed");
            let failed = metric("firn_job_failed_tasks");
            for (table, step, t) in &self.steps {
                let l = [table.as_str(), step.as_str()];
                partitions.with_label_values(&l).add(t.partitions as f64);
                commits.with_label_values(&l).add(t.commits as f64);
                rows_in.with_label_values(&l).add(t.rows_in as f64);
                rows_out.with_label_values(&l).add(t.rows_out as f64);
                reclaimed
                    .with_label_values(&l)
                    .add(t.bytes_reclaimed as f64);
                failed.with_label_values(&l).add(t.failed_tasks as f64);
            }
        }
        if !self.orphan_bytes.is_empty() {
            let orphans = metric("firn_table_orphan_bytes");
            for (table, bytes) in &self.orphan_bytes {
                orphans.with_label_values(&[table]).set(*bytes as f64);
            }
        }
        if !self.audits.is_empty() {
            let audits = metric("firn_audit_inconsistent_days");
            for (table, days) in &self.audits {
                audits.with_label_values(&[table]).set(*days as f64);
            }
        }
        let mut out = String::new();
        prometheus::TextEncoder::new()
            .encode_utf8(&registry.gather(), &mut out)
            .expect("text encoding cannot fail");
        out
    }

    /// Publish the ended run where `to` says. Errors name the destination.
    pub async fn publish(&self, ok: bool, to: &Publish) -> Result<()> {
        let now = self.clock.now().timestamp_millis() as f64 / 1000.0;
        if let Some(path) = &to.metrics_file {
            let last = if ok {
                Some(now)
            } else {
                previous_success(path)
            };
            write_textfile(path, &self.render(ok, now, last, true))?;
            tracing::info!(path = %path.display(), job = %self.job, "run metrics written");
        }
        if let Some(base) = &to.pushgateway {
            let url = self.group_url(base)?;
            let body = self.render(ok, now, ok.then_some(now), false);
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .build()
                .map_err(|e| Error::new(ErrorKind::Io, "building an HTTP client").with_source(e))?;
            let request = if ok {
                client.put(url.clone())
            } else {
                client.post(url.clone())
            };
            let response = request
                .header("content-type", "text/plain; version=0.0.4")
                .body(body)
                .send()
                .await
                .map_err(|e| {
                    Error::new(ErrorKind::Io, format!("pushing run metrics to {url}"))
                        .with_source(e)
                })?;
            let status = response.status();
            if !status.is_success() {
                let text = response.text().await.unwrap_or_default();
                return Err(Error::new(
                    ErrorKind::Io,
                    format!("pushing run metrics to {url}: {status}: {}", text.trim()),
                ));
            }
            let url = redact::credentials(url.as_str());
            tracing::info!(%url, job = %self.job, "run metrics pushed");
        }
        Ok(())
    }

    /// `BASE/metrics/job/JOB[/shard/I]`.
    fn group_url(&self, base: &url::Url) -> Result<url::Url> {
        let mut url = base.clone();
        {
            let mut path = url.path_segments_mut().map_err(|()| {
                Error::new(
                    ErrorKind::InvalidConfig,
                    format!("--pushgateway {base} cannot take a path"),
                )
            })?;
            path.pop_if_empty()
                .extend(["metrics", "job", self.job.as_str()]);
            if let Some(i) = self.shard {
                path.extend(["shard", &i.to_string()]);
            }
        }
        Ok(url)
    }
}

/// The last success time a textfile holds, if any.
fn previous_success(path: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .filter(|l| l.starts_with(LAST_SUCCESS))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Write atomically (a temporary file renamed over), as node-exporter's
/// textfile collector requires.
fn write_textfile(path: &Path, text: &str) -> Result<()> {
    let io = |e: std::io::Error| {
        Error::new(
            ErrorKind::Io,
            format!("writing run metrics to {}", path.display()),
        )
        .with_source(e)
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    std::fs::write(&tmp, text).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Run {
        let mut run = Run::start("hourly", Some(1), Arc::new(crate::clock::SystemClock));
        run.step(
            "usage.t",
            "rollup",
            StepTotals {
                partitions: 3,
                commits: 3,
                rows_in: 1000,
                rows_out: 40,
                bytes_reclaimed: 5000,
                failed_tasks: 0,
            },
        );
        run
    }

    /// The value of `name`'s sample carrying all of `labels` (any order).
    fn value(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .find(|l| labels.iter().all(|kv| l.contains(kv)))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    #[test]
    fn textfile_carries_job_labels_and_keeps_the_last_success_on_failure() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("firn-hourly.prom");
        write_textfile(&path, &sample().render(true, 100.0, Some(100.0), true)).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let job = ["job=\"hourly\"", "shard=\"1\""];
        let step = [job[0], job[1], "step=\"rollup\"", "table=\"usage.t\""];
        assert_eq!(
            value(&text, "firn_job_rows_in", &step),
            Some(1000.0),
            "{text}"
        );
        assert_eq!(value(&text, "firn_job_success", &job), Some(1.0));
        assert_eq!(previous_success(&path), Some(100.0));
        let failed = sample().render(false, 200.0, previous_success(&path), true);
        assert_eq!(value(&failed, "firn_job_success", &job), Some(0.0));
        assert_eq!(value(&failed, LAST_SUCCESS, &job), Some(100.0));
        assert_eq!(
            value(&failed, "firn_job_last_run_timestamp_seconds", &job),
            Some(200.0)
        );
    }

    #[test]
    fn pushgateway_groups_by_job_and_shard() {
        let run = sample();
        let base = url::Url::parse("http://127.0.0.1:9091/").unwrap();
        assert_eq!(
            run.group_url(&base).unwrap().as_str(),
            "http://127.0.0.1:9091/metrics/job/hourly/shard/1"
        );
        let body = run.render(false, 1.0, None, false);
        assert!(
            !body.contains("job=") && !body.contains(LAST_SUCCESS),
            "{body}"
        );
    }
}
