//! `firn remove-orphans` (Iceberg's `DeleteOrphanFiles`): list the table's
//! location and delete files that no snapshot and no metadata file reference,
//! and that are older than a bound, so a write in flight is never removed.
//! Listed and referenced paths are compared in one normal form
//! ([`super::paths`]): another engine's spelling of a live file (`s3a://`, a
//! percent-encoded partition value) must never make it look orphaned.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use iceberg::TableIdent;
use serde::{Deserialize, Serialize};

use super::operation::Context;
use super::{paths, reach};
use crate::catalog::{Catalog, TableHandle};
use crate::clock::Span;
use crate::error::{Error, ErrorKind, Result};
use crate::schema::decl::TableDecl;
use crate::tables;

/// The shortest `older_than` accepted without `force`. It must exceed the
/// longest any firn writer holds files it wrote before committing them
/// ([`MAX_UNCOMMITTED`]): a file younger than this may still be about to be
/// committed.
pub const MIN_SAFE_AGE: Duration = Duration::from_secs(3600);

/// The longest a rollup, compaction or backfill may hold the files it wrote
/// before it commits them; past it the commit is refused (the files may
/// already be old enough for orphan removal) and the work is left to a rerun.
/// Ingest flushes commit within seconds of writing.
pub const MAX_UNCOMMITTED: Duration = Duration::from_secs(1800);

const _: () = assert!(MAX_UNCOMMITTED.as_secs() < MIN_SAFE_AGE.as_secs());

/// `firn remove-orphans`: which unreferenced files may go.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct RemoveOrphansOptions {
    /// Only files last modified longer ago than this (at least 1h unless --force).
    #[arg(long, default_value_t = RemoveOrphansOptions::default().older_than)]
    pub older_than: Span,
    /// Accept --older-than under an hour (may delete files of commits in
    /// flight). Command line only: a job never forces.
    #[arg(long)]
    #[serde(skip)]
    pub force: bool,
}

impl Default for RemoveOrphansOptions {
    fn default() -> Self {
        Self {
            older_than: Span::from_secs(3 * 86_400),
            force: false,
        }
    }
}

impl RemoveOrphansOptions {
    /// Refuse a bound that could take the files of a commit in flight.
    pub fn validate(&self) -> Result<()> {
        if *self.older_than < MIN_SAFE_AGE && !self.force {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "--older-than {} could remove files of commits still in flight; \
                     use at least {} or add --force",
                    self.older_than,
                    humantime::format_duration(MIN_SAFE_AGE)
                ),
            ));
        }
        Ok(())
    }
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
    /// Whether nothing was deleted.
    pub dry_run: bool,
    /// The same for the table's rejects table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejects: Option<Box<OrphanReport>>,
    /// Files listed under the table's location.
    pub listed: usize,
    /// Orphans older than the bound.
    pub orphans: Vec<Orphan>,
    /// Their bytes.
    pub orphan_bytes: u64,
    /// Unreferenced files kept because they are newer than the bound.
    pub too_new: usize,
    /// Files kept because their path cannot be normalised (a bad
    /// percent-escape, not UTF-8), so firn cannot tell whether it is referenced.
    pub unreadable_paths: usize,
    /// Deletes that failed.
    pub failed_deletes: usize,
}

/// Every file `table`'s metadata references, in [`paths::normalize`]d form:
/// the current and previous metadata files (`metadata-log`), Hadoop tables'
/// `version-hint.text`, statistics and partition-statistics files, and the
/// manifest lists, manifests and data and delete files of every snapshot —
/// so of every tag and branch, not only main. (Iceberg's `DeleteOrphanFiles`
/// counts the same set as valid.)
pub async fn referenced(table: &TableHandle) -> Result<BTreeSet<String>> {
    let meta = &table.metadata;
    let hint = format!(
        "{}/metadata/version-hint.text",
        meta.location().trim_end_matches('/')
    );
    let reached = reach::reach(table, meta, None).await?;
    let locations = [table.metadata_location.as_str(), hint.as_str()]
        .into_iter()
        .chain(meta.metadata_log().iter().map(|m| m.metadata_file.as_str()))
        .chain(meta.statistics_iter().map(|s| s.statistics_path.as_str()))
        .chain(
            meta.partition_statistics_iter()
                .map(|s| s.statistics_path.as_str()),
        )
        .chain(reached.all().map(|(l, _)| l.as_str()));
    let mut out = BTreeSet::new();
    for location in locations {
        match paths::normalize(location) {
            Some(n) => {
                out.insert(n);
            }
            // Its listed twin cannot be normalised either, and is kept.
            None => tracing::debug!(location, "a referenced path has no normal form"),
        }
    }
    Ok(out)
}

/// Run `firn remove-orphans` on `decl`'s table: find its orphans as of
/// `ctx.clock` (the real time, never `--now`: a future planning time must
/// not make a running writer's files look old) and, unless dry, delete them.
pub async fn run(
    ctx: &Context<'_>,
    decl: &TableDecl,
    o: &RemoveOrphansOptions,
) -> Result<OrphanReport> {
    o.validate()?;
    let mut report = remove(ctx, &tables::ident(decl)?, o).await?;
    if let Some(rejects) = super::rejects::load(ctx, decl).await? {
        report.rejects = Some(Box::new(remove(ctx, &rejects.ident, o).await?));
    }
    Ok(report)
}

/// Find the orphans of `ident` and, unless dry, delete them.
async fn remove(
    ctx: &Context<'_>,
    ident: &TableIdent,
    o: &RemoveOrphansOptions,
) -> Result<OrphanReport> {
    let mut report = find(ctx.catalog, ident, ctx.clock.now(), *o.older_than).await?;
    report.dry_run = ctx.dry_run;
    if !ctx.dry_run && !report.orphans.is_empty() {
        let doomed = report.orphans.iter().map(|o| o.location.clone()).collect();
        let failed = ctx.catalog.storage().delete_many(doomed).await;
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
        dry_run = ctx.dry_run,
        "remove-orphans"
    );
    Ok(report)
}

impl OrphanReport {
    /// This report and its rejects table's.
    pub fn parts(&self) -> impl Iterator<Item = &OrphanReport> {
        std::iter::once(self).chain(self.rejects.as_deref())
    }
}

/// The orphans of `ident` (deleting nothing): listed files whose normalised
/// path nothing references ([`referenced`]) and that were last modified
/// more than `older_than` before `now`.
pub async fn find(
    catalog: &dyn Catalog,
    ident: &TableIdent,
    now: DateTime<Utc>,
    older_than: Duration,
) -> Result<OrphanReport> {
    let table = catalog.load(ident).await?;
    let storage = catalog.storage();
    let referenced = referenced(&table).await?;

    let cutoff = now - chrono::Duration::from_std(older_than).unwrap_or(chrono::Duration::zero());
    let root = format!("{}/", table.metadata.location().trim_end_matches('/'));
    let listed = storage.list(&root).await?;
    let mut report = OrphanReport {
        listed: listed.len(),
        dry_run: true,
        ..Default::default()
    };
    for f in listed {
        let Some(normal) = paths::normalize(&f.location) else {
            tracing::warn!(table = %ident, location = %f.location, "kept a file whose path cannot be compared");
            report.unreadable_paths += 1;
            continue;
        };
        if referenced.contains(&normal) {
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
    Ok(report)
}
