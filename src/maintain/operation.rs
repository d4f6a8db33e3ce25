//! The maintenance operations, each defined once. An [`Operation`] is one
//! operation with its options (defaults in each options struct's `Default`,
//! which `--help` and job files show and read); [`Operation::run`] plans it
//! on one table, executes it (or, dry, only plans) and returns its typed
//! [`Report`]. `firn compact|rollup|...` maps its flags to an `Operation`
//! and `maintain --job` maps a job file's `[[task]]` to the same one, so
//! both plan and do the same thing for the same table.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

use super::audit::{self, AuditOptions, AuditReport};
use super::expire::{self, ExpireReport, ExpireSnapshotsOptions};
use super::manifests::{self, RewriteManifestsOptions, RewriteReport};
use super::orphans::{self, OrphanReport, RemoveOrphansOptions};
use super::plan::Task;
use super::rejects::RejectsAction;
use super::tier::{self, CompactOptions, RetentionOptions, RollupOptions, TierReport};
use crate::budget::CommitBudget;
use crate::catalog::Catalog;
use crate::clock::{Clock, SystemClock};
use crate::commit::RetryPolicy;
use crate::config::Config;
use crate::error::Result;
use crate::faults::Faults;
use crate::schema::decl::TableDecl;
use crate::telemetry::run::StepTotals;

/// What every operation runs with, set once by the CLI or a job run.
#[derive(Clone)]
pub struct Context<'a> {
    /// The catalog holding the tables.
    pub catalog: &'a dyn Catalog,
    /// The time compaction, rollup and retention plan for (seal delays,
    /// ages); `--now` may move it.
    pub now: DateTime<Utc>,
    /// The clock deletion bounds are measured from (expiry and orphan
    /// cut-offs): always the real one in a deployment, never `--now`, so a
    /// planning time in the future cannot make a running writer's fresh
    /// files look old enough to delete.
    pub clock: Arc<dyn Clock>,
    /// Plan and report only; change nothing.
    pub dry_run: bool,
    /// How commits that lose the compare-and-set are retried.
    pub retry: RetryPolicy,
    /// The catalog's write budget commits spend.
    pub budget: CommitBudget,
    /// The share of the work this run does (`maintain --shard i/n`).
    pub shard: Shard,
    /// Output file size when an operation's options do not set one (the
    /// configuration's, as ingest writes).
    pub target_file_size: u64,
    /// The longest a task may hold the files it wrote before committing them
    /// ([`super::orphans::MAX_UNCOMMITTED`]; shorter only in tests).
    pub max_uncommitted: std::time::Duration,
    /// Partitions merged and written at once (`--jobs`); commits stay one
    /// at a time, in plan order.
    pub jobs: usize,
    /// Injected faults (the gauntlet only; `None` by default).
    pub faults: Option<Arc<Faults>>,
}

/// The default for `--jobs`: the cores this process may use.
pub fn default_jobs() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl std::fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("now", &self.now)
            .field("clock", &self.clock.now())
            .field("dry_run", &self.dry_run)
            .field("retry", &self.retry)
            .field("budget", &self.budget.per_minute())
            .field("shard", &self.shard)
            .field("target_file_size", &self.target_file_size)
            .field("max_uncommitted", &self.max_uncommitted)
            .field("jobs", &self.jobs)
            .finish_non_exhaustive()
    }
}

impl<'a> Context<'a> {
    /// A run planned at `now` on `catalog`: all of the work, committed,
    /// deletion bounds on the system clock, default retries, no write
    /// budget, 128 MiB files.
    pub fn new(catalog: &'a dyn Catalog, now: DateTime<Utc>) -> Self {
        Self {
            catalog,
            now,
            clock: Arc::new(SystemClock),
            dry_run: false,
            retry: RetryPolicy::default(),
            budget: CommitBudget::unlimited(),
            shard: Shard::ALL,
            target_file_size: crate::write::DEFAULT_TARGET_FILE_SIZE as u64,
            max_uncommitted: super::orphans::MAX_UNCOMMITTED,
            jobs: default_jobs(),
            faults: None,
        }
    }

    /// A run as `config` sets it up: its output file size, and a write budget
    /// of `commits_per_minute` (a flag's, then a job file's) or else the
    /// catalog's default (10 a minute on a REST catalog, none on SQL).
    pub fn configured(
        catalog: &'a dyn Catalog,
        config: &Config,
        now: DateTime<Utc>,
        commits_per_minute: Option<u32>,
    ) -> Self {
        Self {
            budget: CommitBudget::new(config.commits_per_minute(commits_per_minute)),
            retry: config.retry,
            target_file_size: config.ingest.target_file_size as u64,
            faults: config.faults.clone(),
            ..Self::new(catalog, now)
        }
    }
}

/// One maintenance operation and its options: a job file's `[[task]]`
/// (`kind = "rollup"` and the options' fields) or a `firn` command's flags.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Operation {
    /// Merge the small files of sealed partitions (`firn compact`).
    Compact(CompactOptions),
    /// Roll aged rows up to a coarser grain (`firn rollup`).
    Rollup(RollupOptions),
    /// Drop partitions past the table's retention (`firn retention`).
    Retention(RetentionOptions),
    /// Cluster manifests by partition (`firn rewrite-manifests`).
    RewriteManifests(RewriteManifestsOptions),
    /// Expire old snapshots and delete what only they reached
    /// (`firn expire-snapshots`).
    ExpireSnapshots(ExpireSnapshotsOptions),
    /// Delete files nothing references (`firn remove-orphans`).
    RemoveOrphans(RemoveOrphansOptions),
    /// Check the table's totals against its history (`firn audit`).
    Audit(AuditOptions),
}

/// The operations by name, for reports, metrics and job files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OperationKind {
    /// `compact`.
    Compact,
    /// `rollup`.
    Rollup,
    /// `retention`.
    Retention,
    /// `rewrite-manifests`.
    RewriteManifests,
    /// `expire-snapshots`.
    ExpireSnapshots,
    /// `remove-orphans`.
    RemoveOrphans,
    /// `audit`.
    Audit,
}

impl OperationKind {
    /// The name of the command, the job task and the run metrics' `step`.
    pub fn as_str(self) -> &'static str {
        match self {
            OperationKind::Compact => "compact",
            OperationKind::Rollup => "rollup",
            OperationKind::Retention => "retention",
            OperationKind::RewriteManifests => "rewrite-manifests",
            OperationKind::ExpireSnapshots => "expire-snapshots",
            OperationKind::RemoveOrphans => "remove-orphans",
            OperationKind::Audit => "audit",
        }
    }

    /// Whether the operation works partition by partition (a sharded job
    /// splits its tasks) rather than on the whole table (a sharded job runs
    /// it on the shard that owns the table).
    pub fn per_partition(self) -> bool {
        matches!(
            self,
            OperationKind::Compact | OperationKind::Rollup | OperationKind::Retention
        )
    }
}

impl Operation {
    /// Which operation this is.
    pub fn kind(&self) -> OperationKind {
        match self {
            Operation::Compact(_) => OperationKind::Compact,
            Operation::Rollup(_) => OperationKind::Rollup,
            Operation::Retention(_) => OperationKind::Retention,
            Operation::RewriteManifests(_) => OperationKind::RewriteManifests,
            Operation::ExpireSnapshots(_) => OperationKind::ExpireSnapshots,
            Operation::RemoveOrphans(_) => OperationKind::RemoveOrphans,
            Operation::Audit(_) => OperationKind::Audit,
        }
    }

    /// Refuse options no run could use, before anything is read.
    pub fn validate(&self) -> Result<()> {
        match self {
            Operation::ExpireSnapshots(o) => o.validate(),
            Operation::RemoveOrphans(o) => o.validate(),
            _ => Ok(()),
        }
    }

    /// Plan and execute (or, with `ctx.dry_run`, only plan) on `decl`'s table.
    pub async fn run(&self, ctx: &Context<'_>, decl: &TableDecl) -> Result<Report> {
        self.validate()?;
        Ok(match self {
            Operation::Compact(o) => Report::Compact(tier::compact(ctx, decl, o).await?),
            Operation::Rollup(o) => Report::Rollup(tier::rollup(ctx, decl, o).await?),
            Operation::Retention(o) => Report::Retention(tier::retention(ctx, decl, o).await?),
            Operation::RewriteManifests(o) => {
                Report::RewriteManifests(manifests::run(ctx, decl, o).await?)
            }
            Operation::ExpireSnapshots(o) => {
                Report::ExpireSnapshots(expire::run(ctx, decl, o).await?)
            }
            Operation::RemoveOrphans(o) => Report::RemoveOrphans(orphans::run(ctx, decl, o).await?),
            Operation::Audit(o) => Report::Audit(audit::run(ctx, decl, o).await?),
        })
    }
}

/// What an operation did (or, dry, would do) on one table.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "operation", rename_all = "kebab-case")]
pub enum Report {
    /// `compact`.
    Compact(TierReport),
    /// `rollup`.
    Rollup(TierReport),
    /// `retention`.
    Retention(TierReport),
    /// `rewrite-manifests`.
    RewriteManifests(RewriteReport),
    /// `expire-snapshots`.
    ExpireSnapshots(ExpireReport),
    /// `remove-orphans`.
    RemoveOrphans(OrphanReport),
    /// `audit`.
    Audit(AuditReport),
}

impl Report {
    /// Which operation reported.
    pub fn kind(&self) -> OperationKind {
        match self {
            Report::Compact(_) => OperationKind::Compact,
            Report::Rollup(_) => OperationKind::Rollup,
            Report::Retention(_) => OperationKind::Retention,
            Report::RewriteManifests(_) => OperationKind::RewriteManifests,
            Report::ExpireSnapshots(_) => OperationKind::ExpireSnapshots,
            Report::RemoveOrphans(_) => OperationKind::RemoveOrphans,
            Report::Audit(_) => OperationKind::Audit,
        }
    }

    /// Commits made.
    pub fn commits(&self) -> usize {
        match self {
            Report::Compact(r) | Report::Rollup(r) | Report::Retention(r) => {
                r.run.commits + r.rejects.as_ref().is_some_and(|j| j.snapshot_id.is_some()) as usize
            }
            Report::RewriteManifests(r) => r.parts().filter(|p| p.snapshot_id.is_some()).count(),
            Report::ExpireSnapshots(r) => r
                .parts()
                .filter(|p| !p.dry_run && !p.expired_snapshots.is_empty())
                .count(),
            Report::RemoveOrphans(_) | Report::Audit(_) => 0,
        }
    }

    /// The report as a step of run metrics (a dry run reclaims nothing).
    pub fn totals(&self) -> StepTotals {
        let commits = self.commits() as u64;
        match self {
            Report::Compact(r) | Report::Rollup(r) | Report::Retention(r) => {
                let mut t = r.run.totals();
                if let Some(j) = r.rejects.as_ref().filter(|j| j.snapshot_id.is_some()) {
                    t.commits += 1;
                    if j.action == RejectsAction::Retention {
                        t.bytes_reclaimed += j.bytes as i64;
                    }
                }
                t
            }
            Report::RewriteManifests(_) | Report::Audit(_) => StepTotals {
                commits,
                ..Default::default()
            },
            Report::ExpireSnapshots(r) => StepTotals {
                commits,
                bytes_reclaimed: if r.dry_run {
                    0
                } else {
                    r.parts().map(|p| p.deleted_bytes as i64).sum()
                },
                failed_tasks: r.parts().map(|p| p.failed_deletes as u64).sum(),
                ..Default::default()
            },
            Report::RemoveOrphans(r) => StepTotals {
                bytes_reclaimed: if r.dry_run {
                    0
                } else {
                    r.parts().map(|p| p.orphan_bytes as i64).sum()
                },
                failed_tasks: r.parts().map(|p| p.failed_deletes as u64).sum(),
                ..Default::default()
            },
        }
    }

    /// Bytes of orphans found (`remove-orphans` only).
    pub fn orphan_bytes(&self) -> Option<u64> {
        match self {
            Report::RemoveOrphans(r) => Some(r.parts().map(|p| p.orphan_bytes).sum()),
            _ => None,
        }
    }

    /// Days the audit found inconsistent (`audit` only).
    pub fn inconsistent_days(&self) -> Option<usize> {
        match self {
            Report::Audit(r) => Some(r.inconsistent_days),
            _ => None,
        }
    }

    /// Why the run must count as failed although the operation finished:
    /// tasks that failed, files that could not be deleted, an audit that
    /// found the totals inconsistent.
    pub fn failure(&self) -> Option<String> {
        match self {
            Report::Compact(r) | Report::Rollup(r) | Report::Retention(r) => (r.run.failed > 0)
                .then(|| {
                    format!(
                        "{} of {} {} tasks failed (see the log)",
                        r.run.failed,
                        r.plan.len(),
                        self.kind().as_str()
                    )
                }),
            Report::RewriteManifests(_) => None,
            Report::ExpireSnapshots(r) => {
                let failed: usize = r.parts().map(|p| p.failed_deletes).sum();
                (failed > 0)
                    .then(|| format!("{failed} files could not be deleted (left as orphans)"))
            }
            Report::RemoveOrphans(r) => {
                let failed: usize = r.parts().map(|p| p.failed_deletes).sum();
                (failed > 0).then(|| format!("{failed} orphans could not be deleted"))
            }
            Report::Audit(r) => r.findings.first().map(|f| {
                format!(
                    "audit of {}: inconsistent ({} finding(s) over {} day(s)); first: {}",
                    r.table,
                    r.findings.len(),
                    r.inconsistent_days,
                    f.message
                )
            }),
        }
    }

    /// What was done (or, dry, found), in one line.
    pub fn summary(&self) -> String {
        match self {
            Report::Compact(r) | Report::Rollup(r) | Report::Retention(r) => {
                let run = &r.run;
                let mut line = if r.dry_run {
                    format!("{} tasks planned, nothing changed", r.plan.len())
                } else {
                    format!(
                        "{} committed in {} commits, {} superseded, {} failed, {} commit retries",
                        run.committed, run.commits, run.superseded, run.failed, run.retries
                    )
                };
                if let Some(j) = &r.rejects {
                    let done = match (j.action, r.dry_run) {
                        (RejectsAction::Retention, true) => " to drop".to_string(),
                        (RejectsAction::Retention, false) => " dropped".to_string(),
                        (RejectsAction::Compaction, true) => " to compact".to_string(),
                        (RejectsAction::Compaction, false) => {
                            format!(" compacted into {}", j.written)
                        }
                    };
                    line.push_str(&format!(
                        "; {}: {} files ({} records) rejected before {}{done}",
                        j.table,
                        j.files,
                        j.records,
                        j.cutoff.to_rfc3339(),
                    ));
                }
                line
            }
            Report::RewriteManifests(r) => joined(
                "rewrite-manifests ",
                r.parts()
                    .map(|p| format!("{} -> {} manifests", p.manifests_before, p.manifests_after)),
            ),
            Report::ExpireSnapshots(r) => joined(
                "expire-snapshots: ",
                r.parts().map(|p| {
                    format!(
                        "{} snapshots, {} files ({} bytes), {} metadata files",
                        p.expired_snapshots.len(),
                        p.deleted_files,
                        p.deleted_bytes,
                        p.deleted_metadata_files
                    )
                }),
            ),
            Report::RemoveOrphans(r) => joined(
                "remove-orphans: ",
                r.parts()
                    .map(|p| format!("{} orphans, {} bytes", p.orphans.len(), p.orphan_bytes)),
            ),
            Report::Audit(r) => format!(
                "{} over {} snapshots, {} data files read, {} days: {}",
                r.mode,
                r.snapshots,
                r.files_read,
                r.days.len(),
                if r.consistent {
                    "consistent".to_string()
                } else {
                    format!("{} finding(s), inconsistent", r.findings.len())
                }
            ),
        }
    }

    /// The report for a terminal: the plan, a line a task (compaction,
    /// rollup, retention), then what was done.
    pub fn lines(&self) -> Vec<String> {
        match self {
            Report::Compact(r) | Report::Rollup(r) | Report::Retention(r) => {
                let mut lines: Vec<String> = r.plan.iter().map(|t| t.describe.clone()).collect();
                if !r.dry_run || r.rejects.is_some() {
                    lines.push(self.summary());
                }
                lines
            }
            _ => vec![self.summary()],
        }
    }
}

/// A table's figures, then its rejects table's after `; rejects: `.
fn joined(what: &str, mut parts: impl Iterator<Item = String>) -> String {
    let mut line = format!("{what}{}", parts.next().unwrap_or_default());
    for p in parts {
        line.push_str("; rejects table: ");
        line.push_str(&p);
    }
    line
}

/// Shard `index` of `count`: `count` runs, each with its own index, cover a
/// job's work exactly once — partition tasks split by table and partition,
/// table operations by table.
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

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn job_tasks_read_into_the_operations_with_their_defaults() {
        let op: Operation = toml::from_str("kind = \"compact\"").unwrap();
        assert_eq!(op, Operation::Compact(CompactOptions::default()));
        let op: Operation = toml::from_str("kind = \"expire-snapshots\"\nretain_last = 3").unwrap();
        assert_eq!(
            op,
            Operation::ExpireSnapshots(ExpireSnapshotsOptions {
                retain_last: 3,
                ..Default::default()
            })
        );
        let e = toml::from_str::<Operation>("kind = \"rollup\"\nseal_delay = \"1h\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("seal_delay"), "{e}");
    }
}
