//! `firn maintain --job jobs/NAME.toml`: the tables (names or globs) and the
//! tasks, in order, that one cron entry runs. `--shard i/n` splits the work
//! deterministically — partition tasks by table and partition, table tasks by
//! table — so that n parallel runs cover it exactly once. One table's failure
//! is reported and does not stop the others.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::operation::{Context, Operation, OperationKind, Report};
use crate::error::{Error, ErrorKind, Result};
use crate::schema::decl::TableDecl;
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
    task: Vec<Operation>,
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
    /// Steps, in order: each a maintenance operation with its options.
    pub tasks: Vec<Operation>,
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

/// One step on one table.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    /// The operation.
    pub task: OperationKind,
    /// The plan (dry run) or what was done, a line each.
    pub lines: Vec<String>,
    /// Commits made.
    pub commits: usize,
    /// What the step did, for run metrics.
    pub totals: StepTotals,
    /// The operation's report (`None`: another shard's table).
    pub report: Option<Report>,
}

/// The step that stopped a table's run, and why.
#[derive(Debug, Clone, Serialize)]
pub struct StepFailure {
    /// The operation that failed.
    pub task: OperationKind,
    /// Why.
    pub error: String,
}

/// One table's run.
#[derive(Debug, Clone, Serialize)]
pub struct TableReport {
    /// `namespace.name`.
    pub table: String,
    /// Steps run (up to a failure).
    pub steps: Vec<StepReport>,
    /// The failure that stopped this table's steps.
    pub error: Option<StepFailure>,
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

    /// The run metrics of this report, under the job label `job`.
    pub fn run_metrics(&self, run: &mut Run) {
        for t in &self.tables {
            for s in &t.steps {
                run.step(&t.table, s.task.as_str(), s.totals);
                if let Some(bytes) = s.report.as_ref().and_then(Report::orphan_bytes) {
                    run.orphans(&t.table, bytes);
                }
                if let Some(days) = s.report.as_ref().and_then(Report::inconsistent_days) {
                    run.audit(&t.table, days);
                }
            }
            if let Some(f) = &t.error {
                run.step(
                    &t.table,
                    f.task.as_str(),
                    StepTotals {
                        failed_tasks: 1,
                        ..Default::default()
                    },
                );
            }
        }
    }
}

/// Run `job` over the declared tables it selects. `ctx` says when, how and
/// which shard; its write budget is shared by the job's shards.
pub async fn run(ctx: &Context<'_>, decls: &[TableDecl], job: &Job) -> JobReport {
    let mut report = JobReport {
        job: job.source.display().to_string(),
        shard: ctx.shard.to_string(),
        tables: Vec::new(),
    };
    let ctx = Context {
        budget: ctx.budget.share(ctx.shard.count),
        ..ctx.clone()
    };
    for decl in job.select(decls) {
        let mut t = TableReport {
            table: decl.qualified_name(),
            steps: Vec::new(),
            error: None,
        };
        for op in &job.tasks {
            match run_step(&ctx, decl, op).await {
                Ok(s) => {
                    // An inconsistent audit is reported (its metric too)
                    // and fails the table's run.
                    let failure = s.report.as_ref().and_then(Report::failure);
                    t.steps.push(s);
                    if let Some(why) = failure {
                        t.error = Some(StepFailure {
                            task: op.kind(),
                            error: why,
                        });
                        break;
                    }
                }
                Err(e) => {
                    tracing::error!(table = %t.table, task = op.kind().as_str(), error = %e, "maintenance step failed");
                    t.error = Some(StepFailure {
                        task: op.kind(),
                        error: e.to_string(),
                    });
                    break;
                }
            }
        }
        report.tables.push(t);
    }
    report
}

/// One operation on one table: this shard's share of it, its report, and an
/// error when the operation finished with failures (tasks, deletes).
async fn run_step(ctx: &Context<'_>, decl: &TableDecl, op: &Operation) -> Result<StepReport> {
    let kind = op.kind();
    if !kind.per_partition() && !ctx.shard.owns_table(&decl.qualified_name()) {
        return Ok(StepReport {
            task: kind,
            lines: vec!["(another shard's table)".into()],
            commits: 0,
            totals: StepTotals::default(),
            report: None,
        });
    }
    let report = op.run(ctx, decl).await?;
    if kind != OperationKind::Audit
        && let Some(why) = report.failure()
    {
        return Err(Error::new(ErrorKind::Iceberg, why));
    }
    Ok(StepReport {
        task: kind,
        lines: report.lines(),
        commits: report.commits(),
        totals: report.totals(),
        report: Some(report),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_jobs_parse() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs");
        let hourly = Job::load(&root.join("hourly.toml")).unwrap();
        assert_eq!(
            hourly
                .tasks
                .iter()
                .map(|t| t.kind().as_str())
                .collect::<Vec<_>>(),
            ["compact", "rollup"]
        );
        let daily = Job::load(&root.join("daily.toml")).unwrap();
        assert_eq!(
            daily
                .tasks
                .iter()
                .map(|t| t.kind().as_str())
                .collect::<Vec<_>>(),
            [
                "retention",
                "rewrite-manifests",
                "expire-snapshots",
                "remove-orphans",
                "audit"
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
}
