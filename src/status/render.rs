//! `firn status` for a terminal.

use std::fmt::Write as _;

use super::{PendingPartition, TableStatus};
use crate::schema::layout::Grain;

/// Pending partitions listed per kind before "... and N more".
const LISTED: usize = 8;

fn ago(seconds: Option<i64>) -> String {
    seconds.map_or("never".to_string(), |a| {
        format!(
            "{} ago",
            humantime::format_duration(std::time::Duration::from_secs(a.max(0) as u64))
        )
    })
}

fn list(out: &mut String, kind: &str, parts: &[PendingPartition]) {
    for p in parts.iter().take(LISTED) {
        let _ = writeln!(
            out,
            "    {kind:<11} {:<5} {} .. {}  {} files, {} rows, {} bytes",
            p.grain, p.start, p.end, p.files, p.rows, p.bytes
        );
    }
    if parts.len() > LISTED {
        let _ = writeln!(out, "    {kind:<11} ... and {} more", parts.len() - LISTED);
    }
}

/// Human-readable rendering.
pub fn render(statuses: &[TableStatus]) -> String {
    let mut out = String::new();
    for s in statuses {
        let _ = writeln!(
            out,
            "table {} (topic {}): {}",
            s.table,
            s.topic,
            if s.health.healthy {
                "healthy"
            } else {
                "UNHEALTHY"
            }
        );
        for p in &s.health.problems {
            let _ = writeln!(out, "  ! {p}");
        }
        let _ = writeln!(
            out,
            "  last commit {} (ingest {})  snapshots {}  manifests {}  current {}",
            ago(s.last_commit_age_seconds),
            ago(s.last_ingest_age_seconds),
            s.snapshots,
            s.manifests,
            s.current_snapshot_id
                .map_or("-".to_string(), |i| i.to_string()),
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
        let _ = writeln!(
            out,
            "  small files {}  pending partitions: compaction {}, rollup {}, retention {}",
            s.small_files,
            s.pending.compaction.len(),
            s.pending.rollup.len(),
            s.pending.retention.len()
        );
        list(&mut out, "compaction", &s.pending.compaction);
        list(&mut out, "rollup", &s.pending.rollup);
        list(&mut out, "retention", &s.pending.retention);
        match (&s.lag, &s.lag_error) {
            (Some(groups), _) => {
                for g in groups {
                    let _ = writeln!(
                        out,
                        "  lag group {}: {} records over {} partitions",
                        g.group,
                        g.records,
                        g.partitions.len()
                    );
                }
            }
            (None, Some(e)) => {
                let _ = writeln!(out, "  lag unknown: {e}");
            }
            (None, None) => {}
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
        if let Some(o) = &s.orphans {
            let _ = writeln!(
                out,
                "  orphans (estimate, in-flight writes included): {} files, {} bytes",
                o.files, o.bytes
            );
        }
        let _ = writeln!(out, "  rejects {}", s.rejects);
        if !s.staged_backfills.is_empty() {
            let _ = writeln!(
                out,
                "  staged backfills (firn publish|discard): {}",
                s.staged_backfills.join(", ")
            );
        }
        match &s.audit {
            None => {
                let _ = writeln!(out, "  audit: never run (firn audit {})", s.table);
            }
            Some(a) => {
                let at = a
                    .snapshot_id
                    .map_or(String::new(), |id| format!(" at snapshot {id}"));
                let verdict = if a.consistent {
                    "consistent".to_string()
                } else {
                    format!("INCONSISTENT, {} day(s)", a.inconsistent_days)
                };
                let _ = writeln!(
                    out,
                    "  audit: {verdict} ({}, {}{at})",
                    a.at.format("%Y-%m-%dT%H:%M:%SZ"),
                    a.mode
                );
            }
        }
    }
    out
}
