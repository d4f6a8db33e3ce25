//! Flushing a batch: rejects first (fenced per record), then the minute rows
//! as one Iceberg append whose summary carries the group's offsets (fenced
//! per partition). Kafka offsets are committed by the caller, after.

use std::collections::BTreeMap;
use std::sync::Arc;

use iceberg::TableIdent;

use super::batch::Batch;
use crate::catalog::Catalog;
use crate::commit::{self, Change, FirnOperation, RetryPolicy, summary};
use crate::error::{ErrorKind, Result};
use crate::offsets::{self, OffsetAdvance};
use crate::rejects::{self, RejectRecord};
use crate::rows::MeasureSpec;
use crate::schema::decl::TableDecl;
use crate::schema::layout::Grain;
use crate::totals::{ChangeTotals, DayTotals, Totals};
use crate::write;

/// What a flush did.
#[derive(Debug, Clone, PartialEq)]
pub enum FlushOutcome {
    /// Nothing was buffered.
    Empty,
    /// The batch is in the table.
    Committed {
        /// The new snapshot.
        snapshot_id: i64,
        /// Records covered.
        records: u64,
        /// Minute rows written.
        rows: u64,
        /// Data files written.
        files: usize,
        /// Rejects recorded (new ones; re-deliveries are skipped).
        rejects: usize,
        /// Bytes of the data files.
        bytes: u64,
        /// Commit attempts.
        attempts: u32,
        /// Seconds writing the rejects and the data files.
        write_seconds: f64,
        /// Seconds committing the rows.
        commit_seconds: f64,
    },
}

/// One table's batch taken out of its sink to be committed, with where
/// each of its partitions started (the fence).
#[derive(Debug)]
pub struct FlushJob {
    /// The table.
    pub ident: TableIdent,
    /// Its rejects table.
    pub rejects_ident: TableIdent,
    /// Its declaration.
    pub decl: TableDecl,
    /// The batch.
    pub batch: Batch,
    /// Where each partition of the batch started: the offsets the table must
    /// still hold for the commit to land.
    pub from: BTreeMap<i32, Option<i64>>,
}

/// Commit `job`'s batch. On any error nothing of the batch's rows is in the
/// table (`Fenced` means another worker committed the range); the caller
/// re-reads from the table's offsets.
pub async fn flush(
    catalog: &dyn Catalog,
    group: &str,
    job: FlushJob,
    target_file_size: usize,
    retry: RetryPolicy,
) -> Result<FlushOutcome> {
    let FlushJob {
        ident,
        rejects_ident,
        decl,
        batch,
        from,
    } = job;
    if batch.is_empty() {
        return Ok(FlushOutcome::Empty);
    }
    let started = std::time::Instant::now();
    let topic = decl.topic.clone();
    let rejects = if batch.rejects.is_empty() {
        0
    } else {
        commit_rejects(
            catalog,
            group,
            &rejects_ident,
            &topic,
            &batch.rejects,
            retry,
        )
        .await?
    };

    let table = catalog.load(&ident).await?;
    let rows = batch.rows.sorted(&MeasureSpec::new(&decl));
    let row_count = rows.len() as u64;
    let mut added = DayTotals::new(&Totals::new(&decl));
    for row in rows.each_unordered() {
        added.add_row(row.ts_micros(), row.measures);
    }
    let mut added_by_grain = ChangeTotals::default();
    added_by_grain.add(Grain::Minute, &added);
    let files = write::write_rows(&table, &decl, Grain::Minute, rows, target_file_size).await?;
    let file_count = files.len();
    let bytes = files.iter().map(|f| f.file.file_size_in_bytes()).sum();
    let write_seconds = started.elapsed().as_secs_f64();
    let change = Change::append(FirnOperation::Ingest, files)
        .with_offsets(OffsetAdvance {
            group: group.to_string(),
            topic,
            from,
            to: batch.to,
        })
        .with_property(summary::RECORDS, batch.records.to_string())
        .with_totals(&added_by_grain, &ChangeTotals::default());
    let committing = std::time::Instant::now();
    let committed = commit::commit(catalog, &ident, &change, retry).await?;
    let commit_seconds = committing.elapsed().as_secs_f64();
    Ok(FlushOutcome::Committed {
        snapshot_id: committed.snapshot_id,
        records: batch.records,
        rows: row_count,
        files: file_count,
        rejects,
        bytes,
        attempts: committed.attempts,
        write_seconds,
        commit_seconds,
    })
}

/// Append rejects not yet recorded. The rejects table's summary holds, per
/// partition, the offset after the last reject it recorded; records below it
/// are re-deliveries and are skipped, so each reject is recorded once.
///
/// The append is fenced like a batch. Fenced here means another worker
/// recorded some of these rejects since the table was read (a re-delivery
/// around a rebalance), so unlike a batch it is tried again: what is still
/// fresh is worked out anew on the new base.
async fn commit_rejects(
    catalog: &dyn Catalog,
    group: &str,
    ident: &TableIdent,
    topic: &str,
    rejects: &[RejectRecord],
    retry: RetryPolicy,
) -> Result<usize> {
    let what = format!("recording rejects in {ident}");
    crate::retry::retry_when(
        retry,
        &what,
        |e| e.kind() == ErrorKind::Fenced,
        || async {
            let base = catalog.load(ident).await?;
            let held = offsets::read(&base.metadata, group)?
                .remove(topic)
                .unwrap_or_default();
            let fresh: Vec<RejectRecord> = rejects
                .iter()
                .filter(|r| held.get(&r.partition).is_none_or(|h| r.offset >= *h))
                .cloned()
                .collect();
            if fresh.is_empty() {
                return Ok(0);
            }
            let mut advance = OffsetAdvance {
                group: group.to_string(),
                topic: topic.to_string(),
                ..Default::default()
            };
            for r in &fresh {
                advance
                    .from
                    .insert(r.partition, held.get(&r.partition).copied());
                let to = advance.to.entry(r.partition).or_insert(0);
                *to = (*to).max(r.offset + 1);
            }
            let schema = Arc::new(
                iceberg::arrow::schema_to_arrow_schema(base.metadata.current_schema())
                    .map_err(|e| crate::Error::iceberg(format!("arrow schema of {ident}"), e))?,
            );
            let batch = rejects::to_batch(schema, &fresh)?;
            let files = write::write_batches(
                &base,
                None,
                "rejects",
                vec![batch],
                write::DEFAULT_TARGET_FILE_SIZE,
                None,
            )
            .await?;
            let change = Change::append(FirnOperation::IngestRejects, files).with_offsets(advance);
            commit::commit(catalog, ident, &change, retry).await?;
            Ok(fresh.len())
        },
    )
    .await
}
