//! `firn backfill`: load a time range from event files, or replay a range of
//! a Kafka topic, with the event decoder ingest uses ([`crate::events`]),
//! writing each row at the grain the table's policy gives its age (last
//! year's events land as day rows, not minute rows waiting for rollup). Work
//! is committed in chunks; each chunk's commit advances a fenced progress
//! record (`firn.backfill.<id>`, [`record`]) in the snapshot summary, which
//! says how far into the inputs the committed chunks reach, so a killed
//! backfill resumes exactly where it stopped — with any chunk size — and a
//! finished one is refused unless `--force`.

mod chunk;
pub mod input;
pub mod kafka;
mod record;
mod replace;
pub mod source;
pub mod stage;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use xxhash_rust::xxh3::xxh3_64;

pub use self::chunk::ProgressFn;
use self::chunk::{Chunk, Loader};
use self::input::InputFile;
use self::record::{Held, Position, Record, Refused, Run};
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
use crate::totals::{ChangeTotals, DayTotals, Totals};
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
    /// Events per chunk (one commit each). Any size resumes any run.
    pub chunk_events: usize,
    /// Rows a chunk holds at most, over every grain: a chunk closes early
    /// when its events make this many rows (high-cardinality input), so
    /// memory is bounded by rows, as ingest's `max_buffered_rows` bounds
    /// a worker's. Two chunks are held at once (one read while the one
    /// before it is committed). Any size resumes any run.
    pub chunk_rows: usize,
    /// Add the data again even if this backfill was committed before (and,
    /// with `replace`, replace a range that is not sealed yet).
    pub force: bool,
    /// Report only.
    pub dry_run: bool,
    /// Target data file size.
    pub target_file_size: usize,
    /// Replace everything the table holds in `[from, to)` with the
    /// backfilled data, in one overwrite commit.
    pub replace: Option<(DateTime<Utc>, DateTime<Utc>)>,
    /// A range is sealed (no more ingest appends to it expected, so
    /// `replace` may overwrite it) this long after it ends.
    pub seal_delay: Duration,
    /// Replay a range of a Kafka topic instead of reading files.
    pub kafka: Option<kafka::KafkaRange>,
    /// The catalog's write budget the chunk commits spend.
    pub budget: CommitBudget,
    /// How commits are retried.
    pub retry: RetryPolicy,
    /// Commit to the branch `backfill/<id>` instead of main (see [`stage`]).
    pub stage: bool,
}

impl Default for BackfillOptions {
    /// No inputs, now by the system clock, chunks of a million events,
    /// ranges sealed an hour after they end, no commit budget.
    fn default() -> Self {
        Self {
            inputs: Vec::new(),
            now: SystemClock.now(),
            future_skew: DEFAULT_FUTURE_SKEW,
            chunk_events: 1_000_000,
            chunk_rows: 100_000,
            force: false,
            dry_run: false,
            target_file_size: write::DEFAULT_TARGET_FILE_SIZE,
            replace: None,
            seal_delay: Duration::from_secs(3600),
            kafka: None,
            budget: CommitBudget::unlimited(),
            retry: RetryPolicy::default(),
            stage: false,
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

/// What a backfill did (or, dry, would do).
#[derive(Debug, Clone, Default, Serialize)]
pub struct BackfillReport {
    /// The backfill's identity (its inputs and table).
    pub id: String,
    /// The input files.
    pub inputs: Vec<InputFile>,
    /// Chunks committed by this run.
    pub chunks_committed: u64,
    /// Where this run resumed an earlier one (`None`: from the start).
    pub resumed_at: Option<ResumedAt>,
    /// Events read (accepted and rejected) by this run.
    pub events: u64,
    /// Events rejected (in the rejects table with file and line).
    pub rejected: u64,
    /// With `--replace` from Kafka: events of other times, left out.
    pub outside_range: u64,
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
    /// With `--stage`: the branch, and how it differs from main.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub staged: Option<stage::Staged>,
}

/// Where a run resumed: the input, and how far into it an earlier run
/// committed (lines, or the next offset).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResumedAt {
    /// The input (a file, or `kafka:TOPIC/PARTITION[START..END)`).
    pub input: String,
    /// Lines of it committed, or its next offset.
    pub at: i64,
}

impl BackfillReport {
    /// Count a chunk's events and rejects.
    fn count_read(&mut self, chunk: &Chunk) {
        self.events += chunk.events;
        self.rejected += chunk.rejects.len() as u64;
        self.outside_range += chunk.outside;
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

/// The identity of a backfill: its table and what it reads — each input
/// file (location and size), or a topic and the range asked for (not the
/// offsets it resolves to: a live topic's end moves) — and, with
/// `--replace`, the range replaced.
pub fn identity(decl: &TableDecl, opts: &BackfillOptions, files: &[InputFile]) -> String {
    let mut text = decl.qualified_name();
    match &opts.kafka {
        Some(k) => text.push_str(&format!("\nkafka:{}\t{}", k.topic, k.start.describe())),
        None => {
            for f in files {
                text.push_str(&format!("\n{}\t{}", f.location, f.size));
            }
        }
    }
    if let Some((from, to)) = opts.replace {
        text.push_str(&format!(
            "\nreplace\t{}\t{}",
            from.timestamp_micros(),
            to.timestamp_micros()
        ));
    }
    format!("{:016x}", xxh3_64(text.as_bytes()))
}

/// The value of a progress record in the table's ledger (which survives
/// other engines' commits and expiry).
fn held(table: &TableHandle, key: &str) -> Option<String> {
    Ledger::of(&table.metadata).get(key).cloned()
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
    /// The run's id: the backfill's identity, or `<identity>-<n>` for the
    /// `n`th run `--force` made.
    id: String,
    /// The key of its progress record.
    key: String,
    /// The record an earlier run of it left (this run resumes it), and the
    /// ledger value it was read from.
    resumed: Option<(Record, String)>,
    /// A replay's partition ranges, once resolved (what every record keeps).
    ranges: Vec<(i32, i64, i64)>,
    /// Staged: the branch it commits to.
    branch: Option<String>,
}

impl<'a> Target<'a> {
    /// Load `decl`'s table, check it matches, and find where the backfill
    /// of `files` stands: refused if it finished (unless forced), else
    /// resumed where its progress record says.
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
        let base = identity(decl, opts, files);
        // Staged, a run's progress is on its branch (main's until the
        // branch exists: a backfill published before is finished).
        let seen = |id: &str| -> Result<TableHandle> {
            match opts.stage {
                true => table.on_branch(&stage::branch_name(id)),
                false => Ok(table.clone()),
            }
        };
        let standing = record::standing(&base, opts.force, |id| {
            let t = seen(id).ok()?;
            Ledger::of(&t.metadata).get(&backfill_key(id)).cloned()
        });
        let (id, resumed) = match standing {
            Ok(Run::Start(id)) => (id, None),
            Ok(Run::Resume { id, record, raw }) => (id, Some((record, raw))),
            Err(refused) => {
                let id = refused.id().to_string();
                return Err(refusal(&seen(&id)?, decl, refused));
            }
        };
        Ok(Self {
            catalog,
            decl,
            ident,
            rejects_ident,
            opts,
            key: backfill_key(&id),
            branch: opts.stage.then(|| stage::branch_name(&id)),
            id,
            resumed,
            ranges: Vec::new(),
        })
    }

    /// The table as this run writes it: main, or its branch.
    async fn load(&self) -> Result<TableHandle> {
        let table = self.catalog.load(&self.ident).await?;
        match &self.branch {
            Some(b) => table.on_branch(b),
            None => Ok(table),
        }
    }

    /// `change` to the table this run writes (main, or its branch).
    fn aimed(&self, change: Change) -> Change {
        match &self.branch {
            Some(b) => change.on_branch(b.clone()),
            None => change,
        }
    }

    /// Where this run starts reading.
    fn resume(&self) -> Position {
        self.resumed
            .as_ref()
            .map_or_else(Position::default, |(r, _)| r.reached)
    }

    /// The progress record of this run having reached `reached`.
    fn record(&self, reached: Position, complete: bool) -> String {
        Record::new(reached, complete, self.ranges.clone()).encode()
    }
}

/// Why a backfill does not run, as an error.
fn refusal(table: &TableHandle, decl: &TableDecl, refused: Refused) -> Error {
    let name = decl.qualified_name();
    let message = match refused {
        Refused::Finished {
            id,
            raw,
            forced_in_progress,
        } => {
            let snapshot = first_holding(table, &backfill_key(&id), &raw)
                .map_or("an earlier snapshot".to_string(), |s| {
                    format!("snapshot {s}")
                });
            let forced = forced_in_progress.map_or(String::new(), |f| {
                format!("; a --force run of it ({f}) was left unfinished: --force resumes it")
            });
            format!(
                "backfill {id} of these inputs into {name} was already committed \
                 ({snapshot}){forced}; add --force to add the data again"
            )
        }
        Refused::LegacyUnfinished { id, done } => format!(
            "backfill {id} into {name} was left unfinished by an earlier firn, which recorded \
             {done} committed chunk(s) but not their size, so where it stopped cannot be told \
             exactly. Finish it with the firn version and --chunk-events that started it, or \
             add --force to start it over (the {done} chunk(s) it committed stay and are added \
             again)"
        ),
        Refused::Unreadable { id, raw } => format!(
            "the progress record {} of backfill {id} in {name} is not one firn reads: {raw}",
            backfill_key(&id)
        ),
    };
    Error::new(ErrorKind::InvalidInput, message)
}

/// Run a backfill of `decl`'s table: find where it stands, resolve its
/// inputs, read them in chunks and commit each (with `--replace`, all in one
/// overwrite commit; dry, none), reporting progress to `progress`.
pub async fn run(
    catalog: &dyn Catalog,
    decl: &TableDecl,
    opts: &BackfillOptions,
    progress: ProgressFn,
) -> Result<BackfillReport> {
    let files = match opts.kafka {
        Some(_) => Vec::new(),
        None => input::expand(&opts.inputs, catalog.storage()).await?,
    };
    let mut target = Target::open(catalog, decl, opts, &files).await?;
    let plan = match opts.replace {
        Some(range) => Some(replace::plan(&target, range).await?),
        None => None,
    };
    let recorded = target
        .resumed
        .as_ref()
        .map_or(&[][..], |(r, _)| &r.ranges[..]);
    let caps = plan.as_ref().map(|p| p.ends.clone()).unwrap_or_default();
    let inputs = Inputs::resolve(opts, files, recorded, &caps).await?;
    target.ranges = inputs.ranges();
    let resume = target.resume();
    let mut report = BackfillReport {
        id: target.id.clone(),
        inputs: inputs.files.clone(),
        dry_run: opts.dry_run,
        resumed_at: target.resumed.as_ref().map(|_| ResumedAt {
            input: inputs
                .files
                .get(resume.input)
                .map_or_else(String::new, |f| f.location.clone()),
            at: resume.at,
        }),
        ..Default::default()
    };
    let total_bytes = inputs.files.iter().map(|f| f.size).sum();
    let loader = Loader::new(decl, opts, total_bytes, progress);
    let (loader, whole) = load(&target, &inputs, loader, &mut report).await?;
    match plan {
        Some(plan) => {
            report.count_rows(&whole.rows);
            replace::commit(&target, plan, whole, &mut report).await?;
        }
        // Nothing (left) to read: one empty chunk records the backfill as complete.
        None if resume.input >= inputs.files.len() && !opts.dry_run => {
            let mut committed = target.resumed.as_ref().map(|(_, raw)| raw.clone());
            let end = Position {
                input: inputs.files.len(),
                at: 0,
            };
            commit_chunk(
                &target,
                &mut committed,
                resume.input,
                (end, true),
                Chunk::default(),
            )
            .await?;
            report.chunks_committed += 1;
        }
        None => {}
    }
    loader.summarize(&mut report);
    if let Some(branch) = target.branch.as_ref().filter(|_| !opts.dry_run) {
        report.staged = Some(stage::diff(catalog, decl, branch).await?);
    }
    Ok(report)
}

/// Read every input from where the run resumes, in chunks, committing each
/// chunk (unless dry), or, with `--replace`, gathering them into the one
/// chunk returned. Each chunk is read while the one before it is written
/// and committed; commits stay in input order, one chunk at a time.
async fn load(
    target: &Target<'_>,
    inputs: &Inputs,
    mut loader: Loader,
    report: &mut BackfillReport,
) -> Result<(Loader, Chunk)> {
    let opts = target.opts;
    let resume = target.resume();
    let spec = loader.spec.clone();
    let mut whole = Chunk::default();
    // What the ledger holds for this run (the next commit is fenced on it).
    let mut committed = target.resumed.as_ref().map(|(_, raw)| raw.clone());
    let n = inputs.files.len();
    // Chunks never span inputs; a chunk's commit records the position after
    // its last record, so a rerun resumes there whatever its chunk size.
    for i in resume.input..n {
        let at = if i == resume.input { resume.at } else { 0 };
        let source = inputs.open(i, target.catalog.storage(), at).await?;
        let mut reading = loader.read_ahead(source);
        loader = loop {
            let (read_by, source, (chunk, eof)) = reading.chunk().await?;
            let reached = if eof {
                Position {
                    input: i + 1,
                    at: 0,
                }
            } else {
                Position {
                    input: i,
                    at: source.position(),
                }
            };
            // The next chunk is read while this one is committed.
            let next = match eof {
                true => Err(read_by),
                false => Ok(read_by.read_ahead(source)),
            };
            let last = eof && i + 1 == n;
            if chunk.events > 0 || last {
                report.count_read(&chunk);
                if opts.replace.is_some() {
                    whole.absorb(&spec, chunk);
                } else {
                    report.count_rows(&chunk.rows);
                    if !opts.dry_run {
                        commit_chunk(target, &mut committed, i, (reached, last), chunk).await?;
                        report.chunks_committed += 1;
                    }
                }
            }
            match next {
                Ok(next) => reading = next,
                Err(done) => break done,
            }
        };
    }
    Ok((loader, whole))
}

/// Commit one chunk of input `input`: its rejects that an earlier run has
/// not recorded, then its rows, advancing the fenced progress record from
/// `committed` to `reached`.
async fn commit_chunk(
    target: &Target<'_>,
    committed: &mut Option<String>,
    input: usize,
    (reached, last): (Position, bool),
    chunk: Chunk,
) -> Result<()> {
    let (catalog, ident, key) = (target.catalog, &target.ident, &target.key);
    let opts = target.opts;
    let set = target.record(reached, last);
    if !chunk.rejects.is_empty() {
        // A killed run may have recorded some of them (its chunks may have
        // ended elsewhere): those before its rejects record are in.
        let rt = catalog.load(&target.rejects_ident).await?;
        let recorded = held(&rt, key)
            .and_then(|v| Held::parse(&v))
            .and_then(|h| h.reached());
        let fresh: Vec<RejectRecord> = chunk
            .rejects
            .into_iter()
            .filter(|(at, _)| recorded.is_none_or(|r| Position { input, at: *at } >= r))
            .map(|(_, r)| r)
            .collect();
        if !fresh.is_empty() {
            commit_rejects(target, &fresh, set.clone()).await?;
        }
    }
    let table = target.load().await?;
    let written = std::time::Instant::now();
    let (files, added) =
        write_grains(&table, target.decl, chunk.rows, opts.target_file_size).await?;
    let change = Change::append(FirnOperation::Backfill, files);
    let change = target
        .aimed(change)
        .with_claim(Claim {
            key: key.to_string(),
            expect: committed.clone(),
            set: set.clone(),
        })
        .with_totals(&added, &ChangeTotals::default());
    let _permit = opts.budget.acquire(ident).await;
    if written.elapsed() > crate::maintain::orphans::MAX_UNCOMMITTED {
        return Err(Error::new(
            ErrorKind::Internal,
            format!(
                "backfill chunk to {ident} not committed: its files waited {}s, longer than \
                 orphan removal's safety margin allows; run the backfill again to resume here",
                written.elapsed().as_secs()
            ),
        ));
    }
    let done = commit::commit(catalog, ident, &change, opts.retry).await?;
    *committed = Some(set);
    tracing::info!(
        table = %ident,
        input = reached.input,
        at = reached.at,
        last,
        snapshot_id = done.snapshot_id,
        files = done.added_files,
        rows = done.added_records,
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
    let files = write::write_batches(
        &rt,
        None,
        "rejects",
        vec![batch],
        opts.target_file_size,
        None,
    )
    .await?;
    let change = Change::append(FirnOperation::BackfillRejects, files).with_claim(Claim {
        key: key.to_string(),
        expect: held(&rt, key),
        set,
    });
    let _permit = opts.budget.acquire(rejects_ident).await;
    commit::commit(catalog, rejects_ident, &change, opts.retry).await?;
    Ok(())
}

/// Rows of each grain as data files of `table`, and their totals.
async fn write_grains(
    table: &TableHandle,
    decl: &TableDecl,
    rows: BTreeMap<Grain, RowMap>,
    target_file_size: usize,
) -> Result<(Vec<crate::commit::NewFile>, ChangeTotals)> {
    let mut files = Vec::new();
    let mut totals = ChangeTotals::default();
    for (grain, rows) in rows {
        let rows = rows.sorted(&crate::rows::MeasureSpec::new(decl));
        let mut t = DayTotals::new(&Totals::new(decl));
        for row in rows.each_unordered() {
            t.add_row(row.ts_micros(), row.measures);
        }
        totals.add(grain, &t);
        files.extend(write::write_rows(table, decl, grain, rows, target_file_size).await?);
    }
    Ok((files, totals))
}
