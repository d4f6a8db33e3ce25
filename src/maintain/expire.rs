//! `firn expire-snapshots` (Iceberg's `ExpireSnapshots`): drop old snapshots
//! from the metadata with one compare-and-set, then delete the manifest lists,
//! manifests and data files only they reached, and metadata files older than
//! the table's metadata log keeps (`write.metadata.previous-versions-max`).
//! The commit comes first: a crash while deleting leaves only orphans.

use std::collections::BTreeSet;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use iceberg::TableIdent;
use iceberg::spec::TableMetadata;
use serde::Serialize;

use super::reach::{self, metadata_version};
use crate::catalog::{Catalog, TableHandle};
use crate::commit::{self, RetryPolicy};
use crate::error::{Error, Result};

/// What to expire.
#[derive(Debug, Clone, Copy)]
pub struct ExpireOptions {
    /// Snapshots committed before this time may expire.
    pub older_than: DateTime<Utc>,
    /// The current snapshot and this many of its ancestors in all are kept.
    pub retain_last: usize,
    /// Only report.
    pub dry_run: bool,
}

/// What an expiry did (or, dry, would do).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ExpireReport {
    /// Snapshots removed from the metadata.
    pub expired_snapshots: Vec<i64>,
    /// Manifest lists, manifests and data files deleted.
    pub deleted_files: usize,
    /// Their bytes (manifest lists not counted).
    pub deleted_bytes: u64,
    /// Old metadata files deleted.
    pub deleted_metadata_files: usize,
    /// Deletes that failed (left as orphans).
    pub failed_deletes: usize,
}

/// The snapshots `opts` expires in `meta`: older than the bound, not the
/// current one nor among its `retain_last` latest ancestors.
pub fn select_expired(meta: &TableMetadata, opts: &ExpireOptions) -> Vec<i64> {
    let mut keep = BTreeSet::new();
    let mut cursor = meta.current_snapshot().cloned();
    for _ in 0..opts.retain_last.max(1) {
        let Some(s) = cursor else { break };
        keep.insert(s.snapshot_id());
        cursor = s
            .parent_snapshot_id()
            .and_then(|p| meta.snapshot_by_id(p).cloned());
    }
    let cutoff = opts.older_than.timestamp_millis();
    let mut ids: Vec<i64> = meta
        .snapshots()
        .filter(|s| s.timestamp_ms() < cutoff && !keep.contains(&s.snapshot_id()))
        .map(|s| s.snapshot_id())
        .collect();
    ids.sort_unstable();
    ids
}

/// Expire snapshots of `ident` and delete what only they reached.
pub async fn expire(
    catalog: &dyn Catalog,
    ident: &TableIdent,
    opts: &ExpireOptions,
    retry: RetryPolicy,
) -> Result<ExpireReport> {
    let (base, ids) = if opts.dry_run {
        let base = catalog.load(ident).await?;
        let ids = select_expired(&base.metadata, opts);
        (base, ids)
    } else {
        let seen: Mutex<Option<(TableHandle, Vec<i64>)>> = Mutex::new(None);
        let committed = commit::update_metadata(catalog, ident, retry, |base| {
            let ids = select_expired(&base.metadata, opts);
            if ids.is_empty() {
                return Ok(None);
            }
            *seen.lock().unwrap_or_else(|p| p.into_inner()) = Some((base.clone(), ids.clone()));
            Ok(Some(
                (*base.metadata)
                    .clone()
                    .into_builder(Some(base.metadata_location.clone()))
                    .remove_snapshots(&ids),
            ))
        })
        .await?;
        match (
            committed,
            seen.into_inner().unwrap_or_else(|p| p.into_inner()),
        ) {
            (Some(_), Some(found)) => found,
            _ => (catalog.load(ident).await?, Vec::new()),
        }
    };
    let mut report = ExpireReport {
        expired_snapshots: ids.clone(),
        ..Default::default()
    };

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
        for (location, size) in gone.minus(&kept).all() {
            doomed.push(location.clone());
            report.deleted_bytes += size;
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

    if !opts.dry_run && !doomed.is_empty() {
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
        dry_run = opts.dry_run,
        "expire-snapshots"
    );
    Ok(report)
}

/// Errors for options that make no sense.
pub fn validate(opts: &ExpireOptions) -> Result<()> {
    if opts.retain_last == 0 {
        return Err(Error::new(
            crate::ErrorKind::InvalidInput,
            "--retain-last must be at least 1 (the current snapshot is always kept)",
        ));
    }
    Ok(())
}
