//! `firn status`: what each table holds, read from metadata and manifests
//! only (no data file is opened).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::catalog::{Catalog, TableHandle};
use crate::error::{Error, Result};
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

/// The status of one table.
#[derive(Debug, Clone, Serialize)]
pub struct TableStatus {
    /// `namespace.name`.
    pub table: String,
    /// Source topic.
    pub topic: String,
    /// Current snapshot id.
    pub current_snapshot_id: Option<i64>,
    /// Age of the last commit in seconds.
    pub last_commit_age_seconds: Option<i64>,
    /// Snapshots in the metadata.
    pub snapshots: usize,
    /// Manifests in the current snapshot.
    pub manifests: usize,
    /// Per grain (`minute`, `hour`, `day`).
    pub grains: BTreeMap<String, GrainStats>,
    /// Committed offsets per consumer group, topic and partition.
    pub offsets: BTreeMap<String, TopicOffsets>,
    /// Records in the rejects table.
    pub rejects: u64,
}

/// Gather the status of `decl`'s table.
pub async fn table_status(catalog: &dyn Catalog, decl: &TableDecl) -> Result<TableStatus> {
    let table = catalog.load(&tables::ident(decl)?).await?;
    let rejects = catalog.load(&tables::rejects_ident(decl)?).await?;
    let meta = &table.metadata;
    let mut grains: BTreeMap<String, GrainStats> = Grain::ALL
        .iter()
        .map(|g| (g.as_str().to_string(), GrainStats::default()))
        .collect();
    let mut manifests = 0;
    if let Some(snapshot) = meta.current_snapshot() {
        let list = table.manifest_list(snapshot).await?;
        manifests = list.entries().len();
        let mut partitions: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
        for mf in list.entries() {
            let manifest = mf
                .load_manifest(&table.file_io)
                .await
                .map_err(|e| Error::iceberg(format!("manifest {}", mf.manifest_path), e))?;
            let grain = Grain::from_spec_id(manifest.metadata().partition_spec().spec_id())
                .map_or("other", |g| g.as_str());
            for entry in manifest.entries().iter().filter(|e| e.is_alive()) {
                let f = entry.data_file();
                let s = grains.entry(grain.to_string()).or_default();
                s.files += 1;
                s.rows += f.record_count();
                s.bytes += f.file_size_in_bytes();
                partitions
                    .entry(grain.to_string())
                    .or_default()
                    .insert(format!("{:?}", f.partition()));
            }
        }
        for (g, p) in partitions {
            grains.entry(g).or_default().partitions = p.len() as u64;
        }
    }
    let now = chrono::Utc::now().timestamp_millis();
    Ok(TableStatus {
        table: decl.qualified_name(),
        topic: decl.topic.clone(),
        current_snapshot_id: meta.current_snapshot_id(),
        last_commit_age_seconds: meta
            .current_snapshot()
            .map(|s| (now - s.timestamp_ms()) / 1000),
        snapshots: meta.snapshots().count(),
        manifests,
        grains,
        offsets: offsets::read_all(meta)?,
        rejects: total_records(&rejects),
    })
}

fn total_records(table: &TableHandle) -> u64 {
    table
        .metadata
        .current_snapshot()
        .and_then(|s| s.summary().additional_properties.get("total-records"))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Human-readable rendering.
pub fn render(statuses: &[TableStatus]) -> String {
    let mut out = String::new();
    for s in statuses {
        let _ = writeln!(out, "table {} (topic {})", s.table, s.topic);
        let _ = writeln!(
            out,
            "  snapshots {}  manifests {}  current {}  last commit {}",
            s.snapshots,
            s.manifests,
            s.current_snapshot_id
                .map_or("-".to_string(), |i| i.to_string()),
            s.last_commit_age_seconds
                .map_or("never".to_string(), |a| format!("{a}s ago")),
        );
        let _ = writeln!(
            out,
            "  {:<8} {:>8} {:>12} {:>14} {:>10}",
            "grain", "files", "rows", "bytes", "partitions"
        );
        for g in Grain::ALL {
            let st = s.grains.get(g.as_str()).cloned().unwrap_or_default();
            let _ = writeln!(
                out,
                "  {:<8} {:>8} {:>12} {:>14} {:>10}",
                g.as_str(),
                st.files,
                st.rows,
                st.bytes,
                st.partitions
            );
        }
        for (group, topics) in &s.offsets {
            for (topic, parts) in topics {
                let list: Vec<String> = parts.iter().map(|(p, o)| format!("{p}:{o}")).collect();
                let _ = writeln!(
                    out,
                    "  offsets group {group} topic {topic}: {}",
                    list.join(" ")
                );
            }
        }
        let _ = writeln!(out, "  rejects {}", s.rejects);
    }
    out
}
