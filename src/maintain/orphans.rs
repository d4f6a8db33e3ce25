//! `firn remove-orphans` (Iceberg's `DeleteOrphanFiles`): list the table's
//! location and delete files that no snapshot and no metadata file reference,
//! and that are older than a bound, so a write in flight is never removed.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use iceberg::TableIdent;
use serde::Serialize;

use super::reach;
use crate::catalog::Catalog;
use crate::error::{Error, ErrorKind, Result};

/// The shortest `older_than` accepted without `force`.
pub const MIN_SAFE_AGE: Duration = Duration::from_secs(3600);

/// What to remove.
#[derive(Debug, Clone, Copy)]
pub struct OrphanOptions {
    /// The time the bound is measured from.
    pub now: DateTime<Utc>,
    /// Only files last modified longer ago than this.
    pub older_than: Duration,
    /// Accept `older_than` under an hour.
    pub force: bool,
    /// Only list.
    pub dry_run: bool,
}

/// One orphan file.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Orphan {
    /// Location.
    pub location: String,
    /// Bytes.
    pub size: u64,
    /// Last modified.
    pub last_modified: DateTime<Utc>,
}

/// What orphan removal found (and deleted, unless dry).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct OrphanReport {
    /// Files listed under the table's location.
    pub listed: usize,
    /// Orphans older than the bound.
    pub orphans: Vec<Orphan>,
    /// Their bytes.
    pub orphan_bytes: u64,
    /// Unreferenced files kept because they are newer than the bound.
    pub too_new: usize,
    /// Deletes that failed.
    pub failed_deletes: usize,
}

/// Find (and delete) the orphans of `ident`.
pub async fn remove_orphans(
    catalog: &dyn Catalog,
    ident: &TableIdent,
    opts: &OrphanOptions,
) -> Result<OrphanReport> {
    if opts.older_than < MIN_SAFE_AGE && !opts.force {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "--older-than {} could remove files of commits still in flight; \
                 use at least {} or add --force",
                humantime::format_duration(opts.older_than),
                humantime::format_duration(MIN_SAFE_AGE)
            ),
        ));
    }
    let table = catalog.load(ident).await?;
    let storage = catalog.storage();
    let key = |l: &str| {
        storage
            .key(l)
            .map_err(|e| Error::iceberg(format!("locating {l}"), e))
    };
    let mut referenced: BTreeSet<String> = BTreeSet::new();
    referenced.insert(key(&table.metadata_location)?);
    for m in table.metadata.metadata_log() {
        referenced.insert(key(&m.metadata_file)?);
    }
    let reached = reach::reach(&table, &table.metadata, None).await?;
    for (location, _) in reached.all() {
        referenced.insert(key(location)?);
    }

    let cutoff =
        opts.now - chrono::Duration::from_std(opts.older_than).unwrap_or(chrono::Duration::zero());
    let root = format!("{}/", table.metadata.location().trim_end_matches('/'));
    let listed = storage.list(&root).await?;
    let mut report = OrphanReport {
        listed: listed.len(),
        ..Default::default()
    };
    for f in listed {
        if referenced.contains(&f.key) {
            continue;
        }
        if f.last_modified >= cutoff {
            report.too_new += 1;
            continue;
        }
        report.orphan_bytes += f.size;
        report.orphans.push(Orphan {
            location: f.location,
            size: f.size,
            last_modified: f.last_modified,
        });
    }
    if !opts.dry_run && !report.orphans.is_empty() {
        let doomed = report.orphans.iter().map(|o| o.location.clone()).collect();
        let failed = storage.delete_many(doomed).await;
        for (location, why) in &failed {
            tracing::warn!(table = %ident, location, error = %why, "could not delete orphan");
        }
        report.failed_deletes = failed.len();
    }
    tracing::info!(
        table = %ident,
        listed = report.listed,
        orphans = report.orphans.len(),
        orphan_bytes = report.orphan_bytes,
        too_new = report.too_new,
        dry_run = opts.dry_run,
        "remove-orphans"
    );
    Ok(report)
}
