//! `firn backfill --replace`: one overwrite commit swaps everything a
//! partition-aligned range holds for the backfilled rows.

use chrono::{DateTime, Utc};

use super::chunk::Chunk;
use super::{BackfillReport, Record, Target};
use crate::commit::{self, Change, Claim, FirnOperation};
use crate::error::{Error, ErrorKind, Result};
use crate::schema::layout::Grain;

fn show(micros: i64) -> String {
    DateTime::from_timestamp_micros(micros)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// `--replace`: swap everything in `[from, to)` for `chunk` in one overwrite
/// commit. Every partition the range touches, in the table or in the new
/// rows, must lie wholly inside it; otherwise the error names the partition
/// and the boundaries to use.
pub(super) async fn replace(
    target: &Target<'_>,
    (from, to): (DateTime<Utc>, DateTime<Utc>),
    chunk: Chunk,
    report: &mut BackfillReport,
) -> Result<()> {
    let (catalog, ident, key) = (target.catalog, &target.ident, &target.key);
    let opts = target.opts;
    let (lo, hi) = (from.timestamp_micros(), to.timestamp_micros());
    if lo >= hi {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "--from must be before --to",
        ));
    }
    let check = |grain: Grain, partition: i32| -> Result<()> {
        let (s, e) = grain.partition_bounds(partition);
        if s < hi && e > lo && (s < lo || e > hi) {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "--from {} --to {} cuts the {} partition [{}, {}) of {} rows; \
                     use boundaries of that partition (e.g. --from {} --to {})",
                    show(lo),
                    show(hi),
                    grain.partition_field_name(),
                    show(s),
                    show(e),
                    grain.as_str(),
                    show(s.min(lo)),
                    show(e.max(hi))
                ),
            ));
        }
        Ok(())
    };
    let table = catalog.load(ident).await?;
    let state = crate::maintain::state::load_plannable(&table).await?;
    let mut removed = Vec::new();
    for f in &state.files {
        let (s, e) = f.partition_bounds();
        if s < hi && e > lo {
            check(f.grain, f.partition)?;
            report.replaced_rows += f.records;
            removed.push(f.removed());
        }
    }
    for (grain, rows) in &chunk.rows {
        for k in rows.keys() {
            check(*grain, grain.partition_ordinal(k.ts_micros))?;
        }
    }
    report.replaced_files = removed.len();
    if opts.dry_run {
        return Ok(());
    }
    let retry = opts.retry;
    let record = serde_json::to_string(&Record {
        done: 1,
        complete: true,
    })
    .unwrap_or_default();
    if !chunk.rejects.is_empty() {
        super::commit_rejects(target, &chunk.rejects, record.clone()).await?;
    }
    let files = super::write_grains(&table, target.decl, chunk.rows, opts.target_file_size).await?;
    let change =
        Change::overwrite(FirnOperation::BackfillReplace, removed, files).with_claim(Claim {
            key: key.to_string(),
            expect: None,
            set: record,
        });
    let committed = commit::commit(catalog, ident, &change, retry).await?;
    report.chunks_committed = 1;
    tracing::info!(
        table = %ident,
        snapshot_id = committed.snapshot_id,
        from = %show(lo),
        to = %show(hi),
        removed_files = committed.removed_files,
        files = committed.added_files,
        "backfill replaced the range"
    );
    Ok(())
}
