//! `firn maintain --job jobs/NAME.toml`: the tables (names or globs) and the
//! tasks, in order, that one cron entry runs. `--shard i/n` splits the work
//! deterministically — partition tasks by table and partition, table tasks by
//! table — so that n parallel runs cover it exactly once. One table's failure
//! is reported and does not stop the others.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

use super::expire::{self, ExpireOptions};
use super::orphans::{self, OrphanOptions};
use super::plan::{self, PlanOptions, Task, TaskKind};
use super::{execute, manifests};
use crate::budget::CommitBudget;
use crate::catalog::Catalog;
use crate::commit::RetryPolicy;
use crate::error::{Error, ErrorKind, Result};
use crate::schema::decl::TableDecl;
use crate::tables;
use crate::telemetry::run::{Run, StepTotals};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJob {
    schedule: String,
    #[serde(default)]
    description: String,
    tables: Vec<String>,
    #[serde(default)]
    max_commits_per_minute: Option<u32>,
    task: Vec<JobTask>,
}

/// One step of a job, with its settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum JobTask {
    /// `firn compact`.
    Compact {
        /// Seal delay (default 1h).
        #[serde(default, with = "humantime_serde")]
        seal_delay: Option<Duration>,
        /// Output file size (default 128 MiB).
        target_file_size: Option<usize>,
    },
    /// `firn rollup`.
    Rollup {
        /// Output file size (default 128 MiB).
        target_file_size: Option<usize>,
    },
    /// `firn retention`.
    Retention {},
    /// `firn rewrite-manifests`.
    RewriteManifests {
        /// Manifest size (default: the table's, 8 MiB).
        target_size: Option<u64>,
    },
    /// `firn expire-snapshots`.
    ExpireSnapshots {
        /// Expire snapshots older than this (default 5d).
        #[serde(default, with = "humantime_serde")]
        older_than: Option<Duration>,
        /// Keep at least this many (default 10).
        retain_last: Option<usize>,
    },
    /// `firn remove-orphans`.
    RemoveOrphans {
        /// Only files older than this (default 3d, at least 1h).
        #[serde(default, with = "humantime_serde")]
        older_than: Option<Duration>,
    },
}

impl JobTask {
    /// The task's name in job files and reports.
    pub fn name(&self) -> &'static str {
        match self {
            JobTask::Compact { .. } => "compact",
            JobTask::Rollup { .. } => "rollup",
            JobTask::Retention {} => "retention",
            JobTask::RewriteManifests { .. } => "rewrite-manifests",
            JobTask::ExpireSnapshots { .. } => "expire-snapshots",
            JobTask::RemoveOrphans { .. } => "remove-orphans",
        }
    }
}

/// A validated job file.
#[derive(Debug, Clone)]
pub struct Job {
    /// The file.
    pub source: PathBuf,
    /// Cron schedule the deployment files run it on.
    pub schedule: String,
    /// What it is for.
    pub description: String,
    /// Table name patterns (`usage.*`, `*`).
    pub tables: Vec<glob::Pattern>,
    /// Steps, in order.
    pub tasks: Vec<JobTask>,
    /// Commits per minute per table this job may make (the catalog's write
    /// budget); `--max-commits-per-minute` wins over it.
    pub max_commits_per_minute: Option<u32>,
}

impl Job {
    /// Read and validate a job file.
    pub fn load(path: &Path) -> Result<Self> {
        let at = path.display();
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::new(ErrorKind::InvalidConfig, format!("reading job {at}")).with_source(e)
        })?;
        let raw: RawJob = toml::from_str(&text).map_err(|e| {
            Error::new(
                ErrorKind::InvalidConfig,
                format!("{at}: {}", e.to_string().trim_end()),
            )
        })?;
        if raw.schedule.split_whitespace().count() != 5 {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "{at}: schedule `{}` is not a 5-field cron expression",
                    raw.schedule
                ),
            ));
        }
        if raw.task.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!("{at}: no [[task]] listed"),
            ));
        }
        let tables = raw
            .tables
            .iter()
            .map(|t| {
                glob::Pattern::new(t).map_err(|e| {
                    Error::new(
                        ErrorKind::InvalidConfig,
                        format!("{at}: table pattern `{t}`: {e}"),
                    )
                })
            })
            .collect::<Result<_>>()?;
        Ok(Job {
            source: path.to_path_buf(),
            schedule: raw.schedule,
            description: raw.description,
            tables,
            tasks: raw.task,
            max_commits_per_minute: raw.max_commits_per_minute,
        })
    }

    /// The declared tables this job covers, by name.
    pub fn select<'a>(&self, decls: &'a [TableDecl]) -> Vec<&'a TableDecl> {
        let mut chosen: Vec<&TableDecl> = decls
            .iter()
            .filter(|d| self.tables.iter().any(|p| p.matches(&d.qualified_name())))
            .collect();
        chosen.sort_by_key(|d| d.qualified_name());
        chosen
    }
}

/// Shard `index` of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This run's shard, from 0.
    pub index: u64,
    /// Shards in all.
    pub count: u64,
}

impl Shard {
    /// The whole job.
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// Parse `i/n`.
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| format!("expected i/n, got `{s}`"))?;
        let index: u64 = i.parse().map_err(|_| format!("bad shard index `{i}`"))?;
        let count: u64 = n.parse().map_err(|_| format!("bad shard count `{n}`"))?;
        if count == 0 || index >= count {
            return Err(format!("shard {index}/{count}: need 0 <= i < n"));
        }
        Ok(Shard { index, count })
    }

    fn owns(&self, key: &str) -> bool {
        xxh3_64(key.as_bytes()) % self.count == self.index
    }

    /// Whether this shard runs a table-level step.
    pub fn owns_table(&self, table: &str) -> bool {
        self.owns(table)
    }

    /// Whether this shard runs a partition task.
    pub fn owns_task(&self, table: &str, task: &Task) -> bool {
        match task.target {
            Some((grain, partition)) => self.owns(&format!(
                "{table}/{}/{}/{partition}",
                task.kind.as_str(),
                grain.as_str()
            )),
            None => self.owns(table),
        }
    }
}

/// How a job runs.
#[derive(Debug, Clone, Copy)]
pub struct JobOptions {
    /// Plan as of this time.
    pub now: DateTime<Utc>,
    /// Which share of the work.
    pub shard: Shard,
    /// Print the plan only.
    pub dry_run: bool,
    /// Commits per minute per table, shared by the shards (0: unlimited).
    pub max_commits_per_minute: u32,
}

/// One step on one table.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    /// Task name.
    pub task: &'static str,
    /// Plan lines (dry run) or a summary of what was done.
    pub lines: Vec<String>,
    /// Commits made.
    pub commits: usize,
    /// What the step did, for run metrics.
    pub totals: StepTotals,
    /// The step's report.
    pub detail: serde_json::Value,
}

/// One table's run.
#[derive(Debug, Clone, Serialize)]
pub struct TableReport {
    /// `namespace.name`.
    pub table: String,
    /// Steps run (up to a failure).
    pub steps: Vec<StepReport>,
    /// The failure that stopped this table's steps.
    pub error: Option<String>,
}

/// The whole job's run.
#[derive(Debug, Clone, Serialize)]
pub struct JobReport {
    /// The job file.
    pub job: String,
    /// The shard run.
    pub shard: String,
    /// Per table.
    pub tables: Vec<TableReport>,
}

impl JobReport {
    /// Whether every table succeeded.
    pub fn ok(&self) -> bool {
        self.tables.iter().all(|t| t.error.is_none())
    }

    /// Commits made in all.
    pub fn commits(&self) -> usize {
        self.tables
            .iter()
            .flat_map(|t| &t.steps)
            .map(|s| s.commits)
            .sum()
    }
}

/// Run `job` over the declared tables it selects.
pub async fn run(
    catalog: &dyn Catalog,
    decls: &[TableDecl],
    job: &Job,
    opts: &JobOptions,
) -> JobReport {
    let mut report = JobReport {
        job: job.source.display().to_string(),
        shard: format!("{}/{}", opts.shard.index, opts.shard.count),
        tables: Vec::new(),
    };
    let budget = CommitBudget::new(opts.max_commits_per_minute).share(opts.shard.count);
    for decl in job.select(decls) {
        let mut t = TableReport {
            table: decl.qualified_name(),
            steps: Vec::new(),
            error: None,
        };
        for step in &job.tasks {
            match run_step(catalog, decl, step, opts, &budget).await {
                Ok(s) => t.steps.push(s),
                Err(e) => {
                    tracing::error!(table = %t.table, task = step.name(), error = %e, "maintenance step failed");
                    t.error = Some(format!("{}: {e}", step.name()));
                    break;
                }
            }
        }
        report.tables.push(t);
    }
    report
}

async fn run_step(
    catalog: &dyn Catalog,
    decl: &TableDecl,
    step: &JobTask,
    opts: &JobOptions,
    budget: &CommitBudget,
) -> Result<StepReport> {
    let name = decl.qualified_name();
    let ident = tables::ident(decl)?;
    let retry = RetryPolicy::default();
    let mut out = StepReport {
        task: step.name(),
        lines: Vec::new(),
        commits: 0,
        totals: StepTotals::default(),
        detail: serde_json::Value::Null,
    };
    match step {
        JobTask::Compact { .. } | JobTask::Rollup { .. } | JobTask::Retention {} => {
            let (kind, seal_delay, size) = match step {
                JobTask::Compact {
                    seal_delay,
                    target_file_size,
                } => (TaskKind::Compact, *seal_delay, *target_file_size),
                JobTask::Rollup { target_file_size } => (TaskKind::Rollup, None, *target_file_size),
                _ => (TaskKind::Retention, None, None),
            };
            let size = size.unwrap_or(crate::write::DEFAULT_TARGET_FILE_SIZE);
            let popts = PlanOptions {
                now: opts.now,
                from: None,
                to: None,
                seal_delay: seal_delay.unwrap_or(Duration::from_secs(3600)),
                target_file_size: size as u64,
            };
            let tasks: Vec<Task> = execute::plan_table(catalog, decl, kind, &popts)
                .await?
                .into_iter()
                .filter(|t| opts.shard.owns_task(&name, t))
                .collect();
            out.lines = tasks
                .iter()
                .map(|t| plan::describe(t, size as u64))
                .collect();
            if !opts.dry_run {
                let r =
                    execute::run_plan_within(catalog, &ident, decl, &tasks, size, retry, budget)
                        .await;
                out.commits = r.commits;
                out.totals = r.totals();
                out.detail = serde_json::to_value(&r).unwrap_or_default();
                if r.failed > 0 {
                    return Err(Error::new(
                        ErrorKind::Iceberg,
                        format!(
                            "{} of {} {} tasks failed",
                            r.failed,
                            tasks.len(),
                            kind.as_str()
                        ),
                    ));
                }
            }
        }
        _ if !opts.shard.owns_table(&name) => {
            out.lines.push("(another shard's table)".into());
        }
        JobTask::RewriteManifests { target_size } => {
            let r =
                manifests::rewrite_manifests(catalog, &ident, *target_size, opts.dry_run, retry)
                    .await?;
            out.lines.push(format!(
                "rewrite-manifests {} -> {} manifests",
                r.manifests_before, r.manifests_after
            ));
            out.commits = r.snapshot_id.is_some() as usize;
            out.totals = manifests_totals(&r);
            out.detail = serde_json::to_value(&r).unwrap_or_default();
        }
        JobTask::ExpireSnapshots {
            older_than,
            retain_last,
        } => {
            let older = older_than.unwrap_or(Duration::from_secs(5 * 86_400));
            let eopts = ExpireOptions {
                older_than: opts.now - chrono::Duration::from_std(older).unwrap_or_default(),
                retain_last: retain_last.unwrap_or(10),
                dry_run: opts.dry_run,
            };
            expire::validate(&eopts)?;
            let r = expire::expire(catalog, &ident, &eopts, retry).await?;
            out.lines.push(format!(
                "expire-snapshots: {} snapshots, {} files ({} bytes), {} metadata files",
                r.expired_snapshots.len(),
                r.deleted_files,
                r.deleted_bytes,
                r.deleted_metadata_files
            ));
            out.commits = (!opts.dry_run && !r.expired_snapshots.is_empty()) as usize;
            out.totals = expire_totals(&r, opts.dry_run);
            out.detail = serde_json::to_value(&r).unwrap_or_default();
        }
        JobTask::RemoveOrphans { older_than } => {
            let oopts = OrphanOptions {
                now: opts.now,
                older_than: older_than.unwrap_or(Duration::from_secs(3 * 86_400)),
                force: false,
                dry_run: opts.dry_run,
            };
            let r = orphans::remove_orphans(catalog, &ident, &oopts).await?;
            out.lines.push(format!(
                "remove-orphans: {} orphans, {} bytes",
                r.orphans.len(),
                r.orphan_bytes
            ));
            out.totals = orphan_totals(&r, opts.dry_run);
            out.detail = serde_json::to_value(&r).unwrap_or_default();
        }
    }
    Ok(out)
}

/// A manifest rewrite as run metrics.
pub fn manifests_totals(r: &manifests::RewriteReport) -> StepTotals {
    StepTotals {
        commits: r.snapshot_id.is_some() as u64,
        ..Default::default()
    }
}

/// An expiry as run metrics (a dry run reclaims nothing).
pub fn expire_totals(r: &expire::ExpireReport, dry_run: bool) -> StepTotals {
    StepTotals {
        commits: (!dry_run && !r.expired_snapshots.is_empty()) as u64,
        bytes_reclaimed: if dry_run { 0 } else { r.deleted_bytes as i64 },
        failed_tasks: r.failed_deletes as u64,
        ..Default::default()
    }
}

/// An orphan removal as run metrics (a dry run reclaims nothing).
pub fn orphan_totals(r: &orphans::OrphanReport, dry_run: bool) -> StepTotals {
    StepTotals {
        bytes_reclaimed: if dry_run { 0 } else { r.orphan_bytes as i64 },
        failed_tasks: r.failed_deletes as u64,
        ..Default::default()
    }
}

impl JobReport {
    /// The run metrics of this report, under the job label `job`.
    pub fn run_metrics(&self, run: &mut Run) {
        for t in &self.tables {
            for s in &t.steps {
                run.step(&t.table, s.task, s.totals);
                if s.task == "remove-orphans"
                    && let Some(bytes) = s.detail.get("orphan_bytes").and_then(|b| b.as_u64())
                {
                    run.orphans(&t.table, bytes);
                }
            }
            if let Some(e) = &t.error {
                let step = e.split(':').next().unwrap_or("unknown");
                run.step(
                    &t.table,
                    step,
                    StepTotals {
                        failed_tasks: 1,
                        ..Default::default()
                    },
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_jobs_parse() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs");
        let hourly = Job::load(&root.join("hourly.toml")).unwrap();
        assert_eq!(
            hourly.tasks.iter().map(JobTask::name).collect::<Vec<_>>(),
            ["compact", "rollup"]
        );
        let daily = Job::load(&root.join("daily.toml")).unwrap();
        assert_eq!(
            daily.tasks.iter().map(JobTask::name).collect::<Vec<_>>(),
            [
                "retention",
                "rewrite-manifests",
                "expire-snapshots",
                "remove-orphans"
            ]
        );
    }

    #[test]
    fn bad_jobs_name_the_file_and_problem() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j.toml");
        std::fs::write(
            &p,
            "schedule = \"0 * * * *\"\ntables = [\"*\"]\n[[task]]\nkind = \"vacuum\"\n",
        )
        .unwrap();
        let e = Job::load(&p).unwrap_err().to_string();
        assert!(e.contains("j.toml") && e.contains("vacuum"), "{e}");
        std::fs::write(
            &p,
            "schedule = \"hourly\"\ntables = [\"*\"]\n[[task]]\nkind = \"rollup\"\n",
        )
        .unwrap();
        let e = Job::load(&p).unwrap_err().to_string();
        assert!(e.contains("not a 5-field cron expression"), "{e}");
    }

    #[test]
    fn shards_partition_the_keys() {
        let shards = [
            Shard::parse("0/3").unwrap(),
            Shard::parse("1/3").unwrap(),
            Shard::parse("2/3").unwrap(),
        ];
        for k in 0..200 {
            let key = format!("usage.t{k}");
            assert_eq!(shards.iter().filter(|s| s.owns_table(&key)).count(), 1);
        }
        assert!(Shard::parse("3/3").is_err());
        assert!(Shard::parse("1").is_err());
    }
}
