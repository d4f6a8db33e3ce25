//! `firn expire-snapshots` (Iceberg's `ExpireSnapshots`): drop old snapshots
//! from the metadata with one compare-and-set, then delete the manifest lists,
//! manifests and data files only they reached, and metadata files older than
//! the table's metadata log keeps (`write.metadata.previous-versions-max`).
//! The commit comes first: a crash while deleting leaves only orphans.
//! Tags and branches are other writers' data in a shared lake: what they
//! keep is decided in [`super::refs`], and a file any kept snapshot reaches
//! (compared as an Iceberg path, [`super::paths`]) is never deleted.

use std::collections::BTreeSet;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use iceberg::TableIdent;
use iceberg::spec::{TableMetadata, TableMetadataBuilder};
use serde::{Deserialize, Serialize};

use super::operation::Context;
use super::paths;
use super::reach::{self, metadata_version};
use super::refs::{self, Expiry, Retention};
use crate::catalog::{Catalog, TableHandle};
use crate::clock::Span;
use crate::commit::{self, RetryPolicy};
use crate::error::{Error, ErrorKind, Result};
use crate::schema::decl::TableDecl;
use crate::tables;

/// `firn expire-snapshots`: which snapshots (and refs) may go.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct ExpireSnapshotsOptions {
    /// Expire snapshots committed longer ago than this.
    #[arg(long, default_value_t = ExpireSnapshotsOptions::default().older_than)]
    pub older_than: Span,
    /// Always keep the current snapshot and its latest ancestors, this many in all.
    #[arg(long, default_value_t = ExpireSnapshotsOptions::default().retain_last)]
    pub retain_last: usize,
    /// Also remove tags and branches (never main) older than their
    /// `max-ref-age-ms` (or the table's `history.expire.max-ref-age-ms`).
    /// Without it every ref is kept, with every snapshot and file it reaches.
    #[arg(long)]
    pub expire_refs: bool,
}

impl Default for ExpireSnapshotsOptions {
    fn default() -> Self {
        Self {
            older_than: Span::from_secs(5 * 86_400),
            retain_last: 10,
            expire_refs: false,
        }
    }
}

impl ExpireSnapshotsOptions {
    /// Refuse options that make no sense.
    pub fn validate(&self) -> Result<()> {
        if self.retain_last == 0 {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "--retain-last must be at least 1 (the current snapshot is always kept)",
            ));
        }
        Ok(())
    }
}

/// Run `firn expire-snapshots` on `decl`'s table: snapshot ages and ref
/// ages are measured from `ctx.clock` (the real time, not `--now`).
pub async fn run(
    ctx: &Context<'_>,
    decl: &TableDecl,
    o: &ExpireSnapshotsOptions,
) -> Result<ExpireReport> {
    o.validate()?;
    let now = ctx.clock.now();
    let selection = Selection {
        now,
        older_than: now - o.older_than.chrono(),
        retain_last: o.retain_last,
        expire_refs: o.expire_refs,
    };
    let (catalog, dry_run, retry) = (ctx.catalog, ctx.dry_run, ctx.retry);
    let mut report = expire(catalog, &tables::ident(decl)?, &selection, dry_run, retry).await?;
    if let Some(rejects) = super::rejects::load(ctx, decl).await? {
        let r = expire(catalog, &rejects.ident, &selection, dry_run, retry).await?;
        report.rejects = Some(Box::new(r));
    }
    Ok(report)
}

/// What may expire, resolved against a time.
#[derive(Debug, Clone, Copy)]
pub struct Selection {
    /// The time ref ages and branches' `max-snapshot-age-ms` are measured from.
    pub now: DateTime<Utc>,
    /// Snapshots committed before this time may expire.
    pub older_than: DateTime<Utc>,
    /// The current snapshot and this many of its ancestors in all are kept.
    pub retain_last: usize,
    /// Remove tags and branches (never main) older than their
    /// `max-ref-age-ms` (or the table's `history.expire.max-ref-age-ms`),
    /// as Iceberg's `ExpireSnapshots` does; otherwise refs are data and stay.
    pub expire_refs: bool,
}

/// What an expiry did (or, dry, would do).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ExpireReport {
    /// Whether nothing was changed.
    pub dry_run: bool,
    /// The same for the table's rejects table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejects: Option<Box<ExpireReport>>,
    /// Snapshots removed from the metadata.
    pub expired_snapshots: Vec<i64>,
    /// Refs removed (ref expiry asked for, past their max ref age).
    pub removed_refs: Vec<String>,
    /// Refs past their max ref age, kept because ref expiry was not asked for.
    pub stale_refs: Vec<String>,
    /// Manifest lists, manifests and data files deleted.
    pub deleted_files: usize,
    /// Their bytes (manifest lists not counted).
    pub deleted_bytes: u64,
    /// Old metadata files deleted.
    pub deleted_metadata_files: usize,
    /// Deletes that failed (left as orphans).
    pub failed_deletes: usize,
}

impl ExpireReport {
    /// This report and its rejects table's.
    pub fn parts(&self) -> impl Iterator<Item = &ExpireReport> {
        std::iter::once(self).chain(self.rejects.as_deref())
    }
}

/// What `sel` expires in `meta`, Iceberg's `RemoveSnapshots` rules over
/// every ref ([`refs::plan`]): `older_than` and `retain_last` bound every
/// branch without its own retention, main included; each tag's snapshot
/// and each branch's retained ancestry stay.
pub fn select_expired(meta: &TableMetadata, sel: &Selection) -> Result<Expiry> {
    refs::plan(
        meta,
        &Retention {
            now: sel.now,
            older_than: Some(sel.older_than),
            retain_last: Some(sel.retain_last.max(1)),
            expire_refs: sel.expire_refs,
        },
    )
}

/// The metadata change for `plan`: the refs it removes, then its snapshots.
/// iceberg's `remove_snapshots` silently drops any ref whose snapshot goes,
/// so a plan that would take a kept ref's snapshot is refused instead.
fn edit(base: &TableHandle, plan: &Expiry) -> Result<TableMetadataBuilder> {
    let doomed: BTreeSet<i64> = plan.snapshots.iter().copied().collect();
    for (name, r) in refs::refs(&base.metadata)? {
        if doomed.contains(&r.snapshot_id) && !plan.removed_refs.contains(&name) {
            return Err(Error::new(
                ErrorKind::Internal,
                format!(
                    "expiry would remove snapshot {} of ref {name}",
                    r.snapshot_id
                ),
            ));
        }
    }
    let mut builder = (*base.metadata)
        .clone()
        .into_builder(Some(base.metadata_location.clone()));
    for name in &plan.removed_refs {
        builder = builder.remove_ref(name);
    }
    Ok(builder.remove_snapshots(&plan.snapshots))
}

/// Expire snapshots of `ident` (and refs, if asked) and delete the files
/// that only expired snapshots reached: nothing any kept snapshot of any
/// ref reaches, compared as Iceberg paths.
pub async fn expire(
    catalog: &dyn Catalog,
    ident: &TableIdent,
    sel: &Selection,
    dry_run: bool,
    retry: RetryPolicy,
) -> Result<ExpireReport> {
    let (base, plan) = if dry_run {
        let base = catalog.load(ident).await?;
        let plan = select_expired(&base.metadata, sel)?;
        (base, plan)
    } else {
        let seen: Mutex<Option<(TableHandle, Expiry)>> = Mutex::new(None);
        let committed = commit::update_metadata(catalog, ident, retry, |base| {
            let plan = select_expired(&base.metadata, sel)?;
            if plan.snapshots.is_empty() && plan.removed_refs.is_empty() {
                return Ok(None);
            }
            let builder = edit(base, &plan)?;
            *seen.lock().unwrap_or_else(|p| p.into_inner()) = Some((base.clone(), plan));
            Ok(Some(builder))
        })
        .await?;
        match (
            committed,
            seen.into_inner().unwrap_or_else(|p| p.into_inner()),
        ) {
            (Some(_), Some(found)) => found,
            _ => {
                let base = catalog.load(ident).await?;
                let stale_refs = select_expired(&base.metadata, sel)?.stale_refs;
                let plan = Expiry {
                    stale_refs,
                    ..Expiry::default()
                };
                (base, plan)
            }
        }
    };
    let ids = plan.snapshots.clone();
    let mut report = ExpireReport {
        dry_run,
        expired_snapshots: ids.clone(),
        removed_refs: plan.removed_refs.clone(),
        stale_refs: plan.stale_refs.clone(),
        ..Default::default()
    };
    for name in &report.stale_refs {
        tracing::info!(table = %ident, r#ref = %name, "ref past its max ref age kept (ref expiry not asked for)");
    }

    let mut doomed: Vec<String> = Vec::new();
    if !ids.is_empty() {
        let expired: BTreeSet<i64> = ids.iter().copied().collect();
        let retained: BTreeSet<i64> = base
            .metadata
            .snapshots()
            .map(|s| s.snapshot_id())
            .filter(|id| !expired.contains(id))
            .collect();
        let gone = reach::reach(&base, &base.metadata, Some(&expired)).await?;
        let kept = reach::reach(&base, &base.metadata, Some(&retained)).await?;
        // Kept files in their compared form; a file whose location has none
        // is never deleted.
        let kept: BTreeSet<String> = kept
            .all()
            .filter_map(|(l, _)| paths::normalize(l))
            .collect();
        for (location, size) in gone.all() {
            match paths::normalize(location) {
                Some(n) if !kept.contains(&n) => {
                    doomed.push(location.clone());
                    report.deleted_bytes += size;
                }
                _ => {}
            }
        }
        report.deleted_files = doomed.len();
    }

    // Metadata files older than the oldest one the log keeps.
    let current = catalog.load(ident).await?;
    let oldest_kept = current
        .metadata
        .metadata_log()
        .iter()
        .filter_map(|m| metadata_version(&m.metadata_file))
        .chain(metadata_version(&current.metadata_location))
        .min();
    if let Some(oldest) = oldest_kept {
        let dir = format!(
            "{}/metadata/",
            current.metadata.location().trim_end_matches('/')
        );
        for f in catalog.storage().list(&dir).await? {
            if metadata_version(&f.key).is_some_and(|v| v < oldest) {
                doomed.push(f.location);
                report.deleted_metadata_files += 1;
            }
        }
    }

    if !dry_run && !doomed.is_empty() {
        let failed = catalog.storage().delete_many(doomed).await;
        for (location, why) in &failed {
            tracing::warn!(table = %ident, location, error = %why, "could not delete; left as an orphan");
        }
        report.failed_deletes = failed.len();
    }
    tracing::info!(
        table = %ident,
        expired = report.expired_snapshots.len(),
        deleted_files = report.deleted_files,
        deleted_bytes = report.deleted_bytes,
        deleted_metadata_files = report.deleted_metadata_files,
        dry_run,
        "expire-snapshots"
    );
    Ok(report)
}
