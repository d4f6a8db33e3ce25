//! Rejects tables age out too. `<name>_rejects` is unpartitioned (a flush's
//! rejects are one small file), so retention drops whole files whose every
//! record was rejected longer ago than the declaration's `rejects_retain`
//! (by the file's `rejected_at` upper bound; a file without that bound is
//! kept), in one delete commit. Compaction rewrites the small files of each
//! closed day (by the same bound) into files of the target size, in one
//! replace commit, so a day's rejects stay one or a few files and still age
//! out together. Expiry, orphan removal and manifest rewrites run on the
//! rejects table beside its table's.

use chrono::{DateTime, Utc};
use futures::StreamExt;
use iceberg::spec::{Datum, PrimitiveLiteral};
use serde::Serialize;

use super::operation::Context;
use crate::catalog::TableHandle;
use crate::commit::{self, Change, FirnOperation, RemovedFile};
use crate::error::{Error, Result};
use crate::schema::decl::TableDecl;
use crate::tables;

/// The `rejected_at` column's field id in every rejects table.
const REJECTED_AT: i32 = 4;

/// What upkeep did to a rejects table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RejectsAction {
    /// Files past `rejects_retain` dropped.
    #[default]
    Retention,
    /// The small files of closed days rewritten.
    Compaction,
}

/// What retention dropped, or compaction rewrote (or, dry, would), in a
/// rejects table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RejectsUpkeep {
    /// `namespace.name_rejects`.
    pub table: String,
    /// Retention or compaction.
    pub action: RejectsAction,
    /// Files whose records were all rejected before this are dropped
    /// (retention) or rewritten (compaction: the start of the day the
    /// seal delay reaches).
    pub cutoff: DateTime<Utc>,
    /// Files dropped or rewritten.
    pub files: usize,
    /// Records in them.
    pub records: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Files written in their place (compaction).
    pub written: usize,
    /// The commit (`None`: nothing to do, or dry).
    pub snapshot_id: Option<i64>,
}

/// The rejects table of `decl`, if it exists.
pub async fn load(ctx: &Context<'_>, decl: &TableDecl) -> Result<Option<TableHandle>> {
    let ident = tables::rejects_ident(decl)?;
    if !ctx.catalog.exists(&ident).await? {
        return Ok(None);
    }
    ctx.catalog.load(&ident).await.map(Some)
}

/// Drop the files of `decl`'s rejects table older than its `rejects_retain`,
/// measured from `ctx.now` (a planning time: dropping aged records is
/// retention, not a safety bound).
pub async fn retention(ctx: &Context<'_>, decl: &TableDecl) -> Result<Option<RejectsUpkeep>> {
    let Some(table) = load(ctx, decl).await? else {
        return Ok(None);
    };
    let keep =
        chrono::Duration::from_std(decl.policy.rejects_retain).unwrap_or(chrono::Duration::MAX);
    let cutoff = ctx.now - keep;
    let mut report = RejectsUpkeep {
        table: table.ident.to_string(),
        action: RejectsAction::Retention,
        cutoff,
        ..Default::default()
    };
    let removed: Vec<RemovedFile> = files(&table)
        .await?
        .into_iter()
        .filter(|f| f.newest.is_some_and(|t| t < cutoff.timestamp_micros()))
        .map(|f| report.count(f))
        .collect();
    if ctx.dry_run || removed.is_empty() {
        return Ok(Some(report));
    }
    let change = Change::delete(FirnOperation::Retention, removed);
    let _permit = ctx.budget.acquire(&table.ident).await;
    match commit::commit(ctx.catalog, &table.ident, &change, ctx.retry).await {
        Ok(c) => report.snapshot_id = Some(c.snapshot_id),
        // Another run dropped them first: nothing left to do.
        Err(e) if e.kind() == crate::ErrorKind::Superseded => {
            tracing::warn!(table = %table.ident, error = %e, "rejects retention superseded");
        }
        Err(e) => return Err(e),
    }
    tracing::info!(
        table = %table.ident,
        files = report.files,
        records = report.records,
        cutoff = %cutoff,
        "dropped aged rejects"
    );
    Ok(Some(report))
}

/// A live file of a rejects table.
#[derive(Debug, Clone)]
struct RejectsFile {
    removed: RemovedFile,
    /// When its newest record was rejected (`None`: no bound recorded).
    newest: Option<i64>,
    records: u64,
    bytes: u64,
}

impl RejectsUpkeep {
    /// Count `f` in and name it for removal.
    fn count(&mut self, f: RejectsFile) -> RemovedFile {
        self.files += 1;
        self.records += f.records;
        self.bytes += f.bytes;
        f.removed
    }
}

/// The live data files of a rejects table.
async fn files(table: &TableHandle) -> Result<Vec<RejectsFile>> {
    Ok(table
        .live_data_files()
        .await?
        .into_iter()
        .map(|(spec_id, f)| RejectsFile {
            removed: RemovedFile {
                path: f.file_path().to_string(),
                spec_id,
                partition: 0,
            },
            newest: f.upper_bounds().get(&REJECTED_AT).and_then(micros),
            records: f.record_count(),
            bytes: f.file_size_in_bytes(),
        })
        .collect())
}

/// Rewrite the small files of `decl`'s rejects table: the files whose every
/// record was rejected before the start of the UTC day `ctx.now -
/// seal_delay` falls in, grouped by the day of their newest record; in each
/// day, runs of files adding up to at most `target` bytes become one file.
/// One replace commit for the whole table; records are copied, never
/// changed. `None` when there is nothing to rewrite.
pub async fn compaction(
    ctx: &Context<'_>,
    decl: &TableDecl,
    seal_delay: std::time::Duration,
    target: u64,
) -> Result<Option<RejectsUpkeep>> {
    let Some(table) = load(ctx, decl).await? else {
        return Ok(None);
    };
    let sealed = ctx.now - chrono::Duration::from_std(seal_delay).unwrap_or(chrono::Duration::MAX);
    let cutoff = sealed
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .map_or(sealed, |d| d.and_utc());
    let mut report = RejectsUpkeep {
        table: table.ident.to_string(),
        action: RejectsAction::Compaction,
        cutoff,
        ..Default::default()
    };
    const DAY: i64 = 86_400_000_000;
    let mut by_day: std::collections::BTreeMap<i64, Vec<RejectsFile>> = Default::default();
    for f in files(&table).await? {
        if let Some(newest) = f.newest.filter(|t| *t < cutoff.timestamp_micros()) {
            by_day.entry(newest.div_euclid(DAY)).or_default().push(f);
        }
    }
    let mut groups: Vec<Vec<RejectsFile>> = Vec::new();
    for (_, mut day) in by_day {
        day.sort_by(|a, b| a.removed.path.cmp(&b.removed.path));
        let mut group: Vec<RejectsFile> = Vec::new();
        let mut bytes = 0;
        for f in day {
            if !group.is_empty() && bytes + f.bytes > target {
                groups.push(std::mem::take(&mut group));
                bytes = 0;
            }
            bytes += f.bytes;
            group.push(f);
        }
        groups.push(group);
    }
    groups.retain(|g| g.len() > 1);
    if groups.is_empty() {
        // Nothing to rewrite: nothing to report.
        return Ok(None);
    }
    let mut removed = Vec::new();
    for f in groups.iter().flatten() {
        removed.push(report.count(f.clone()));
    }
    if ctx.dry_run {
        return Ok(Some(report));
    }
    let started = std::time::Instant::now();
    let mut added = Vec::new();
    for group in &groups {
        let mut batches = Vec::new();
        for f in group {
            let mut stream = super::merge::read_file(&table, &f.removed.path, f.bytes, f.records)?;
            while let Some(batch) = stream.next().await {
                batches.push(batch.map_err(|e| {
                    Error::iceberg(format!("reading rejects file {}", f.removed.path), e)
                })?);
            }
        }
        added.extend(
            crate::write::write_batches(&table, None, "rejects", batches, target as usize, None)
                .await?,
        );
    }
    report.written = added.len();
    let change = Change::replace(FirnOperation::Compact, removed, added);
    let _permit = ctx.budget.acquire(&table.ident).await;
    if started.elapsed() > ctx.max_uncommitted {
        return Err(Error::new(
            crate::ErrorKind::Internal,
            format!(
                "rejects compaction of {} not committed: its files waited {}s, longer than \
                 orphan removal's safety margin allows; they are left to orphan removal, \
                 run it again",
                table.ident,
                started.elapsed().as_secs()
            ),
        ));
    }
    match commit::commit(ctx.catalog, &table.ident, &change, ctx.retry).await {
        Ok(c) => report.snapshot_id = Some(c.snapshot_id),
        // Another run rewrote them first: its files hold the same records.
        Err(e) if e.kind() == crate::ErrorKind::Superseded => {
            tracing::warn!(table = %table.ident, error = %e, "rejects compaction superseded");
        }
        Err(e) => return Err(e),
    }
    tracing::info!(
        table = %table.ident,
        files = report.files,
        written = report.written,
        records = report.records,
        "compacted rejects"
    );
    Ok(Some(report))
}

fn micros(d: &Datum) -> Option<i64> {
    match d.literal() {
        PrimitiveLiteral::Long(v) => Some(*v),
        _ => None,
    }
}
