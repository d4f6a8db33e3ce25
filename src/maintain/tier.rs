//! Compaction, rollup and retention: the operations that rewrite or drop
//! partitions. Each has its options here (defaults in `Default`, shown by
//! `--help` and read from job files); all three plan the same table state
//! ([`execute::plan_table`]), keep a sharded job's share of the tasks, and
//! execute within the catalog's write budget ([`execute::run`]).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::execute::{self, RunReport};
use super::operation::Context;
use super::plan::{self, PlanOptions, Task, TaskKind};
use super::rejects::{self, RejectsUpkeep};
use crate::clock::{Span, parse_time};
use crate::error::Result;
use crate::schema::decl::TableDecl;

/// The part of the table an operation looks at (command line only; a job
/// always plans the whole table).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::Args)]
pub struct Range {
    /// Only partitions that end after this time (RFC 3339 or YYYY-MM-DD).
    #[arg(long, value_parser = parse_time)]
    pub from: Option<DateTime<Utc>>,
    /// Only partitions that start before this time (RFC 3339 or YYYY-MM-DD).
    #[arg(long, value_parser = parse_time)]
    pub to: Option<DateTime<Utc>>,
}

/// `firn compact`: merge the small files of sealed partitions.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct CompactOptions {
    /// A partition is sealed (compactable) this long after it ends, so live
    /// ingest is never raced.
    #[arg(long, env = "FIRN_SEAL_DELAY", default_value_t = CompactOptions::default().seal_delay)]
    pub seal_delay: Span,
    /// Target size of output files in bytes (default: the configuration's
    /// target_file_size, 128 MiB).
    #[arg(long, env = "FIRN_TARGET_FILE_SIZE")]
    pub target_file_size: Option<u64>,
    #[command(flatten)]
    #[serde(skip)]
    #[allow(missing_docs)]
    pub range: Range,
}

impl Default for CompactOptions {
    fn default() -> Self {
        Self {
            seal_delay: Span::from_secs(3600),
            target_file_size: None,
            range: Range::default(),
        }
    }
}

/// `firn rollup`: re-aggregate aged rows into the coarser grain the table's
/// policy gives their age.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct RollupOptions {
    /// Target size of output files in bytes (default: the configuration's
    /// target_file_size, 128 MiB).
    #[arg(long, env = "FIRN_TARGET_FILE_SIZE")]
    pub target_file_size: Option<u64>,
    #[command(flatten)]
    #[serde(skip)]
    #[allow(missing_docs)]
    pub range: Range,
}

/// `firn retention`: drop partitions wholly older than the table's retention.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionOptions {
    #[command(flatten)]
    #[serde(skip)]
    #[allow(missing_docs)]
    pub range: Range,
}

/// One planned task, as a dry run shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedTask {
    /// What it does.
    pub kind: TaskKind,
    /// The grain it writes (none for retention).
    pub grain: Option<&'static str>,
    /// Start of the partition it writes, or of the oldest one it drops.
    pub start: DateTime<Utc>,
    /// Files it reads and removes.
    pub files_in: usize,
    /// Rows in them.
    pub rows_in: u64,
    /// Bytes in them.
    pub bytes_in: u64,
    /// The task in one line (more for retention: a line per partition).
    pub describe: String,
}

impl PlannedTask {
    fn of(task: &Task, target_file_size: u64) -> Self {
        Self {
            kind: task.kind,
            grain: task.target.map(|(g, _)| g.as_str()),
            start: DateTime::from_timestamp_micros(task.start()).unwrap_or_default(),
            files_in: task.inputs.len(),
            rows_in: task.rows(),
            bytes_in: task.bytes(),
            describe: plan::describe(task, target_file_size),
        }
    }
}

/// What compaction, rollup or retention planned and did on one table.
#[derive(Debug, Clone, Serialize)]
pub struct TierReport {
    /// `namespace.name`.
    pub table: String,
    /// The time planned for.
    pub now: DateTime<Utc>,
    /// Whether only the plan was made.
    pub dry_run: bool,
    /// The tasks, in order (this shard's share in a sharded job).
    pub plan: Vec<PlannedTask>,
    /// What executing them did (empty when dry).
    #[serde(flatten)]
    pub run: RunReport,
    /// Retention: what aged out of the table's rejects table; compaction:
    /// what was rewritten there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejects: Option<RejectsUpkeep>,
}

/// Plan and run `firn compact` on `decl`'s table.
pub async fn compact(
    ctx: &Context<'_>,
    decl: &TableDecl,
    o: &CompactOptions,
) -> Result<TierReport> {
    let opts = plan_options(ctx, o.range, *o.seal_delay, o.target_file_size);
    let mut report = tier(ctx, decl, TaskKind::Compact, &opts).await?;
    if ctx.shard.owns_table(&report.table) && o.range == Range::default() {
        report.rejects =
            rejects::compaction(ctx, decl, *o.seal_delay, opts.target_file_size).await?;
    }
    Ok(report)
}

/// Plan and run `firn rollup` on `decl`'s table.
pub async fn rollup(ctx: &Context<'_>, decl: &TableDecl, o: &RollupOptions) -> Result<TierReport> {
    let opts = plan_options(ctx, o.range, Duration::ZERO, o.target_file_size);
    tier(ctx, decl, TaskKind::Rollup, &opts).await
}

/// Plan and run `firn retention` on `decl`'s table.
pub async fn retention(
    ctx: &Context<'_>,
    decl: &TableDecl,
    o: &RetentionOptions,
) -> Result<TierReport> {
    let opts = plan_options(ctx, o.range, Duration::ZERO, None);
    let mut report = tier(ctx, decl, TaskKind::Retention, &opts).await?;
    if ctx.shard.owns_table(&report.table) {
        report.rejects = rejects::retention(ctx, decl).await?;
    }
    Ok(report)
}

/// The planners' options (the seal delay is read by compaction only).
fn plan_options(
    ctx: &Context<'_>,
    range: Range,
    seal_delay: Duration,
    target_file_size: Option<u64>,
) -> PlanOptions {
    PlanOptions {
        now: ctx.now,
        from: range.from,
        to: range.to,
        seal_delay,
        target_file_size: target_file_size.unwrap_or(ctx.target_file_size),
    }
}

async fn tier(
    ctx: &Context<'_>,
    decl: &TableDecl,
    kind: TaskKind,
    opts: &PlanOptions,
) -> Result<TierReport> {
    let name = decl.qualified_name();
    let tasks: Vec<Task> = execute::plan_table(ctx.catalog, decl, kind, opts)
        .await?
        .into_iter()
        .filter(|t| ctx.shard.owns_task(&name, t))
        .collect();
    let mut report = TierReport {
        table: name,
        now: ctx.now,
        dry_run: ctx.dry_run,
        plan: tasks
            .iter()
            .map(|t| PlannedTask::of(t, opts.target_file_size))
            .collect(),
        run: RunReport::default(),
        rejects: None,
    };
    if !ctx.dry_run {
        report.run = execute::run(ctx, decl, &tasks, opts.target_file_size as usize).await?;
    }
    Ok(report)
}
