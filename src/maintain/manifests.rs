//! `firn rewrite-manifests` (Iceberg's `RewriteManifests`): cluster the many
//! small manifests that per-minute appends leave into manifests holding whole
//! partitions, as one `replace` commit that changes no data file. A table
//! already laid out that way is left alone (no new snapshot).

use iceberg::TableIdent;
use iceberg::spec::{ManifestContentType, ManifestFile};
use serde::Serialize;

use crate::catalog::Catalog;
use crate::commit::manifests::{Clustered, MergePolicy};
use crate::commit::{self, Change, FirnOperation, RetryPolicy};
use crate::error::Result;

/// What a rewrite did (or, dry, would do).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct RewriteReport {
    /// Manifests before.
    pub manifests_before: usize,
    /// Manifests after (planned, when dry or unchanged).
    pub manifests_after: usize,
    /// Live data files (unchanged by the rewrite).
    pub data_files: u64,
    /// The commit (`None`: nothing to do, or dry).
    pub snapshot_id: Option<i64>,
}

/// Rewrite `ident`'s manifests into clusters of about `target` bytes
/// (default: the table's `commit.manifest.target-size-bytes`, 8 MiB).
pub async fn rewrite_manifests(
    catalog: &dyn Catalog,
    ident: &TableIdent,
    target: Option<u64>,
    dry_run: bool,
    retry: RetryPolicy,
) -> Result<RewriteReport> {
    let table = catalog.load(ident).await?;
    let Some(snapshot) = table.metadata.current_snapshot() else {
        return Ok(RewriteReport::default());
    };
    let target = target.unwrap_or(MergePolicy::of(&table).target_size);
    let list = table.manifest_list(snapshot).await?;
    // Only data manifests are clustered; delete manifests another engine
    // wrote are carried as they are by the commit.
    let data: Vec<ManifestFile> = list
        .entries()
        .iter()
        .filter(|m| m.content == ManifestContentType::Data)
        .cloned()
        .collect();
    let clustered = Clustered::load(&table, &data).await?;
    let mut report = RewriteReport {
        manifests_before: data.len(),
        manifests_after: clustered.pack(target).len(),
        data_files: clustered.entries,
        snapshot_id: None,
    };
    if dry_run || !clustered.needs_rewrite(target) {
        if !clustered.needs_rewrite(target) {
            report.manifests_after = report.manifests_before;
        }
        return Ok(report);
    }
    let change = Change::replace(FirnOperation::RewriteManifests, Vec::new(), Vec::new())
        .rewriting_manifests(target);
    let committed = commit::commit(catalog, ident, &change, retry).await?;
    let after = committed
        .table
        .metadata
        .current_snapshot()
        .map(|s| committed.table.manifest_list(s));
    if let Some(list) = after {
        report.manifests_after = list
            .await?
            .entries()
            .iter()
            .filter(|m| m.content == ManifestContentType::Data)
            .count();
    }
    report.snapshot_id = Some(committed.snapshot_id);
    Ok(report)
}
