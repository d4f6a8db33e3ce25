//! Executing a task: merge its inputs into the target partition (or nothing,
//! for retention) and swap them in with one commit. A task whose inputs were
//! replaced meanwhile reports "superseded" and leaves its files to orphan
//! removal.

use std::time::Instant;

use iceberg::TableIdent;
use iceberg::spec::Operation;
use serde::Serialize;

use super::merge::{self, MergeReader};
use super::plan::{Task, TaskKind};
use crate::catalog::Catalog;
use crate::commit::{self, Change, RetryPolicy};
use crate::error::{ErrorKind, Result};
use crate::rows::{Measures, RowKey};
use crate::schema::decl::TableDecl;
use crate::write::{self, PartitionWriter};

/// Rows buffered before they are encoded into a batch.
const WRITE_BATCH: usize = 64 * 1024;

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

/// Execute one task on `ident`.
pub async fn execute(
    catalog: &dyn Catalog,
    ident: &TableIdent,
    decl: &TableDecl,
    task: &Task,
    target_file_size: usize,
    retry: RetryPolicy,
) -> Result<TaskOutcome> {
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
    let change = match task.target {
        None => Change {
            operation: Operation::Delete,
            removed,
            ..Change::append(task.kind.as_str(), Vec::new())
        },
        Some((grain, partition)) => {
            let table = catalog.load(ident).await?;
            let mut reader = MergeReader::open(&table, decl, &task.inputs, grain).await?;
            let arrow = merge::arrow_schema(&table)?;
            let key = write::partition_key(&table, grain, partition)?;
            let mut writer =
                PartitionWriter::open(&table, Some(key), grain.as_str(), target_file_size).await?;
            let mut buffer: Vec<(RowKey, Measures)> = Vec::with_capacity(WRITE_BATCH);
            while let Some(row) = reader.next_row().await? {
                buffer.push(row);
                if buffer.len() == WRITE_BATCH {
                    outcome.rows_out += buffer.len() as u64;
                    for b in write::to_batches(&arrow, decl, grain, &buffer)? {
                        writer.write(b).await?;
                    }
                    buffer.clear();
                }
            }
            outcome.rows_out += buffer.len() as u64;
            for b in write::to_batches(&arrow, decl, grain, &buffer)? {
                writer.write(b).await?;
            }
            let files = writer.close().await?;
            outcome.files_out = files.len();
            outcome.bytes_out = files.iter().map(|f| f.file.file_size_in_bytes()).sum();
            Change {
                operation: Operation::Replace,
                removed,
                ..Change::append(task.kind.as_str(), files)
            }
        }
    };
    match commit::commit(catalog, ident, &change, retry).await {
        Ok(c) => {
            outcome.snapshot_id = Some(c.snapshot_id);
            outcome.attempts = c.attempts;
            Ok(outcome)
        }
        Err(e) if e.kind() == ErrorKind::Superseded => {
            tracing::warn!(table = %ident, error = %e, "task superseded; its files are left to orphan removal");
            outcome.superseded = true;
            Ok(outcome)
        }
        Err(e) => Err(e),
    }
}

/// Totals of a run of tasks.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunReport {
    /// Tasks committed.
    pub committed: usize,
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
            commits: self.committed as u64,
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

/// Execute tasks one after another (one commit each, so a long run makes
/// partial progress); a failed task is reported and the others still run.
pub async fn run_plan(
    catalog: &dyn Catalog,
    ident: &TableIdent,
    decl: &TableDecl,
    tasks: &[Task],
    target_file_size: usize,
    retry: RetryPolicy,
) -> RunReport {
    let mut report = RunReport::default();
    for (i, task) in tasks.iter().enumerate() {
        let started = Instant::now();
        match execute(catalog, ident, decl, task, target_file_size, retry).await {
            Ok(o) => {
                tracing::info!(
                    table = %ident,
                    task = i + 1,
                    of = tasks.len(),
                    operation = task.kind.as_str(),
                    snapshot_id = ?o.snapshot_id,
                    superseded = o.superseded,
                    files_in = o.files_in,
                    files_out = o.files_out,
                    rows_in = o.rows_in,
                    rows_out = o.rows_out,
                    seconds = started.elapsed().as_secs_f64(),
                    "task done"
                );
                if o.superseded {
                    report.superseded += 1;
                } else {
                    report.committed += 1;
                }
                report.retries += o.attempts.saturating_sub(1);
                report.tasks.push(o);
            }
            Err(e) => {
                tracing::error!(table = %ident, task = i + 1, operation = task.kind.as_str(), error = %e, "task failed");
                report.failed += 1;
            }
        }
    }
    report
}
