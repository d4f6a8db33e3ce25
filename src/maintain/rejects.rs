//! Rejects tables age out too. `<name>_rejects` is unpartitioned (a flush's
//! rejects are one small file), so retention drops whole files whose every
//! record was rejected longer ago than the declaration's `rejects_retain`
//! (by the file's `rejected_at` upper bound; a file without that bound is
//! kept), in one delete commit. Expiry, orphan removal and manifest
//! rewrites run on the rejects table beside its table's.

use chrono::{DateTime, Utc};
use iceberg::spec::{Datum, ManifestContentType, PrimitiveLiteral};
use serde::Serialize;

use super::operation::Context;
use crate::catalog::TableHandle;
use crate::commit::{self, Change, FirnOperation, RemovedFile};
use crate::error::{Error, Result};
use crate::schema::decl::TableDecl;
use crate::tables;

/// The `rejected_at` column's field id in every rejects table.
const REJECTED_AT: i32 = 4;

/// What retention dropped (or, dry, would drop) from a rejects table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RejectsRetention {
    /// `namespace.name_rejects`.
    pub table: String,
    /// Records rejected before this are dropped.
    pub cutoff: DateTime<Utc>,
    /// Files dropped.
    pub files: usize,
    /// Records in them.
    pub records: u64,
    /// Their bytes.
    pub bytes: u64,
    /// The delete commit (`None`: nothing to drop, or dry).
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
pub async fn retention(ctx: &Context<'_>, decl: &TableDecl) -> Result<Option<RejectsRetention>> {
    let Some(table) = load(ctx, decl).await? else {
        return Ok(None);
    };
    let keep =
        chrono::Duration::from_std(decl.policy.rejects_retain).unwrap_or(chrono::Duration::MAX);
    let cutoff = ctx.now - keep;
    let mut report = RejectsRetention {
        table: table.ident.to_string(),
        cutoff,
        ..Default::default()
    };
    let removed = aged_files(&table, cutoff.timestamp_micros(), &mut report).await?;
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

/// Live data files of `table` whose every record was rejected before
/// `cutoff_micros`, counted into `report`.
async fn aged_files(
    table: &TableHandle,
    cutoff_micros: i64,
    report: &mut RejectsRetention,
) -> Result<Vec<RemovedFile>> {
    let Some(snapshot) = table.metadata.current_snapshot() else {
        return Ok(Vec::new());
    };
    let mut removed = Vec::new();
    for mf in table.manifest_list(snapshot).await?.entries() {
        if mf.content != ManifestContentType::Data {
            continue;
        }
        let manifest = mf
            .load_manifest(&table.file_io)
            .await
            .map_err(|e| Error::iceberg(format!("reading manifest {}", mf.manifest_path), e))?;
        for e in manifest.entries().iter().filter(|e| e.is_alive()) {
            let f = e.data_file();
            let newest = f.upper_bounds().get(&REJECTED_AT).and_then(micros);
            if newest.is_some_and(|t| t < cutoff_micros) {
                report.files += 1;
                report.records += f.record_count();
                report.bytes += f.file_size_in_bytes();
                removed.push(RemovedFile {
                    path: f.file_path().to_string(),
                    spec_id: mf.partition_spec_id,
                    partition: 0,
                });
            }
        }
    }
    Ok(removed)
}

fn micros(d: &Datum) -> Option<i64> {
    match d.literal() {
        PrimitiveLiteral::Long(v) => Some(*v),
        _ => None,
    }
}
