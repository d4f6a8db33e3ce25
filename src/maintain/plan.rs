//! Planners: pure functions of (table state, policy, now) that say which
//! partitions to compact, roll up or drop. `--dry-run` prints their plan.
//!
//! Like delta-rs's `create_merge_plan` and Spark's `RewriteDataFiles`
//! planning, nothing here touches storage.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::state::{LiveFile, TableState};
use crate::commit::FirnOperation;
use crate::schema::decl::Policy;
use crate::schema::layout::Grain;

/// What a task does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskKind {
    /// Merge small files of one partition at the same grain.
    Compact,
    /// Re-aggregate finer rows into a coarser grain's partition.
    Rollup,
    /// Drop partitions past retention.
    Retention,
}

impl TaskKind {
    /// The operation a task's commit records.
    pub fn operation(self) -> FirnOperation {
        match self {
            TaskKind::Compact => FirnOperation::Compact,
            TaskKind::Rollup => FirnOperation::Rollup,
            TaskKind::Retention => FirnOperation::Retention,
        }
    }

    /// The name of the operation, in plans, logs and reports.
    pub fn as_str(self) -> &'static str {
        self.operation().as_str()
    }
}

/// One commit's worth of work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    /// What it does.
    pub kind: TaskKind,
    /// The partition it writes: output grain and partition ordinal (none for
    /// retention, which only removes).
    pub target: Option<(Grain, i32)>,
    /// Files it reads and removes.
    pub inputs: Vec<LiveFile>,
}

impl Task {
    /// Rows in the inputs.
    pub fn rows(&self) -> u64 {
        self.inputs.iter().map(|f| f.records).sum()
    }

    /// Bytes in the inputs.
    pub fn bytes(&self) -> u64 {
        self.inputs.iter().map(|f| f.bytes).sum()
    }

    /// Start of the target partition (or of the oldest input), for ordering.
    pub fn start(&self) -> i64 {
        match self.target {
            Some((g, p)) => g.partition_bounds(p).0,
            None => self
                .inputs
                .iter()
                .map(|f| f.partition_bounds().0)
                .min()
                .unwrap_or(0),
        }
    }
}

/// Options every planner takes.
#[derive(Debug, Clone, Copy)]
pub struct PlanOptions {
    /// The time the plan is for.
    pub now: DateTime<Utc>,
    /// Only partitions that overlap `[from, to)`.
    pub from: Option<DateTime<Utc>>,
    /// See `from`.
    pub to: Option<DateTime<Utc>>,
    /// A partition is sealed (compactable) this long after its end.
    pub seal_delay: Duration,
    /// Target size of output files.
    pub target_file_size: u64,
}

impl PlanOptions {
    fn in_range(&self, (start, end): (i64, i64)) -> bool {
        self.from.is_none_or(|f| end > f.timestamp_micros())
            && self.to.is_none_or(|t| start < t.timestamp_micros())
    }

    fn now_micros(&self) -> i64 {
        self.now.timestamp_micros()
    }
}

fn micros(d: Duration) -> i64 {
    d.as_micros().min(i64::MAX as u128) as i64
}

/// The grain the policy wants for rows in `partition` of `grain` at `now`:
/// a coarser grain once the whole coarser partition holding them is older
/// than that grain's threshold.
pub fn due_grain(policy: &Policy, now_micros: i64, grain: Grain, partition: i32) -> Grain {
    let start = grain.partition_bounds(partition).0;
    let mut due = grain;
    while let Some(coarser) = due.coarser() {
        let after = match coarser {
            Grain::Hour => policy.minute_to_hour_after,
            _ => policy.hour_to_day_after,
        };
        let (_, end) = coarser.partition_bounds(coarser.partition_ordinal(start));
        if end <= now_micros.saturating_sub(micros(after)) {
            due = coarser;
        } else {
            break;
        }
    }
    due
}

fn by_partition(state: &TableState) -> BTreeMap<(Grain, i32), Vec<&LiveFile>> {
    let mut m: BTreeMap<(Grain, i32), Vec<&LiveFile>> = BTreeMap::new();
    for f in &state.files {
        m.entry((f.grain, f.partition)).or_default().push(f);
    }
    m
}

/// Compaction: sealed partitions whose files outnumber what their size
/// needs (one file per target size) are rewritten into target-size files,
/// collapsing rows with the same key and bucket. Partitions due for rollup
/// are left to the rollup.
pub fn plan_compaction(state: &TableState, policy: &Policy, opts: &PlanOptions) -> Vec<Task> {
    let now = opts.now_micros();
    let target = opts.target_file_size.max(1);
    by_partition(state)
        .into_iter()
        .filter(|((grain, partition), files)| {
            let bounds = grain.partition_bounds(*partition);
            let sealed = bounds.1.saturating_add(micros(opts.seal_delay)) <= now;
            let bytes: u64 = files.iter().map(|f| f.bytes).sum();
            let needed = bytes.div_ceil(target).max(1) as usize;
            sealed
                && opts.in_range(bounds)
                && files.len() > needed
                && due_grain(policy, now, *grain, *partition) == *grain
        })
        .map(|((grain, partition), files)| Task {
            kind: TaskKind::Compact,
            target: Some((grain, partition)),
            inputs: files.into_iter().cloned().collect(),
        })
        .collect()
}

/// Rollup: every file whose rows the policy wants at a coarser grain goes to
/// the coarser partition holding it, merged with the rows already there (so
/// late data is rolled in again). One task per target partition.
pub fn plan_rollup(state: &TableState, policy: &Policy, opts: &PlanOptions) -> Vec<Task> {
    let now = opts.now_micros();
    let mut targets: BTreeMap<(Grain, i32), Vec<LiveFile>> = BTreeMap::new();
    for f in &state.files {
        let due = due_grain(policy, now, f.grain, f.partition);
        if due > f.grain {
            let start = f.partition_bounds().0;
            targets
                .entry((due, due.partition_ordinal(start)))
                .or_default()
                .push(f.clone());
        }
    }
    let mut tasks = Vec::new();
    for ((grain, partition), mut inputs) in targets {
        if !opts.in_range(grain.partition_bounds(partition)) {
            continue;
        }
        inputs.extend(
            state
                .files
                .iter()
                .filter(|f| f.grain == grain && f.partition == partition)
                .cloned(),
        );
        tasks.push(Task {
            kind: TaskKind::Rollup,
            target: Some((grain, partition)),
            inputs,
        });
    }
    tasks
}

/// Retention: every partition that ends before `now - retain` is dropped, in
/// one task (one `delete` commit).
pub fn plan_retention(state: &TableState, policy: &Policy, opts: &PlanOptions) -> Vec<Task> {
    let cutoff = opts.now_micros().saturating_sub(micros(policy.retain));
    let inputs: Vec<LiveFile> = state
        .files
        .iter()
        .filter(|f| {
            let b = f.partition_bounds();
            b.1 <= cutoff && opts.in_range(b)
        })
        .cloned()
        .collect();
    if inputs.is_empty() {
        return Vec::new();
    }
    vec![Task {
        kind: TaskKind::Retention,
        target: None,
        inputs,
    }]
}

fn show_time(micros: i64) -> String {
    DateTime::from_timestamp_micros(micros)
        .map(|t| t.format("%Y-%m-%dT%H:%MZ").to_string())
        .unwrap_or_else(|| micros.to_string())
}

/// A partition as people read it: `hour rows of ts_day [2026-03-02T00:00Z,
/// 2026-03-03T00:00Z)`.
pub fn partition_name(grain: Grain, partition: i32) -> String {
    let (lo, hi) = grain.partition_bounds(partition);
    format!(
        "{} rows of {} [{}, {})",
        grain.as_str(),
        grain.partition_field_name(),
        show_time(lo),
        show_time(hi)
    )
}

/// A task's one-line description (`--dry-run`, logs).
pub fn describe(task: &Task, target_file_size: u64) -> String {
    let mut s = String::new();
    match task.target {
        Some((grain, p)) => {
            let (lo, hi) = grain.partition_bounds(p);
            let out = task.bytes().div_ceil(target_file_size.max(1)).max(1);
            let _ = write!(
                s,
                "{:<9} {} rows -> {} [{}, {}): {} files in, ~{} out, {} rows, {} bytes",
                task.kind.as_str(),
                grain.as_str(),
                grain.partition_field_name(),
                show_time(lo),
                show_time(hi),
                task.inputs.len(),
                out,
                task.rows(),
                task.bytes()
            );
        }
        None => {
            let mut parts: Vec<(Grain, i32)> =
                task.inputs.iter().map(|f| (f.grain, f.partition)).collect();
            parts.dedup();
            let _ = write!(
                s,
                "{:<9} {} partitions: {} files, {} rows, {} bytes removed",
                task.kind.as_str(),
                parts.len(),
                task.inputs.len(),
                task.rows(),
                task.bytes()
            );
            for (g, p) in parts {
                let (lo, hi) = g.partition_bounds(p);
                let _ = write!(
                    s,
                    "\n            {} [{}, {})",
                    g.as_str(),
                    show_time(lo),
                    show_time(hi)
                );
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    const H: i64 = 3_600_000_000;

    fn policy() -> Policy {
        Policy {
            minute_to_hour_after: Duration::from_secs(7 * 86400),
            hour_to_day_after: Duration::from_secs(90 * 86400),
            retain: Duration::from_secs(400 * 86400),
            rejects_retain: Duration::from_secs(30 * 86400),
        }
    }

    fn file(grain: Grain, at: DateTime<Utc>, n: u32, bytes: u64) -> LiveFile {
        LiveFile {
            path: format!("{}-{}-{n}", grain.as_str(), at.timestamp()),
            grain,
            spec_id: grain.spec_id(),
            partition: grain.partition_ordinal(at.timestamp_micros()),
            records: 10,
            bytes,
            sort_order: None,
            ts_bounds: None,
        }
    }

    fn opts(now: DateTime<Utc>) -> PlanOptions {
        PlanOptions {
            now,
            from: None,
            to: None,
            seal_delay: Duration::from_secs(3600),
            target_file_size: 1000,
        }
    }

    fn state(files: Vec<LiveFile>) -> TableState {
        TableState {
            snapshot_id: Some(1),
            files,
            ..TableState::default()
        }
    }

    #[test]
    fn grains_follow_the_policy_by_whole_coarser_partition() {
        let p = policy();
        let now = Utc.with_ymd_and_hms(2026, 6, 15, 12, 0, 0).unwrap();
        let at = |d: DateTime<Utc>| Grain::Minute.partition_ordinal(d.timestamp_micros());
        let n = now.timestamp_micros();
        // 6 days old: stays minute. 8 days old: hour. The day 7 days ago has
        // not fully passed the threshold yet.
        assert_eq!(
            due_grain(&p, n, Grain::Minute, at(now - chrono::Duration::days(6))),
            Grain::Minute
        );
        assert_eq!(
            due_grain(&p, n, Grain::Minute, at(now - chrono::Duration::days(8))),
            Grain::Hour
        );
        assert_eq!(
            due_grain(
                &p,
                n,
                Grain::Minute,
                at(Utc.with_ymd_and_hms(2026, 6, 8, 1, 0, 0).unwrap())
            ),
            Grain::Minute
        );
        // February is entirely older than 90 days on June 15 (the cutoff is
        // March 17): day rows. Still-minute rows that old go straight to day.
        // March ends after the cutoff: hour rows.
        let february = Utc.with_ymd_and_hms(2026, 2, 10, 0, 0, 0).unwrap();
        let late_march = Utc.with_ymd_and_hms(2026, 3, 10, 0, 0, 0).unwrap();
        assert_eq!(due_grain(&p, n, Grain::Minute, at(late_march)), Grain::Hour);
        assert_eq!(due_grain(&p, n, Grain::Minute, at(february)), Grain::Day);
        let hour_feb = Grain::Hour.partition_ordinal(february.timestamp_micros());
        assert_eq!(due_grain(&p, n, Grain::Hour, hour_feb), Grain::Day);
    }

    #[test]
    fn rollup_targets_merge_existing_rows_and_respect_the_range() {
        let now = Utc.with_ymd_and_hms(2026, 6, 15, 12, 0, 0).unwrap();
        let d1 = Utc.with_ymd_and_hms(2026, 6, 1, 3, 0, 0).unwrap();
        let d2 = Utc.with_ymd_and_hms(2026, 6, 2, 5, 0, 0).unwrap();
        let s = state(vec![
            file(Grain::Minute, d1, 0, 10),
            file(Grain::Minute, d1 + chrono::Duration::hours(2), 1, 10),
            file(Grain::Minute, d2, 0, 10),
            file(Grain::Hour, d1, 0, 10), // rolled before
            file(Grain::Minute, now - chrono::Duration::hours(3), 0, 10), // fresh
        ]);
        let tasks = plan_rollup(&s, &policy(), &opts(now));
        assert_eq!(tasks.len(), 2);
        assert_eq!(
            tasks[0].target,
            Some((
                Grain::Hour,
                Grain::Hour.partition_ordinal(d1.timestamp_micros())
            ))
        );
        assert_eq!(
            tasks[0].inputs.len(),
            3,
            "two minute files and the existing hour file"
        );
        assert_eq!(tasks[1].inputs.len(), 1);

        let mut o = opts(now);
        o.from = Some(Utc.with_ymd_and_hms(2026, 6, 2, 0, 0, 0).unwrap());
        let tasks = plan_rollup(&s, &policy(), &o);
        assert_eq!(tasks.len(), 1);
        assert_eq!(
            tasks[0].inputs[0].partition,
            Grain::Minute.partition_ordinal(d2.timestamp_micros())
        );
    }

    #[test]
    fn compaction_only_where_files_outnumber_the_size() {
        let now = Utc.with_ymd_and_hms(2026, 6, 15, 12, 0, 0).unwrap();
        let sealed = now - chrono::Duration::hours(3);
        let open = now - chrono::Duration::minutes(30);
        let s = state(vec![
            file(Grain::Minute, sealed, 0, 100),
            file(Grain::Minute, sealed, 1, 100),
            file(Grain::Minute, sealed, 2, 100),
            file(Grain::Minute, open, 0, 100),
            file(Grain::Minute, open, 1, 100),
            // Two big files: each near the target, nothing to gain.
            file(Grain::Minute, sealed - chrono::Duration::hours(1), 0, 900),
            file(Grain::Minute, sealed - chrono::Duration::hours(1), 1, 900),
        ]);
        let tasks = plan_compaction(&s, &policy(), &opts(now));
        assert_eq!(tasks.len(), 1);
        assert_eq!(tasks[0].inputs.len(), 3);
        assert_eq!(tasks[0].rows(), 30);
        assert!(describe(&tasks[0], 1000).contains("3 files in, ~1 out"));
    }

    #[test]
    fn retention_drops_whole_partitions_in_one_task() {
        let now = Utc.with_ymd_and_hms(2026, 6, 15, 0, 0, 0).unwrap();
        let old_month = Utc.with_ymd_and_hms(2025, 4, 20, 0, 0, 0).unwrap();
        let straddling = Utc.with_ymd_and_hms(2025, 5, 20, 0, 0, 0).unwrap(); // May 2025 ends after the cutoff
        let s = state(vec![
            file(Grain::Day, old_month, 0, 10),
            file(Grain::Day, straddling, 0, 10),
            file(Grain::Minute, now - chrono::Duration::days(401), 0, 10),
        ]);
        let tasks = plan_retention(&s, &policy(), &opts(now));
        assert_eq!(tasks.len(), 1);
        let dropped: Vec<_> = tasks[0].inputs.iter().map(|f| f.grain).collect();
        assert_eq!(dropped, [Grain::Day, Grain::Minute]);
        assert!(
            tasks[0]
                .inputs
                .iter()
                .all(|f| f.partition_bounds().1 <= now.timestamp_micros() - 400 * 24 * H)
        );
    }
}
