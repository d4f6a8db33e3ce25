//! `firn backfill`: load a time range from event files with the ingest
//! decoder, writing each row at the grain the table's policy gives its age
//! (last year's events land as day rows, not minute rows waiting for
//! rollup). Work is committed in chunks; each chunk's commit advances a
//! fenced progress record (`firn.backfill.<id>`) in the snapshot summary, so a
//! killed backfill resumes where it stopped and a finished one is refused
//! unless `--force`.

pub mod input;
pub mod kafka;
mod replace;

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use xxhash_rust::xxh3::xxh3_64;

use self::input::InputFile;
use crate::catalog::{Catalog, TableHandle};
use crate::commit::summary::backfill_key;
use crate::commit::{self, Change, Claim, FirnOperation, RetryPolicy};
use crate::error::{Error, ErrorKind, Result};
use crate::ingest::decode::{Decoder, TimeWindow};
use crate::ledger::{self, Ledger};
use crate::maintain::plan::due_grain;
use crate::rejects::{self, RejectRecord};
use crate::rows::{MeasureSpec, MeasureValue, RowMap};
use crate::schema::decl::TableDecl;
use crate::schema::layout::Grain;
use crate::{tables, write};

/// What to backfill.
#[derive(Debug, Clone)]
pub struct BackfillOptions {
    /// Paths, globs or URLs.
    pub inputs: Vec<String>,
    /// The time ages (and the accepted window) are measured from.
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
    pub budget: crate::budget::CommitBudget,
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

/// Progress on a terminal (a bar) or in logs (a line every 5 s).
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    started: Instant,
    last_log: Instant,
    bytes: u64,
    total: u64,
}

impl Progress {
    fn new(total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new(total);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:30} {bytes}/{total_bytes} {msg} ETA {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b
        });
        Self {
            bar,
            started: Instant::now(),
            last_log: Instant::now(),
            bytes: 0,
            total,
        }
    }

    fn update(&mut self, bytes: u64, events: u64) {
        self.bytes += bytes;
        let rate = events as f64 / self.started.elapsed().as_secs_f64().max(0.001);
        if let Some(b) = &self.bar {
            b.set_position(self.bytes.min(self.total));
            b.set_message(format!("{events} events ({rate:.0}/s)"));
        } else if self.last_log.elapsed() >= Duration::from_secs(5) {
            self.last_log = Instant::now();
            tracing::info!(
                events,
                events_per_second = rate as u64,
                bytes_read = self.bytes,
                of_bytes = self.total,
                "backfilling"
            );
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// One stretch of input that chunks never cross: a file or a partition range.
enum Segment {
    File {
        reader: Box<dyn BufRead + Send>,
        line_no: i64,
        buf: Vec<u8>,
    },
    Kafka(kafka::Segment),
}

impl Segment {
    /// The next record: (partition, offset or line number, payload, bytes).
    fn next_record(&mut self, location: &str) -> Result<Option<kafka::RawRecord>> {
        match self {
            Segment::File {
                reader,
                line_no,
                buf,
            } => {
                buf.clear();
                let n = reader.read_until(b'\n', buf).map_err(|e| {
                    Error::new(
                        ErrorKind::Io,
                        format!("reading {location} at line {}", *line_no + 1),
                    )
                    .with_source(e)
                })?;
                if n == 0 {
                    return Ok(None);
                }
                *line_no += 1;
                let line = buf.strip_suffix(b"\n").unwrap_or(buf);
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                Ok(Some(kafka::RawRecord {
                    partition: -1,
                    offset: *line_no,
                    payload: line.to_vec(),
                    bytes: n,
                }))
            }
            Segment::Kafka(k) => k.next_record(),
        }
    }

    /// What rejects name as their source: the file, or the topic.
    fn label(&self, location: &str) -> String {
        match self {
            Segment::File { .. } => location.to_string(),
            Segment::Kafka(k) => k.topic().to_string(),
        }
    }
}

/// One chunk's decoded content.
#[derive(Default)]
struct Chunk {
    rows: BTreeMap<Grain, RowMap>,
    rejects: Vec<RejectRecord>,
    events: u64,
}

/// Run a backfill of `decl`'s table.
pub async fn run(
    catalog: &dyn Catalog,
    decl: &TableDecl,
    opts: &BackfillOptions,
) -> Result<BackfillReport> {
    let ident = tables::ident(decl)?;
    let rejects_ident = tables::rejects_ident(decl)?;
    let (files, ranges) = match &opts.kafka {
        Some(k) => {
            let ranges = kafka::resolve(k).await?;
            let files = ranges
                .iter()
                .map(|r| InputFile {
                    location: format!("kafka:{}/{}[{}..{})", k.topic, r.partition, r.start, r.end),
                    size: (r.end - r.start).max(0) as u64,
                })
                .collect();
            (files, Some(ranges))
        }
        None => (input::expand(&opts.inputs, catalog.storage()).await?, None),
    };
    let base_id = identity(decl, &files);
    let table = catalog.load(&ident).await?;
    tables::check_matches(decl, &table.metadata)?;
    let base_key = backfill_key(&base_id);
    let id = match held(&table, &base_key) {
        Some(v) if serde_json::from_str::<Record>(&v).is_ok_and(|r| r.complete) => {
            if !opts.force {
                let snapshot = first_holding(&table, &base_key, &v)
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
            format!("{base_id}-{}", uuid::Uuid::now_v7().simple())
        }
        _ => base_id,
    };
    let key = backfill_key(&id);
    let resume_from = held(&table, &key)
        .and_then(|v| serde_json::from_str::<Record>(&v).ok())
        .map_or(0, |r| r.done);

    let spec = MeasureSpec::new(decl);
    let decoder = Decoder::new(decl.clone());
    let window = TimeWindow::new(opts.now, decl, opts.future_skew);
    let now_micros = opts.now.timestamp_micros();
    let mut report = BackfillReport {
        id: id.clone(),
        inputs: files.clone(),
        dry_run: opts.dry_run,
        ..Default::default()
    };
    let mut totals = spec.empty();
    let mut progress = Progress::new(files.iter().map(|f| f.size).sum());
    let chunk_events = opts.chunk_events.max(1);
    let mut partitions: BTreeMap<Grain, std::collections::BTreeSet<i32>> = BTreeMap::new();
    // With --replace, every chunk goes into one overwrite commit.
    let mut whole = Chunk::default();

    // Chunks never span files: chunk boundaries depend only on the inputs.
    let mut chunk_index: u64 = 0;
    for (fi, file) in files.iter().enumerate() {
        let mut segment = match (&ranges, &opts.kafka) {
            (Some(ranges), Some(k)) => kafka::Segment::open(k, ranges[fi]).map(Segment::Kafka)?,
            _ => Segment::File {
                reader: input::open(file, catalog.storage()).await?,
                line_no: 0,
                buf: Vec::new(),
            },
        };
        let mut eof = false;
        while !eof {
            let mut chunk = Chunk::default();
            let skipping = chunk_index < resume_from;
            while chunk.events < chunk_events as u64 {
                let Some(kafka::RawRecord {
                    partition,
                    offset,
                    payload: line,
                    bytes: n,
                }) = segment.next_record(&file.location)?
                else {
                    eof = true;
                    break;
                };
                progress.update(n as u64, report.events + chunk.events);
                if partition == -1 && line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let line_no = offset;
                let line = &line[..];
                chunk.events += 1;
                if skipping {
                    continue;
                }
                match decoder.decode(line, window) {
                    Ok(ev)
                        if opts.replace.is_some_and(|(from, to)| {
                            let ts = ev.key.ts_micros;
                            ts < from.timestamp_micros() || ts >= to.timestamp_micros()
                        }) =>
                    {
                        chunk.rejects.push(RejectRecord {
                            topic: segment.label(&file.location),
                            partition,
                            offset: line_no,
                            rejected_at_micros: Utc::now().timestamp_micros(),
                            reason_code: "outside_range".into(),
                            reason: "event time outside the --from/--to range being replaced"
                                .into(),
                            payload: line.to_vec(),
                        })
                    }
                    Ok(mut ev) => {
                        let minute = Grain::Minute.partition_ordinal(ev.key.ts_micros);
                        let grain = due_grain(&decl.policy, now_micros, Grain::Minute, minute);
                        ev.key.ts_micros = grain.truncate(ev.key.ts_micros);
                        partitions
                            .entry(grain)
                            .or_default()
                            .insert(grain.partition_ordinal(ev.key.ts_micros));
                        chunk
                            .rows
                            .entry(grain)
                            .or_default()
                            .add_event(&spec, ev.key, &ev.values);
                        let mut one = spec.empty();
                        spec.add_event(&mut one, &ev.values);
                        spec.merge(&mut totals, &one);
                    }
                    Err(reason) => chunk.rejects.push(RejectRecord {
                        topic: segment.label(&file.location),
                        partition,
                        offset: line_no,
                        rejected_at_micros: Utc::now().timestamp_micros(),
                        reason_code: reason.as_label().to_string(),
                        reason: reason.to_string(),
                        payload: line.to_vec(),
                    }),
                }
            }
            let last = eof && fi + 1 == files.len();
            if chunk.events == 0 && !last {
                continue;
            }
            if opts.replace.is_some() {
                report.events += chunk.events;
                report.rejected += chunk.rejects.len() as u64;
                whole.events += chunk.events;
                whole.rejects.extend(chunk.rejects);
                for (g, rows) in chunk.rows {
                    whole.rows.entry(g).or_default().absorb(&spec, rows);
                }
            } else if skipping {
                report.chunks_skipped += 1;
            } else {
                report.events += chunk.events;
                report.rejected += chunk.rejects.len() as u64;
                for (g, rows) in &chunk.rows {
                    *report
                        .rows_by_grain
                        .entry(g.as_str().to_string())
                        .or_default() += rows.len() as u64;
                }
                if !opts.dry_run {
                    commit_chunk(
                        catalog,
                        decl,
                        &ident,
                        &rejects_ident,
                        &key,
                        chunk_index,
                        last,
                        chunk,
                        opts,
                    )
                    .await?;
                    report.chunks_committed += 1;
                }
            }
            chunk_index += 1;
        }
    }
    if let Some(range) = opts.replace {
        for (g, rows) in &whole.rows {
            *report
                .rows_by_grain
                .entry(g.as_str().to_string())
                .or_default() += rows.len() as u64;
        }
        replace::replace(
            catalog,
            decl,
            &ident,
            &rejects_ident,
            &key,
            range,
            whole,
            opts,
            &mut report,
        )
        .await?;
    } else if files.is_empty() && !opts.dry_run {
        commit_chunk(
            catalog,
            decl,
            &ident,
            &rejects_ident,
            &key,
            0,
            true,
            Chunk::default(),
            opts,
        )
        .await?;
    }
    progress.finish();
    report.partitions_by_grain = partitions
        .into_iter()
        .map(|(g, p)| (g.as_str().to_string(), p.len()))
        .collect();
    report.totals = decl
        .measures
        .iter()
        .zip(&totals.0)
        .map(|(m, v)| {
            let v = match v {
                MeasureValue::Long(v) => serde_json::json!(v),
                MeasureValue::Double(v) => serde_json::json!(v),
            };
            (m.name.clone(), v)
        })
        .collect();
    Ok(report)
}

/// Commit one chunk: its rejects (skipped if an earlier run recorded them),
/// then its rows, advancing the fenced progress record from `index` to
/// `index + 1`.
#[allow(clippy::too_many_arguments)]
async fn commit_chunk(
    catalog: &dyn Catalog,
    decl: &TableDecl,
    ident: &iceberg::TableIdent,
    rejects_ident: &iceberg::TableIdent,
    key: &str,
    index: u64,
    last: bool,
    chunk: Chunk,
    opts: &BackfillOptions,
) -> Result<()> {
    let retry = RetryPolicy::default();
    let record = |done: u64, complete: bool| {
        serde_json::to_string(&Record { done, complete }).unwrap_or_default()
    };
    if !chunk.rejects.is_empty() {
        let rt = catalog.load(rejects_ident).await?;
        let held_done = held(&rt, key)
            .and_then(|v| serde_json::from_str::<Record>(&v).ok())
            .map_or(0, |r| r.done);
        if held_done <= index {
            commit_rejects(
                catalog,
                rejects_ident,
                key,
                &chunk.rejects,
                record(index + 1, last),
                opts,
            )
            .await?;
        }
    }
    let table = catalog.load(ident).await?;
    let files = write_grains(&table, decl, chunk.rows, opts.target_file_size).await?;
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
pub(super) async fn commit_rejects(
    catalog: &dyn Catalog,
    rejects_ident: &iceberg::TableIdent,
    key: &str,
    rejects: &[RejectRecord],
    set: String,
    opts: &BackfillOptions,
) -> Result<()> {
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
    commit::commit(catalog, rejects_ident, &change, RetryPolicy::default()).await?;
    Ok(())
}

/// Rows of each grain as data files of `table`.
pub(super) async fn write_grains(
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
