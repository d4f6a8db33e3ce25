//! `firn audit`: prove a table's totals from its history. Walks main's
//! retained snapshots, oldest first, and checks that
//!
//! - every firn compaction and rollup conserved every day's totals (what it
//!   added equals what it removed), and every other firn commit changed
//!   rows only as its kind may (ingest and backfill add, retention
//!   removes, a manifest rewrite changes no data file);
//! - what each firn commit's summary says it added and removed is what its
//!   files hold (`--trust-summaries` takes the summaries at their word and
//!   reads none of firn's files);
//! - each foreign commit (another engine's) either conserves every day's
//!   totals (a compaction) or is reported with its days and deltas — an
//!   inconsistency unless `--allow-foreign-changes`;
//! - the files live now are exactly those the history added and did not
//!   remove, and each day's totals now equal the running sum of the
//!   baseline (the table before the first retained snapshot), firn's
//!   ingest and backfill additions, less its retention and replace
//!   removals, plus the foreign changes allowed.
//!
//! Totals are read from the rows (`ts` and the measures), never from file
//! statistics, each file once.

mod history;
mod render;
mod report;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::DateTime;
use serde::{Deserialize, Serialize};

use self::history::{History, Step};
use super::operation::Context;
use super::state::LiveFile;
use super::tally;
use crate::commit::{FirnOperation, summary};
use crate::error::Result;
use crate::schema::decl::{Agg, TableDecl};
use crate::tables;
use crate::totals::{DayTotals, Total, Totals, date_of};

pub use render::render;
pub use report::{
    AuditReport, Check, CommitAudit, DayRow, Delta, Finding, ForeignChange, LastAudit, Verdict,
};

/// `firn audit`: check that a table's totals are what its history says.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct AuditOptions {
    /// Take firn's commits at their word: what each states it added and
    /// removed (its summary) is not checked against its files, and today's
    /// per-day totals are the running sum, not read back. Foreign commits
    /// and the baseline are still read.
    #[arg(long)]
    pub trust_summaries: bool,
    /// Foreign commits that change totals (an overwrite or a delete by
    /// another engine) are listed and accounted, not inconsistencies.
    #[arg(long)]
    pub allow_foreign_changes: bool,
}

/// Audit `decl`'s table.
pub async fn run(ctx: &Context<'_>, decl: &TableDecl, opts: &AuditOptions) -> Result<AuditReport> {
    let started = std::time::Instant::now();
    let table = ctx.catalog.load(&tables::ident(decl)?).await?;
    tables::check_matches(decl, &table.metadata)?;
    let history = history::load(&table).await?;
    let empty = Totals::new(decl);

    // Each firn commit is taken from its summary when trusted and the
    // summary holds what the commit did; everything else is read.
    let stated: Vec<Option<(DayTotals, DayTotals)>> =
        history.steps.iter().map(|s| stated(s, &empty)).collect();
    let mut wanted: BTreeMap<String, LiveFile> = BTreeMap::new();
    let mut want = |files: &[LiveFile]| {
        for f in files {
            wanted.entry(f.path.clone()).or_insert_with(|| f.clone());
        }
    };
    if let Some((_, files)) = &history.baseline {
        want(files);
    }
    for (step, stated) in history.steps.iter().zip(&stated) {
        if !(opts.trust_summaries && stated.is_some()) {
            want(&step.added);
            want(&step.removed);
        }
    }
    if !opts.trust_summaries {
        want(&history.current);
    }
    let files: Vec<LiveFile> = wanted.into_values().collect();
    let parallel = (ctx.jobs * 2).max(2);
    let read = tally::tally(&table, decl, &files, parallel).await?;
    let tallies: HashMap<String, DayTotals> =
        files.iter().map(|f| f.path.clone()).zip(read).collect();
    let sum = |files: &[LiveFile]| -> DayTotals {
        let mut days = DayTotals::new(&empty);
        for f in files {
            if let Some(t) = tallies.get(&f.path) {
                days.absorb(t);
            }
        }
        days
    };

    let mut audit = Audit {
        opts,
        findings: Vec::new(),
        foreign: Vec::new(),
        commits: Vec::new(),
        running: history
            .baseline
            .as_ref()
            .map_or_else(|| DayTotals::new(&empty), |(_, f)| sum(f)),
        unknown: BTreeMap::new(),
    };
    let mut steps = history.steps.iter().zip(stated).peekable();
    while let Some((step, stated)) = steps.next() {
        if stated.is_some() || step.summary.contains_key(summary::OPERATION) {
            let read = (!opts.trust_summaries || stated.is_none())
                .then(|| (sum(&step.added), sum(&step.removed)));
            audit.step(step, &[], stated, read);
            continue;
        }
        // Another engine's consecutive snapshots are one change (PyIceberg
        // commits an overwrite as a delete and an append): judged by the
        // files they added and did not remove, and removed.
        let mut run = vec![step];
        while let Some((next, _)) =
            steps.next_if(|(s, _)| !s.summary.contains_key(summary::OPERATION))
        {
            run.push(next);
        }
        let joined = history::join(&run);
        let earlier: Vec<i64> = run[..run.len() - 1].iter().map(|s| s.snapshot_id).collect();
        let read = Some((sum(&joined.added), sum(&joined.removed)));
        audit.step(&joined, &earlier, None, read);
    }
    audit.files(&history);
    let current_id = table.metadata.current_snapshot_id();
    let days = if opts.trust_summaries {
        audit.running_days()
    } else {
        let now = sum(&history.current);
        audit.balance(current_id, &now);
        rows_of(&now, &BTreeMap::new())
    };
    let inconsistent_days = {
        let named: BTreeSet<Option<&str>> = audit
            .findings
            .iter()
            .map(|f| f.delta.as_ref().map(|d| d.day.as_str()))
            .collect();
        named.len()
    };
    let report = AuditReport {
        table: decl.qualified_name(),
        snapshot_id: current_id,
        mode: if opts.trust_summaries {
            "trust-summaries"
        } else {
            "full"
        },
        consistent: audit.findings.is_empty(),
        inconsistent_days,
        snapshots: history.steps.len(),
        baseline_snapshot_id: history.baseline.as_ref().map(|(id, _)| *id),
        files_read: files.len(),
        seconds: started.elapsed().as_secs_f64(),
        measures: decl.measures.iter().map(|m| m.name.clone()).collect(),
        commits: audit.commits,
        foreign_changes: audit.foreign,
        findings: audit.findings,
        days,
    };
    if !ctx.dry_run {
        record(ctx, &table.ident, &report).await?;
    }
    Ok(report)
}

/// Keep `report`'s result in the table's properties (a metadata-only
/// commit, in the catalog's write budget).
async fn record(
    ctx: &Context<'_>,
    ident: &iceberg::TableIdent,
    report: &AuditReport,
) -> Result<()> {
    let last = LastAudit {
        at: ctx.clock.now(),
        snapshot_id: report.snapshot_id,
        mode: report.mode.to_string(),
        consistent: report.consistent,
        inconsistent_days: report.inconsistent_days,
        first_finding: report.findings.first().map(|f| f.message.clone()),
    };
    let value = serde_json::to_string(&last).expect("serialisable");
    let _permit = ctx.budget.acquire(ident).await;
    crate::commit::update_metadata(ctx.catalog, ident, ctx.retry, |base| {
        let builder = (*base.metadata)
            .clone()
            .into_builder(Some(base.metadata_location.clone()))
            .set_properties(std::collections::HashMap::from([(
                summary::LAST_AUDIT.to_string(),
                value.clone(),
            )]))
            .map_err(|e| {
                crate::error::Error::iceberg(format!("recording the audit of {ident}"), e)
            })?;
        Ok(Some(builder))
    })
    .await?;
    Ok(())
}

/// What a firn commit's summary states it added and removed by day, when
/// it states all it did.
fn stated(step: &Step, empty: &Totals) -> Option<(DayTotals, DayTotals)> {
    step.summary.get(summary::OPERATION)?;
    let read = |key: &str, files: &[LiveFile]| -> Option<DayTotals> {
        match step.summary.get(key) {
            Some(json) => DayTotals::from_json(empty, json).ok(),
            None if files.is_empty() => Some(DayTotals::new(empty)),
            None => None,
        }
    };
    Some((
        read(summary::TOTALS_ADDED_BY_DAY, &step.added)?,
        read(summary::TOTALS_REMOVED_BY_DAY, &step.removed)?,
    ))
}

/// The walk's state.
struct Audit<'a> {
    opts: &'a AuditOptions,
    findings: Vec<Finding>,
    foreign: Vec<ForeignChange>,
    commits: Vec<CommitAudit>,
    /// The running sum per day.
    running: DayTotals,
    /// Per day, the measures whose min or max rows were removed from.
    unknown: BTreeMap<i32, BTreeSet<usize>>,
}

impl Audit<'_> {
    /// Audit one snapshot: `stated`, what its summary says (firn's), and
    /// `read`, what its files hold (unless trusted).
    fn step(
        &mut self,
        step: &Step,
        earlier: &[i64],
        stated: Option<(DayTotals, DayTotals)>,
        read: Option<(DayTotals, DayTotals)>,
    ) {
        let id = step.snapshot_id;
        let named = if earlier.is_empty() {
            format!("snapshot {id}")
        } else {
            let all: Vec<String> = earlier.iter().chain([&id]).map(i64::to_string).collect();
            format!("snapshots {}", all.join(", "))
        };
        let firn_op = step.summary.get(summary::OPERATION);
        let kind = firn_op.and_then(|v| FirnOperation::parse(v));
        let before = self.findings.len();
        let mut verdict = match (step.added.is_empty(), step.removed.is_empty()) {
            (true, true) => Verdict::NoDataChange,
            (false, true) => Verdict::Added,
            (true, false) => Verdict::Removed,
            (false, false) => Verdict::Replaced,
        };
        if let Some(first) = step.delete_files.first() {
            self.finding(
                Some(id),
                Check::DeleteFiles,
                None,
                format!(
                    "snapshot {id} changed {} delete file(s) (row-level deletes, e.g. {first}); \
                     the audit reads data files only and cannot account for them",
                    step.delete_files.len()
                ),
            );
        }
        if let (Some((s_added, s_removed)), Some((r_added, r_removed))) = (&stated, &read) {
            for (what, s, r) in [
                ("added", s_added, r_added),
                ("removed", s_removed, r_removed),
            ] {
                if let Some(delta) = differs(s, r) {
                    self.finding(
                        Some(id),
                        Check::Summary,
                        Some(delta.clone()),
                        format!(
                            "snapshot {id} ({}) states it {what} {} `{}` on {}, but its files \
                             hold {}",
                            firn_op.map_or("?", String::as_str),
                            delta.expected,
                            delta.measure,
                            delta.day,
                            delta.found
                        ),
                    );
                }
            }
        }
        let (added, removed) = read.or(stated).expect("a step is read or stated");
        let op_name = firn_op.cloned().unwrap_or_else(|| step.operation.clone());
        let conserving = added.differs(&removed).is_none();
        match (firn_op, kind) {
            (Some(_), Some(FirnOperation::Compact | FirnOperation::Rollup)) => {
                if let Some(delta) = differs(&removed, &added) {
                    self.finding(
                        Some(id),
                        Check::Conservation,
                        Some(delta.clone()),
                        format!(
                            "snapshot {id} ({op_name}) did not conserve `{}` on {}: it removed \
                             {} and added {}",
                            delta.measure, delta.day, delta.expected, delta.found
                        ),
                    );
                }
                verdict = Verdict::Conserved;
            }
            (Some(_), Some(op)) => {
                let may = match op {
                    FirnOperation::Ingest | FirnOperation::Backfill => (true, false),
                    FirnOperation::Retention => (false, true),
                    FirnOperation::BackfillReplace => (true, true),
                    _ => (false, false),
                };
                let did = (!step.added.is_empty(), !step.removed.is_empty());
                if (did.0 && !may.0) || (did.1 && !may.1) {
                    self.finding(
                        Some(id),
                        Check::Kind,
                        None,
                        format!(
                            "snapshot {id} ({op_name}) added {} and removed {} data files, \
                             which a {op_name} commit never does",
                            step.added.len(),
                            step.removed.len()
                        ),
                    );
                }
                self.account(&added, &removed);
            }
            // Another engine's, or a newer firn's operation.
            _ if conserving => {
                if verdict != Verdict::NoDataChange {
                    verdict = Verdict::Conserved;
                }
            }
            _ => {
                let deltas = all_differences(&removed, &added);
                if self.opts.allow_foreign_changes {
                    self.account(&added, &removed);
                } else if let Some(first) = deltas.first() {
                    self.finding(
                        Some(id),
                        Check::ForeignChange,
                        Some(first.clone()),
                        format!(
                            "{named} ({op_name}, not firn's) changed `{}` on {} from {} to \
                             {} ({} day(s) and measure(s) changed; --allow-foreign-changes \
                             accepts it)",
                            first.measure,
                            first.day,
                            first.expected,
                            first.found,
                            deltas.len()
                        ),
                    );
                }
                self.foreign.push(ForeignChange {
                    snapshot_id: id,
                    earlier_snapshots: earlier.to_vec(),
                    operation: step.operation.clone(),
                    deltas,
                });
                verdict = Verdict::ChangedTotals;
            }
        }
        if self.findings.len() > before {
            verdict = Verdict::Inconsistent;
        }
        self.commits.push(CommitAudit {
            snapshot_id: id,
            earlier_snapshots: earlier.to_vec(),
            committed_at: DateTime::from_timestamp_millis(step.timestamp_ms).unwrap_or_default(),
            operation: op_name,
            firn: firn_op.is_some(),
            files_added: step.added.len(),
            files_removed: step.removed.len(),
            verdict,
        });
    }

    /// Add `added` to the running sum and take `removed` out.
    fn account(&mut self, added: &DayTotals, removed: &DayTotals) {
        self.running.absorb(added);
        for (day, unknown) in self.running.remove(removed) {
            self.unknown.entry(day).or_default().extend(unknown);
        }
    }

    /// The live files now must be what the history added and kept.
    fn files(&mut self, history: &History) {
        let mut live: BTreeSet<&str> = history
            .baseline
            .as_ref()
            .map(|(_, f)| f.iter().map(|f| f.path.as_str()).collect())
            .unwrap_or_default();
        for step in &history.steps {
            for f in &step.removed {
                if !live.remove(f.path.as_str()) {
                    self.finding(
                        Some(step.snapshot_id),
                        Check::Files,
                        None,
                        format!(
                            "snapshot {} removed {}, which was not live",
                            step.snapshot_id, f.path
                        ),
                    );
                }
            }
            live.extend(step.added.iter().map(|f| f.path.as_str()));
        }
        let now: BTreeSet<&str> = history.current.iter().map(|f| f.path.as_str()).collect();
        let current = history.steps.last().map(|s| s.snapshot_id);
        let named_deletes = self.findings.iter().any(|f| f.check == Check::DeleteFiles);
        if let (Some(first), false) = (history.current_deletes.first(), named_deletes) {
            self.finding(
                current,
                Check::DeleteFiles,
                None,
                format!(
                    "the table holds {} delete file(s) (row-level deletes, e.g. {first}); the \
                     audit reads data files only and cannot account for them",
                    history.current_deletes.len()
                ),
            );
        }
        if let Some(lost) = live.difference(&now).next() {
            self.finding(
                current,
                Check::Files,
                None,
                format!(
                    "{} data file(s) the history added and never removed are not live (e.g. \
                     {lost}): a manifest lost them",
                    live.difference(&now).count()
                ),
            );
        }
        if let Some(extra) = now.difference(&live).next() {
            self.finding(
                current,
                Check::Files,
                None,
                format!(
                    "{} live data file(s) no retained snapshot added (e.g. {extra})",
                    now.difference(&live).count()
                ),
            );
        }
    }

    /// Each day's totals now (`now`) must equal the running sum.
    fn balance(&mut self, current: Option<i64>, now: &DayTotals) {
        let days: BTreeSet<i32> = now
            .days
            .keys()
            .chain(self.running.days.keys())
            .copied()
            .collect();
        let empty = now.empty().clone();
        for day in days {
            let read = now.days.get(&day).unwrap_or(&empty);
            let accounted = self.running.days.get(&day).unwrap_or(&empty);
            let unknown = self.unknown.get(&day);
            let Some(i) = (0..empty.values.len())
                .filter(|i| unknown.is_none_or(|u| !u.contains(i)))
                .find(|&i| !accounted.agrees(read, i))
            else {
                continue;
            };
            let delta = Delta {
                day: date_of(day).to_string(),
                measure: empty.measures()[i].0.clone(),
                expected: accounted.values[i].to_string(),
                found: read.values[i].to_string(),
            };
            self.finding(
                current,
                Check::Balance,
                Some(delta.clone()),
                format!(
                    "on {}, `{}` totals {} now, but the history accounts for {}",
                    delta.day, delta.measure, delta.found, delta.expected
                ),
            );
        }
    }

    /// The running sum per day, an unknown min or max as null (a day
    /// whose rows were all taken out is left out).
    fn running_days(&self) -> Vec<DayRow> {
        let mut running = self.running.clone();
        let empty = running.empty().clone();
        let sums: Vec<usize> = (0..empty.values.len())
            .filter(|&i| matches!(empty.measures()[i].1, Agg::Sum | Agg::Count))
            .collect();
        running
            .days
            .retain(|_, t| sums.is_empty() || sums.iter().any(|&i| !t.agrees(&empty, i)));
        rows_of(&running, &self.unknown)
    }

    fn finding(
        &mut self,
        snapshot_id: Option<i64>,
        check: Check,
        delta: Option<Delta>,
        message: String,
    ) {
        self.findings.push(Finding {
            snapshot_id,
            check,
            delta,
            message,
        });
    }
}

/// The first day and measure whose totals differ between `expected` and
/// `found`.
fn differs(expected: &DayTotals, found: &DayTotals) -> Option<Delta> {
    expected
        .differs(found)
        .map(|(day, measure, e, f)| delta(day, measure, e, f))
}

/// Every day and measure whose totals differ.
fn all_differences(expected: &DayTotals, found: &DayTotals) -> Vec<Delta> {
    let days: BTreeSet<i32> = expected
        .days
        .keys()
        .chain(found.days.keys())
        .copied()
        .collect();
    let empty = expected.empty().clone();
    let mut out = Vec::new();
    for day in days {
        let e = expected.days.get(&day).unwrap_or(&empty);
        let f = found.days.get(&day).unwrap_or(&empty);
        for i in 0..empty.values.len() {
            if !e.agrees(f, i) {
                out.push(delta(
                    day,
                    empty.measures()[i].0.clone(),
                    e.values[i],
                    f.values[i],
                ));
            }
        }
    }
    out
}

fn delta(day: i32, measure: String, expected: Total, found: Total) -> Delta {
    Delta {
        day: date_of(day).to_string(),
        measure,
        expected: expected.to_string(),
        found: found.to_string(),
    }
}

/// Per day, its totals by measure (those in `unknown` as null).
fn rows_of(days: &DayTotals, unknown: &BTreeMap<i32, BTreeSet<usize>>) -> Vec<DayRow> {
    days.days
        .iter()
        .map(|(day, t)| {
            let mut totals = t.by_name();
            if let Some(u) = unknown.get(day) {
                for &i in u {
                    totals.insert(t.measures()[i].0.clone(), serde_json::Value::Null);
                }
            }
            DayRow {
                day: date_of(*day).to_string(),
                totals,
            }
        })
        .collect()
}
