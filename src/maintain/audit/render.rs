//! The audit for a terminal: what was walked, the commits by operation and
//! verdict, the foreign changes, the findings, and the per-day totals.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::{AuditReport, Verdict};

/// Days shown before the rest are summed up in one line (`--json` has all).
const DAYS_SHOWN: usize = 62;

/// `report` as text.
pub fn render(report: &AuditReport) -> String {
    let mut out = String::new();
    let at = report
        .snapshot_id
        .map_or("an empty table".to_string(), |id| format!("snapshot {id}"));
    let _ = writeln!(
        out,
        "audit of {} at {at} ({}: {} snapshots, {} data files read, {:.1} s{})",
        report.table,
        report.mode,
        report.snapshots,
        report.files_read,
        report.seconds,
        report
            .baseline_snapshot_id
            .map_or(String::new(), |id| format!(
                "; history before snapshot {id} expired, its files read as the baseline"
            )),
    );

    let mut kinds: BTreeMap<(bool, &str, Verdict), (usize, usize, usize)> = BTreeMap::new();
    for c in &report.commits {
        let k = kinds
            .entry((!c.firn, c.operation.as_str(), c.verdict))
            .or_default();
        k.0 += 1;
        k.1 += c.files_added;
        k.2 += c.files_removed;
    }
    if !kinds.is_empty() {
        let _ = writeln!(
            out,
            "\n  {:<8} {:<18} {:>8} {:>10} {:>10}  verdict",
            "by", "operation", "commits", "files +", "files -"
        );
        for ((foreign, op, verdict), (n, added, removed)) in &kinds {
            let _ = writeln!(
                out,
                "  {:<8} {:<18} {:>8} {:>10} {:>10}  {}",
                if *foreign { "other" } else { "firn" },
                op,
                n,
                added,
                removed,
                verdict_name(*verdict)
            );
        }
    }

    for f in &report.foreign_changes {
        let _ = writeln!(
            out,
            "\nforeign change: snapshot {} ({}) changed {} day/measure total(s):",
            f.snapshot_id,
            f.operation,
            f.deltas.len()
        );
        for d in f.deltas.iter().take(10) {
            let _ = writeln!(
                out,
                "  {} {:<16} {} -> {}",
                d.day, d.measure, d.expected, d.found
            );
        }
        if f.deltas.len() > 10 {
            let _ = writeln!(out, "  ... {} more (--json lists all)", f.deltas.len() - 10);
        }
    }

    if !report.days.is_empty() {
        let measures = &report.measures;
        let _ = write!(out, "\n  {:<10}", "day");
        for m in measures {
            let _ = write!(out, " {:>20}", m);
        }
        out.push('\n');
        for d in report.days.iter().take(DAYS_SHOWN) {
            let _ = write!(out, "  {:<10}", d.day);
            for m in measures {
                let v = match d.totals.get(m.as_str()) {
                    Some(serde_json::Value::Null) | None => "-".to_string(),
                    Some(serde_json::Value::String(s)) => s.clone(),
                    Some(v) => v.to_string(),
                };
                let _ = write!(out, " {v:>20}");
            }
            out.push('\n');
        }
        if report.days.len() > DAYS_SHOWN {
            let _ = writeln!(
                out,
                "  ... {} more days (--json lists all)",
                report.days.len() - DAYS_SHOWN
            );
        }
    }

    out.push('\n');
    if report.consistent {
        let _ = writeln!(
            out,
            "consistent: every commit accounted for, every day's totals as the history says"
        );
    } else {
        let _ = writeln!(
            out,
            "INCONSISTENT: {} finding(s) over {} day(s):",
            report.findings.len(),
            report.inconsistent_days
        );
        for f in report.findings.iter().take(20) {
            let _ = writeln!(out, "  - {}", f.message);
        }
        if report.findings.len() > 20 {
            let _ = writeln!(
                out,
                "  ... {} more (--json lists all)",
                report.findings.len() - 20
            );
        }
    }
    out
}

fn verdict_name(v: Verdict) -> &'static str {
    match v {
        Verdict::Added => "added rows",
        Verdict::Removed => "removed rows",
        Verdict::Replaced => "replaced rows",
        Verdict::Conserved => "conserved every day's totals",
        Verdict::NoDataChange => "no data change",
        Verdict::ChangedTotals => "changed totals (foreign)",
        Verdict::Inconsistent => "INCONSISTENT",
    }
}
