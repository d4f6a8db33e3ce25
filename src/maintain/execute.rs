//! Executing a task: merge its inputs into the target partition (or nothing,
//! for retention) and swap them in with one commit. A task whose inputs were
//! replaced meanwhile reports "superseded" and leaves its files to orphan
//! removal. [`plan_table`] is where every maintenance run starts, and
//! [`run`] keeps a run inside the catalog's write budget by grouping
//! partitions into fewer commits.

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use iceberg::TableIdent;
use serde::Serialize;

use super::merge::{MergeReader, OutOfOrder};
use super::operation::Context;
use super::plan::{self, PlanOptions, Task, TaskKind};
use super::state;
use crate::catalog::{Catalog, TableHandle};
use crate::commit::{self, Change, NewFile, RemovedFile, RetryPolicy};
use crate::error::{Error, ErrorKind, Result};
use crate::faults::Faults;
use crate::schema::decl::TableDecl;
use crate::tables;
use crate::totals::{ChangeTotals, date_of};
use crate::write::{self, PartitionWriter};

/// What one task did.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TaskOutcome {
    /// Task kind.
    pub kind: TaskKind,
    /// Committed snapshot (`None` when superseded).
    pub snapshot_id: Option<i64>,
    /// Whether another commit replaced the inputs first.
    pub superseded: bool,
    /// Partitions written (rollup, compaction) or dropped (retention).
    pub partitions: usize,
    /// Files read and removed.
    pub files_in: usize,
    /// Files written.
    pub files_out: usize,
    /// Rows read.
    pub rows_in: u64,
    /// Rows written.
    pub rows_out: u64,
    /// Bytes read.
    pub bytes_in: u64,
    /// Bytes written.
    pub bytes_out: u64,
    /// Commit attempts.
    pub attempts: u32,
}

/// Plan `kind` for `decl`'s table: the one entry `firn compact|rollup|
/// retention` and `maintain --job` share, so both refuse alike a table whose
/// declaration drifted ([`tables::check_matches`]) or that holds rows firn's
/// rewrites cannot see ([`state::load_plannable`]), before anything is written.
pub async fn plan_table(
    catalog: &dyn Catalog,
    decl: &TableDecl,
    kind: TaskKind,
    opts: &PlanOptions,
) -> Result<Vec<Task>> {
    let table = catalog.load(&tables::ident(decl)?).await?;
    tables::check_matches(decl, &table.metadata)?;
    let st = state::load_plannable(&table).await?;
    Ok(match kind {
        TaskKind::Compact => plan::plan_compaction(&st, &decl.policy, opts),
        TaskKind::Rollup => plan::plan_rollup(&st, &decl.policy, opts),
        TaskKind::Retention => plan::plan_retention(&st, &decl.policy, opts),
    })
}

/// A task whose files are written and not yet committed.
#[derive(Clone)]
struct Prepared {
    outcome: TaskOutcome,
    removed: Vec<RemovedFile>,
    added: Vec<NewFile>,
    /// The totals of the rows added and of the rows removed (when read).
    totals: (ChangeTotals, ChangeTotals),
}

/// Execute one task on `decl`'s table, in a commit of its own.
pub async fn execute(
    ctx: &Context<'_>,
    decl: &TableDecl,
    task: &Task,
    target_file_size: usize,
) -> Result<TaskOutcome> {
    let ident = tables::ident(decl)?;
    let table = ctx.catalog.load(&ident).await?;
    let mut group = vec![
        prepare(
            table,
            decl.clone(),
            task.clone(),
            target_file_size,
            ctx.faults.clone(),
            ctx.jobs,
        )
        .await?,
    ];
    commit_group(ctx.catalog, &ident, task.kind, &mut group, ctx.retry).await?;
    Ok(group.remove(0).outcome)
}

/// Merge and write a task's output, ready for [`commit_group`]. Owns what
/// it reads, so that tasks run in parallel on the runtime's threads; a
/// merge of many files merges up to `jobs` groups of them at once.
async fn prepare(
    table: TableHandle,
    decl: TableDecl,
    task: Task,
    target_file_size: usize,
    faults: Option<Arc<Faults>>,
    jobs: usize,
) -> Result<Prepared> {
    let removed = task.inputs.iter().map(|f| f.removed()).collect();
    let mut outcome = TaskOutcome {
        kind: task.kind,
        snapshot_id: None,
        superseded: false,
        partitions: match task.target {
            Some(_) => 1,
            None => task
                .inputs
                .iter()
                .map(|f| (f.grain, f.partition))
                .collect::<std::collections::BTreeSet<_>>()
                .len(),
        },
        files_in: task.inputs.len(),
        files_out: 0,
        rows_in: task.rows(),
        rows_out: 0,
        bytes_in: task.bytes(),
        bytes_out: 0,
        attempts: 0,
    };
    let mut totals = (ChangeTotals::default(), ChangeTotals::default());
    let added = match task.target {
        None => {
            // A drop: what it removes is read, so the commit records it.
            let read = super::tally::tally(&table, &decl, &task.inputs, jobs).await?;
            for (file, days) in task.inputs.iter().zip(&read) {
                totals.1.add(file.grain, days);
            }
            Vec::new()
        }
        Some((grain, partition)) => {
            let mut inputs = task.inputs.clone();
            let (files, reader) = loop {
                let merged = merge_into(
                    &table,
                    &decl,
                    &inputs,
                    (grain, partition),
                    target_file_size,
                    faults.clone(),
                    jobs,
                )
                .await;
                // A file recorded as in key order that is not: merged
                // again, the file sorted first (a merge stops at the first
                // row out of order, before anything is committed).
                let unsorted = merged.as_ref().err().and_then(OutOfOrder::of);
                match unsorted.and_then(|o| {
                    inputs
                        .iter_mut()
                        .find(|f| f.path == o.input && f.sort_order.is_some())
                }) {
                    Some(file) => {
                        tracing::warn!(
                            table = %table.ident,
                            file = %file.path,
                            sort_order = file.sort_order,
                            "a data file recorded as in key order is not; merging again with \
                             the file sorted first"
                        );
                        file.sort_order = None;
                    }
                    None => break merged?,
                }
            };
            outcome.rows_out = reader.rows_out;
            if let Some((day, measure, read, merged)) = reader.merge.unconserved() {
                return Err(Error::new(
                    ErrorKind::Internal,
                    format!(
                        "refusing to commit the {} of table {} into {}: on {}, measure \
                         `{measure}` totals {read} in the {} files read but {merged} in the \
                         rows merged; the table is left as it was (the files written are \
                         left to orphan removal)",
                        task.kind.as_str(),
                        table.ident,
                        plan::partition_name(grain, partition),
                        date_of(day),
                        task.inputs.len(),
                    ),
                ));
            }
            totals.0.add(grain, reader.merge.written());
            for (file, read) in task.inputs.iter().zip(reader.merge.read_by_input()) {
                totals.1.add(file.grain, read);
            }
            outcome.files_out = files.len();
            outcome.bytes_out = files.iter().map(|f| f.file.file_size_in_bytes()).sum();
            files
        }
    };
    Ok(Prepared {
        outcome,
        removed,
        added,
        totals,
    })
}

/// A finished merge, and the rows it put out.
struct Merged {
    merge: MergeReader,
    rows_out: u64,
}

/// Merge `inputs` into `target` (a grain and partition) of `table` and
/// write the rows as data files.
async fn merge_into(
    table: &TableHandle,
    decl: &TableDecl,
    inputs: &[state::LiveFile],
    (grain, partition): (crate::schema::layout::Grain, i32),
    target_file_size: usize,
    faults: Option<Arc<Faults>>,
    jobs: usize,
) -> Result<(Vec<NewFile>, Merged)> {
    let mut merge = MergeReader::open(table, decl, inputs, grain, jobs)
        .await?
        .with_faults(faults, table.metadata.location());
    let key = write::partition_key(table, grain, partition)?;
    let order = crate::schema::layout::key_order_id(&table.metadata, decl);
    let writer =
        PartitionWriter::open(table, Some(key), grain.as_str(), target_file_size, order).await?;
    // The files are encoded on a task of their own while the merge makes
    // the next batch: one batch in flight, so memory stays bounded by the
    // merge's.
    let (batches, writing) = write_behind(writer);
    let mut rows_out = 0;
    while let Some(batch) = merge.next_batch().await? {
        rows_out += batch.num_rows() as u64;
        if batches.send(batch).await.is_err() {
            // The writer stopped on an error, which `finish` returns.
            break;
        }
    }
    drop(batches);
    let files = writing.finish().await?;
    Ok((files, Merged { merge, rows_out }))
}

/// A writer of merged batches on a task of its own: batches sent to the
/// channel are written in order; [`Writing::finish`] closes the files once
/// the sender is dropped. The task is aborted if dropped unfinished (the
/// merge failed), leaving what it wrote to orphan removal.
fn write_behind(
    mut writer: PartitionWriter,
) -> (tokio::sync::mpsc::Sender<arrow_array::RecordBatch>, Writing) {
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let task = tokio::spawn(async move {
        while let Some(batch) = rx.recv().await {
            writer.write(batch).await?;
        }
        writer.close().await
    });
    (tx, Writing(task))
}

/// The task of [`write_behind`].
struct Writing(tokio::task::JoinHandle<Result<Vec<NewFile>>>);

impl Writing {
    /// The files written, once every batch is.
    async fn finish(mut self) -> Result<Vec<NewFile>> {
        (&mut self.0).await.map_err(|e| {
            Error::new(
                ErrorKind::Internal,
                format!("writing data files stopped: {e}"),
            )
        })?
    }
}

impl Drop for Writing {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Swap the prepared tasks in with one commit (a `replace`, or a `delete`
/// when nothing is added), recording the snapshot in each outcome. `Ok`
/// also when superseded: then every outcome says so and the files written
/// are left to orphan removal.
async fn commit_group(
    catalog: &dyn Catalog,
    ident: &TableIdent,
    kind: TaskKind,
    group: &mut [Prepared],
    retry: RetryPolicy,
) -> Result<()> {
    let added: Vec<NewFile> = group.iter().flat_map(|p| p.added.clone()).collect();
    let removed = group.iter().flat_map(|p| p.removed.clone()).collect();
    let (mut totals_added, mut totals_removed) = (ChangeTotals::default(), ChangeTotals::default());
    for p in group.iter() {
        totals_added.absorb(&p.totals.0);
        totals_removed.absorb(&p.totals.1);
    }
    let change = if added.is_empty() {
        Change::delete(kind.operation(), removed)
    } else {
        Change::replace(kind.operation(), removed, added)
    }
    .with_totals(&totals_added, &totals_removed);
    match commit::commit(catalog, ident, &change, retry).await {
        Ok(c) => {
            for p in group.iter_mut() {
                p.outcome.snapshot_id = Some(c.snapshot_id);
                p.outcome.attempts = c.attempts;
            }
            Ok(())
        }
        Err(e) if e.kind() == ErrorKind::Superseded => {
            tracing::warn!(table = %ident, partitions = group.len(), error = %e, "superseded; the files written are left to orphan removal");
            for p in group.iter_mut() {
                p.outcome.superseded = true;
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Totals of a run of tasks.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunReport {
    /// Tasks committed.
    pub committed: usize,
    /// Iceberg commits made (fewer than tasks when partitions were grouped).
    pub commits: usize,
    /// Tasks superseded.
    pub superseded: usize,
    /// Tasks that failed.
    pub failed: usize,
    /// Commit attempts beyond the first, over all tasks (conflicts retried).
    pub retries: u32,
    /// Per-task outcomes.
    pub tasks: Vec<TaskOutcome>,
}

impl RunReport {
    /// The run as a step of run metrics (superseded tasks count nothing).
    pub fn totals(&self) -> crate::telemetry::run::StepTotals {
        let mut t = crate::telemetry::run::StepTotals {
            commits: self.commits as u64,
            failed_tasks: self.failed as u64,
            ..Default::default()
        };
        for o in self.tasks.iter().filter(|o| !o.superseded) {
            t.partitions += o.partitions as u64;
            t.rows_in += o.rows_in;
            t.rows_out += o.rows_out;
            t.bytes_reclaimed += o.bytes_in as i64 - o.bytes_out as i64;
        }
        t
    }
}

/// Execute `tasks` on `decl`'s table, one commit per task (so a long run
/// makes partial progress) while they fit in `ctx`'s write budget; a failed
/// task is reported and the others still run. Up to `ctx.jobs` tasks merge
/// and write their files at once, each on its own runtime thread; commits
/// stay one at a time and in plan order. A plan with more partitions than a
/// minute's budget commits them in groups
/// ([`crate::budget::CommitBudget::group_size`]) — one `replace` of several
/// partitions, as Spark's `rewrite_data_files` commits file groups. A group
/// that another commit superseded is committed again partition by partition
/// from the files already written, so one raced partition does not cost the
/// others their work.
pub async fn run(
    ctx: &Context<'_>,
    decl: &TableDecl,
    tasks: &[Task],
    target_file_size: usize,
) -> Result<RunReport> {
    let (catalog, budget, retry) = (ctx.catalog, &ctx.budget, ctx.retry);
    let ident = &tables::ident(decl)?;
    let mut report = RunReport::default();
    let Some(kind) = tasks.first().map(|t| t.kind) else {
        return Ok(report);
    };
    let size = budget.group_size(tasks.len());
    if size > 1 {
        tracing::info!(
            table = %ident,
            tasks = tasks.len(),
            partitions_per_commit = size,
            commits_per_minute = budget.per_minute(),
            "grouping partitions to stay within the commit budget"
        );
    }
    let table = catalog.load(ident).await?;
    let mut prepared = futures::stream::iter(tasks.iter().cloned().enumerate())
        .map(|(i, task)| {
            let started = Instant::now();
            let work = tokio::spawn(prepare(
                table.clone(),
                decl.clone(),
                task,
                target_file_size,
                ctx.faults.clone(),
                ctx.jobs,
            ));
            async move {
                let done = work.await.unwrap_or_else(|e| {
                    Err(Error::new(
                        ErrorKind::Iceberg,
                        format!("a merge task stopped: {e}"),
                    ))
                });
                (i, started, done)
            }
        })
        .buffered(ctx.jobs.max(1))
        .chunks(size);
    while let Some(chunk) = prepared.next().await {
        let started = chunk
            .iter()
            .map(|(_, s, _)| *s)
            .min()
            .unwrap_or_else(Instant::now);
        let mut group = Vec::new();
        for (i, _, done) in chunk {
            match done {
                Ok(p) => group.push((i, p)),
                Err(e) => {
                    tracing::error!(table = %ident, task = i + 1, operation = kind.as_str(), error = %e, "task failed");
                    report.failed += 1;
                }
            }
        }
        let mut pending = vec![group];
        while let Some(mut group) = pending.pop() {
            if group.is_empty() {
                continue;
            }
            let _permit = budget.acquire(ident).await;
            if started.elapsed() > ctx.max_uncommitted {
                for (i, _) in group.drain(..) {
                    tracing::error!(
                        table = %ident,
                        task = i + 1,
                        operation = kind.as_str(),
                        held_seconds = started.elapsed().as_secs(),
                        "not committed: its files waited longer than orphan removal's \
                         safety margin allows; they are left to orphan removal, rerun the task"
                    );
                    report.failed += 1;
                }
                continue;
            }
            let mut prepared: Vec<Prepared> = group.iter().map(|(_, p)| p.clone()).collect();
            match commit_group(catalog, ident, kind, &mut prepared, retry).await {
                Ok(()) if prepared[0].outcome.superseded && prepared.len() > 1 => {
                    tracing::warn!(table = %ident, partitions = prepared.len(), "a grouped commit was superseded; committing its partitions one by one");
                    pending.extend(group.into_iter().rev().map(|one| vec![one]));
                }
                Ok(()) => {
                    if !prepared[0].outcome.superseded {
                        report.commits += 1;
                        report.retries += prepared[0].outcome.attempts.saturating_sub(1);
                    }
                    for ((i, _), p) in group.iter().zip(prepared) {
                        done(ident, *i, tasks.len(), &p.outcome, started);
                        if p.outcome.superseded {
                            report.superseded += 1;
                        } else {
                            report.committed += 1;
                        }
                        report.tasks.push(p.outcome);
                    }
                }
                Err(e) => {
                    for (i, _) in group.drain(..) {
                        tracing::error!(table = %ident, task = i + 1, operation = kind.as_str(), error = %e, "task failed");
                        report.failed += 1;
                    }
                }
            }
        }
    }
    Ok(report)
}

fn done(ident: &TableIdent, i: usize, of: usize, o: &TaskOutcome, started: Instant) {
    tracing::info!(
        table = %ident,
        task = i + 1,
        of,
        operation = o.kind.as_str(),
        snapshot_id = ?o.snapshot_id,
        superseded = o.superseded,
        files_in = o.files_in,
        files_out = o.files_out,
        rows_in = o.rows_in,
        rows_out = o.rows_out,
        seconds = started.elapsed().as_secs_f64(),
        "task done"
    );
}
