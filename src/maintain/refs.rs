//! Which snapshots an expiry keeps, as Iceberg's `RemoveSnapshots` decides it
//! (iceberg-java `core/RemoveSnapshots.java`): every ref's snapshot, each
//! branch's ancestry up to the branch's own retention, and unreferenced
//! snapshots younger than the bound. In a shared lake a tag on last month's
//! snapshot is an operator's data, so it is kept with everything it reads.
//!
//! One difference from Java, on purpose: a tag or branch past its
//! `max-ref-age-ms` is removed only when the caller asks for ref expiry;
//! otherwise it is kept (and reported as stale). firn never removes a ref it
//! was not asked to remove.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use iceberg::spec::{MAIN_BRANCH, SnapshotReference, SnapshotRetention, TableMetadata};
use serde::Serialize;

use crate::error::{Error, ErrorKind, Result};

/// Table property: the age past which snapshots expire by default.
pub const MAX_SNAPSHOT_AGE_MS: &str = "history.expire.max-snapshot-age-ms";
/// Table property: how many snapshots of a branch to keep by default.
pub const MIN_SNAPSHOTS_TO_KEEP: &str = "history.expire.min-snapshots-to-keep";
/// Table property: the age past which a tag or branch (not main) expires.
pub const MAX_REF_AGE_MS: &str = "history.expire.max-ref-age-ms";

/// Iceberg's defaults for those properties: five days, one snapshot, forever.
const DEFAULT_MAX_SNAPSHOT_AGE_MS: i64 = 5 * 24 * 3600 * 1000;
const DEFAULT_MIN_SNAPSHOTS_TO_KEEP: usize = 1;
const DEFAULT_MAX_REF_AGE_MS: i64 = i64::MAX;

/// The inputs of one expiry decision. `older_than` and `retain_last` are the
/// caller's bounds (Java's `expireOlderThan`, `retainLast`): they apply to
/// every branch without its own retention, main included; unset, the table's
/// `history.expire.*` properties stand in, then Iceberg's defaults.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// The time ages are measured from.
    pub now: DateTime<Utc>,
    /// Snapshots committed before this may expire.
    pub older_than: Option<DateTime<Utc>>,
    /// Snapshots each branch keeps however old, its head included.
    pub retain_last: Option<usize>,
    /// Remove tags and branches (never main) older than their max ref age.
    pub expire_refs: bool,
}

/// What an expiry removes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Expiry {
    /// Snapshots to remove, ascending.
    pub snapshots: Vec<i64>,
    /// Refs to remove: past their max ref age, and ref expiry was asked for.
    pub removed_refs: Vec<String>,
    /// Refs past their max ref age, kept because ref expiry was not asked for.
    pub stale_refs: Vec<String>,
}

/// Every ref of `meta` by name. iceberg 0.10 keeps the map private (only
/// `snapshot_for_ref(name)`), so it is read from the metadata's JSON form.
pub fn refs(meta: &TableMetadata) -> Result<BTreeMap<String, SnapshotReference>> {
    let invalid = |e: serde_json::Error| {
        Error::new(ErrorKind::Internal, "reading the table's refs").with_source(e)
    };
    let mut json = serde_json::to_value(meta).map_err(invalid)?;
    match json.get_mut("refs").map(serde_json::Value::take) {
        None | Some(serde_json::Value::Null) => Ok(BTreeMap::new()),
        Some(refs) => serde_json::from_value(refs).map_err(invalid),
    }
}

fn property<T: std::str::FromStr>(meta: &TableMetadata, key: &str) -> Option<T> {
    meta.properties()
        .get(key)
        .and_then(|v| v.trim().parse().ok())
}

/// Decide what expires in `meta` under `r`.
pub fn plan(meta: &TableMetadata, r: &Retention) -> Result<Expiry> {
    let now = r.now.timestamp_millis();
    let default_older_than = match r.older_than {
        Some(t) => t.timestamp_millis(),
        None => now.saturating_sub(
            property(meta, MAX_SNAPSHOT_AGE_MS).unwrap_or(DEFAULT_MAX_SNAPSHOT_AGE_MS),
        ),
    };
    let default_min = r
        .retain_last
        .or_else(|| property(meta, MIN_SNAPSHOTS_TO_KEEP))
        .unwrap_or(DEFAULT_MIN_SNAPSHOTS_TO_KEEP);
    let default_max_ref_age: i64 = property(meta, MAX_REF_AGE_MS).unwrap_or(DEFAULT_MAX_REF_AGE_MS);

    let mut out = Expiry::default();
    let mut retained: Vec<SnapshotReference> = Vec::new();
    for (name, reference) in refs(meta)? {
        let Some(snapshot) = meta.snapshot_by_id(reference.snapshot_id) else {
            continue;
        };
        if name != MAIN_BRANCH {
            let max_age = match reference.retention {
                SnapshotRetention::Branch { max_ref_age_ms, .. }
                | SnapshotRetention::Tag { max_ref_age_ms } => max_ref_age_ms,
            }
            .unwrap_or(default_max_ref_age);
            if now.saturating_sub(snapshot.timestamp_ms()) > max_age {
                if r.expire_refs {
                    out.removed_refs.push(name);
                    continue;
                }
                out.stale_refs.push(name);
            }
        }
        retained.push(reference);
    }

    let mut keep: BTreeSet<i64> = retained.iter().map(|r| r.snapshot_id).collect();
    let mut referenced = keep.clone();
    for reference in &retained {
        let SnapshotRetention::Branch {
            min_snapshots_to_keep,
            max_snapshot_age_ms,
            ..
        } = reference.retention
        else {
            continue;
        };
        let older_than = max_snapshot_age_ms
            .map(|age| now.saturating_sub(age))
            .unwrap_or(default_older_than);
        let min = min_snapshots_to_keep
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(default_min)
            .max(1);
        let mut kept = 0;
        let mut within = true;
        let mut cursor = meta.snapshot_by_id(reference.snapshot_id);
        while let Some(s) = cursor {
            // The whole ancestry is referenced (a young snapshot on it is not
            // kept as "unreferenced"); only its retention window is kept.
            referenced.insert(s.snapshot_id());
            if within && (kept < min || s.timestamp_ms() >= older_than) {
                keep.insert(s.snapshot_id());
                kept += 1;
            } else {
                within = false;
            }
            cursor = s.parent_snapshot_id().and_then(|p| meta.snapshot_by_id(p));
        }
    }
    for s in meta.snapshots() {
        if !referenced.contains(&s.snapshot_id()) && s.timestamp_ms() >= default_older_than {
            keep.insert(s.snapshot_id());
        }
    }
    out.snapshots = meta
        .snapshots()
        .map(|s| s.snapshot_id())
        .filter(|id| !keep.contains(id))
        .collect();
    out.snapshots.sort_unstable();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    const DAY: i64 = 86_400_000;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 6, 30, 0, 0, 0).unwrap()
    }

    /// A table whose main branch is snapshots 1..=n, one a day, the newest
    /// (n) committed a day before [`now`]; `extra` adds (id, parent, age in
    /// days) snapshots off main, and `refs` points refs at them. Built from
    /// its JSON form: the metadata builder refuses snapshots older than the
    /// wall clock's last update.
    fn table(
        n: i64,
        extra: &[(i64, i64, i64)],
        refs: &[(&str, i64, SnapshotRetention)],
        props: &[(&str, &str)],
    ) -> TableMetadata {
        let snap = |id: i64, parent: Option<i64>, age_days: i64| {
            json!({
                "snapshot-id": id,
                "parent-snapshot-id": parent,
                "sequence-number": id,
                "timestamp-ms": now().timestamp_millis() - age_days * DAY,
                "manifest-list": format!("file:///w/t/metadata/snap-{id}.avro"),
                "summary": {"operation": "append"},
                "schema-id": 0,
            })
        };
        let mut snapshots: Vec<_> = (1..=n)
            .map(|id| snap(id, (id > 1).then_some(id - 1), n - id + 1))
            .collect();
        snapshots.extend(extra.iter().map(|&(id, p, age)| snap(id, Some(p), age)));
        let mut all_refs = serde_json::Map::new();
        all_refs.insert("main".into(), json!({"snapshot-id": n, "type": "branch"}));
        for (name, id, retention) in refs {
            let r = SnapshotReference::new(*id, retention.clone());
            all_refs.insert(name.to_string(), serde_json::to_value(r).unwrap());
        }
        let last_seq = extra.iter().map(|e| e.0).chain([n]).max().unwrap();
        let doc = json!({
            "format-version": 2,
            "table-uuid": "9c12d441-03fe-4693-9a96-a0705ddf69c1",
            "location": "file:///w/t",
            "last-sequence-number": last_seq,
            "last-updated-ms": now().timestamp_millis(),
            "last-column-id": 1,
            "current-schema-id": 0,
            "schemas": [{"type": "struct", "schema-id": 0, "fields": [
                {"id": 1, "name": "x", "required": true, "type": "long"}]}],
            "default-spec-id": 0,
            "partition-specs": [{"spec-id": 0, "fields": []}],
            "last-partition-id": 999,
            "default-sort-order-id": 0,
            "sort-orders": [{"order-id": 0, "fields": []}],
            "properties": props.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "current-snapshot-id": n,
            "snapshots": snapshots,
            "snapshot-log": [],
            "metadata-log": [],
            "refs": all_refs,
        });
        serde_json::from_value(doc).unwrap()
    }

    fn tag() -> SnapshotRetention {
        SnapshotRetention::Tag {
            max_ref_age_ms: None,
        }
    }

    fn branch() -> SnapshotRetention {
        SnapshotRetention::branch(None, None, None)
    }

    fn expire_all_but_one() -> Retention {
        Retention {
            now: now(),
            older_than: Some(now()),
            retain_last: Some(1),
            expire_refs: false,
        }
    }

    #[test]
    fn without_refs_main_keeps_its_head_and_young_ancestors() {
        let meta = table(6, &[], &[], &[]);
        let e = plan(&meta, &expire_all_but_one()).unwrap();
        assert_eq!(e.snapshots, [1, 2, 3, 4, 5]);
        // retain_last counts the head; older_than keeps anything younger.
        let r = Retention {
            older_than: Some(now() - chrono::Duration::milliseconds(3 * DAY + 1)),
            retain_last: Some(2),
            ..expire_all_but_one()
        };
        assert_eq!(plan(&meta, &r).unwrap().snapshots, [1, 2, 3]);
        let r = Retention {
            retain_last: Some(5),
            ..expire_all_but_one()
        };
        assert_eq!(plan(&meta, &r).unwrap().snapshots, [1]);
    }

    #[test]
    fn a_tag_keeps_its_snapshot_and_only_that() {
        let meta = table(6, &[], &[("month-end", 2, tag())], &[]);
        let e = plan(&meta, &expire_all_but_one()).unwrap();
        assert_eq!(e.snapshots, [1, 3, 4, 5]);
        assert!(e.removed_refs.is_empty() && e.stale_refs.is_empty());
    }

    #[test]
    fn a_branch_keeps_its_head_and_its_own_retention() {
        // Branch `audit` off snapshot 3: 7 (5 days old) <- 8 (4 days old).
        let extra = [(7, 3, 5), (8, 7, 4)];
        let meta = table(6, &extra, &[("audit", 8, branch())], &[]);
        // The caller's bounds apply to a branch with no retention of its own.
        let e = plan(&meta, &expire_all_but_one()).unwrap();
        assert_eq!(e.snapshots, [1, 2, 3, 4, 5, 7]);
        // Its own min-snapshots-to-keep wins over the caller's.
        let keep3 = SnapshotRetention::branch(Some(3), None, None);
        let meta = table(6, &extra, &[("audit", 8, keep3)], &[]);
        let e = plan(&meta, &expire_all_but_one()).unwrap();
        assert_eq!(e.snapshots, [1, 2, 4, 5]);
        // Its own max-snapshot-age-ms too: 4.5 days keeps 8 and not 7.
        let young = SnapshotRetention::branch(None, Some(4 * DAY + DAY / 2), None);
        let meta = table(6, &extra, &[("audit", 8, young)], &[]);
        let e = plan(&meta, &expire_all_but_one()).unwrap();
        assert_eq!(e.snapshots, [1, 2, 3, 4, 5, 7]);
        let old = SnapshotRetention::branch(None, Some(5 * DAY + DAY / 2), None);
        let meta = table(6, &extra, &[("audit", 8, old)], &[]);
        let e = plan(&meta, &expire_all_but_one()).unwrap();
        assert_eq!(e.snapshots, [1, 4, 5]);
    }

    #[test]
    fn main_with_its_own_retention_keeps_it() {
        let meta = table(
            6,
            &[],
            &[("main", 6, SnapshotRetention::branch(Some(4), None, None))],
            &[],
        );
        let e = plan(&meta, &expire_all_but_one()).unwrap();
        assert_eq!(e.snapshots, [1, 2]);
    }

    #[test]
    fn refs_past_their_age_stay_unless_ref_expiry_is_asked_for() {
        let old_tag = SnapshotRetention::Tag {
            max_ref_age_ms: Some(2 * DAY),
        };
        let meta = table(
            6,
            &[(7, 2, 4)],
            &[
                ("stale", 2, old_tag.clone()),
                ("fresh", 5, old_tag),
                (
                    "old-branch",
                    7,
                    SnapshotRetention::branch(None, None, Some(DAY)),
                ),
            ],
            &[],
        );
        let e = plan(&meta, &expire_all_but_one()).unwrap();
        assert_eq!(e.snapshots, [1, 3, 4]);
        assert!(e.removed_refs.is_empty());
        assert_eq!(e.stale_refs, ["old-branch", "stale"]);
        let asked = Retention {
            expire_refs: true,
            ..expire_all_but_one()
        };
        let e = plan(&meta, &asked).unwrap();
        assert_eq!(e.snapshots, [1, 2, 3, 4, 7]);
        assert_eq!(e.removed_refs, ["old-branch", "stale"]);
        assert!(e.stale_refs.is_empty());
    }

    #[test]
    fn table_properties_are_the_defaults() {
        let meta = table(
            6,
            &[],
            &[("month-end", 1, tag())],
            &[
                (MIN_SNAPSHOTS_TO_KEEP, "2"),
                (MAX_SNAPSHOT_AGE_MS, &(3 * DAY + 1).to_string()),
                (MAX_REF_AGE_MS, &(2 * DAY).to_string()),
            ],
        );
        let unset = Retention {
            now: now(),
            older_than: None,
            retain_last: None,
            expire_refs: true,
        };
        // 3 days + 1 ms keeps 4, 5, 6; the tag on 1 is older than 2 days.
        let e = plan(&meta, &unset).unwrap();
        assert_eq!(e.snapshots, [1, 2, 3]);
        assert_eq!(e.removed_refs, ["month-end"]);
        // min-snapshots-to-keep: a zero age still keeps two.
        let meta = table(
            6,
            &[],
            &[],
            &[(MIN_SNAPSHOTS_TO_KEEP, "2"), (MAX_SNAPSHOT_AGE_MS, "0")],
        );
        assert_eq!(plan(&meta, &unset).unwrap().snapshots, [1, 2, 3, 4]);
        // The caller's bounds win over the properties.
        assert_eq!(
            plan(&meta, &expire_all_but_one()).unwrap().snapshots,
            [1, 2, 3, 4, 5]
        );
    }

    #[test]
    fn young_unreferenced_snapshots_stay() {
        // 7 hangs off 2 with no ref (a rolled-back branch), one day old.
        let meta = table(6, &[(7, 2, 1), (8, 2, 9)], &[], &[]);
        let r = Retention {
            older_than: Some(now() - chrono::Duration::days(2)),
            ..expire_all_but_one()
        };
        // Main keeps 6 (1 day) and 5 (2 days, not older than the bound).
        assert_eq!(plan(&meta, &r).unwrap().snapshots, [1, 2, 3, 4, 8]);
    }

    #[test]
    fn refs_read_from_metadata() {
        let meta = table(3, &[], &[("month-end", 2, tag())], &[]);
        let refs = refs(&meta).unwrap();
        assert_eq!(refs.len(), 2);
        assert_eq!(refs["month-end"].snapshot_id, 2);
        assert!(refs["main"].is_branch());
    }
}
