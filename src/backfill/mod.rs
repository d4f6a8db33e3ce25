//! `firn backfill`: load a time range from event files, or replay a range of
//! a Kafka topic, with the event decoder ingest uses ([`crate::events`]),
//! writing each row at the grain the table's policy gives its age (last
//! year's events land as day rows, not minute rows waiting for rollup). Work
//! is committed in chunks; each chunk's commit advances a fenced progress
//! record (`firn.backfill.<id>`) in the snapshot summary, so a killed
//! backfill resumes where it stopped and a finished one is refused unless
//! `--force`.

mod chunk;
pub mod input;
pub mod kafka;
mod replace;
pub mod source;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use xxhash_rust::xxh3::xxh3_64;

use self::chunk::{Chunk, Loader};
use self::input::InputFile;
use self::source::Inputs;
use crate::budget::CommitBudget;
use crate::catalog::{Catalog, TableHandle};
use crate::clock::{Clock, SystemClock};
use crate::commit::summary::backfill_key;
use crate::commit::{self, Change, Claim, FirnOperation, RetryPolicy};
use crate::error::{Error, ErrorKind, Result};
use crate::events::DEFAULT_FUTURE_SKEW;
use crate::ledger::{self, Ledger};
use crate::rejects::{self, RejectRecord};
use crate::rows::RowMap;
use crate::schema::decl::TableDecl;
use crate::schema::layout::Grain;
use crate::{tables, write};

/// What to backfill.
#[derive(Debug, Clone)]
pub struct BackfillOptions {
    /// Paths, globs or URLs.
    pub inputs: Vec<String>,
    /// The time ages (and the accepted window) are measured from, and the
    /// time rejects are recorded at.
    pub now: DateTime<Utc>,
    /// Accept events at most this far in the future.
    pub future_skew: Duration,
    /// Events per chunk (one commit each).
    pub chunk_events: usize,
    /// Add the data again even if this backfill was committed before.
    pub force: bool,
    /// Report only.
    pub dry_run: bool,
    /// Target data file size.
    pub target_file_size: usize,
    /// Replace everything the table holds in `[from, to)` with the
    /// backfilled data, in one overwrite commit.
    pub replace: Option<(DateTime<Utc>, DateTime<Utc>)>,
    /// Replay a range of a Kafka topic instead of reading files.
    pub kafka: Option<kafka::KafkaRange>,
    /// The catalog's write budget the chunk commits spend.
    pub budget: CommitBudget,
    /// How commits are retried.
    pub retry: RetryPolicy,
}

impl Default for BackfillOptions {
    /// No inputs, now by the system clock, chunks of a million events, no
    /// commit budget.
    fn default() -> Self {
        Self {
            inputs: Vec::new(),
            now: SystemClock.now(),
            future_skew: DEFAULT_FUTURE_SKEW,
            chunk_events: 1_000_000,
            force: false,
            dry_run: false,
            target_file_size: write::DEFAULT_TARGET_FILE_SIZE,
            replace: None,
            kafka: None,
            budget: CommitBudget::unlimited(),
            retry: RetryPolicy::default(),
        }
    }
}

/// How far a backfill has read, reported after every record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Input bytes read (of a topic: payload bytes).
    pub bytes: u64,
    /// Input bytes in all (of a topic: the records in its ranges).
    pub total_bytes: u64,
    /// Events read by this run (chunks an earlier run committed aside).
    pub events: u64,
}

/// The progress record in the summary.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Record {
    /// Chunks committed.
    done: u64,
    /// Whether the last chunk is in.
    complete: bool,
}

/// What a backfill did (or, dry, would do).
#[derive(Debug, Clone, Default, Serialize)]
pub struct BackfillReport {
    /// The backfill's identity (its inputs and table).
    pub id: String,
    /// The input files.
    pub inputs: Vec<InputFile>,
    /// Chunks committed by this run.
    pub chunks_committed: u64,
    /// Chunks skipped because an earlier run committed them.
    pub chunks_skipped: u64,
    /// Events read (accepted and rejected) by this run.
    pub events: u64,
    /// Events rejected (in the rejects table with file and line).
    pub rejected: u64,
    /// Rows written per grain.
    pub rows_by_grain: BTreeMap<String, u64>,
    /// Partitions written per grain.
    pub partitions_by_grain: BTreeMap<String, usize>,
    /// Per-measure totals of the accepted events.
    pub totals: BTreeMap<String, Value>,
    /// Whether nothing was written.
    pub dry_run: bool,
    /// With `--replace`: files removed (or, dry, to remove).
    pub replaced_files: usize,
    /// With `--replace`: rows removed (or, dry, to remove).
    pub replaced_rows: u64,
}

impl BackfillReport {
    /// Count a chunk's events and rejects.
    fn count_read(&mut self, chunk: &Chunk) {
        self.events += chunk.events;
        self.rejected += chunk.rejects.len() as u64;
    }

    /// Count rows to write.
    fn count_rows(&mut self, rows: &BTreeMap<Grain, RowMap>) {
        for (g, rows) in rows {
            *self
                .rows_by_grain
                .entry(g.as_str().to_string())
                .or_default() += rows.len() as u64;
        }
    }
}

/// The identity of a backfill: its table and its inputs (location and size).
pub fn identity(decl: &TableDecl, files: &[InputFile]) -> String {
    let mut text = decl.qualified_name();
    for f in files {
        text.push_str(&format!("\n{}\t{}", f.location, f.size));
    }
    format!("{:016x}", xxh3_64(text.as_bytes()))
}

/// The value of a progress record in the table's ledger (which survives
/// other engines' commits and expiry).
fn held(table: &TableHandle, key: &str) -> Option<String> {
    Ledger::of(&table.metadata).get(key).cloned()
}

/// The chunks the progress record at `key` says are committed.
fn chunks_done(table: &TableHandle, key: &str) -> u64 {
    held(table, key)
        .and_then(|v| serde_json::from_str::<Record>(&v).ok())
        .map_or(0, |r| r.done)
}

/// The oldest firn snapshot in main's ancestry whose ledger holds `value` at
/// `key` (snapshots other engines committed in between are stepped over), or
/// the snapshot the ledger was read from when that ancestry was expired.
fn first_holding(table: &TableHandle, key: &str, value: &str) -> Option<i64> {
    let meta = &table.metadata;
    let mut cursor = meta.current_snapshot();
    let mut found = None;
    while let Some(s) = cursor {
        if ledger::is_firn_snapshot(s) {
            let props = &s.summary().additional_properties;
            if props.get(key).map(String::as_str) != Some(value) {
                break;
            }
            found = Some(s.snapshot_id());
        }
        cursor = s.parent_snapshot_id().and_then(|p| meta.snapshot_by_id(p));
    }
    found.or_else(|| Ledger::of(meta).snapshot_id())
}

/// The table a backfill writes, and where this run stands in it.
struct Target<'a> {
    catalog: &'a dyn Catalog,
    decl: &'a TableDecl,
    ident: iceberg::TableIdent,
    rejects_ident: iceberg::TableIdent,
    opts: &'a BackfillOptions,
    /// The run's id: the backfill's identity, or a new one when forced to
    /// add a finished backfill again.
    id: String,
    /// The key of its progress record.
    key: String,
    /// Chunks an earlier run committed (this run skips them).
    resume_from: u64,
}

impl<'a> Target<'a> {
    /// Load `decl`'s table, check it matches, and find where the backfill
    /// of `files` stands: refused if it finished (unless forced), else
    /// resumed after the chunks its progress record holds.
    async fn open(
        catalog: &'a dyn Catalog,
        decl: &'a TableDecl,
        opts: &'a BackfillOptions,
        files: &[InputFile],
    ) -> Result<Self> {
        let ident = tables::ident(decl)?;
        let rejects_ident = tables::rejects_ident(decl)?;
        let table = catalog.load(&ident).await?;
        tables::check_matches(decl, &table.metadata)?;
        let id = run_id(&table, decl, identity(decl, files), opts.force)?;
        let key = backfill_key(&id);
        Ok(Self {
            catalog,
            decl,
            resume_from: chunks_done(&table, &key),
            ident,
            rejects_ident,
            opts,
            id,
            key,
        })
    }
}

/// The id a run records its progress under: the backfill's identity
/// `base_id`, unless the table holds it as complete: then an error, or with
/// `force` a new id.
fn run_id(table: &TableHandle, decl: &TableDecl, base_id: String, force: bool) -> Result<String> {
    let base_key = backfill_key(&base_id);
    let Some(v) = held(table, &base_key) else {
        return Ok(base_id);
    };
    if !serde_json::from_str::<Record>(&v).is_ok_and(|r| r.complete) {
        return Ok(base_id);
    }
    if !force {
        let snapshot = first_holding(table, &base_key, &v)
            .map_or("an earlier snapshot".to_string(), |s| {
                format!("snapshot {s}")
            });
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "backfill {base_id} of these inputs into {} was already committed \
                 ({snapshot}); add --force to add the data again",
                decl.qualified_name()
            ),
        ));
    }
    Ok(format!("{base_id}-{}", uuid::Uuid::now_v7().simple()))
}

/// Run a backfill of `decl`'s table: resolve its inputs and where it
/// stands, read them in chunks and commit each (with `--replace`, all in one
/// overwrite commit; dry, none), reporting progress to `progress`.
pub async fn run(
    catalog: &dyn Catalog,
    decl: &TableDecl,
    opts: &BackfillOptions,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<BackfillReport> {
    let inputs = Inputs::resolve(opts, catalog.storage()).await?;
    let target = Target::open(catalog, decl, opts, &inputs.files).await?;
    let mut report = BackfillReport {
        id: target.id.clone(),
        inputs: inputs.files.clone(),
        dry_run: opts.dry_run,
        ..Default::default()
    };
    let total_bytes = inputs.files.iter().map(|f| f.size).sum();
    let mut loader = Loader::new(decl, opts, total_bytes, progress);
    let whole = load(&target, &inputs, &mut loader, &mut report).await?;
    match opts.replace {
        Some(range) => {
            report.count_rows(&whole.rows);
            replace::replace(&target, range, whole, &mut report).await?;
        }
        // Nothing to read: one empty chunk records the backfill as complete.
        None if inputs.files.is_empty() && !opts.dry_run => {
            commit_chunk(&target, 0, true, Chunk::default()).await?;
        }
        None => {}
    }
    loader.summarize(&mut report);
    Ok(report)
}

/// Read every input in chunks, committing each chunk (unless dry), or,
/// with `--replace`, gathering them into the one chunk returned.
async fn load(
    target: &Target<'_>,
    inputs: &Inputs,
    loader: &mut Loader<'_>,
    report: &mut BackfillReport,
) -> Result<Chunk> {
    let opts = target.opts;
    let mut whole = Chunk::default();
    // Chunks never span inputs: chunk boundaries depend only on the inputs.
    let mut index: u64 = 0;
    for i in 0..inputs.files.len() {
        let mut source = inputs.open(i, target.catalog.storage()).await?;
        let last_input = i + 1 == inputs.files.len();
        let mut eof = false;
        while !eof {
            let skip = index < target.resume_from;
            let (chunk, ended) = loader.read_chunk(source.as_mut(), skip)?;
            eof = ended;
            let last = eof && last_input;
            if chunk.events == 0 && !last {
                continue;
            }
            if opts.replace.is_some() {
                report.count_read(&chunk);
                whole.absorb(&loader.spec, chunk);
            } else if skip {
                report.chunks_skipped += 1;
            } else {
                report.count_read(&chunk);
                report.count_rows(&chunk.rows);
                if !opts.dry_run {
                    commit_chunk(target, index, last, chunk).await?;
                    report.chunks_committed += 1;
                }
            }
            index += 1;
        }
    }
    Ok(whole)
}

/// Commit one chunk: its rejects (skipped if an earlier run recorded them),
/// then its rows, advancing the fenced progress record from `index` to
/// `index + 1`.
async fn commit_chunk(target: &Target<'_>, index: u64, last: bool, chunk: Chunk) -> Result<()> {
    let (catalog, ident, key) = (target.catalog, &target.ident, &target.key);
    let opts = target.opts;
    let retry = opts.retry;
    let record = |done: u64, complete: bool| {
        serde_json::to_string(&Record { done, complete }).unwrap_or_default()
    };
    if !chunk.rejects.is_empty() {
        let rt = catalog.load(&target.rejects_ident).await?;
        if chunks_done(&rt, key) <= index {
            commit_rejects(target, &chunk.rejects, record(index + 1, last)).await?;
        }
    }
    let table = catalog.load(ident).await?;
    let files = write_grains(&table, target.decl, chunk.rows, opts.target_file_size).await?;
    let change = Change::append(FirnOperation::Backfill, files).with_claim(Claim {
        key: key.to_string(),
        expect: (index > 0).then(|| record(index, false)),
        set: record(index + 1, last),
    });
    let _permit = opts.budget.acquire(ident).await;
    let committed = commit::commit(catalog, ident, &change, retry).await?;
    tracing::info!(
        table = %ident,
        chunk = index,
        last,
        snapshot_id = committed.snapshot_id,
        files = committed.added_files,
        rows = committed.added_records,
        "backfill chunk committed"
    );
    Ok(())
}

/// Append `rejects` to the rejects table, advancing its progress record at
/// `key` (fenced) to `set`.
async fn commit_rejects(target: &Target<'_>, rejects: &[RejectRecord], set: String) -> Result<()> {
    let (catalog, rejects_ident, key) = (target.catalog, &target.rejects_ident, &target.key);
    let opts = target.opts;
    let rt = catalog.load(rejects_ident).await?;
    let schema = std::sync::Arc::new(
        iceberg::arrow::schema_to_arrow_schema(rt.metadata.current_schema())
            .map_err(|e| Error::iceberg(format!("arrow schema of {rejects_ident}"), e))?,
    );
    let batch = rejects::to_batch(schema, rejects)?;
    let files =
        write::write_batches(&rt, None, "rejects", vec![batch], opts.target_file_size).await?;
    let change = Change::append(FirnOperation::BackfillRejects, files).with_claim(Claim {
        key: key.to_string(),
        expect: held(&rt, key),
        set,
    });
    let _permit = opts.budget.acquire(rejects_ident).await;
    commit::commit(catalog, rejects_ident, &change, opts.retry).await?;
    Ok(())
}

/// Rows of each grain as data files of `table`.
async fn write_grains(
    table: &TableHandle,
    decl: &TableDecl,
    rows: BTreeMap<Grain, RowMap>,
    target_file_size: usize,
) -> Result<Vec<crate::commit::NewFile>> {
    let mut files = Vec::new();
    for (grain, rows) in rows {
        files.extend(
            write::write_rows(table, decl, grain, rows.into_sorted(), target_file_size).await?,
        );
    }
    Ok(files)
}
