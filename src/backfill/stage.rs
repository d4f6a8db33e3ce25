//! Staged backfills (write-audit-publish). `backfill --stage` commits to
//! the branch `backfill/<id>` instead of main and reports, per day and
//! measure, how the branch differs from main; `publish` applies the staged
//! change to main in one commit — a fast-forward when main has not moved
//! since the branch started, otherwise the branch's net change (the files
//! it added and removed) re-validated and committed on main's current files,
//! refused on conflict; `discard` drops the branch and deletes the files
//! only it reached. Until then, readers see the branch by its name (an
//! Iceberg branch) and main is untouched; expiry and orphan removal keep
//! everything a branch reaches.

use std::collections::BTreeSet;

use iceberg::spec::{MAIN_BRANCH, SnapshotReference, SnapshotRetention};
use serde::Serialize;

use crate::catalog::{Catalog, TableHandle};
use crate::commit::summary::{self, backfill_key};
use crate::commit::validate::NoConflictingData;
use crate::commit::{self, Change, Claim, FirnOperation, NewFile, RetryPolicy};
use crate::error::{Error, ErrorKind, Result};
use crate::ledger::{self, Ledger};
use crate::maintain::state::{self, LiveFile};
use crate::maintain::{paths, reach, refs, tally};
use crate::schema::decl::TableDecl;
use crate::tables;
use crate::totals::{ChangeTotals, DayTotals, Totals, date_of};

/// The branch prefix of staged backfills.
pub const PREFIX: &str = "backfill/";

/// The branch a staged run of backfill `id` commits to.
pub fn branch_name(id: &str) -> String {
    format!("{PREFIX}{id}")
}

/// How a staged backfill's branch differs from main.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Staged {
    /// The branch.
    pub branch: String,
    /// Its head.
    pub snapshot_id: Option<i64>,
    /// Main's current snapshot, compared with.
    pub main_snapshot_id: Option<i64>,
    /// Data files the branch holds that main does not.
    pub files_only_on_branch: usize,
    /// Data files main holds that the branch does not.
    pub files_only_on_main: usize,
    /// Per day and measure that differ: main's total and the branch's.
    pub differences: Vec<DayDifference>,
}

/// One day's measure on main and on the branch.
#[derive(Debug, Clone, Serialize)]
pub struct DayDifference {
    /// The day (UTC).
    pub day: String,
    /// The measure.
    pub measure: String,
    /// Its total on main.
    pub main: String,
    /// Its total on the branch.
    pub branch: String,
}

/// Compare branch `branch` of `decl`'s table with main: the days the files
/// that differ cover, each read on both sides.
pub async fn diff(catalog: &dyn Catalog, decl: &TableDecl, branch: &str) -> Result<Staged> {
    let real = catalog.load(&tables::ident(decl)?).await?;
    let head = require_branch(&real, branch)?;
    let view = real.at_snapshot(head)?;
    let (on_main, on_branch) = (state::load(&real).await?, state::load(&view).await?);
    let main_paths: BTreeSet<&str> = on_main.files.iter().map(|f| f.path.as_str()).collect();
    let branch_paths: BTreeSet<&str> = on_branch.files.iter().map(|f| f.path.as_str()).collect();
    let differing: Vec<&LiveFile> = on_main
        .files
        .iter()
        .filter(|f| !branch_paths.contains(f.path.as_str()))
        .chain(
            on_branch
                .files
                .iter()
                .filter(|f| !main_paths.contains(f.path.as_str())),
        )
        .collect();
    let mut staged = Staged {
        branch: branch.to_string(),
        snapshot_id: Some(head),
        main_snapshot_id: real.metadata.current_snapshot_id(),
        files_only_on_branch: on_branch
            .files
            .iter()
            .filter(|f| !main_paths.contains(f.path.as_str()))
            .count(),
        files_only_on_main: on_main
            .files
            .iter()
            .filter(|f| !branch_paths.contains(f.path.as_str()))
            .count(),
        differences: Vec::new(),
    };
    let Some(lo) = differing.iter().map(|f| f.partition_bounds().0).min() else {
        return Ok(staged);
    };
    let hi = differing
        .iter()
        .map(|f| f.partition_bounds().1)
        .max()
        .unwrap_or(lo);
    let within = |files: &[LiveFile]| -> Vec<LiveFile> {
        files
            .iter()
            .filter(|f| {
                let (s, e) = f.partition_bounds();
                s < hi && e > lo
            })
            .cloned()
            .collect()
    };
    let main_days = day_totals(&real, decl, &within(&on_main.files)).await?;
    let branch_days = day_totals(&view, decl, &within(&on_branch.files)).await?;
    let empty = Totals::new(decl);
    let all: BTreeSet<i32> = main_days
        .days
        .keys()
        .chain(branch_days.days.keys())
        .copied()
        .filter(|d| {
            let start = *d as i64 * 86_400_000_000;
            start < hi && start + 86_400_000_000 > lo
        })
        .collect();
    for day in all {
        let m = main_days.days.get(&day).unwrap_or(&empty);
        let b = branch_days.days.get(&day).unwrap_or(&empty);
        for i in 0..empty.values.len() {
            if !m.agrees(b, i) {
                staged.differences.push(DayDifference {
                    day: date_of(day).to_string(),
                    measure: empty.measures()[i].0.clone(),
                    main: m.values[i].to_string(),
                    branch: b.values[i].to_string(),
                });
            }
        }
    }
    Ok(staged)
}

/// The totals by day of `files` together.
async fn day_totals(
    table: &TableHandle,
    decl: &TableDecl,
    files: &[LiveFile],
) -> Result<DayTotals> {
    let mut days = DayTotals::new(&Totals::new(decl));
    for t in tally::tally(table, decl, files, 4).await? {
        days.absorb(&t);
    }
    Ok(days)
}

fn require_branch(table: &TableHandle, branch: &str) -> Result<i64> {
    table.branch_head(branch)?.ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidInput,
            format!(
                "{} has no branch {branch} (staged backfills: {})",
                table.ident,
                staged_branches(table).join(", ")
            ),
        )
    })
}

/// The staged backfills' branches of `table`.
pub fn staged_branches(table: &TableHandle) -> Vec<String> {
    refs::refs(&table.metadata)
        .map(|r| r.into_keys().filter(|n| n.starts_with(PREFIX)).collect())
        .unwrap_or_default()
}

/// What `publish` did.
#[derive(Debug, Clone, Serialize)]
pub struct Published {
    /// The branch published (and removed).
    pub branch: String,
    /// `fast-forward` (main had not moved) or `re-applied`.
    pub how: &'static str,
    /// Main's snapshot after.
    pub snapshot_id: i64,
    /// Data files the change added to main.
    pub files_added: usize,
    /// Data files it removed from main.
    pub files_removed: usize,
}

/// Main's ancestry, newest first.
fn ancestry(table: &TableHandle, from: Option<i64>) -> Vec<i64> {
    let meta = &table.metadata;
    let mut out = Vec::new();
    let mut cursor = from.and_then(|id| meta.snapshot_by_id(id));
    while let Some(s) = cursor {
        out.push(s.snapshot_id());
        cursor = s.parent_snapshot_id().and_then(|p| meta.snapshot_by_id(p));
    }
    out
}

/// Where branch `head` left main's history (`None`: it started on an
/// empty table), and the branch's own snapshots, newest first.
fn branch_point(table: &TableHandle, head: i64, branch: &str) -> Result<(Option<i64>, Vec<i64>)> {
    let on_main: BTreeSet<i64> = ancestry(table, table.metadata.current_snapshot_id())
        .into_iter()
        .collect();
    let mut own = Vec::new();
    for id in ancestry(table, Some(head)) {
        if on_main.contains(&id) {
            return Ok((Some(id), own));
        }
        own.push(id);
    }
    let root_parent = own
        .last()
        .and_then(|id| table.metadata.snapshot_by_id(*id))
        .and_then(|s| s.parent_snapshot_id());
    match root_parent {
        None => Ok((None, own)),
        Some(p) => Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "branch {branch} of {} started at snapshot {p}, which is no longer in main's \
                 history (rolled back or expired): it cannot be published; discard it and \
                 stage the backfill again",
                table.ident
            ),
        )),
    }
}

/// Apply staged branch `branch` to main in one commit, and remove it.
pub async fn publish(
    catalog: &dyn Catalog,
    decl: &TableDecl,
    branch: &str,
    retry: RetryPolicy,
) -> Result<Published> {
    let ident = tables::ident(decl)?;
    let real = catalog.load(&ident).await?;
    tables::check_matches(decl, &real.metadata)?;
    let head = require_branch(&real, branch)?;
    let (point, own) = branch_point(&real, head, branch)?;
    if point == real.metadata.current_snapshot_id()
        && let Some(done) = fast_forward(catalog, &ident, branch, head, point, retry).await?
    {
        return Ok(done);
    }
    reapply(catalog, decl, branch, head, point, &own, retry).await
}

/// Move main to `head` and remove the branch, if main is still at `point`
/// (`None`: it moved meanwhile).
async fn fast_forward(
    catalog: &dyn Catalog,
    ident: &iceberg::TableIdent,
    branch: &str,
    head: i64,
    point: Option<i64>,
    retry: RetryPolicy,
) -> Result<Option<Published>> {
    let moved = std::sync::atomic::AtomicBool::new(false);
    let done = commit::update_metadata(catalog, ident, retry, |base| {
        if base.metadata.current_snapshot_id() != point || base.branch_head(branch)? != Some(head) {
            moved.store(true, std::sync::atomic::Ordering::Relaxed);
            return Ok(None);
        }
        let snapshot = base
            .metadata
            .snapshot_by_id(head)
            .expect("the branch head is in the metadata");
        let mirror = ledger::mirror_updates(
            &base.metadata,
            &snapshot.summary().additional_properties,
            head,
        );
        let ice = |e| Error::iceberg(format!("publishing {branch} to {ident}"), e);
        let builder = (*base.metadata)
            .clone()
            .into_builder(Some(base.metadata_location.clone()))
            .set_ref(
                MAIN_BRANCH,
                SnapshotReference::new(
                    head,
                    refs::refs(&base.metadata)?
                        .get(MAIN_BRANCH)
                        .map(|r| r.retention.clone())
                        .unwrap_or_else(|| SnapshotRetention::branch(None, None, None)),
                ),
            )
            .map_err(ice)?
            .set_properties(mirror)
            .map_err(ice)?
            .remove_ref(branch);
        Ok(Some(builder))
    })
    .await?;
    if done.is_none() || moved.load(std::sync::atomic::Ordering::Relaxed) {
        // An attempt whose reply was lost may have landed: main at the
        // branch head, the branch gone, is this publish done.
        let now = catalog.load(ident).await?;
        let landed =
            now.metadata.current_snapshot_id() == Some(head) && now.branch_head(branch)?.is_none();
        if !landed {
            return Ok(None);
        }
    }
    tracing::info!(table = %ident, branch, snapshot_id = head, "staged backfill published (fast-forward)");
    Ok(Some(Published {
        branch: branch.to_string(),
        how: "fast-forward",
        snapshot_id: head,
        files_added: 0,
        files_removed: 0,
    }))
}

/// Commit the branch's net change since `point` on main's current files:
/// its removed files must still be live there, and a replaced range must
/// have gained no data since `point`; the backfill's progress record moves
/// to main with it.
async fn reapply(
    catalog: &dyn Catalog,
    decl: &TableDecl,
    branch: &str,
    head: i64,
    point: Option<i64>,
    own: &[i64],
    retry: RetryPolicy,
) -> Result<Published> {
    let ident = tables::ident(decl)?;
    let real = catalog.load(&ident).await?;
    let before = match point {
        Some(p) => state::load(&real.at_snapshot(p)?).await?.files,
        None => Vec::new(),
    };
    let view = real.at_snapshot(head)?;
    let after = state::load(&view).await?.files;
    let before_paths: BTreeSet<&str> = before.iter().map(|f| f.path.as_str()).collect();
    let after_paths: BTreeSet<&str> = after.iter().map(|f| f.path.as_str()).collect();
    let removed: Vec<LiveFile> = before
        .iter()
        .filter(|f| !after_paths.contains(f.path.as_str()))
        .cloned()
        .collect();
    let added: Vec<LiveFile> = after
        .iter()
        .filter(|f| !before_paths.contains(f.path.as_str()))
        .cloned()
        .collect();
    let new_files = data_files(&view, &added).await?;

    let mut totals = (ChangeTotals::default(), ChangeTotals::default());
    for (files, into) in [(&added, &mut totals.0), (&removed, &mut totals.1)] {
        let read = tally::tally(&view, decl, files, 4).await?;
        for (f, days) in files.iter().zip(&read) {
            into.add(f.grain, days);
        }
    }
    let id = branch.strip_prefix(PREFIX).unwrap_or(branch);
    let key = backfill_key(id);
    let staged_record = Ledger::of(&view.metadata).get(&key).cloned();
    let range = own.iter().find_map(|s| {
        let props = &real
            .metadata
            .snapshot_by_id(*s)?
            .summary()
            .additional_properties;
        parse_range(props.get(summary::REPLACE_RANGE)?)
    });
    let operation = if removed.is_empty() {
        FirnOperation::Backfill
    } else {
        FirnOperation::BackfillReplace
    };
    let removed_refs = removed.iter().map(LiveFile::removed).collect();
    let mut change = if removed.is_empty() {
        Change::append(operation, new_files)
    } else {
        Change::overwrite(operation, removed_refs, new_files)
    }
    .with_totals(&totals.0, &totals.1)
    .with_property(summary::PUBLISHED_FROM, branch)
    .dropping_branch(branch);
    if let Some(range) = range {
        change = change
            .with_no_conflicting_data(NoConflictingData {
                from_snapshot: point,
                range,
            })
            .with_property(summary::REPLACE_RANGE, format!("{}..{}", range.0, range.1));
    }
    if let Some(set) = staged_record {
        change = change.with_claim(Claim {
            key: key.clone(),
            expect: Ledger::of(&real.metadata).get(&key).cloned(),
            set,
        });
    }
    let committed = commit::commit(catalog, &ident, &change, retry)
        .await
        .map_err(|e| match e.kind() {
            ErrorKind::Superseded | ErrorKind::Fenced => Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "publishing {branch} to {ident} refused: main changed what it replaces \
                     since the branch started ({e}); main is unchanged. Discard the branch and \
                     stage the backfill again on the table as it is"
                ),
            ),
            _ => e,
        })?;
    tracing::info!(table = %ident, branch, snapshot_id = committed.snapshot_id, "staged backfill published (re-applied)");
    Ok(Published {
        branch: branch.to_string(),
        how: "re-applied",
        snapshot_id: committed.snapshot_id,
        files_added: added.len(),
        files_removed: removed.len(),
    })
}

/// `lo..hi` (microseconds) as [`summary::REPLACE_RANGE`] records it.
fn parse_range(value: &str) -> Option<(i64, i64)> {
    let (lo, hi) = value.split_once("..")?;
    Some((lo.parse().ok()?, hi.parse().ok()?))
}

/// The manifest entries of `files` in `table`'s current snapshot, as files
/// to add elsewhere.
async fn data_files(table: &TableHandle, files: &[LiveFile]) -> Result<Vec<NewFile>> {
    let wanted: BTreeSet<&str> = files.iter().map(|f| f.path.as_str()).collect();
    Ok(table
        .live_data_files()
        .await?
        .into_iter()
        .filter(|(_, f)| wanted.contains(f.file_path()))
        .map(|(spec_id, file)| NewFile { spec_id, file })
        .collect())
}

/// What `discard` did.
#[derive(Debug, Clone, Serialize)]
pub struct Discarded {
    /// The branch removed.
    pub branch: String,
    /// Its snapshots removed from the metadata.
    pub snapshots: Vec<i64>,
    /// Files deleted (manifest lists, manifests, data files only they
    /// reached).
    pub deleted_files: usize,
    /// Deletes that failed (left to orphan removal).
    pub failed_deletes: usize,
}

/// Remove staged branch `branch` with the snapshots only it reached, then
/// delete the files only those reached.
pub async fn discard(
    catalog: &dyn Catalog,
    decl: &TableDecl,
    branch: &str,
    retry: RetryPolicy,
) -> Result<Discarded> {
    let ident = tables::ident(decl)?;
    let real = catalog.load(&ident).await?;
    require_branch(&real, branch)?;
    let gone = std::sync::Mutex::new((BTreeSet::new(), real.clone()));
    commit::update_metadata(catalog, &ident, retry, |base| {
        let Some(head) = base.branch_head(branch)? else {
            return Ok(None);
        };
        // Snapshots some other ref reaches stay.
        let mut kept: BTreeSet<i64> = BTreeSet::new();
        for (name, r) in refs::refs(&base.metadata)? {
            if name != branch {
                kept.extend(ancestry(base, Some(r.snapshot_id)));
            }
        }
        let doomed: BTreeSet<i64> = ancestry(base, Some(head))
            .into_iter()
            .filter(|id| !kept.contains(id))
            .collect();
        *gone.lock().unwrap_or_else(|p| p.into_inner()) = (doomed.clone(), base.clone());
        let ids: Vec<i64> = doomed.into_iter().collect();
        Ok(Some(
            (*base.metadata)
                .clone()
                .into_builder(Some(base.metadata_location.clone()))
                .remove_ref(branch)
                .remove_snapshots(&ids),
        ))
    })
    .await?;
    let (doomed, before) = gone.into_inner().unwrap_or_else(|p| p.into_inner());
    let after = catalog.load(&ident).await?;
    let reached = reach::reach(&before, &before.metadata, Some(&doomed)).await?;
    let kept = reach::reach(&after, &after.metadata, None).await?;
    let kept: BTreeSet<String> = kept
        .all()
        .filter_map(|(l, _)| paths::normalize(l))
        .collect();
    let delete: Vec<String> = reached
        .all()
        .filter(|(l, _)| paths::normalize(l).is_some_and(|n| !kept.contains(&n)))
        .map(|(l, _)| l.clone())
        .collect();
    let deleted_files = delete.len();
    let failed = catalog.storage().delete_many(delete).await;
    for (location, why) in &failed {
        tracing::warn!(table = %ident, location, error = %why, "could not delete; left as an orphan");
    }
    tracing::info!(table = %ident, branch, snapshots = doomed.len(), deleted_files, "staged backfill discarded");
    Ok(Discarded {
        branch: branch.to_string(),
        snapshots: doomed.into_iter().collect(),
        deleted_files,
        failed_deletes: failed.len(),
    })
}
