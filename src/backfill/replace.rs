//! `firn backfill --replace`: one overwrite commit swaps everything a
//! partition-aligned range holds for the backfilled rows (Iceberg's
//! `OverwriteFiles`). It is planned on the table before any input is read:
//! the files to remove, the snapshot they were read from — the commit is
//! refused if data was added to the range since (see
//! [`crate::commit::validate`]) — and, replaying a topic, the offsets ingest
//! has committed to the table, where the replay ends.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::chunk::Chunk;
use super::kafka::Start;
use super::record::{Held, Position};
use super::{BackfillReport, Target};
use crate::catalog::TableHandle;
use crate::commit::validate::NoConflictingData;
use crate::commit::{self, Change, Claim, FirnOperation, summary};
use crate::error::{Error, ErrorKind, Result};
use crate::maintain::state::LiveFile;
use crate::maintain::tally;
use crate::offsets;
use crate::schema::layout::Grain;
use crate::totals::ChangeTotals;

fn show(micros: i64) -> String {
    DateTime::from_timestamp_micros(micros)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// A replace, planned on one snapshot of the table.
#[derive(Debug)]
pub(super) struct Plan {
    /// `[from, to)`, microseconds.
    range: (i64, i64),
    /// The table as planned on.
    table: TableHandle,
    /// Live files in the range.
    removed: Vec<LiveFile>,
    /// Rows they hold.
    removed_rows: u64,
    /// Replaying a topic: per partition, the offset ingest committed to the
    /// table as planned on (the replay ends there; ingest adds what follows).
    pub ends: BTreeMap<i32, i64>,
}

/// Refuse a partition of `grain` that the range `[lo, hi)` cuts, naming
/// the boundaries to use.
fn check_aligned((lo, hi): (i64, i64), grain: Grain, partition: i32) -> Result<()> {
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
}

/// Plan replacing `[from, to)`: it must be partition-aligned and sealed
/// (unless forced), a replay must select by event time, and every file it
/// removes is read from one snapshot.
pub(super) async fn plan(
    target: &Target<'_>,
    (from, to): (DateTime<Utc>, DateTime<Utc>),
) -> Result<Plan> {
    let opts = target.opts;
    let range @ (lo, hi) = (from.timestamp_micros(), to.timestamp_micros());
    if lo >= hi {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "--from must be before --to",
        ));
    }
    let sealed_at = chrono::TimeDelta::from_std(opts.seal_delay)
        .ok()
        .and_then(|d| to.checked_add_signed(d));
    if sealed_at.is_none_or(|t| t > opts.now) && !opts.force {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "[{}, {}) is not sealed until {} (--seal-delay {} after it ends): ingest may \
                 still append to it, and an append that lands during the replace makes it \
                 fail. Wait until then, or add --force",
                show(lo),
                show(hi),
                sealed_at.map_or("never".to_string(), |t| show(t.timestamp_micros())),
                humantime::format_duration(opts.seal_delay)
            ),
        ));
    }
    if let Some(k) = opts
        .kafka
        .as_ref()
        .filter(|k| matches!(k.start, Start::Time(..)))
    {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "--replace replays the events of {} whose event time is in [{}, {}); \
                 --start-time/--end-time select records by their Kafka timestamp, which would \
                 leave out late events the replace removes. Leave them out (every partition is \
                 read from its earliest offset) or give --start-offsets",
                k.topic,
                show(lo),
                show(hi)
            ),
        ));
    }
    let table = target.load().await?;
    let state = crate::maintain::state::load_plannable(&table).await?;
    let mut removed = Vec::new();
    let mut removed_rows = 0;
    for f in &state.files {
        let (s, e) = f.partition_bounds();
        if s < hi && e > lo {
            check_aligned(range, f.grain, f.partition)?;
            removed_rows += f.records;
            removed.push(f.clone());
        }
    }
    // Ingest's appends after the plan come from past the offsets the table
    // holds (the fence sees to it): the replay ends there, or ingest would
    // add again what it replays. Of several groups, the one furthest on is
    // ingest's (the others stopped earlier).
    let mut ends = BTreeMap::new();
    if let Some(k) = &opts.kafka {
        for groups in offsets::read_all(&table.metadata)?.values() {
            for (p, o) in groups.get(&k.topic).into_iter().flatten() {
                let end = ends.entry(*p).or_insert(*o);
                *end = (*end).max(*o);
            }
        }
    }
    Ok(Plan {
        range,
        table,
        removed,
        removed_rows,
        ends,
    })
}

/// Swap everything the plan removes for `chunk` in one overwrite commit,
/// validated against what was added to the range since the plan.
pub(super) async fn commit(
    target: &Target<'_>,
    plan: Plan,
    chunk: Chunk,
    report: &mut BackfillReport,
) -> Result<()> {
    let (catalog, ident, key) = (target.catalog, &target.ident, &target.key);
    let opts = target.opts;
    let (lo, hi) = plan.range;
    for (grain, rows) in &chunk.rows {
        for ts_micros in rows.bucket_starts() {
            check_aligned(plan.range, *grain, grain.partition_ordinal(ts_micros))?;
        }
    }
    report.replaced_files = plan.removed.len();
    report.replaced_rows = plan.removed_rows;
    if opts.dry_run {
        return Ok(());
    }
    let record = target.record(
        Position {
            input: report.inputs.len(),
            at: 0,
        },
        true,
    );
    // A refused replace may have recorded its rejects already.
    let rt = catalog.load(&target.rejects_ident).await?;
    let recorded = super::held(&rt, key)
        .and_then(|v| Held::parse(&v))
        .is_some_and(|h| h.complete());
    if !chunk.rejects.is_empty() && !recorded {
        let rejects: Vec<_> = chunk.rejects.into_iter().map(|(_, r)| r).collect();
        super::commit_rejects(target, &rejects, record.clone()).await?;
    }
    let (files, added) =
        super::write_grains(&plan.table, target.decl, chunk.rows, opts.target_file_size).await?;
    let mut removed = ChangeTotals::default();
    let read = tally::tally(&plan.table, target.decl, &plan.removed, 4).await?;
    for (file, days) in plan.removed.iter().zip(&read) {
        removed.add(file.grain, days);
    }
    let plan_removed = plan.removed.iter().map(LiveFile::removed).collect();
    let change = Change::overwrite(FirnOperation::BackfillReplace, plan_removed, files);
    let change = target
        .aimed(change)
        .with_totals(&added, &removed)
        .with_property(summary::REPLACE_RANGE, format!("{lo}..{hi}"))
        .with_no_conflicting_data(NoConflictingData {
            from_snapshot: plan.table.metadata.current_snapshot_id(),
            range: plan.range,
        })
        .with_claim(Claim {
            key: key.to_string(),
            expect: None,
            set: record,
        });
    let committed = commit::commit(catalog, ident, &change, opts.retry).await?;
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
