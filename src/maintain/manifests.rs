//! `firn rewrite-manifests` (Iceberg's `RewriteManifests`): cluster the many
//! small manifests that per-minute appends leave into manifests holding whole
//! partitions, as one `replace` commit that changes no data file. A table
//! already laid out that way is left alone (no new snapshot).

use iceberg::TableIdent;
use iceberg::spec::{ManifestContentType, ManifestFile};
use serde::{Deserialize, Serialize};

use super::operation::Context;
use crate::commit::manifests::{Clustered, MergePolicy};
use crate::commit::{self, Change, FirnOperation};
use crate::error::Result;
use crate::schema::decl::TableDecl;
use crate::tables;

/// What a rewrite did (or, dry, would do).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct RewriteReport {
    /// Whether nothing was changed.
    pub dry_run: bool,
    /// The same for the table's rejects table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejects: Option<Box<RewriteReport>>,
    /// Manifests before.
    pub manifests_before: usize,
    /// Manifests after (planned, when dry or unchanged).
    pub manifests_after: usize,
    /// Live data files (unchanged by the rewrite).
    pub data_files: u64,
    /// The commit (`None`: nothing to do, or dry).
    pub snapshot_id: Option<i64>,
}

impl RewriteReport {
    /// This report and its rejects table's.
    pub fn parts(&self) -> impl Iterator<Item = &RewriteReport> {
        std::iter::once(self).chain(self.rejects.as_deref())
    }
}

/// `firn rewrite-manifests`: how big the clustered manifests are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct RewriteManifestsOptions {
    /// Target manifest size in bytes (default: the table's
    /// commit.manifest.target-size-bytes, 8 MiB).
    #[arg(long)]
    pub target_size: Option<u64>,
}

/// Run `firn rewrite-manifests` on `decl`'s table: its manifests clustered
/// into manifests of about the target size, each holding whole partitions.
pub async fn run(
    ctx: &Context<'_>,
    decl: &TableDecl,
    o: &RewriteManifestsOptions,
) -> Result<RewriteReport> {
    let mut report = rewrite(ctx, &tables::ident(decl)?, o).await?;
    if let Some(rejects) = super::rejects::load(ctx, decl).await? {
        report.rejects = Some(Box::new(rewrite(ctx, &rejects.ident, o).await?));
    }
    Ok(report)
}

/// Cluster the manifests of `ident` (unless already clustered or dry).
async fn rewrite(
    ctx: &Context<'_>,
    ident: &TableIdent,
    o: &RewriteManifestsOptions,
) -> Result<RewriteReport> {
    let (catalog, dry_run) = (ctx.catalog, ctx.dry_run);
    let table = catalog.load(ident).await?;
    let Some(snapshot) = table.metadata.current_snapshot() else {
        return Ok(RewriteReport {
            dry_run,
            ..Default::default()
        });
    };
    let target = o.target_size.unwrap_or(MergePolicy::of(&table).target_size);
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
        dry_run,
        manifests_before: data.len(),
        manifests_after: clustered.pack(target).len(),
        data_files: clustered.entries,
        snapshot_id: None,
        rejects: None,
    };
    if dry_run || !clustered.needs_rewrite(target) {
        if !clustered.needs_rewrite(target) {
            report.manifests_after = report.manifests_before;
        }
        return Ok(report);
    }
    let change = Change::replace(FirnOperation::RewriteManifests, Vec::new(), Vec::new())
        .rewriting_manifests(target);
    let committed = commit::commit(catalog, ident, &change, ctx.retry).await?;
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
