//! The keys of a firn snapshot's summary: every `firn.*` key firn writes is
//! named here and nowhere else. The strings are what tables already hold:
//! they never change.
//!
//! A summary holds Iceberg's own counts ([`TOTALS`]), what firn did
//! ([`OPERATION`]), and the whole ledger (see [`crate::ledger`]): each
//! group's offsets, backfill progress records and offset resets.

/// The [`FirnOperation`](super::FirnOperation) that committed a snapshot.
/// Present in every snapshot firn commits, and in no other.
pub const OPERATION: &str = "firn.operation";
/// Kafka records an ingest batch covered (rejects included).
pub const RECORDS: &str = "firn.records";
/// Ledger: prefix of a consumer group's offsets ([`offsets_key`]).
pub const OFFSETS_PREFIX: &str = "firn.offsets.";
/// Ledger: prefix of a backfill's progress record ([`backfill_key`]).
pub const BACKFILL_PREFIX: &str = "firn.backfill.";
/// Ledger: prefix of the last offset reset applied to a group ([`reset_key`]).
pub const RESET_PREFIX: &str = "firn.reset.";
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
