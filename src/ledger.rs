//! firn's ledger: the state a table carries for firn across commits — each
//! consumer group's Kafka offsets (`firn.offsets.<group>`), backfill progress
//! (`firn.backfill.<id>`) and offset resets an operator asked for
//! (`firn.reset.<group>`) — and how it is found in a lake other engines write
//! to as well.
//!
//! Every firn commit writes the whole ledger twice, in the same atomic
//! metadata swap: in its snapshot summary, and as table properties (the
//! *mirror*), with [`MIRROR_SNAPSHOT`] naming that snapshot. Reading:
//!
//! 1. walk main's ancestry from the current snapshot back to the newest
//!    snapshot firn committed (the one recording a firn operation); its summary is
//!    the ledger. Appends, compactions, overwrites and deletes by other
//!    engines after it carry no firn properties and change nothing; a rollback
//!    to an older firn snapshot rolls the ledger back with the data.
//! 2. if the walk ends without one — another engine's snapshot expiry removed
//!    firn's snapshots, or it rewrote the lineage — the mirror is the ledger.
//!    Table properties survive other engines' commits and expiry.
//!
//! Iceberg snapshot summaries are what Kafka Connect's Iceberg sink also uses
//! for its offsets; the ancestry walk mirrors its `lastCommittedOffsets`, the
//! mirror covers what that walk cannot see.

use std::collections::{BTreeMap, HashMap};

use iceberg::spec::{Snapshot, TableMetadata};

use crate::commit::summary::{
    BACKFILL_PREFIX, MIRROR_SNAPSHOT, OFFSETS_PREFIX, OPERATION, RESET_PREFIX, TOTAL_RECORDS,
};

/// Whether `key` is part of the ledger (carried by every firn commit).
pub fn is_ledger_key(key: &str) -> bool {
    [OFFSETS_PREFIX, BACKFILL_PREFIX, RESET_PREFIX]
        .iter()
        .any(|p| key.starts_with(p))
}

/// Whether firn committed `snapshot`: its summary records a firn operation,
/// whichever (a newer firn's operation this one does not know included).
pub fn is_firn_snapshot(snapshot: &Snapshot) -> bool {
    snapshot
        .summary()
        .additional_properties
        .contains_key(OPERATION)
}

/// Where a ledger was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LedgerSource {
    /// The summary of this snapshot, the newest firn snapshot in main's ancestry.
    Snapshot(i64),
    /// The table-property mirror, written with this snapshot (now expired or
    /// out of main's ancestry).
    Mirror(Option<i64>),
    /// Nowhere: firn never committed to this table.
    #[default]
    Empty,
}

/// The ledger of a table as of one metadata version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ledger {
    /// Where it was found.
    pub source: LedgerSource,
    /// Its entries (ledger keys only).
    pub entries: BTreeMap<String, String>,
}

impl Ledger {
    /// The ledger `meta` holds (see the module docs for the rule).
    pub fn of(meta: &TableMetadata) -> Self {
        let mut cursor = meta.current_snapshot();
        while let Some(s) = cursor {
            if is_firn_snapshot(s) {
                return Self {
                    source: LedgerSource::Snapshot(s.snapshot_id()),
                    entries: ledger_entries(&s.summary().additional_properties),
                };
            }
            cursor = s.parent_snapshot_id().and_then(|p| meta.snapshot_by_id(p));
        }
        let props = meta.properties();
        let entries = ledger_entries(props);
        let written_by = props.get(MIRROR_SNAPSHOT).and_then(|v| v.parse().ok());
        if entries.is_empty() && written_by.is_none() {
            return Self::default();
        }
        Self {
            source: LedgerSource::Mirror(written_by),
            entries,
        }
    }

    /// The value at `key`.
    pub fn get(&self, key: &str) -> Option<&String> {
        self.entries.get(key)
    }

    /// The snapshot that wrote this ledger, if known.
    pub fn snapshot_id(&self) -> Option<i64> {
        match self.source {
            LedgerSource::Snapshot(id) => Some(id),
            LedgerSource::Mirror(id) => id,
            LedgerSource::Empty => None,
        }
    }

    /// Entries under `prefix`, with the prefix stripped.
    pub fn with_prefix<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a String)> + 'a {
        self.entries
            .range(prefix.to_string()..)
            .map_while(move |(k, v)| k.strip_prefix(prefix).map(|rest| (rest, v)))
    }

    /// A human description of where the ledger came from, for errors and logs.
    pub fn describe(&self) -> String {
        match self.source {
            LedgerSource::Snapshot(id) => format!("snapshot {id}"),
            LedgerSource::Mirror(Some(id)) => {
                format!(
                    "the table properties (written with snapshot {id}, no longer in main's ancestry)"
                )
            }
            LedgerSource::Mirror(None) => "the table properties".to_string(),
            LedgerSource::Empty => "nowhere (firn never committed to this table)".to_string(),
        }
    }
}

fn ledger_entries(props: &HashMap<String, String>) -> BTreeMap<String, String> {
    props
        .iter()
        .filter(|(k, _)| is_ledger_key(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The table properties a new firn snapshot `snapshot_id` with `summary` sets
/// so that the mirror equals its ledger: the entries that differ from what the
/// table holds, and [`MIRROR_SNAPSHOT`].
pub fn mirror_updates(
    meta: &TableMetadata,
    summary: &HashMap<String, String>,
    snapshot_id: i64,
) -> HashMap<String, String> {
    let held = meta.properties();
    let mut updates: HashMap<String, String> = summary
        .iter()
        .filter(|(k, v)| is_ledger_key(k) && held.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    updates.insert(MIRROR_SNAPSHOT.to_string(), snapshot_id.to_string());
    updates
}

/// Whether the table's current snapshot holds any rows (a foreign snapshot
/// without a `total-records` summary counts as holding some).
pub fn holds_data(meta: &TableMetadata) -> bool {
    meta.current_snapshot().is_some_and(|s| {
        s.summary()
            .additional_properties
            .get(TOTAL_RECORDS)
            .and_then(|v| v.parse::<u64>().ok())
            .is_none_or(|n| n > 0)
    })
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    /// Metadata whose main branch is `snapshots` (oldest first, each the
    /// parent of the next) with these summaries, and these table properties.
    fn metadata(snapshots: &[(i64, Value)], properties: Value) -> TableMetadata {
        let mut parent: Option<i64> = None;
        let snaps: Vec<Value> = snapshots
            .iter()
            .enumerate()
            .map(|(n, (id, summary))| {
                let mut s = json!({
                    "snapshot-id": id, "sequence-number": n + 1, "timestamp-ms": n + 1,
                    "manifest-list": format!("file:///t/metadata/snap-{id}.avro"),
                    "summary": summary, "schema-id": 0
                });
                if let Some(p) = parent {
                    s["parent-snapshot-id"] = json!(p);
                }
                parent = Some(*id);
                s
            })
            .collect();
        let mut m = json!({
            "format-version": 2, "table-uuid": "9c12d441-03fe-4693-9a96-a0705ddf69c1",
            "location": "file:///t", "last-sequence-number": snapshots.len(),
            "last-updated-ms": snapshots.len() + 1, "last-column-id": 1, "current-schema-id": 0,
            "schemas": [{"type": "struct", "schema-id": 0,
                         "fields": [{"id": 1, "name": "ts", "required": false, "type": "timestamptz"}]}],
            "default-spec-id": 0, "partition-specs": [{"spec-id": 0, "fields": []}],
            "last-partition-id": 999, "default-sort-order-id": 0,
            "sort-orders": [{"order-id": 0, "fields": []}],
            "properties": properties, "snapshots": snaps, "snapshot-log": [], "metadata-log": [],
        });
        if let Some(p) = parent {
            m["current-snapshot-id"] = json!(p);
            m["refs"] = json!({"main": {"snapshot-id": p, "type": "branch"}});
        }
        serde_json::from_value(m).unwrap()
    }

    fn firn(offset: i64) -> Value {
        json!({"operation": "append", "firn.operation": "ingest",
               "firn.offsets.g": format!("{{\"t\":{{\"0\":{offset}}}}}"),
               "firn.backfill.b": "{\"done\":1,\"complete\":true}"})
    }

    fn foreign() -> Value {
        json!({"operation": "overwrite", "engine-name": "pyiceberg"})
    }

    #[test]
    fn foreign_snapshots_on_top_are_stepped_over() {
        let m = metadata(
            &[(1, firn(10)), (2, firn(20)), (3, foreign()), (4, foreign())],
            json!({}),
        );
        let l = Ledger::of(&m);
        assert_eq!(l.source, LedgerSource::Snapshot(2));
        assert_eq!(crate::offsets::of_ledger(&l, "g").unwrap()["t"][&0], 20);
        assert!(l.get("firn.backfill.b").is_some());
    }

    #[test]
    fn expired_ancestry_falls_back_to_the_mirror() {
        // Another engine expired everything but its own snapshot.
        let m = metadata(
            &[(3, foreign())],
            json!({"firn.offsets.g": "{\"t\":{\"0\":20}}", MIRROR_SNAPSHOT: "2",
                   "write.format.default": "parquet"}),
        );
        let l = Ledger::of(&m);
        assert_eq!(l.source, LedgerSource::Mirror(Some(2)));
        assert_eq!(crate::offsets::of_ledger(&l, "g").unwrap()["t"][&0], 20);
        assert_eq!(l.entries.len(), 1, "only ledger keys: {:?}", l.entries);
        // Without a mirror, nothing: the caller refuses to guess.
        assert_eq!(
            Ledger::of(&metadata(&[(3, foreign())], json!({}))),
            Ledger::default()
        );
    }

    #[test]
    fn a_rollback_rolls_the_ledger_back_with_the_data() {
        // Main points at snapshot 1 again (snapshot 2 left the ancestry) while
        // the mirror still says 2: the ancestry wins, as the data does.
        let m = metadata(
            &[(1, firn(10))],
            json!({"firn.offsets.g": "{\"t\":{\"0\":20}}", MIRROR_SNAPSHOT: "2"}),
        );
        let l = Ledger::of(&m);
        assert_eq!(l.source, LedgerSource::Snapshot(1));
        assert_eq!(crate::offsets::of_ledger(&l, "g").unwrap()["t"][&0], 10);
    }

    #[test]
    fn the_mirror_sets_only_what_changed() {
        let m = metadata(
            &[(1, firn(10))],
            json!({"firn.offsets.g": "{\"t\":{\"0\":10}}", MIRROR_SNAPSHOT: "1"}),
        );
        let summary: HashMap<String, String> = [
            ("firn.offsets.g", r#"{"t":{"0":10}}"#),
            ("firn.offsets.h", r#"{"t":{"0":5}}"#),
            ("firn.operation", "ingest"),
            ("added-records", "3"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let u = mirror_updates(&m, &summary, 7);
        assert_eq!(u.len(), 2, "{u:?}");
        assert_eq!(u["firn.offsets.h"], r#"{"t":{"0":5}}"#);
        assert_eq!(u[MIRROR_SNAPSHOT], "7");
        assert!(holds_data(&m), "no total-records: assumed to hold data");
    }

    #[test]
    fn ledger_keys_and_prefix_iteration() {
        assert!(is_ledger_key("firn.offsets.g"));
        assert!(is_ledger_key("firn.backfill.0123"));
        assert!(is_ledger_key("firn.reset.g"));
        assert!(!is_ledger_key("firn.operation"));
        assert!(!is_ledger_key(MIRROR_SNAPSHOT));
        let ledger = Ledger {
            source: LedgerSource::Snapshot(1),
            entries: BTreeMap::from([
                ("firn.backfill.a".into(), "x".into()),
                ("firn.offsets.g1".into(), "{}".into()),
                ("firn.offsets.g2".into(), "{}".into()),
                ("firn.reset.g1".into(), "t:0:5".into()),
            ]),
        };
        let groups: Vec<&str> = ledger.with_prefix(OFFSETS_PREFIX).map(|(g, _)| g).collect();
        assert_eq!(groups, ["g1", "g2"]);
        assert_eq!(ledger.snapshot_id(), Some(1));
    }
}
