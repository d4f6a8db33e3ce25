//! What an audit reports: per commit its verdict, other engines' changes,
//! the findings, the per-day totals; and the result kept in the table's
//! properties for `firn status`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::commit::summary;

/// The last audit's result, kept in the table's properties
/// ([`summary::LAST_AUDIT`]) for `firn status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastAudit {
    /// When it ran.
    pub at: DateTime<Utc>,
    /// The snapshot audited.
    pub snapshot_id: Option<i64>,
    /// `full` or `trust-summaries`.
    pub mode: String,
    /// Whether no check failed.
    pub consistent: bool,
    /// Days the findings named.
    pub inconsistent_days: usize,
    /// The first finding.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_finding: Option<String>,
}

impl LastAudit {
    /// The last audit `meta`'s table records (`None`: never audited, or a
    /// value this firn cannot read).
    pub fn of(meta: &iceberg::spec::TableMetadata) -> Option<Self> {
        serde_json::from_str(meta.properties().get(summary::LAST_AUDIT)?).ok()
    }
}

/// What the audit found.
#[derive(Debug, Clone, Serialize)]
pub struct AuditReport {
    /// The table.
    pub table: String,
    /// The snapshot audited up to (main's current).
    pub snapshot_id: Option<i64>,
    /// `full` or `trust-summaries`.
    pub mode: &'static str,
    /// Whether no check failed.
    pub consistent: bool,
    /// Days named by the findings (a finding without a day counts one).
    pub inconsistent_days: usize,
    /// Main's retained snapshots walked.
    pub snapshots: usize,
    /// The expired snapshot the history starts after, whose live files are
    /// the baseline.
    pub baseline_snapshot_id: Option<i64>,
    /// Data files read.
    pub files_read: usize,
    /// Run time.
    pub seconds: f64,
    /// The measures, in declaration order.
    pub measures: Vec<String>,
    /// Per snapshot, what it did and whether that was consistent.
    pub commits: Vec<CommitAudit>,
    /// Foreign commits that changed totals.
    pub foreign_changes: Vec<ForeignChange>,
    /// What failed, first first.
    pub findings: Vec<Finding>,
    /// Per day, the totals now (read back; with `--trust-summaries`, the
    /// running sum, a min or max that rows were removed from unknown).
    pub days: Vec<DayRow>,
}

/// One snapshot's audit (or one change by another engine, over several).
#[derive(Debug, Clone, Serialize)]
pub struct CommitAudit {
    /// The snapshot (the last of another engine's change).
    pub snapshot_id: i64,
    /// Another engine's snapshots before it that are part of the same
    /// change (consecutive in main's history).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub earlier_snapshots: Vec<i64>,
    /// When it was committed.
    pub committed_at: DateTime<Utc>,
    /// firn's operation, or Iceberg's for another engine's commit.
    pub operation: String,
    /// Whether firn committed it.
    pub firn: bool,
    /// Data files added.
    pub files_added: usize,
    /// Data files removed.
    pub files_removed: usize,
    /// What it did to the totals.
    pub verdict: Verdict,
}

/// What a commit did to the totals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Rows added (ingest, backfill).
    Added,
    /// Rows removed (retention).
    Removed,
    /// Rows replaced (a backfill's replace).
    Replaced,
    /// Every day's totals conserved (compaction, rollup, another engine's
    /// rewrite).
    Conserved,
    /// No data file changed.
    NoDataChange,
    /// Another engine changed totals.
    ChangedTotals,
    /// A finding names this commit.
    Inconsistent,
}

/// A foreign commit that changed totals.
#[derive(Debug, Clone, Serialize)]
pub struct ForeignChange {
    /// The snapshot (the last of the change).
    pub snapshot_id: i64,
    /// The change's snapshots before it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub earlier_snapshots: Vec<i64>,
    /// Iceberg's operation.
    pub operation: String,
    /// Per day and measure changed, what it removed and what it added.
    pub deltas: Vec<Delta>,
}

/// A day's measure before and after, or removed and added.
#[derive(Debug, Clone, Serialize)]
pub struct Delta {
    /// The day (UTC).
    pub day: String,
    /// The measure.
    pub measure: String,
    /// What was expected (removed, or accounted).
    pub expected: String,
    /// What was found (added, or read).
    pub found: String,
}

/// One failed check.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// The snapshot at fault (the current one for the final balance).
    pub snapshot_id: Option<i64>,
    /// Which check failed.
    pub check: Check,
    /// The day and measure that differ, when it is about totals.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta: Option<Delta>,
    /// What is wrong, in a sentence.
    pub message: String,
}

/// The audit's checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Check {
    /// A firn compaction or rollup changed a day's totals.
    Conservation,
    /// A firn commit's files hold other totals than its summary states.
    Summary,
    /// A firn commit changed rows its kind may not.
    Kind,
    /// Another engine's commit changed totals.
    ForeignChange,
    /// Row-level deletes the audit cannot account.
    DeleteFiles,
    /// The live files are not what the history added and kept.
    Files,
    /// A day's totals now differ from the running sum.
    Balance,
}

/// A day's totals, by measure.
#[derive(Debug, Clone, Serialize)]
pub struct DayRow {
    /// The day (UTC).
    pub day: String,
    /// Per measure, its total (null: no rows, or unknown).
    pub totals: serde_json::Map<String, serde_json::Value>,
}
