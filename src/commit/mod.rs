//! firn's one commit layer. Every change to a table — ingest, compaction,
//! rollup, retention, manifest rewrites, backfill, offset resets — is a
//! [`Change`] committed here: load the base, validate the change against
//! *that* base (the offset fence, a backfill's claim), build the snapshot,
//! compare-and-set it into the catalog; on conflict reload, re-validate and
//! retry with backoff ([`crate::retry`]).
//!
//! iceberg-rust's `Transaction` retries by re-applying updates without
//! re-running firn's validation, so it is not used for commits.

mod avro;
pub mod avro_read;
pub mod manifests;
pub mod operation;
pub mod snapshot;
pub mod summary;
pub mod validate;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use iceberg::TableIdent;
use iceberg::spec::{DataFile, Operation};

pub use self::operation::FirnOperation;
use crate::catalog::{Catalog, StagedMetadata, TableHandle};
use crate::error::{Error, ErrorKind, Result};
use crate::ledger::Ledger;
use crate::offsets::{self, OffsetAdvance};
pub use crate::retry::RetryPolicy;

/// Manifests read (or read and rewritten) at once, each on a task of its
/// own, when a step touches many: a compaction of a day's minute files
/// removes files from one manifest per ingest commit, and on object storage
/// each is a GET (and a PUT).
pub const MANIFESTS_AT_ONCE: usize = 16;
use crate::retry::retry;

/// A data file to add, with the partition spec it was written for (iceberg's
/// `DataFile` keeps its spec id private).
#[derive(Debug, Clone)]
pub struct NewFile {
    /// Partition spec id.
    pub spec_id: i32,
    /// The file.
    pub file: DataFile,
}

/// A live data file a change removes, located by its partition so that only
/// the manifests that can hold it are rewritten.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RemovedFile {
    /// Data file path.
    pub path: String,
    /// Partition spec id.
    pub spec_id: i32,
    /// Partition ordinal (hours, days or months since the epoch).
    pub partition: i32,
}

/// A snapshot property a change advances, fenced like offsets: the base must
/// hold `expect` under `key` (`None`: absent), or the change is `Fenced`.
/// Backfills record their progress this way, so a chunk commits once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// Summary property (carried forward by every commit).
    pub key: String,
    /// What the base must hold.
    pub expect: Option<String>,
    /// What the new snapshot holds.
    pub set: String,
}

/// One atomic change to a table: what firn did, the files it swaps, and the
/// ledger entries it advances. Built by the constructor naming its Iceberg
/// operation, then `with_*` for what it carries.
#[derive(Debug, Clone)]
pub struct Change {
    /// The Iceberg snapshot operation.
    operation: Operation,
    /// What firn did, recorded as [`summary::OPERATION`].
    firn_operation: FirnOperation,
    /// Data files the snapshot adds.
    added: Vec<NewFile>,
    /// Live data files the snapshot removes (replace, delete, overwrite).
    /// Every one must still be live in the base, or the change is `Superseded`.
    removed: Vec<RemovedFile>,
    /// Rewrite every manifest into manifests clustered by partition, about
    /// this many bytes each, instead of only merging small ones.
    rewrite_manifests: Option<u64>,
    /// Kafka offsets the change advances, fenced against the base.
    offsets: Option<OffsetAdvance>,
    /// A fenced progress record (backfill chunks).
    claim: Option<Claim>,
    /// An overwrite's conflict rule: refused if data was added to its range
    /// since the snapshot it was planned on.
    no_conflicting_data: Option<validate::NoConflictingData>,
    /// Extra snapshot summary properties.
    properties: HashMap<String, String>,
    /// The branch the snapshot goes to (`None`: main). Its base, fences
    /// and validation are the branch's head (main's current snapshot when
    /// the branch does not exist yet: the commit starts it there).
    branch: Option<String>,
    /// A branch the same metadata swap removes (a staged change published).
    drop_branch: Option<String>,
}

impl Change {
    fn new(
        operation: Operation,
        firn_operation: FirnOperation,
        removed: Vec<RemovedFile>,
        added: Vec<NewFile>,
    ) -> Self {
        Self {
            operation,
            firn_operation,
            added,
            removed,
            rewrite_manifests: None,
            offsets: None,
            claim: None,
            no_conflicting_data: None,
            properties: HashMap::new(),
            branch: None,
            drop_branch: None,
        }
    }

    /// Commit to branch `name` instead of main.
    pub fn on_branch(mut self, name: impl Into<String>) -> Self {
        self.branch = Some(name.into());
        self
    }

    /// Remove branch `name` in the same swap.
    pub fn dropping_branch(mut self, name: impl Into<String>) -> Self {
        self.drop_branch = Some(name.into());
        self
    }

    /// Add `added` (Iceberg's `append`, as `AppendFiles`).
    pub fn append(op: FirnOperation, added: Vec<NewFile>) -> Self {
        Self::new(Operation::Append, op, Vec::new(), added)
    }

    /// Swap `removed` for `added`, which hold the same rows (Iceberg's
    /// `replace`, as `RewriteFiles`: compaction, rollup, a manifest rewrite).
    pub fn replace(op: FirnOperation, removed: Vec<RemovedFile>, added: Vec<NewFile>) -> Self {
        Self::new(Operation::Replace, op, removed, added)
    }

    /// Drop `removed` (Iceberg's `delete`, as `DeleteFiles`: retention).
    pub fn delete(op: FirnOperation, removed: Vec<RemovedFile>) -> Self {
        Self::new(Operation::Delete, op, removed, Vec::new())
    }

    /// Swap `removed` for `added`, which hold other rows (Iceberg's
    /// `overwrite`, as `OverwriteFiles`: a backfill replacing a range).
    pub fn overwrite(op: FirnOperation, removed: Vec<RemovedFile>, added: Vec<NewFile>) -> Self {
        Self::new(Operation::Overwrite, op, removed, added)
    }

    /// Advance a group's offsets, fenced: the base must hold the offsets the
    /// batch started from.
    pub fn with_offsets(mut self, advance: OffsetAdvance) -> Self {
        self.offsets = Some(advance);
        self
    }

    /// Advance a progress record, fenced (see [`Claim`]).
    pub fn with_claim(mut self, claim: Claim) -> Self {
        self.claim = Some(claim);
        self
    }

    /// Validate on every attempt's base that nothing was added to
    /// `rule.range` since `rule.from_snapshot` (Iceberg's conflict rule for
    /// an overwrite).
    pub fn with_no_conflicting_data(mut self, rule: validate::NoConflictingData) -> Self {
        self.no_conflicting_data = Some(rule);
        self
    }

    /// Record the totals of the rows the change adds and removes (each when
    /// known: not empty), by grain and by day, in the snapshot summary.
    pub fn with_totals(
        mut self,
        added: &crate::totals::ChangeTotals,
        removed: &crate::totals::ChangeTotals,
    ) -> Self {
        for (by_grain, by_day, totals) in [
            (summary::TOTALS_ADDED, summary::TOTALS_ADDED_BY_DAY, added),
            (
                summary::TOTALS_REMOVED,
                summary::TOTALS_REMOVED_BY_DAY,
                removed,
            ),
        ] {
            if !totals.is_empty() {
                self.properties
                    .insert(by_grain.to_string(), totals.by_grain_json());
                self.properties
                    .insert(by_day.to_string(), totals.by_day_json());
            }
        }
        self
    }

    /// Record `key = value` in the snapshot summary.
    pub fn with_property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.insert(key.into(), value.into());
        self
    }

    /// Rewrite every manifest into manifests clustered by partition, about
    /// `target_size` bytes each (Iceberg's `RewriteManifests`), instead of
    /// only merging small ones.
    pub fn rewriting_manifests(mut self, target_size: u64) -> Self {
        self.rewrite_manifests = Some(target_size);
        self
    }

    /// What firn does with this change.
    pub fn firn_operation(&self) -> FirnOperation {
        self.firn_operation
    }

    /// Fail with `Fenced` unless `base` still holds what this change's
    /// offsets and claim start from.
    fn check_fences(&self, base: &TableHandle) -> Result<()> {
        if let Some(advance) = &self.offsets {
            let held = offsets::read(&base.metadata, &advance.group)?;
            advance.check_fence(&held)?;
        }
        if let Some(claim) = &self.claim {
            let ledger = Ledger::of(&base.metadata);
            let held = ledger.get(&claim.key);
            if held != claim.expect.as_ref() {
                return Err(Error::new(
                    ErrorKind::Fenced,
                    format!(
                        "fenced: {} holds {} = {:?}, this commit expected {:?}; \
                         another run committed this part",
                        base.ident, claim.key, held, claim.expect
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// The result of a successful commit.
#[derive(Debug, Clone)]
pub struct Committed {
    /// The table after the commit.
    pub table: TableHandle,
    /// The new snapshot.
    pub snapshot_id: i64,
    /// Attempts it took (1 if no conflict).
    pub attempts: u32,
    /// Files added.
    pub added_files: usize,
    /// Files removed.
    pub removed_files: usize,
    /// Records added.
    pub added_records: u64,
}

/// Commit `change` to `ident`.
///
/// Every attempt starts from a fresh base and re-validates the change on it.
/// Returns `Fenced` if the change's offsets or claim no longer match the
/// table and `Superseded` if a file it removes is gone or an overwrite's
/// range gained data since its plan (neither retried),
/// and `CommitConflict` if every attempt lost the race.
pub async fn commit(
    catalog: &dyn Catalog,
    ident: &TableIdent,
    change: &Change,
    policy: RetryPolicy,
) -> Result<Committed> {
    let mut attempts = 0;
    let swapped = std::sync::Mutex::new(Vec::new());
    let what = format!("committing {} to {ident}", change.firn_operation);
    retry(policy, &what, || {
        attempts += 1;
        attempt(catalog, ident, change, attempts, &swapped)
    })
    .await
    .map_err(|e| gave_up(e, ident, policy))
}

/// What an attempt that reached the compare-and-set would have committed.
#[derive(Debug, Clone, Copy)]
struct Swapped {
    snapshot_id: i64,
    added_files: usize,
    added_records: u64,
    removed_files: usize,
}

/// One attempt at [`commit`]: load, validate, build, compare-and-set.
async fn attempt(
    catalog: &dyn Catalog,
    ident: &TableIdent,
    change: &Change,
    attempt: u32,
    swapped: &std::sync::Mutex<Vec<Swapped>>,
) -> Result<Committed> {
    let real = catalog.load(ident).await?;
    let base = match &change.branch {
        Some(branch) => real.on_branch(branch)?,
        None => real.clone(),
    };
    // An earlier attempt whose outcome looked lost (a retried request, a
    // conflict answered to a commit that had applied) may be in the table.
    let earlier: Vec<Swapped> = swapped.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if let Some(s) = earlier
        .iter()
        .find(|s| base.metadata.snapshot_by_id(s.snapshot_id).is_some())
    {
        tracing::warn!(
            table = %ident, snapshot_id = s.snapshot_id,
            "an earlier attempt whose outcome looked lost is in the table: the commit landed"
        );
        UNKNOWN_LANDED.fetch_add(1, Ordering::Relaxed);
        return Ok(Committed {
            table: base,
            snapshot_id: s.snapshot_id,
            attempts: attempt - 1,
            added_files: s.added_files,
            added_records: s.added_records,
            removed_files: s.removed_files,
        });
    }
    if let Err(fenced) = change.check_fences(&base) {
        // A fence judged on a stale read (a caching catalog, a replica) is
        // no verdict: the compare-and-set would have lost anyway. Judge it
        // again on a fresh read.
        if catalog.load(ident).await?.metadata_location != base.metadata_location {
            return Err(Error::new(
                ErrorKind::CommitConflict,
                format!("{ident} changed since it was read; judging the fence again"),
            ));
        }
        return Err(fenced);
    }
    if let Some(rule) = &change.no_conflicting_data {
        rule.check(&base, &change.added).await?;
    }
    let (staged, built) = snapshot::build(&base, &real, change, attempt).await?;
    swapped
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Swapped {
            snapshot_id: built.snapshot_id,
            added_files: built.added_files,
            added_records: built.added_records,
            removed_files: built.removed_files,
        });
    let table = match catalog.swap(&real, staged).await {
        Ok(table) => table,
        Err(e) if e.kind() == ErrorKind::CommitConflict => return Err(e),
        Err(e) => resolve_unknown(catalog, ident, built.snapshot_id, e).await?,
    };
    tracing::info!(
        table = %ident,
        operation = %change.firn_operation,
        snapshot_id = built.snapshot_id,
        files = built.added_files,
        rows = built.added_records,
        removed_files = built.removed_files,
        removed_rows = built.removed_records,
        attempts = attempt,
        "committed"
    );
    Ok(Committed {
        table,
        snapshot_id: built.snapshot_id,
        attempts: attempt,
        added_files: built.added_files,
        added_records: built.added_records,
        removed_files: built.removed_files,
    })
}

static UNKNOWN_LANDED: AtomicU64 = AtomicU64::new(0);
static UNKNOWN_NOT_LANDED: AtomicU64 = AtomicU64::new(0);

/// Commits of this process whose swap failed in a way that may have applied
/// them, resolved by reading the table back: (landed, did not land).
pub fn unknown_outcomes() -> (u64, u64) {
    (
        UNKNOWN_LANDED.load(Ordering::Relaxed),
        UNKNOWN_NOT_LANDED.load(Ordering::Relaxed),
    )
}

/// A swap that failed other than by losing the compare-and-set may have
/// applied (a timeout, a lost reply, a 5xx after the catalog wrote). Read the
/// table back: if `snapshot_id` is there, the commit landed; if it is not,
/// it did not, and `failed` is returned to be retried on a fresh base. If the
/// table cannot be read either, the outcome stays unknown and the commit is
/// not retried blindly: the caller re-reads the table before anything else
/// (ingest re-reads its offsets; a rerun re-plans).
async fn resolve_unknown(
    catalog: &dyn Catalog,
    ident: &TableIdent,
    snapshot_id: i64,
    failed: Error,
) -> Result<TableHandle> {
    let read_back = retry(
        RetryPolicy::default(),
        &format!("reading {ident} back after a failed commit"),
        || catalog.load(ident),
    )
    .await;
    match read_back {
        Ok(table) if table.metadata.snapshot_by_id(snapshot_id).is_some() => {
            tracing::warn!(
                table = %ident, snapshot_id, error = %failed,
                "the catalog reported a failure but the table holds the snapshot: the commit landed"
            );
            UNKNOWN_LANDED.fetch_add(1, Ordering::Relaxed);
            Ok(table)
        }
        Ok(_) => {
            tracing::warn!(
                table = %ident, snapshot_id, error = %failed,
                "the commit failed and the table does not hold its snapshot: it did not land"
            );
            UNKNOWN_NOT_LANDED.fetch_add(1, Ordering::Relaxed);
            Err(failed)
        }
        Err(read) => Err(Error::new(
            ErrorKind::CommitUnknown,
            format!(
                "the outcome of committing snapshot {snapshot_id} to {ident} is unknown: \
                 the commit failed ({failed}) and the table cannot be read back ({read})"
            ),
        )),
    }
}

/// A conflict that outlived every attempt says so.
fn gave_up(e: Error, ident: &TableIdent, policy: RetryPolicy) -> Error {
    if e.kind() != ErrorKind::CommitConflict {
        return e;
    }
    Error::new(
        ErrorKind::CommitConflict,
        format!(
            "gave up committing to {ident} after {} conflicting attempts",
            policy.max_attempts
        ),
    )
    .with_source(e)
}

/// Commit a metadata-only change (schema evolution, a new spec or sort order)
/// with the same compare-and-set and retry as data commits. `edit` sees the
/// current base on every attempt and returns `None` when there is nothing to do.
pub async fn update_metadata<F>(
    catalog: &dyn Catalog,
    ident: &TableIdent,
    policy: RetryPolicy,
    edit: F,
) -> Result<Option<TableHandle>>
where
    F: Fn(&TableHandle) -> Result<Option<iceberg::spec::TableMetadataBuilder>> + Send + Sync,
{
    let what = format!("updating the metadata of {ident}");
    retry(policy, &what, || async {
        let base = catalog.load(ident).await?;
        let Some(builder) = edit(&base)? else {
            return Ok(None);
        };
        let built = builder
            .build()
            .map_err(|e| Error::iceberg(format!("building metadata for {ident}"), e))?;
        let staged = StagedMetadata {
            metadata: built.metadata,
            changes: built.changes,
            branch: None,
        };
        catalog.swap(&base, staged).await.map(Some)
    })
    .await
}
