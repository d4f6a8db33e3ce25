//! `firn status`: the operator's view of each table, read from metadata and
//! manifests (no data file is opened), the broker's watermarks and a listing
//! of the table's location; judged against the health thresholds the table
//! declares.

mod render;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::kafka;
pub use crate::kafka::KafkaSource;
pub use render::render;

use crate::catalog::{Catalog, TableHandle};
use crate::commit::FirnOperation;
use crate::commit::summary::TOTAL_RECORDS;
use crate::error::Result;
use crate::maintain::audit::LastAudit;
use crate::maintain::orphans;
use crate::maintain::plan::{self, PlanOptions, Task};
use crate::maintain::state::{self, TableState};
use crate::offsets::{self, TopicOffsets};
use crate::schema::decl::TableDecl;
use crate::schema::layout::Grain;
use crate::tables;

/// Files, rows and bytes of one grain.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct GrainStats {
    /// Live data files.
    pub files: u64,
    /// Rows in them.
    pub rows: u64,
    /// Their size in bytes.
    pub bytes: u64,
    /// Partitions holding them.
    pub partitions: u64,
}

/// One partition waiting for maintenance.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PendingPartition {
    /// Grain of the partition (for a rollup: the grain rolled up into).
    pub grain: &'static str,
    /// Partition start (RFC 3339).
    pub start: String,
    /// Partition end (RFC 3339).
    pub end: String,
    /// Files the task would read.
    pub files: usize,
    /// Their rows.
    pub rows: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// Partitions waiting for each kind of maintenance under the table's policy.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Pending {
    /// Sealed partitions with more files than their size needs.
    pub compaction: Vec<PendingPartition>,
    /// Partitions the policy wants at a coarser grain (by target partition).
    pub rollup: Vec<PendingPartition>,
    /// Partitions wholly past retention.
    pub retention: Vec<PendingPartition>,
}

/// Lag of one consumer group on the table's topic.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct GroupLag {
    /// Consumer group (its offsets live in the table).
    pub group: String,
    /// Records between the table's offsets and the high watermarks.
    pub records: u64,
    /// Per partition: `[offset the table holds, high watermark]`.
    pub partitions: BTreeMap<i32, (Option<i64>, i64)>,
}

/// Unreferenced files under the table's location.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct OrphanEstimate {
    /// Files.
    pub files: usize,
    /// Their bytes.
    pub bytes: u64,
}

/// Healthy, or the thresholds broken.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Health {
    /// No declared threshold is broken.
    pub healthy: bool,
    /// One line per broken threshold.
    pub problems: Vec<String>,
}

/// The status of one table.
#[derive(Debug, Clone, Serialize)]
pub struct TableStatus {
    /// `namespace.name`.
    pub table: String,
    /// Source topic.
    pub topic: String,
    /// Current snapshot id.
    pub current_snapshot_id: Option<i64>,
    /// Age of the last commit (any operation) in seconds.
    pub last_commit_age_seconds: Option<i64>,
    /// Age of the last ingest commit in seconds.
    pub last_ingest_age_seconds: Option<i64>,
    /// Snapshots in the metadata.
    pub snapshots: usize,
    /// Manifests in the current snapshot.
    pub manifests: usize,
    /// Per grain (`minute`, `hour`, `day`).
    pub grains: BTreeMap<String, GrainStats>,
    /// Data files under a quarter of the target file size, in partitions
    /// of more than one file.
    pub small_files: u64,
    /// Partitions waiting for compaction, rollup or retention.
    pub pending: Pending,
    /// Committed offsets per consumer group, topic and partition.
    pub offsets: BTreeMap<String, TopicOffsets>,
    /// Lag per consumer group (`None` when not measured).
    pub lag: Option<Vec<GroupLag>>,
    /// Why lag could not be measured.
    pub lag_error: Option<String>,
    /// Unreferenced files (`None` when not listed).
    pub orphans: Option<OrphanEstimate>,
    /// Records in the rejects table.
    pub rejects: u64,
    /// The last `firn audit` (`None`: never audited).
    pub audit: Option<LastAudit>,
    /// Staged backfills' branches, waiting for `publish` or `discard`.
    pub staged_backfills: Vec<String>,
    /// Against the declared thresholds.
    pub health: Health,
}

/// What to gather besides the metadata.
#[derive(Debug, Clone)]
pub struct StatusOptions {
    /// The time to judge ages and policies at.
    pub now: DateTime<Utc>,
    /// The ingest deployment's consumer group (its lag is judged).
    pub group: String,
    /// Measure lag against this broker (`None`: skip).
    pub kafka: Option<KafkaSource>,
    /// List the table's location for orphans.
    pub orphans: bool,
    /// Target data file size (small files are under a quarter of it).
    pub target_file_size: u64,
    /// A partition is sealed (compactable) this long after its end.
    pub seal_delay: Duration,
}

/// Gather the status of `decl`'s table.
pub async fn table_status(
    catalog: &dyn Catalog,
    decl: &TableDecl,
    opts: &StatusOptions,
) -> Result<TableStatus> {
    let ident = tables::ident(decl)?;
    let table = catalog.load(&ident).await?;
    let rejects = catalog.load(&tables::rejects_ident(decl)?).await?;
    let meta = &table.metadata;
    let live = state::load(&table).await?;
    let manifests = match meta.current_snapshot() {
        Some(s) => table.manifest_list(s).await?.entries().len(),
        None => 0,
    };
    let now = opts.now.timestamp_millis();
    let offsets = offsets::read_all(meta)?;
    let (lag, lag_error) = match &opts.kafka {
        None => (None, None),
        Some(source) => match kafka::watermarks(source, &decl.topic).await {
            Ok(w) => (
                Some(group_lag(&offsets, &opts.group, &decl.topic, &w)),
                None,
            ),
            Err(e) => (None, Some(e.to_string())),
        },
    };
    let orphans = if opts.orphans {
        let r = orphans::find(catalog, &ident, opts.now, Duration::ZERO).await?;
        Some(OrphanEstimate {
            files: r.orphans.len(),
            bytes: r.orphan_bytes,
        })
    } else {
        None
    };
    let mut status = TableStatus {
        table: decl.qualified_name(),
        topic: decl.topic.clone(),
        current_snapshot_id: meta.current_snapshot_id(),
        last_commit_age_seconds: meta
            .current_snapshot()
            .map(|s| (now - s.timestamp_ms()) / 1000),
        last_ingest_age_seconds: meta
            .snapshots()
            .filter(|s| FirnOperation::of(s.summary()) == Some(FirnOperation::Ingest))
            .map(|s| s.timestamp_ms())
            .max()
            .map(|t| (now - t) / 1000),
        snapshots: meta.snapshots().count(),
        manifests,
        grains: grain_stats(&live),
        small_files: small_files(&live, opts.target_file_size / 4),
        pending: pending(&live, decl, opts),
        offsets,
        lag,
        lag_error,
        orphans,
        rejects: total_records(&rejects),
        audit: LastAudit::of(meta),
        staged_backfills: crate::backfill::stage::staged_branches(&table),
        health: Health::default(),
    };
    status.health = judge(&status, decl, &opts.group);
    Ok(status)
}

fn grain_stats(live: &TableState) -> BTreeMap<String, GrainStats> {
    let mut grains: BTreeMap<String, GrainStats> = Grain::ALL
        .iter()
        .map(|g| (g.as_str().to_string(), GrainStats::default()))
        .collect();
    let mut partitions: BTreeSet<(Grain, i32)> = BTreeSet::new();
    for f in &live.files {
        let s = grains.entry(f.grain.as_str().to_string()).or_default();
        s.files += 1;
        s.rows += f.records;
        s.bytes += f.bytes;
        if partitions.insert((f.grain, f.partition)) {
            s.partitions += 1;
        }
    }
    grains
}

/// Files under `small` bytes in partitions holding more than one file (a
/// partition's one file is as big as its data makes it).
fn small_files(live: &TableState, small: u64) -> u64 {
    let mut per_partition: BTreeMap<(Grain, i32), (u64, u64)> = BTreeMap::new();
    for f in &live.files {
        let e = per_partition.entry((f.grain, f.partition)).or_default();
        e.0 += 1;
        e.1 += (f.bytes < small) as u64;
    }
    per_partition
        .values()
        .filter(|(files, _)| *files > 1)
        .map(|(_, small)| small)
        .sum()
}

fn pending(live: &TableState, decl: &TableDecl, opts: &StatusOptions) -> Pending {
    let popts = PlanOptions {
        now: opts.now,
        from: None,
        to: None,
        seal_delay: opts.seal_delay,
        target_file_size: opts.target_file_size,
    };
    let by_target = |tasks: Vec<Task>| -> Vec<PendingPartition> {
        tasks
            .iter()
            .filter_map(|t| t.target.map(|(g, p)| partition(g, p, t.inputs.iter())))
            .collect()
    };
    let mut retention: BTreeMap<(Grain, i32), Vec<&state::LiveFile>> = BTreeMap::new();
    let retained = plan::plan_retention(live, &decl.policy, &popts);
    for f in retained.iter().flat_map(|t| &t.inputs) {
        retention.entry((f.grain, f.partition)).or_default().push(f);
    }
    Pending {
        compaction: by_target(plan::plan_compaction(live, &decl.policy, &popts)),
        rollup: by_target(plan::plan_rollup(live, &decl.policy, &popts)),
        retention: retention
            .into_iter()
            .map(|((g, p), files)| partition(g, p, files.into_iter()))
            .collect(),
    }
}

fn partition<'a>(
    grain: Grain,
    ordinal: i32,
    files: impl Iterator<Item = &'a state::LiveFile>,
) -> PendingPartition {
    let (start, end) = grain.partition_bounds(ordinal);
    let show = |m: i64| {
        DateTime::from_timestamp_micros(m)
            .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_default()
    };
    let mut p = PendingPartition {
        grain: grain.as_str(),
        start: show(start),
        end: show(end),
        files: 0,
        rows: 0,
        bytes: 0,
    };
    for f in files {
        p.files += 1;
        p.rows += f.records;
        p.bytes += f.bytes;
    }
    p
}

/// Lag of every group holding offsets for `topic`, and of `group` (the
/// deployment's) even before its first commit.
fn group_lag(
    offsets: &BTreeMap<String, TopicOffsets>,
    group: &str,
    topic: &str,
    watermarks: &BTreeMap<i32, (i64, i64)>,
) -> Vec<GroupLag> {
    let mut groups: BTreeSet<&str> = offsets
        .iter()
        .filter(|(_, t)| t.contains_key(topic))
        .map(|(g, _)| g.as_str())
        .collect();
    groups.insert(group);
    groups
        .into_iter()
        .map(|g| {
            let held = offsets.get(g).and_then(|t| t.get(topic));
            let mut lag = GroupLag {
                group: g.to_string(),
                records: 0,
                partitions: BTreeMap::new(),
            };
            for (p, (low, high)) in watermarks {
                let at = held.and_then(|h| h.get(p)).copied();
                lag.records += (high - at.unwrap_or(*low).max(*low)).max(0) as u64;
                lag.partitions.insert(*p, (at, *high));
            }
            lag
        })
        .collect()
}

/// Compare with the thresholds `decl` declares.
fn judge(s: &TableStatus, decl: &TableDecl, group: &str) -> Health {
    let h = &decl.health;
    let mut problems = Vec::new();
    let mut over = |what: &str, value: u64, max: Option<u64>| {
        if let Some(max) = max.filter(|m| value > *m) {
            problems.push(format!("{what} {value} > {max}"));
        }
    };
    over("snapshots", s.snapshots as u64, h.max_snapshots);
    over("manifests", s.manifests as u64, h.max_manifests);
    over("small files", s.small_files, h.max_small_files);
    over(
        "partitions pending compaction",
        s.pending.compaction.len() as u64,
        h.max_pending_compaction,
    );
    over(
        "partitions pending rollup",
        s.pending.rollup.len() as u64,
        h.max_pending_rollup,
    );
    over(
        "partitions pending retention",
        s.pending.retention.len() as u64,
        h.max_pending_retention,
    );
    if let Some(o) = &s.orphans {
        over("orphan bytes", o.bytes, h.max_orphan_bytes);
    }
    if let Some(lag) = &s.lag {
        let records = lag
            .iter()
            .find(|l| l.group == group)
            .map_or(0, |l| l.records);
        over(&format!("lag of group {group}"), records, h.max_lag);
    } else if let (Some(_), Some(e)) = (h.max_lag, &s.lag_error) {
        problems.push(format!("lag unknown: {e}"));
    }
    if let Some(max) = h.max_commit_age {
        match s.last_ingest_age_seconds {
            Some(age) if age as u64 > max.as_secs() => problems.push(format!(
                "last ingest commit {} ago > {}",
                humantime::format_duration(Duration::from_secs(age as u64)),
                humantime::format_duration(max)
            )),
            None => problems.push("no ingest commit yet".into()),
            _ => {}
        }
    }
    if let Some(a) = s.audit.as_ref().filter(|a| !a.consistent) {
        problems.push(format!(
            "the last audit ({}) found {} inconsistent day(s): {}",
            a.at.to_rfc3339(),
            a.inconsistent_days,
            a.first_finding.as_deref().unwrap_or("see `firn audit`")
        ));
    }
    Health {
        healthy: problems.is_empty(),
        problems,
    }
}

fn total_records(table: &TableHandle) -> u64 {
    table
        .metadata
        .current_snapshot()
        .and_then(|s| s.summary().additional_properties.get(TOTAL_RECORDS))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_counts_uncommitted_partitions_from_the_low_watermark() {
        let offsets = BTreeMap::from([(
            "old".to_string(),
            BTreeMap::from([("t".to_string(), BTreeMap::from([(0, 90), (1, 5)]))]),
        )]);
        let w = BTreeMap::from([(0, (0, 100)), (1, (10, 20))]);
        let lag = group_lag(&offsets, "firn", "t", &w);
        assert_eq!(lag.len(), 2);
        let firn = lag.iter().find(|l| l.group == "firn").unwrap();
        assert_eq!(firn.records, 100 + 10);
        let old = lag.iter().find(|l| l.group == "old").unwrap();
        // partition 1's held offset is below the low watermark (deleted records)
        assert_eq!(old.records, 10 + 10);
        assert_eq!(old.partitions[&0], (Some(90), 100));
    }

    /// A status exactly at every limit of `HEALTH`.
    fn at_the_limits() -> TableStatus {
        let part = PendingPartition {
            grain: "minute",
            start: String::new(),
            end: String::new(),
            files: 2,
            rows: 2,
            bytes: 2,
        };
        TableStatus {
            table: "usage.http_requests".into(),
            topic: "t".into(),
            current_snapshot_id: Some(1),
            last_commit_age_seconds: Some(60),
            last_ingest_age_seconds: Some(60),
            snapshots: 10,
            manifests: 5,
            grains: BTreeMap::new(),
            small_files: 7,
            pending: Pending {
                compaction: vec![part.clone()],
                rollup: vec![part.clone(); 2],
                retention: vec![part; 3],
            },
            offsets: BTreeMap::new(),
            audit: None,
            staged_backfills: Vec::new(),
            lag: Some(vec![GroupLag {
                group: "firn".into(),
                records: 100,
                partitions: BTreeMap::new(),
            }]),
            lag_error: None,
            orphans: Some(OrphanEstimate {
                files: 1,
                bytes: 1000,
            }),
            rejects: 0,
            health: Health::default(),
        }
    }

    const HEALTH: &str = "[health]\nmax_lag = 100\nmax_commit_age = \"1m\"\n\
        max_snapshots = 10\nmax_manifests = 5\nmax_small_files = 7\n\
        max_pending_compaction = 1\nmax_pending_rollup = 2\n\
        max_pending_retention = 3\nmax_orphan_bytes = 1000\n";

    fn declared(health: &str) -> TableDecl {
        let text = include_str!("../../schemas/usage.http_requests.toml");
        let text = &text[..text.find("[health]").unwrap()];
        TableDecl::parse(std::path::Path::new("t.toml"), &format!("{text}{health}")).unwrap()
    }

    #[test]
    fn each_threshold_is_a_limit_and_one_past_it_is_unhealthy() {
        let decl = declared(HEALTH);
        let s = at_the_limits();
        assert_eq!(
            judge(&s, &decl, "firn"),
            Health {
                healthy: true,
                problems: vec![]
            }
        );

        let mut s = at_the_limits();
        s.last_ingest_age_seconds = Some(61);
        s.snapshots += 1;
        s.manifests += 1;
        s.small_files += 1;
        s.pending.compaction.push(s.pending.compaction[0].clone());
        s.pending.rollup.push(s.pending.rollup[0].clone());
        s.pending.retention.push(s.pending.retention[0].clone());
        s.orphans.as_mut().unwrap().bytes += 1;
        s.lag.as_mut().unwrap()[0].records += 1;
        let h = judge(&s, &decl, "firn");
        assert!(!h.healthy);
        assert_eq!(
            h.problems,
            [
                "snapshots 11 > 10",
                "manifests 6 > 5",
                "small files 8 > 7",
                "partitions pending compaction 2 > 1",
                "partitions pending rollup 3 > 2",
                "partitions pending retention 4 > 3",
                "orphan bytes 1001 > 1000",
                "lag of group firn 101 > 100",
                "last ingest commit 1m 1s ago > 1m",
            ]
        );
        // Lag of another group is not this deployment's.
        assert_eq!(judge(&s, &decl, "other").problems.len(), 8);

        // Unknown lag and no ingest commit at all are problems only where
        // a threshold asks about them.
        let mut s = at_the_limits();
        s.lag = None;
        s.lag_error = Some("broker unreachable".into());
        s.last_ingest_age_seconds = None;
        assert_eq!(
            judge(&s, &decl, "firn").problems,
            ["lag unknown: broker unreachable", "no ingest commit yet"]
        );
        assert!(judge(&s, &declared(""), "firn").healthy);
    }
}
