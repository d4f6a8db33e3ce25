//! Command-line arguments of the `firn` subcommands.

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::Args;
use firn::maintain::job::Shard;

#[derive(Debug, Args)]
pub(crate) struct IngestArgs {
    /// Flush at least this often (e.g. 60s, 5m).
    #[arg(long, env = "FIRN_COMMIT_INTERVAL", value_parser = humantime::parse_duration)]
    pub(crate) commit_interval: Option<Duration>,
    /// Flush when this many rows are buffered.
    #[arg(long, env = "FIRN_MAX_BUFFERED_ROWS")]
    pub(crate) max_buffered_rows: Option<usize>,
    /// Flush when this many payload bytes were consumed since the last flush.
    #[arg(long, env = "FIRN_MAX_BUFFERED_BYTES")]
    pub(crate) max_buffered_bytes: Option<u64>,
    /// Reject events further than this in the future.
    #[arg(long, env = "FIRN_FUTURE_SKEW", value_parser = humantime::parse_duration)]
    pub(crate) future_skew: Option<Duration>,
    /// Stop (after a final commit) once no record arrived for this long.
    #[arg(long, env = "FIRN_STOP_WHEN_IDLE", value_parser = humantime::parse_duration)]
    pub(crate) stop_when_idle: Option<Duration>,
    /// Serve /metrics (Prometheus), /healthz and /readyz on this address,
    /// e.g. 0.0.0.0:9464.
    #[arg(long, env = "FIRN_METRICS_ADDR")]
    pub(crate) metrics_addr: Option<std::net::SocketAddr>,
    /// Extra librdkafka property, KEY=VALUE (repeatable).
    #[arg(long = "kafka-property", value_parser = parse_kv)]
    pub(crate) kafka_property: Vec<(String, String)>,
    /// Only ingest these tables (namespace.name); default all declared.
    #[arg(long = "table")]
    pub(crate) tables: Vec<String>,
    /// Where the group starts when the table holds data but no offsets for
    /// it (ingest refuses to start otherwise): `earliest` or `latest` for the
    /// partitions the table holds no offset for, or
    /// `TOPIC:PARTITION:OFFSET,...` to move those partitions whatever the
    /// table holds (applied once). Committed to the table and logged before
    /// consuming.
    #[arg(
        long,
        env = "FIRN_RESET_OFFSETS",
        value_name = "earliest|latest|T:P:O,..."
    )]
    pub(crate) reset_offsets: Option<firn::ingest::ResetOffsets>,
}

#[derive(Debug, Args)]
pub(crate) struct ProduceArgs {
    /// Declared table (namespace.name) whose topic and fields to use.
    #[arg(long, default_value = "usage.http_requests")]
    pub(crate) table: String,
    /// Topic (default: the declaration's).
    #[arg(long)]
    pub(crate) topic: Option<String>,
    /// Events to send.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) count: u64,
    /// Events per second (default: as fast as the broker takes them).
    #[arg(long)]
    pub(crate) rate: Option<u64>,
    /// Random seed.
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// Share of malformed records, 0 to 1.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) bad_ratio: f64,
    /// Spread event times over this window before now.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2h")]
    pub(crate) spread: Duration,
    /// Distinct accounts.
    #[arg(long, default_value_t = 1000)]
    pub(crate) accounts: i64,
    /// Create the topic with this many partitions first, if it does not exist.
    #[arg(long)]
    pub(crate) create_topic: Option<i32>,
}

#[derive(Debug, Args)]
pub(crate) struct MaintainArgs {
    /// Declared table (namespace.name).
    pub(crate) table: String,
    /// Print the plan (partitions, files in/out, rows, bytes) and change nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Only partitions that end after this time (RFC 3339 or YYYY-MM-DD).
    #[arg(long, value_parser = parse_time)]
    pub(crate) from: Option<DateTime<Utc>>,
    /// Only partitions that start before this time (RFC 3339 or YYYY-MM-DD).
    #[arg(long, value_parser = parse_time)]
    pub(crate) to: Option<DateTime<Utc>>,
    /// Plan as if it were this time (RFC 3339 or YYYY-MM-DD); default now.
    #[arg(long, env = "FIRN_NOW", value_parser = parse_time)]
    pub(crate) now: Option<DateTime<Utc>>,
    /// A partition is sealed (compactable) this long after it ends, so live
    /// ingest is never raced.
    #[arg(long, env = "FIRN_SEAL_DELAY", value_parser = humantime::parse_duration, default_value = "1h")]
    pub(crate) seal_delay: Duration,
    /// Target size of output files in bytes (default 128 MiB).
    #[arg(long, env = "FIRN_TARGET_FILE_SIZE")]
    pub(crate) target_file_size: Option<usize>,
    /// Print the run report as JSON on stdout.
    #[arg(long)]
    pub(crate) json: bool,
    #[command(flatten)]
    pub(crate) budget: BudgetArgs,
    #[command(flatten)]
    pub(crate) publish: PublishArgs,
}

#[derive(Debug, Args)]
pub(crate) struct RewriteArgs {
    /// Declared table (namespace.name).
    pub(crate) table: String,
    /// Target manifest size in bytes (default: the table's
    /// commit.manifest.target-size-bytes, 8 MiB).
    #[arg(long)]
    pub(crate) target_size: Option<u64>,
    /// Report what would change, change nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    #[command(flatten)]
    pub(crate) publish: PublishArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ExpireArgs {
    /// Declared table (namespace.name).
    pub(crate) table: String,
    /// Expire snapshots committed longer ago than this.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5d")]
    pub(crate) older_than: Duration,
    /// Always keep the current snapshot and its latest ancestors, this many in all.
    #[arg(long, default_value_t = 10)]
    pub(crate) retain_last: usize,
    /// Also remove tags and branches (never main) older than their
    /// `max-ref-age-ms` (or the table's `history.expire.max-ref-age-ms`).
    /// Without it every ref is kept, with every snapshot and file it reaches.
    #[arg(long)]
    pub(crate) expire_refs: bool,
    /// Report what would be expired and deleted, change nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    #[command(flatten)]
    pub(crate) publish: PublishArgs,
}

#[derive(Debug, Args)]
pub(crate) struct OrphanArgs {
    /// Declared table (namespace.name).
    pub(crate) table: String,
    /// Only files last modified longer ago than this (at least 1h unless --force).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "3d")]
    pub(crate) older_than: Duration,
    /// Accept --older-than under an hour (may delete files of commits in flight).
    #[arg(long)]
    pub(crate) force: bool,
    /// List the orphans with their sizes, delete nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    #[command(flatten)]
    pub(crate) publish: PublishArgs,
}

#[derive(Debug, Args)]
pub(crate) struct MaintainJobArgs {
    /// Job file (jobs/NAME.toml).
    #[arg(long, env = "FIRN_JOB")]
    pub(crate) job: PathBuf,
    /// Run shard i of n (e.g. 0/4); n runs together cover the job exactly once.
    #[arg(long, env = "FIRN_SHARD", value_parser = Shard::parse)]
    pub(crate) shard: Option<Shard>,
    /// Print the whole plan, change nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Plan as if it were this time (RFC 3339 or YYYY-MM-DD).
    #[arg(long, env = "FIRN_NOW", value_parser = parse_time)]
    pub(crate) now: Option<DateTime<Utc>>,
    /// Print the job report as JSON.
    #[arg(long)]
    pub(crate) json: bool,
    #[command(flatten)]
    pub(crate) budget: BudgetArgs,
    #[command(flatten)]
    pub(crate) publish: PublishArgs,
}

#[derive(Debug, Args)]
pub(crate) struct BackfillArgs {
    /// Declared table (namespace.name).
    pub(crate) table: String,
    /// Input files: paths, globs (quoted), file:// or s3:// URLs (repeatable).
    #[arg(long = "input", required_unless_present = "from_kafka")]
    pub(crate) inputs: Vec<String>,
    /// Replay a range of a Kafka topic instead (no consumer group joined,
    /// no offsets committed: live ingest is untouched).
    #[arg(long, requires = "topic", conflicts_with = "inputs")]
    pub(crate) from_kafka: bool,
    /// Topic to replay.
    #[arg(long)]
    pub(crate) topic: Option<String>,
    /// Start offsets, PARTITION:OFFSET,... (each partition ends at its high
    /// watermark when the backfill starts).
    #[arg(long, value_parser = firn::backfill::kafka::parse_offsets, conflicts_with = "start_time")]
    pub(crate) start_offsets: Option<std::collections::BTreeMap<i32, i64>>,
    /// Start of a time range to replay (with --end-time).
    #[arg(long, value_parser = parse_time, requires = "end_time")]
    pub(crate) start_time: Option<DateTime<Utc>>,
    /// End of the time range to replay, exclusive.
    #[arg(long, value_parser = parse_time)]
    pub(crate) end_time: Option<DateTime<Utc>>,
    /// Add the data again even if this backfill was committed before.
    #[arg(long)]
    pub(crate) force: bool,
    /// Print what would be written (rows per grain, totals, rejects); write nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Replace everything the table holds in [--from, --to) with the
    /// backfilled data, in one overwrite commit (for re-computing a bad day).
    #[arg(long, requires_all = ["from", "to"])]
    pub(crate) replace: bool,
    /// Start of the range to replace (RFC 3339 or YYYY-MM-DD); partition-aligned.
    #[arg(long, value_parser = parse_time)]
    pub(crate) from: Option<DateTime<Utc>>,
    /// End of the range to replace, exclusive.
    #[arg(long, value_parser = parse_time)]
    pub(crate) to: Option<DateTime<Utc>>,
    /// Events per commit; a killed backfill resumes at the first uncommitted chunk.
    #[arg(long, default_value_t = firn::backfill::BackfillOptions::default().chunk_events)]
    pub(crate) chunk_events: usize,
    /// Measure ages (and the accepted window) from this time (RFC 3339 or YYYY-MM-DD).
    #[arg(long, env = "FIRN_NOW", value_parser = parse_time)]
    pub(crate) now: Option<DateTime<Utc>>,
    #[command(flatten)]
    pub(crate) budget: BudgetArgs,
    #[command(flatten)]
    pub(crate) publish: PublishArgs,
}

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// Only this table (namespace.name).
    pub(crate) table: Option<String>,
    /// Print JSON (an array, one object per table).
    #[arg(long)]
    pub(crate) json: bool,
    /// Do not ask the broker for high watermarks (no lag).
    #[arg(long)]
    pub(crate) no_lag: bool,
    /// Do not list the table's location (no orphan estimate).
    #[arg(long)]
    pub(crate) no_orphans: bool,
    /// Judge ages and policies as of this time (RFC 3339 or YYYY-MM-DD).
    #[arg(long, env = "FIRN_NOW", value_parser = parse_time)]
    pub(crate) now: Option<DateTime<Utc>>,
    /// A partition is sealed (compactable) this long after it ends.
    #[arg(long, env = "FIRN_SEAL_DELAY", value_parser = humantime::parse_duration, default_value = "1h")]
    pub(crate) seal_delay: Duration,
}

/// Where a batch command publishes its run metrics (duration, partitions,
/// rows in and out, bytes reclaimed, outcome), also when it fails.
#[derive(Debug, Clone, Args)]
pub(crate) struct PublishArgs {
    /// Push the run's metrics to this Prometheus Pushgateway (grouping key
    /// job=<job file name or command>, plus shard=<i> when sharded).
    #[arg(long, env = "FIRN_PUSHGATEWAY")]
    pub(crate) pushgateway: Option<url::Url>,
    /// Write the run's metrics to this node-exporter textfile (replaced
    /// atomically), e.g. /var/lib/node_exporter/textfile_collector/firn-hourly.prom.
    #[arg(long, env = "FIRN_METRICS_FILE")]
    pub(crate) metrics_file: Option<PathBuf>,
}

impl PublishArgs {
    pub(crate) fn publish(&self) -> firn::telemetry::run::Publish {
        firn::telemetry::run::Publish {
            pushgateway: self.pushgateway.clone(),
            metrics_file: self.metrics_file.clone(),
        }
    }
}

/// The catalog's write budget a batch command spends.
#[derive(Debug, Clone, Args)]
pub(crate) struct BudgetArgs {
    /// Most commits per minute to each table (R2 Data Catalog allows about
    /// 20): commits past it wait, and a plan of more partitions than fit in
    /// a minute commits them in groups. Default: a job file's
    /// max_commits_per_minute, else 10 on a REST catalog and no limit (0) on
    /// SQL catalogs. Shards of `maintain` share it.
    #[arg(long, env = "FIRN_MAX_COMMITS_PER_MINUTE")]
    pub(crate) max_commits_per_minute: Option<u32>,
}

impl BudgetArgs {
    /// The budget: this flag, else the job file's, else the catalog's default.
    pub(crate) fn per_minute(&self, config: &firn::config::Config, job: Option<u32>) -> u32 {
        self.max_commits_per_minute.or(job).unwrap_or_else(|| {
            firn::budget::default_commits_per_minute(config.catalog.rest.is_some())
        })
    }
}

#[derive(Debug, Args)]
pub(crate) struct MetricsArgs {
    /// Print JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

pub(crate) fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .map(|d| d.and_time(chrono::NaiveTime::MIN).and_utc())
        .map_err(|_| format!("`{s}` is neither RFC 3339 nor YYYY-MM-DD"))
}

pub(crate) fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected KEY=VALUE, got `{s}`"))
}
