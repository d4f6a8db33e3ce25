//! The `firn` command: parses the command line, sets up logging, and calls
//! the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};

use clap::{Args, Parser, Subcommand, ValueEnum};
mod args;
mod batch;
mod progress;

use args::*;

/// mimalloc: the ingest path allocates per key and frees per flush, which
/// glibc's malloc serves at a third less throughput. Built as its 2.x line
/// without transparent huge pages (Cargo.toml): it returns freed pages
/// within milliseconds rather than a second, and never holds a whole 2 MiB
/// page for a few live blocks, which keeps a worker under its memory bound.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use firn::clock::{Clock, SystemClock};
use firn::config::{Config, Overrides};
use firn::maintain::Operation;
use firn::maintain::expire::ExpireSnapshotsOptions;
use firn::maintain::manifests::RewriteManifestsOptions;
use firn::maintain::orphans::RemoveOrphansOptions;
use firn::maintain::tier::{CompactOptions, RetentionOptions, RollupOptions};
use firn::schema::decl::{self, TableDecl};
use firn::telemetry::IngestMetrics;
use firn::{ingest, produce, status, tables};

/// firn turns a Kafka stream of usage events into an Apache Iceberg lake that
/// stays exact, cheap and fast as it ages.
///
/// Tables are declared in schemas/*.toml. With no configuration, firn uses an
/// embedded default: a SQLite catalog at firn-data/catalog.db, a warehouse in
/// firn-data/warehouse, and Kafka at 127.0.0.1:9092. Every flag below also
/// reads the FIRN_* variable it names. Kafka client (librdkafka)
/// properties come from firn.toml's [kafka.properties] and from
/// FIRN_KAFKA_<NAME> variables (FIRN_KAFKA_SASL_PASSWORD sets sasl.password).
#[derive(Debug, Parser)]
#[command(name = "firn", version, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct Global {
    /// Configuration file (default: ./firn.toml if present).
    #[arg(long, env = "FIRN_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Directory of table declarations (default: ./schemas).
    #[arg(long, env = "FIRN_SCHEMAS", global = true)]
    schemas: Option<PathBuf>,
    /// Catalog name within the catalog database (default: firn).
    #[arg(long, env = "FIRN_CATALOG_NAME", global = true)]
    catalog_name: Option<String>,
    /// Catalog type: sql (SQLite, PostgreSQL) or rest (credentials from
    /// FIRN_CATALOG_CREDENTIAL=id:secret or FIRN_CATALOG_TOKEN, never flags).
    #[arg(long, env = "FIRN_CATALOG_TYPE", global = true)]
    catalog_type: Option<String>,
    /// Catalog: sqlite://PATH?mode=rwc or postgres://USER@HOST/DB, or a REST catalog's base URI.
    #[arg(long, env = "FIRN_CATALOG_URI", global = true)]
    catalog_uri: Option<String>,
    /// Warehouse: a local path, file:///PATH, or s3://BUCKET/PREFIX.
    #[arg(long, env = "FIRN_WAREHOUSE", global = true)]
    warehouse: Option<String>,
    /// Kafka bootstrap servers.
    #[arg(long, env = "FIRN_BROKERS", global = true)]
    brokers: Option<String>,
    /// Consumer group of the ingest deployment (its offsets live in the table).
    #[arg(long, env = "FIRN_GROUP", global = true)]
    group: Option<String>,
    /// Log format: text on a terminal, json for log pipelines.
    #[arg(long, env = "FIRN_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create or evolve the Iceberg tables declared in schemas/.
    Tables {
        #[command(subcommand)]
        command: TablesCommand,
    },
    /// Consume the declared topics as a consumer-group member and commit
    /// minute rows to the tables, exactly once. Stops cleanly on SIGTERM or
    /// SIGINT after committing what it buffered.
    Ingest(IngestArgs),
    /// Write generated events for a declared table to its topic and print the
    /// exact totals produced (JSON).
    Produce(ProduceArgs),
    /// Merge the small files of sealed partitions into files of the target
    /// size, collapsing rows with the same key and bucket. One replace commit
    /// per partition (per group of partitions past --max-commits-per-minute).
    Compact(OperationArgs<CompactOptions>),
    /// Roll aged rows up as the table's policy says: minute rows into hour
    /// rows (day partitions), hour rows into day rows (month partitions),
    /// merged with the rows already there. One replace commit per target
    /// partition (per group of partitions past --max-commits-per-minute).
    Rollup(OperationArgs<RollupOptions>),
    /// Drop partitions wholly older than the table's retention, in one delete
    /// commit.
    Retention(OperationArgs<RetentionOptions>),
    /// Cluster small manifests into manifests holding whole partitions (one
    /// replace commit, no data file changes).
    RewriteManifests(OperationArgs<RewriteManifestsOptions>),
    /// Expire old snapshots, then delete the manifest lists, manifests and
    /// data files only they reached, and metadata files past the table's
    /// write.metadata.previous-versions-max.
    ExpireSnapshots(OperationArgs<ExpireSnapshotsOptions>),
    /// Delete files under the table's location that no snapshot or metadata
    /// file references and that are older than --older-than.
    RemoveOrphans(OperationArgs<RemoveOrphansOptions>),
    /// Check the table's totals against its history: every firn compaction
    /// and rollup conserved each day's totals, every firn commit's summary
    /// states what its files hold, every other engine's commit either
    /// conserved totals or is reported, and each day's totals now equal
    /// the running sum of ingest and backfill additions less retention and
    /// replace removals. Reads the rows (ts and measures), not statistics.
    /// Exits 0 when consistent, 3 naming the first inconsistent snapshot,
    /// day and measure (1 on error).
    Audit(OperationArgs<firn::maintain::audit::AuditOptions>),
    /// Run a maintenance job file (tables and tasks in order), e.g. from cron.
    Maintain(MaintainJobArgs),
    /// Load events from files (NDJSON plain/.gz/.zst or Parquet; paths,
    /// globs or URLs) or a Kafka range into a table, each row at the grain
    /// its age calls for, in resumable chunks; or re-compute a range with
    /// --replace. A finished backfill of the same inputs is refused unless
    /// --force.
    Backfill(BackfillArgs),
    /// Apply a staged backfill (`backfill --stage`) to main in one commit:
    /// a fast-forward when main has not moved since it was staged,
    /// otherwise its files re-applied on main's current files (refused,
    /// main unchanged, when main changed what it replaces). The branch is
    /// removed.
    Publish(StagedArgs),
    /// Drop a staged backfill's branch and delete the files only it holds.
    Discard(StagedArgs),
    /// The operator's view of each table: last commit age, snapshots,
    /// manifests, files per grain, small files, partitions waiting for
    /// compaction, rollup or retention, consumer lag, orphan bytes. Exits 2
    /// when a table breaks a threshold of its declaration's [health]
    /// section (0 healthy, 1 error), for alerting from cron.
    Status(StatusArgs),
    /// List every metric firn exports (ingest's /metrics and batch run
    /// metrics) with its type, labels and meaning.
    Metrics(MetricsArgs),
}

#[derive(Debug, Subcommand)]
enum TablesCommand {
    /// Create missing tables and add declared columns to existing ones.
    Sync,
    /// Validate the declarations without touching the catalog.
    Check,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown requested");
}

fn select<'a>(decls: &'a [TableDecl], name: &str) -> Result<&'a TableDecl> {
    decls
        .iter()
        .find(|d| d.qualified_name() == name)
        .with_context(|| {
            let known: Vec<_> = decls.iter().map(|d| d.qualified_name()).collect();
            format!("no declared table {name} (declared: {})", known.join(", "))
        })
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.global.log_format);
    match run(cli).await {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        Ok(Outcome::Unhealthy(tables)) => {
            eprintln!("unhealthy: {tables}");
            ExitCode::from(2)
        }
        Err(e) if e.downcast_ref::<batch::Inconsistent>().is_some() => {
            eprintln!("inconsistent: {e}");
            ExitCode::from(3)
        }
        Err(e) => {
            // The chain holds other libraries' messages too: mask them alike.
            eprintln!("error: {}", firn::redact::credentials(&chain(&e)));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes, each once: firn's errors show their cause in
/// their own message, so a cause the message before it already ends with is
/// not repeated.
fn chain(e: &anyhow::Error) -> String {
    let mut shown = String::new();
    for cause in e.chain() {
        let message = cause.to_string();
        if shown.ends_with(&message) {
            continue;
        }
        if !shown.is_empty() {
            shown.push_str(": ");
        }
        shown.push_str(&message);
    }
    shown
}

/// How a command ended, when it did not fail.
enum Outcome {
    Done,
    /// `status` found tables breaking their health thresholds.
    Unhealthy(String),
}

async fn run(cli: Cli) -> Result<Outcome> {
    let g = &cli.global;
    let overrides = Overrides {
        schemas: g.schemas.clone(),
        catalog_name: g.catalog_name.clone(),
        catalog_uri: g.catalog_uri.clone(),
        catalog_type: g.catalog_type.clone(),
        catalog_credential: None,
        storage: Default::default(),
        warehouse: g.warehouse.clone(),
        brokers: g.brokers.clone(),
        group: g.group.clone(),
        kafka_properties: firn::config::kafka_properties_from_env(std::env::vars()),
    };
    let config = Config::load(g.config.as_deref(), &overrides)?;
    let decls = decl::load_dir(&config.schemas)?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let operate = async |table: String, run: RunArgs, op: Operation| {
        batch::operate(&config, &decls, &table, run, op, clock.clone()).await
    };

    match cli.command {
        Command::Tables {
            command: TablesCommand::Check,
        } => {
            for d in &decls {
                println!("{}: {} ok", d.source.display(), d.qualified_name());
            }
        }
        Command::Tables {
            command: TablesCommand::Sync,
        } => {
            let catalog = config.open_catalog().await?;
            for d in &decls {
                let outcome = tables::sync(catalog.as_ref(), d, config.retry).await?;
                let what = match outcome {
                    tables::SyncOutcome::Created => "created".to_string(),
                    tables::SyncOutcome::Evolved(cols) => format!("added {}", cols.join(", ")),
                    tables::SyncOutcome::Unchanged => "unchanged".to_string(),
                };
                println!("{}: {what}", d.qualified_name());
            }
        }
        Command::Ingest(args) => {
            let mut opts = config.ingest.clone();
            if let Some(v) = args.commit_interval {
                opts.commit_interval = v;
            }
            if let Some(v) = args.max_buffered_rows {
                opts.max_buffered_rows = v;
            }
            if let Some(v) = args.max_buffered_bytes {
                opts.max_buffered_bytes = v;
            }
            if let Some(v) = args.future_skew {
                opts.future_skew = v;
            }
            opts.stop_when_idle = args.stop_when_idle;
            opts.instance_id = args.instance_id;
            if let Some(n) = args.threads {
                opts.threads = usize::from(n);
            }
            opts.metrics_addr = args.metrics_addr;
            opts.reset_offsets = args.reset_offsets;
            opts.kafka.extend(args.kafka_property);
            let chosen: Vec<TableDecl> = if args.tables.is_empty() {
                decls.clone()
            } else {
                args.tables
                    .iter()
                    .map(|t| select(&decls, t).cloned())
                    .collect::<Result<_>>()?
            };
            let catalog = config.open_catalog().await?;
            let report = ingest::run(
                catalog,
                chosen,
                opts,
                clock,
                IngestMetrics::default(),
                shutdown_signal(),
            )
            .await?;
            tracing::info!(
                records = report.records,
                rejected = report.rejected,
                commits = report.commits,
                dropped_batches = report.dropped_batches,
                "ingest stopped"
            );
        }
        Command::Produce(args) => {
            let d = select(&decls, &args.table)?;
            let opts = produce::ProduceOptions {
                brokers: config.ingest.brokers.clone(),
                topic: args.topic,
                count: args.count,
                rate: args.rate,
                seed: args.seed,
                bad_ratio: args.bad_ratio,
                spread: args.spread,
                accounts: args.accounts,
                kafka: config.ingest.kafka.clone(),
            };
            if !(0.0..=1.0).contains(&opts.bad_ratio) {
                bail!("--bad-ratio must be between 0 and 1");
            }
            if let Some(p) = args.create_topic {
                let topic = opts.topic.clone().unwrap_or_else(|| d.topic.clone());
                produce::create_topic(&opts.brokers, &topic, p).await?;
            }
            let d = d.clone();
            let report = match args.to_file {
                Some(path) => {
                    tokio::task::spawn_blocking(move || {
                        produce::produce_to_file(&d, &opts, clock, &path)
                    })
                    .await??
                }
                None => {
                    tokio::task::spawn_blocking(move || produce::produce(&d, &opts, clock))
                        .await??
                }
            };
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        Command::Compact(a) => operate(a.table, a.run, Operation::Compact(a.options)).await?,
        Command::Rollup(a) => operate(a.table, a.run, Operation::Rollup(a.options)).await?,
        Command::Retention(a) => operate(a.table, a.run, Operation::Retention(a.options)).await?,
        Command::RewriteManifests(a) => {
            operate(a.table, a.run, Operation::RewriteManifests(a.options)).await?
        }
        Command::ExpireSnapshots(a) => {
            operate(a.table, a.run, Operation::ExpireSnapshots(a.options)).await?
        }
        Command::RemoveOrphans(a) => {
            operate(a.table, a.run, Operation::RemoveOrphans(a.options)).await?
        }
        Command::Audit(a) => operate(a.table, a.run, Operation::Audit(a.options)).await?,
        Command::Maintain(args) => batch::maintain_job(&config, &decls, args, clock).await?,
        Command::Backfill(args) => batch::backfill(&config, &decls, args, clock).await?,
        Command::Publish(args) => {
            let d = select(&decls, &args.table)?;
            let catalog = config.open_catalog().await?;
            let done =
                firn::backfill::stage::publish(catalog.as_ref(), d, &args.branch, config.retry)
                    .await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&done)?);
            } else {
                println!(
                    "published {} to {} ({}): main is at snapshot {}, {} data files added, {} removed",
                    done.branch,
                    d.qualified_name(),
                    done.how,
                    done.snapshot_id,
                    done.files_added,
                    done.files_removed
                );
            }
        }
        Command::Discard(args) => {
            let d = select(&decls, &args.table)?;
            let catalog = config.open_catalog().await?;
            let done =
                firn::backfill::stage::discard(catalog.as_ref(), d, &args.branch, config.retry)
                    .await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&done)?);
            } else {
                println!(
                    "discarded {} of {}: {} snapshots, {} files deleted ({} left to orphan removal)",
                    done.branch,
                    d.qualified_name(),
                    done.snapshots.len(),
                    done.deleted_files,
                    done.failed_deletes
                );
            }
        }
        Command::Metrics(args) => {
            let metrics = firn::telemetry::exported_metrics();
            if args.json {
                println!("{}", serde_json::to_string_pretty(&metrics)?);
            } else {
                for m in metrics {
                    println!(
                        "{} {} {{{}}}\n    {}",
                        m.name,
                        m.kind,
                        m.labels.join(","),
                        m.help
                    );
                }
            }
        }
        Command::Status(args) => {
            let catalog = config.open_catalog().await?;
            let chosen: Vec<&TableDecl> = match &args.table {
                Some(t) => vec![select(&decls, t)?],
                None => decls.iter().collect(),
            };
            let opts = status::StatusOptions {
                now: args.now.unwrap_or_else(|| clock.now()),
                group: config.ingest.group.clone(),
                kafka: (!args.no_lag).then(|| status::KafkaSource {
                    brokers: config.ingest.brokers.clone(),
                    properties: config.ingest.kafka.clone(),
                    timeout: std::time::Duration::from_secs(5),
                }),
                orphans: !args.no_orphans,
                target_file_size: config.ingest.target_file_size as u64,
                seal_delay: *args.seal_delay,
            };
            let mut statuses = Vec::new();
            for d in chosen {
                statuses.push(status::table_status(catalog.as_ref(), d, &opts).await?);
            }
            if args.json {
                println!("{}", serde_json::to_string_pretty(&statuses)?);
            } else {
                print!("{}", status::render(&statuses));
            }
            let unhealthy: Vec<&str> = statuses
                .iter()
                .filter(|s| !s.health.healthy)
                .map(|s| s.table.as_str())
                .collect();
            if !unhealthy.is_empty() {
                return Ok(Outcome::Unhealthy(unhealthy.join(", ")));
            }
        }
    }
    Ok(Outcome::Done)
}

#[cfg(test)]
mod tests {
    use super::chain;
    use firn::error::{Error, ErrorKind};

    #[test]
    fn an_error_shows_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = anyhow::Error::from(
            Error::new(ErrorKind::InvalidDeclaration, "schemas directory schemas").with_source(io),
        )
        .context("loading declarations");
        assert_eq!(
            chain(&e),
            "loading declarations: schemas directory schemas: no such file"
        );
        let plain = anyhow::Error::from(std::io::Error::other("disk full")).context("writing x");
        assert_eq!(chain(&plain), "writing x: disk full");
    }
}
