//! firn's one commit layer. Every change to a table — ingest appends now,
//! compaction, rollup, retention and backfill later — is a [`Change`]
//! committed here: load the base, validate the change against *that* base
//! (the offset fence for ingest), build the snapshot, compare-and-set it into
//! the catalog; on conflict reload, re-validate and retry with backoff.
//!
//! iceberg-rust's `Transaction` retries by re-applying updates without
//! re-running firn's validation, so it is not used for commits.

pub mod manifests;
pub mod snapshot;
pub mod validate;

use std::collections::HashMap;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use iceberg::TableIdent;
use iceberg::spec::{DataFile, Operation};

use crate::catalog::{Catalog, TableHandle};
use crate::error::{Error, ErrorKind, Result};
use crate::ledger::Ledger;
use crate::offsets::{self, OffsetAdvance};

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

/// One atomic change to a table.
#[derive(Debug, Clone)]
pub struct Change {
    /// The Iceberg snapshot operation.
    pub operation: Operation,
    /// What firn did (`ingest`, `compact`, `rollup`, ...), recorded as `firn.operation`.
    pub firn_operation: String,
    /// Data files the snapshot adds.
    pub added: Vec<NewFile>,
    /// Live data files the snapshot removes (replace, delete). Every one must
    /// still be live in the base, or the change is `Superseded`.
    pub removed: Vec<RemovedFile>,
    /// Rewrite every manifest into manifests clustered by partition, about
    /// this many bytes each (`rewrite-manifests`), instead of only merging
    /// small ones.
    pub rewrite_manifests: Option<u64>,
    /// Kafka offsets the change advances, fenced against the base.
    pub offsets: Option<OffsetAdvance>,
    /// A fenced progress record (backfill chunks).
    pub claim: Option<Claim>,
    /// An overwrite's conflict rule: refused if data was added to its range
    /// since the snapshot it was planned on.
    pub no_conflicting_data: Option<validate::NoConflictingData>,
    /// Extra snapshot summary properties.
    pub properties: HashMap<String, String>,
}

impl Change {
    /// An append of `added` files.
    pub fn append(firn_operation: &str, added: Vec<NewFile>) -> Self {
        Self {
            operation: Operation::Append,
            firn_operation: firn_operation.to_string(),
            added,
            removed: Vec::new(),
            rewrite_manifests: None,
            offsets: None,
            claim: None,
            no_conflicting_data: None,
            properties: HashMap::new(),
        }
    }

    /// Validate on every attempt's base that nothing was added to
    /// `rule.range` since `rule.from_snapshot` (Iceberg's conflict rule for
    /// an overwrite).
    pub fn with_no_conflicting_data(mut self, rule: validate::NoConflictingData) -> Self {
        self.no_conflicting_data = Some(rule);
        self
    }
}

/// How hard to retry a commit that lost the compare-and-set.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in all (the first one included).
    pub max_attempts: u32,
    /// First backoff delay.
    pub min_delay: Duration,
    /// Longest backoff delay.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 20,
            min_delay: Duration::from_millis(20),
            max_delay: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// Backoff delays between attempts: exponential with jitter.
    fn delays(&self) -> impl Iterator<Item = Duration> {
        ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_jitter()
            .without_max_times()
            .build()
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
/// Returns `Fenced` (not retried) if the change's offsets no longer match the
/// table, `Superseded` if an overwrite's range gained data since its plan,
/// and `CommitConflict` if every attempt lost the race.
pub async fn commit(
    catalog: &dyn Catalog,
    ident: &TableIdent,
    change: &Change,
    retry: RetryPolicy,
) -> Result<Committed> {
    let mut delays = retry.delays();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let base = catalog.load(ident).await?;
        if let Some(advance) = &change.offsets {
            let held = offsets::read(&base.metadata, &advance.group)?;
            advance.check_fence(&held)?;
        }
        if let Some(claim) = &change.claim {
            let ledger = Ledger::of(&base.metadata);
            let held = ledger.get(&claim.key);
            if held != claim.expect.as_ref() {
                return Err(Error::new(
                    ErrorKind::Fenced,
                    format!(
                        "fenced: {ident} holds {} = {:?}, this commit expected {:?}; \
                         another run committed this part",
                        claim.key, held, claim.expect
                    ),
                ));
            }
        }
        if let Some(rule) = &change.no_conflicting_data {
            rule.check(&base, &change.added).await?;
        }
        let (staged, built) = snapshot::build(&base, change, attempt).await?;
        match catalog.swap(&base, staged).await {
            Ok(table) => {
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
                return Ok(Committed {
                    table,
                    snapshot_id: built.snapshot_id,
                    attempts: attempt,
                    added_files: built.added_files,
                    added_records: built.added_records,
                    removed_files: built.removed_files,
                });
            }
            Err(e) if e.kind() == ErrorKind::CommitConflict && attempt < retry.max_attempts => {
                let delay = delays.next().unwrap_or(retry.max_delay);
                tracing::debug!(table = %ident, attempt, ?delay, "commit conflict, retrying");
                tokio::time::sleep(delay).await;
            }
            Err(e) if e.kind() == ErrorKind::CommitConflict => {
                return Err(Error::new(
                    ErrorKind::CommitConflict,
                    format!("gave up committing to {ident} after {attempt} conflicting attempts"),
                )
                .with_source(e));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Commit a metadata-only change (schema evolution, a new spec or sort order)
/// with the same compare-and-set and retry as data commits. `edit` sees the
/// current base on every attempt and returns `None` when there is nothing to do.
pub async fn update_metadata<F>(
    catalog: &dyn Catalog,
    ident: &TableIdent,
    retry: RetryPolicy,
    edit: F,
) -> Result<Option<TableHandle>>
where
    F: Fn(&TableHandle) -> Result<Option<iceberg::spec::TableMetadataBuilder>> + Send + Sync,
{
    let mut delays = retry.delays();
    for attempt in 1.. {
        let base = catalog.load(ident).await?;
        let Some(builder) = edit(&base)? else {
            return Ok(None);
        };
        let built = builder
            .build()
            .map_err(|e| Error::iceberg(format!("building metadata for {ident}"), e))?;
        let staged = crate::catalog::StagedMetadata {
            metadata: built.metadata,
            changes: built.changes,
        };
        match catalog.swap(&base, staged).await {
            Ok(table) => return Ok(Some(table)),
            Err(e) if e.kind() == ErrorKind::CommitConflict && attempt < retry.max_attempts => {
                tokio::time::sleep(delays.next().unwrap_or(retry.max_delay)).await;
            }
            Err(e) => return Err(e),
        }
    }
    unreachable!("the attempt loop only ends by returning")
}
