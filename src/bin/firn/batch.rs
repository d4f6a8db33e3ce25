//! The batch commands (maintenance and backfill): each runs, prints its
//! report, and publishes its run metrics when asked, also when it fails.

use std::sync::Arc;

use anyhow::{Result, bail};

use crate::args::*;
use crate::select;
use firn::budget::CommitBudget;
use firn::clock::Clock;
use firn::commit::RetryPolicy;
use firn::config::Config;
use firn::maintain::job::{self, Job, JobOptions, Shard};
use firn::maintain::{self, PlanOptions, TaskKind, plan};
use firn::schema::decl::TableDecl;
use firn::tables;
use firn::telemetry::run::{Publish, Run, StepTotals};

/// Run `body`, then publish the run's metrics (a failure to publish is
/// logged; the command's own outcome decides the exit code).
async fn published(
    job: &str,
    shard: Option<u64>,
    publish: Publish,
    body: impl AsyncFnOnce(&mut Run) -> Result<()>,
) -> Result<()> {
    let mut run = Run::start(job, shard);
    let result = body(&mut run).await;
    if publish.is_set()
        && let Err(e) = run.publish(result.is_ok(), &publish).await
    {
        tracing::error!(job, error = %e, "run metrics not published");
    }
    result
}

/// compact / rollup / retention: plan, print or execute, report.
pub(crate) async fn tier(
    config: &Config,
    decls: &[TableDecl],
    kind: TaskKind,
    args: MaintainArgs,
    clock: Arc<dyn Clock>,
) -> Result<()> {
    let publish = args.publish.publish();
    published(kind.as_str(), None, publish, async |run| {
        let d = select(decls, &args.table)?;
        let target_file_size = args
            .target_file_size
            .unwrap_or(config.ingest.target_file_size);
        let opts = PlanOptions {
            now: args.now.unwrap_or_else(|| clock.now()),
            from: args.from,
            to: args.to,
            seal_delay: args.seal_delay,
            target_file_size: target_file_size as u64,
        };
        let catalog = config.open_catalog().await?;
        let ident = tables::ident(d)?;
        let tasks = maintain::execute::plan_table(catalog.as_ref(), d, kind, &opts).await?;
        if args.dry_run {
            println!(
                "plan for {} at {} ({} tasks, nothing changed):",
                d.qualified_name(),
                opts.now.to_rfc3339(),
                tasks.len()
            );
            for t in &tasks {
                println!("  {}", plan::describe(t, opts.target_file_size));
            }
            return Ok(());
        }
        let budget = CommitBudget::new(args.budget.per_minute(config, None));
        let report = maintain::execute::run_plan_within(
            catalog.as_ref(),
            &ident,
            d,
            &tasks,
            target_file_size,
            RetryPolicy::default(),
            &budget,
        )
        .await;
        run.step(&d.qualified_name(), kind.as_str(), report.totals());
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            println!(
                "{} {}: {} committed in {} commits, {} superseded, {} failed, {} commit retries",
                kind.as_str(),
                d.qualified_name(),
                report.committed,
                report.commits,
                report.superseded,
                report.failed,
                report.retries
            );
        }
        if report.failed > 0 {
            bail!(
                "{} of {} tasks failed (see the log)",
                report.failed,
                tasks.len()
            );
        }
        Ok(())
    })
    .await
}

pub(crate) async fn rewrite_manifests(
    config: &Config,
    decls: &[TableDecl],
    args: RewriteArgs,
) -> Result<()> {
    published(
        "rewrite-manifests",
        None,
        args.publish.publish(),
        async |run| {
            let d = select(decls, &args.table)?;
            let catalog = config.open_catalog().await?;
            let r = maintain::manifests::rewrite_manifests(
                catalog.as_ref(),
                &tables::ident(d)?,
                args.target_size,
                args.dry_run,
                RetryPolicy::default(),
            )
            .await?;
            run.step(
                &d.qualified_name(),
                "rewrite-manifests",
                job::manifests_totals(&r),
            );
            println!("{}", serde_json::to_string_pretty(&r)?);
            Ok(())
        },
    )
    .await
}

pub(crate) async fn expire_snapshots(
    config: &Config,
    decls: &[TableDecl],
    args: ExpireArgs,
    clock: Arc<dyn Clock>,
) -> Result<()> {
    published(
        "expire-snapshots",
        None,
        args.publish.publish(),
        async |run| {
            let d = select(decls, &args.table)?;
            let catalog = config.open_catalog().await?;
            let opts = maintain::expire::ExpireOptions {
                older_than: clock.now() - chrono::Duration::from_std(args.older_than)?,
                retain_last: args.retain_last,
                dry_run: args.dry_run,
            };
            maintain::expire::validate(&opts)?;
            let refs = maintain::expire::RefOptions {
                now: clock.now(),
                expire_refs: args.expire_refs,
            };
            let r = maintain::expire::expire_with_refs(
                catalog.as_ref(),
                &tables::ident(d)?,
                &opts,
                &refs,
                RetryPolicy::default(),
            )
            .await?;
            run.step(
                &d.qualified_name(),
                "expire-snapshots",
                job::expire_totals(&r, args.dry_run),
            );
            println!("{}", serde_json::to_string_pretty(&r)?);
            if r.failed_deletes > 0 {
                bail!(
                    "{} files could not be deleted (left as orphans)",
                    r.failed_deletes
                );
            }
            Ok(())
        },
    )
    .await
}

pub(crate) async fn remove_orphans(
    config: &Config,
    decls: &[TableDecl],
    args: OrphanArgs,
    clock: Arc<dyn Clock>,
) -> Result<()> {
    published(
        "remove-orphans",
        None,
        args.publish.publish(),
        async |run| {
            let d = select(decls, &args.table)?;
            let catalog = config.open_catalog().await?;
            let opts = maintain::orphans::OrphanOptions {
                now: clock.now(),
                older_than: args.older_than,
                force: args.force,
                dry_run: args.dry_run,
            };
            let r = maintain::orphans::remove_orphans(catalog.as_ref(), &tables::ident(d)?, &opts)
                .await?;
            run.step(
                &d.qualified_name(),
                "remove-orphans",
                job::orphan_totals(&r, args.dry_run),
            );
            run.orphans(&d.qualified_name(), r.orphan_bytes);
            println!("{}", serde_json::to_string_pretty(&r)?);
            if r.failed_deletes > 0 {
                bail!("{} orphans could not be deleted", r.failed_deletes);
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
    published(&name, shard, args.publish.publish(), async |run| {
        let job = Job::load(&args.job)?;
        let catalog = config.open_catalog().await?;
        let opts = JobOptions {
            now: args.now.unwrap_or_else(|| clock.now()),
            shard: args.shard.unwrap_or(Shard::ALL),
            dry_run: args.dry_run,
            max_commits_per_minute: args.budget.per_minute(config, job.max_commits_per_minute),
        };
        let report = job::run(catalog.as_ref(), decls, &job, &opts).await;
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
                    println!("    {} ({} commits)", s.task, s.commits);
                    for l in &s.lines {
                        println!("      {l}");
                    }
                }
                if let Some(e) = &t.error {
                    println!("    FAILED {e}");
                }
            }
        }
        if !report.ok() {
            let failed = report.tables.iter().filter(|t| t.error.is_some()).count();
            bail!("{failed} of {} tables failed", report.tables.len());
        }
        Ok(())
    })
    .await
}

pub(crate) async fn backfill(
    config: &Config,
    decls: &[TableDecl],
    args: BackfillArgs,
    clock: Arc<dyn Clock>,
) -> Result<()> {
    let publish = args.publish.publish();
    published("backfill", None, publish, async |run| {
        let d = select(decls, &args.table)?;
        let catalog = config.open_catalog().await?;
        let opts = firn::backfill::BackfillOptions {
            inputs: args.inputs,
            now: args.now.unwrap_or_else(|| clock.now()),
            future_skew: config.ingest.future_skew,
            chunk_events: args.chunk_events,
            force: args.force,
            dry_run: args.dry_run,
            target_file_size: config.ingest.target_file_size,
            kafka: if args.from_kafka {
                let start = match (args.start_offsets, args.start_time, args.end_time) {
                    (Some(o), _, _) => firn::backfill::kafka::Start::Offsets(o),
                    (None, Some(s), Some(e)) => firn::backfill::kafka::Start::Time(s, e),
                    _ => bail!("--from-kafka needs --start-offsets or --start-time and --end-time"),
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
            budget: CommitBudget::new(args.budget.per_minute(config, None)),
        };
        let progress = crate::progress::ProgressDisplay::new();
        let report =
            firn::backfill::run(catalog.as_ref(), d, &opts, &|p| progress.update(p)).await?;
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
