//! Command-line arguments of the `firn` subcommands.

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::Args;
use firn::clock::{Span, parse_time};
use firn::maintain::Shard;
use firn::maintain::tier::CompactOptions;

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
    /// Stop (after a final commit) once the assigned partitions are caught
    /// up with their high watermarks and no record arrived for this long
    /// (counted from the assignment: a worker the group assigns late still
    /// drains the backlog first).
    #[arg(long, env = "FIRN_STOP_WHEN_IDLE", value_parser = humantime::parse_duration)]
    pub(crate) stop_when_idle: Option<Duration>,
    /// This worker's stable name in the consumer group (Kafka static
    /// membership, group.instance.id), e.g. the pod name of a StatefulSet:
    /// restarted under the same name, it gets its partitions back at once
    /// instead of waiting for its old session to expire. Unique per worker;
    /// a static member that stops does not leave the group (its partitions
    /// move only once session.timeout.ms has passed).
    #[arg(long, env = "FIRN_INSTANCE_ID")]
    pub(crate) instance_id: Option<String>,
    /// Threads decoding and aggregating records (default: the cores
    /// available); the consumer thread keeps the offsets and the commits,
    /// so exactly-once does not depend on it. 1 decodes on the consumer
    /// thread.
    #[arg(long, env = "FIRN_THREADS", value_parser = clap::value_parser!(u16).range(1..))]
    pub(crate) threads: Option<u16>,
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
    /// Write the events to this file as NDJSON instead of sending them
    /// (gzip or zstd when it ends in .gz or .zst): a backfill input.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["rate", "create_topic"])]
    pub(crate) to_file: Option<PathBuf>,
}

/// A maintenance command: its table and how it runs, then its operation's
/// options (defined, with their defaults, by the operation).
#[derive(Debug, Args)]
pub(crate) struct OperationArgs<O: Args> {
    /// Declared table (namespace.name).
    pub(crate) table: String,
    #[command(flatten)]
    pub(crate) run: RunArgs,
    #[command(flatten)]
    pub(crate) options: O,
}

#[derive(Debug, Args)]
pub(crate) struct MaintainJobArgs {
    /// Job file (jobs/NAME.toml).
    #[arg(long, env = "FIRN_JOB")]
    pub(crate) job: PathBuf,
    /// Run shard i of n (e.g. 0/4); n runs together cover the job exactly once.
    #[arg(long, env = "FIRN_SHARD", value_parser = Shard::parse)]
    pub(crate) shard: Option<Shard>,
    #[command(flatten)]
    pub(crate) run: RunArgs,
}

/// How a maintenance command or job runs.
#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// Print the plan (partitions, files, rows, bytes; snapshots or files to
    /// delete) and change nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Plan as if it were this time (RFC 3339 or YYYY-MM-DD); default now.
    #[arg(long, env = "FIRN_NOW", value_parser = parse_time)]
    pub(crate) now: Option<DateTime<Utc>>,
    /// Print the report as JSON on stdout (always so for rewrite-manifests,
    /// expire-snapshots and remove-orphans).
    #[arg(long)]
    pub(crate) json: bool,
    /// Partitions compacted, rolled up or dropped at once, each merged and
    /// written on its own thread (commits stay one at a time, in plan
    /// order); memory grows with it. Default: the cores available.
    #[arg(long, env = "FIRN_JOBS", value_parser = clap::value_parser!(u16).range(1..))]
    pub(crate) jobs: Option<u16>,
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
    /// watermark when the backfill first starts; a rerun keeps that end).
    /// With --replace it may be left out: every partition from its earliest.
    #[arg(long, value_parser = firn::backfill::kafka::parse_offsets, conflicts_with = "start_time")]
    pub(crate) start_offsets: Option<std::collections::BTreeMap<i32, i64>>,
    /// Start of a time range of Kafka record timestamps to replay (with
    /// --end-time); not with --replace, which selects by event time.
    #[arg(long, value_parser = parse_time, requires = "end_time")]
    pub(crate) start_time: Option<DateTime<Utc>>,
    /// End of the time range to replay, exclusive.
    #[arg(long, value_parser = parse_time)]
    pub(crate) end_time: Option<DateTime<Utc>>,
    /// Add the data again even if this backfill was committed before (a
    /// killed --force run resumes when run again with --force); with
    /// --replace, also replace a range that is not sealed yet.
    #[arg(long)]
    pub(crate) force: bool,
    /// Print what would be written (rows per grain, totals, rejects); write nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Commit to the branch backfill/<id> instead of main, and print how it
    /// differs from main per day and measure; main is untouched until
    /// `firn publish TABLE backfill/<id>` (or `firn discard`).
    #[arg(long)]
    pub(crate) stage: bool,
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
    /// Events per commit; a killed backfill resumes after the last committed
    /// event, whatever the chunk size of either run.
    #[arg(long, default_value_t = firn::backfill::BackfillOptions::default().chunk_events)]
    pub(crate) chunk_events: usize,
    /// Rows a commit holds at most (over every grain): a chunk closes early
    /// when its events make this many rows, which bounds memory on
    /// high-cardinality input (two chunks are in memory at once: one read
    /// while the one before it is committed); resumes as --chunk-events
    /// does.
    #[arg(long, env = "FIRN_CHUNK_ROWS", default_value_t = firn::backfill::BackfillOptions::default().chunk_rows)]
    pub(crate) chunk_rows: usize,
    /// With --replace: the range must have ended this long ago (sealed: no
    /// more ingest appends expected), unless --force.
    #[arg(long, env = "FIRN_SEAL_DELAY", default_value_t = Span(firn::backfill::BackfillOptions::default().seal_delay))]
    pub(crate) seal_delay: Span,
    /// Measure ages (and the accepted window) from this time (RFC 3339 or YYYY-MM-DD).
    #[arg(long, env = "FIRN_NOW", value_parser = parse_time)]
    pub(crate) now: Option<DateTime<Utc>>,
    #[command(flatten)]
    pub(crate) budget: BudgetArgs,
    #[command(flatten)]
    pub(crate) publish: PublishArgs,
}

/// A staged backfill's branch of a table.
#[derive(Debug, Args)]
pub(crate) struct StagedArgs {
    /// Declared table (namespace.name).
    pub(crate) table: String,
    /// The branch (backfill/<id>, as `backfill --stage` printed it).
    pub(crate) branch: String,
    /// Print JSON.
    #[arg(long)]
    pub(crate) json: bool,
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
    #[arg(long, env = "FIRN_SEAL_DELAY", default_value_t = CompactOptions::default().seal_delay)]
    pub(crate) seal_delay: Span,
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

#[derive(Debug, Args)]
pub(crate) struct MetricsArgs {
    /// Print JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

pub(crate) fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected KEY=VALUE, got `{s}`"))
}
