//! What a firn snapshot's summary holds, and the keys it is read back by:
//! every `firn.*` key firn writes is named here and nowhere else. The strings
//! are what tables already hold: they never change.
//!
//! A summary holds Iceberg's own counts ([`TOTALS`]), what firn did
//! ([`OPERATION`]), and the whole ledger (see [`crate::ledger`]): each
//! group's offsets, backfill progress records and offset resets, the change's
//! own entries over the base's carried forward.

use std::collections::HashMap;

use iceberg::spec::{SnapshotSummaryCollector, Summary, TableMetadata};

use super::Change;
use crate::error::Result;
use crate::offsets;

/// The [`FirnOperation`](super::FirnOperation) that committed a snapshot.
/// Present in every snapshot firn commits, and in no other.
pub const OPERATION: &str = "firn.operation";
/// Kafka records an ingest batch covered (rejects included).
pub const RECORDS: &str = "firn.records";
/// The totals of the rows a commit added, by grain and measure
/// ([`crate::totals::ChangeTotals::by_grain_json`]).
pub const TOTALS_ADDED: &str = "firn.totals.added";
/// The totals of the rows a commit removed, by grain and measure.
pub const TOTALS_REMOVED: &str = "firn.totals.removed";
/// The totals of the rows a commit added, by UTC day of `ts` and measure
/// ([`crate::totals::ChangeTotals::by_day_json`]): what `firn audit`
/// accounts with.
pub const TOTALS_ADDED_BY_DAY: &str = "firn.totals.added-by-day";
/// The totals of the rows a commit removed, by day and measure.
pub const TOTALS_REMOVED_BY_DAY: &str = "firn.totals.removed-by-day";
/// The range a backfill's replace swapped (`lo..hi`, microseconds), which
/// publishing a staged replace validates main against.
pub const REPLACE_RANGE: &str = "firn.replace.range";
/// The staged backfill's branch a publish applied to main.
pub const PUBLISHED_FROM: &str = "firn.published-from";
/// Ledger: prefix of a consumer group's offsets ([`offsets_key`]).
pub const OFFSETS_PREFIX: &str = "firn.offsets.";
/// Ledger: prefix of a backfill's progress record ([`backfill_key`]).
pub const BACKFILL_PREFIX: &str = "firn.backfill.";
/// Ledger: prefix of the last offset reset applied to a group ([`reset_key`]).
pub const RESET_PREFIX: &str = "firn.reset.";
/// Table property, not a summary key: the last audit's result
/// ([`crate::maintain::audit::LastAudit`], as JSON), which `firn status`
/// shows.
pub const LAST_AUDIT: &str = "firn.audit.last";
/// Table property, not a summary key: the snapshot whose summary the
/// ledger's mirror in the table properties copies.
pub const MIRROR_SNAPSHOT: &str = "firn.ledger.snapshot-id";

/// Iceberg's total of live records.
pub const TOTAL_RECORDS: &str = "total-records";
/// Summary totals maintained from the previous snapshot, as Iceberg defines
/// them: (total, added, removed).
pub const TOTALS: [(&str, &str, &str); 4] = [
    ("total-data-files", "added-data-files", "deleted-data-files"),
    (TOTAL_RECORDS, "added-records", "deleted-records"),
    ("total-files-size", "added-files-size", "removed-files-size"),
    (
        "total-delete-files",
        "added-delete-files",
        "removed-delete-files",
    ),
];

/// The ledger key of `group`'s offsets.
pub fn offsets_key(group: &str) -> String {
    format!("{OFFSETS_PREFIX}{group}")
}

/// The ledger key of backfill `id`'s progress record.
pub fn backfill_key(id: &str) -> String {
    format!("{BACKFILL_PREFIX}{id}")
}

/// The ledger key recording the last reset applied to `group`.
pub fn reset_key(group: &str) -> String {
    format!("{RESET_PREFIX}{group}")
}

/// The summary of `change` on `base`, whose file counts `collector` holds.
pub(super) fn build(
    base: &TableMetadata,
    change: &Change,
    collector: SnapshotSummaryCollector,
) -> Result<Summary> {
    let mut props: HashMap<String, String> = change.properties.clone();
    props.extend(collector.build());
    props.insert(OPERATION.into(), change.firn_operation.as_str().into());

    // Offsets: the batch's advance on top of what the base holds; every other
    // group's offsets are carried forward as they are.
    if let Some(advance) = &change.offsets {
        let held = offsets::read(base, &advance.group)?;
        props.insert(
            offsets_key(&advance.group),
            offsets::encode(&advance.apply(held)),
        );
    }
    if let Some(claim) = &change.claim {
        props.insert(claim.key.clone(), claim.set.clone());
    }
    offsets::carry_forward(base, &mut props);

    let previous = base.current_snapshot().map(|s| s.summary());
    for (total, added, removed) in TOTALS {
        let prev: u64 = previous
            .and_then(|s| s.additional_properties.get(total))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let get = |k: &str| -> u64 { props.get(k).and_then(|v| v.parse().ok()).unwrap_or(0) };
        let value = (prev + get(added)).saturating_sub(get(removed));
        props.insert(total.to_string(), value.to_string());
    }
    Ok(Summary {
        operation: change.operation.clone(),
        additional_properties: props,
    })
}
