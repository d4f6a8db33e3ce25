//! What firn did in a snapshot, recorded in its summary as
//! [`summary::OPERATION`](super::summary::OPERATION). Iceberg's own
//! `operation` (append, replace, overwrite, delete) says how the files
//! changed; this says which firn operation changed them, so `status`, the
//! ledger and operators reading summaries can tell an ingest from a rollup.

use std::fmt;

use super::summary;
use iceberg::spec::Summary;

/// One of firn's operations. The strings are what tables already hold: they
/// never change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FirnOperation {
    /// A worker's batch of minute rows, with the group's offsets.
    Ingest,
    /// A worker's rejected records, in the rejects table.
    IngestRejects,
    /// Small files of a sealed partition merged (Spark's `RewriteDataFiles`).
    Compact,
    /// Finer rows re-aggregated into a coarser grain.
    Rollup,
    /// Partitions past retention dropped.
    Retention,
    /// Manifests clustered by partition (Iceberg's `RewriteManifests`).
    RewriteManifests,
    /// A chunk of backfilled rows, with its progress record.
    Backfill,
    /// A backfill's rejected records, in the rejects table.
    BackfillRejects,
    /// A backfill replacing everything in a time range (an overwrite).
    BackfillReplace,
    /// An operator's `--reset-offsets`: new offsets and no files.
    ResetOffsets,
}

impl FirnOperation {
    /// Every operation.
    pub const ALL: [FirnOperation; 10] = [
        Self::Ingest,
        Self::IngestRejects,
        Self::Compact,
        Self::Rollup,
        Self::Retention,
        Self::RewriteManifests,
        Self::Backfill,
        Self::BackfillRejects,
        Self::BackfillReplace,
        Self::ResetOffsets,
    ];

    /// The value recorded in the summary.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ingest => "ingest",
            Self::IngestRejects => "ingest-rejects",
            Self::Compact => "compact",
            Self::Rollup => "rollup",
            Self::Retention => "retention",
            Self::RewriteManifests => "rewrite-manifests",
            Self::Backfill => "backfill",
            Self::BackfillRejects => "backfill-rejects",
            Self::BackfillReplace => "backfill-replace",
            Self::ResetOffsets => "reset-offsets",
        }
    }

    /// The operation `value` names, or `None` for a value this firn does not
    /// write (another tool's, or a newer firn's).
    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|op| op.as_str() == value)
    }

    /// The firn operation a snapshot summary records, if it records one this
    /// firn knows. (Whether firn committed a snapshot at all is
    /// [`crate::ledger::is_firn_snapshot`]: a value it does not know counts.)
    pub fn of(summary: &Summary) -> Option<Self> {
        summary
            .additional_properties
            .get(summary::OPERATION)
            .and_then(|v| Self::parse(v))
    }
}

impl fmt::Display for FirnOperation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use iceberg::spec::Operation;

    use super::*;

    #[test]
    fn every_operation_reads_back_as_written() {
        for op in FirnOperation::ALL {
            assert_eq!(FirnOperation::parse(op.as_str()), Some(op));
            assert_eq!(op.to_string(), op.as_str());
        }
    }

    #[test]
    fn the_strings_tables_hold_are_stable() {
        let written: Vec<&str> = FirnOperation::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(
            written,
            [
                "ingest",
                "ingest-rejects",
                "compact",
                "rollup",
                "retention",
                "rewrite-manifests",
                "backfill",
                "backfill-rejects",
                "backfill-replace",
                "reset-offsets",
            ]
        );
    }

    #[test]
    fn other_values_are_not_firns() {
        assert_eq!(FirnOperation::parse("Ingest"), None);
        assert_eq!(FirnOperation::parse(""), None);
        let summary = |props: &[(&str, &str)]| Summary {
            operation: Operation::Append,
            additional_properties: props
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>(),
        };
        assert_eq!(
            FirnOperation::of(&summary(&[(summary::OPERATION, "rollup")])),
            Some(FirnOperation::Rollup)
        );
        assert_eq!(
            FirnOperation::of(&summary(&[(summary::OPERATION, "from-the-future")])),
            None
        );
        assert_eq!(
            FirnOperation::of(&summary(&[("engine-name", "spark")])),
            None
        );
    }
}
