//! The batch commands (maintenance and backfill): each runs, prints its
//! report, and publishes its run metrics when asked, also when it fails.

use std::sync::Arc;

use anyhow::{Result, bail};

use crate::args::*;
use crate::select;
use firn::budget::CommitBudget;
use firn::clock::Clock;
use firn::config::Config;
use firn::maintain::job::{self, Job};
use firn::maintain::{Context, Operation, Shard, default_jobs};
use firn::schema::decl::TableDecl;
use firn::telemetry::run::{Publish, Run, StepTotals};

/// An audit that found the totals inconsistent (exit status 3).
#[derive(Debug)]
pub(crate) struct Inconsistent(pub(crate) String);

impl std::fmt::Display for Inconsistent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Inconsistent {}

/// Run `body`, then publish the run's metrics (a failure to publish is
/// logged; the command's own outcome decides the exit code).
async fn published(
    job: &str,
    shard: Option<u64>,
    publish: Publish,
    clock: Arc<dyn Clock>,
    body: impl AsyncFnOnce(&mut Run) -> Result<()>,
) -> Result<()> {
    let mut run = Run::start(job, shard, clock);
    let result = body(&mut run).await;
    if publish.is_set()
        && let Err(e) = run.publish(result.is_ok(), &publish).await
    {
        tracing::error!(job, error = %e, "run metrics not published");
    }
    result
}

/// A maintenance command: run its operation on one table, print the
/// report, fail the run when the operation did not finish cleanly.
pub(crate) async fn operate(
    config: &Config,
    decls: &[TableDecl],
    table: &str,
    args: RunArgs,
    op: Operation,
    clock: Arc<dyn Clock>,
) -> Result<()> {
    let kind = op.kind();
    published(
        kind.as_str(),
        None,
        args.publish.publish(),
        clock.clone(),
        async |run| {
            let d = select(decls, table)?;
            op.validate()?;
            let catalog = config.open_catalog().await?;
            let now = args.now.unwrap_or_else(|| clock.now());
            let ctx = Context {
                dry_run: args.dry_run,
                clock: clock.clone(),
                jobs: args.jobs.map_or_else(default_jobs, usize::from),
                ..Context::configured(
                    catalog.as_ref(),
                    config,
                    now,
                    args.budget.max_commits_per_minute,
                )
            };
            let report = op.run(&ctx, d).await?;
            run.step(&d.qualified_name(), kind.as_str(), report.totals());
            if let Some(bytes) = report.orphan_bytes() {
                run.orphans(&d.qualified_name(), bytes);
            }
            if let firn::maintain::Report::Audit(audit) = &report {
                run.audit(&d.qualified_name(), audit.inconsistent_days);
                if args.json {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                } else {
                    print!("{}", firn::maintain::audit::render(audit));
                }
                if let Some(why) = report.failure() {
                    return Err(Inconsistent(why).into());
                }
                return Ok(());
            }
            if args.json || !kind.per_partition() {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else if args.dry_run {
                let lines = report.lines();
                println!(
                    "plan for {} at {} ({} tasks, nothing changed):",
                    d.qualified_name(),
                    now.to_rfc3339(),
                    lines.len()
                );
                for l in lines {
                    println!("  {l}");
                }
            } else {
                println!(
                    "{} {}: {}",
                    kind.as_str(),
                    d.qualified_name(),
                    report.summary()
                );
            }
            if let Some(why) = report.failure() {
                bail!(why);
            }
            Ok(())
        },
    )
    .await
}

/// `maintain --job`: the job file's tasks over its tables.
pub(crate) async fn maintain_job(
    config: &Config,
    decls: &[TableDecl],
    args: MaintainJobArgs,
    clock: Arc<dyn Clock>,
) -> Result<()> {
    let name = args
        .job
        .file_stem()
        .map_or("maintain".to_string(), |s| s.to_string_lossy().into_owned());
    let shard = args.shard.filter(|s| s.count > 1).map(|s| s.index);
    let (job_file, args, shard_arg) = (args.job, args.run, args.shard);
    published(
        &name,
        shard,
        args.publish.publish(),
        clock.clone(),
        async |run| {
            let job = Job::load(&job_file)?;
            let catalog = config.open_catalog().await?;
            let now = args.now.unwrap_or_else(|| clock.now());
            let per_minute = args
                .budget
                .max_commits_per_minute
                .or(job.max_commits_per_minute);
            let ctx = Context {
                dry_run: args.dry_run,
                clock: clock.clone(),
                shard: shard_arg.unwrap_or(Shard::ALL),
                jobs: args.jobs.map_or_else(default_jobs, usize::from),
                ..Context::configured(catalog.as_ref(), config, now, per_minute)
            };
            let report = job::run(&ctx, decls, &job).await;
            report.run_metrics(run);
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "job {} shard {}{}:",
                    report.job,
                    report.shard,
                    if args.dry_run { " (plan only)" } else { "" }
                );
                for t in &report.tables {
                    println!("  {}", t.table);
                    for s in &t.steps {
                        println!("    {} ({} commits)", s.task.as_str(), s.commits);
                        for l in &s.lines {
                            println!("      {l}");
                        }
                    }
                    if let Some(f) = &t.error {
                        println!("    FAILED {}: {}", f.task.as_str(), f.error);
                    }
                }
            }
            if !report.ok() {
                let failed = report.tables.iter().filter(|t| t.error.is_some()).count();
                bail!("{failed} of {} tables failed", report.tables.len());
            }
            Ok(())
        },
    )
    .await
}

pub(crate) async fn backfill(
    config: &Config,
    decls: &[TableDecl],
    args: BackfillArgs,
    clock: Arc<dyn Clock>,
) -> Result<()> {
    let publish = args.publish.publish();
    published("backfill", None, publish, clock.clone(), async |run| {
        let d = select(decls, &args.table)?;
        let catalog = config.open_catalog().await?;
        let opts = firn::backfill::BackfillOptions {
            inputs: args.inputs,
            now: args.now.unwrap_or_else(|| clock.now()),
            future_skew: config.ingest.future_skew,
            chunk_events: args.chunk_events,
            chunk_rows: args.chunk_rows,
            force: args.force,
            dry_run: args.dry_run,
            target_file_size: config.ingest.target_file_size,
            kafka: if args.from_kafka {
                let start = match (args.start_offsets, args.start_time, args.end_time) {
                    (Some(o), _, _) => firn::backfill::kafka::Start::Offsets(o),
                    (None, Some(s), Some(e)) => firn::backfill::kafka::Start::Time(s, e),
                    (None, None, None) if args.replace => firn::backfill::kafka::Start::Earliest,
                    _ => bail!(
                        "--from-kafka needs --start-offsets, or --start-time and --end-time \
                         (with --replace, neither: every partition from its earliest offset)"
                    ),
                };
                Some(firn::backfill::kafka::KafkaRange {
                    brokers: config.ingest.brokers.clone(),
                    topic: args.topic.clone().unwrap_or_default(),
                    start,
                    properties: config.ingest.kafka.clone(),
                })
            } else {
                None
            },
            replace: if args.replace {
                args.from.zip(args.to)
            } else {
                None
            },
            seal_delay: *args.seal_delay,
            budget: CommitBudget::new(
                config.commits_per_minute(args.budget.max_commits_per_minute),
            ),
            retry: config.retry,
            stage: args.stage,
        };
        let progress = std::sync::Arc::new(crate::progress::ProgressDisplay::new());
        let display = progress.clone();
        let report = firn::backfill::run(
            catalog.as_ref(),
            d,
            &opts,
            std::sync::Arc::new(move |p| display.update(p)),
        )
        .await?;
        progress.finish();
        run.step(
            &d.qualified_name(),
            if opts.replace.is_some() {
                "backfill-replace"
            } else {
                "backfill"
            },
            StepTotals {
                partitions: report.partitions_by_grain.values().sum::<usize>() as u64,
                commits: report.chunks_committed,
                rows_in: report.events,
                rows_out: report.rows_by_grain.values().sum(),
                bytes_reclaimed: 0,
                failed_tasks: 0,
            },
        );
        println!("{}", serde_json::to_string_pretty(&report)?);
        Ok(())
    })
    .await
}
