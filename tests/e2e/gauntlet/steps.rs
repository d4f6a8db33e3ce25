//! Compaction, rollup (one commit per partition and grouped under a commit
//! budget), retention, manifest rewrites, expiry with a tag to keep, orphan
//! removal, backfill chunks, a backfill `--replace`, and publishing (a
//! fast-forward, a re-apply) or discarding a staged backfill, each failed at
//! every step of its commits (see the module above).

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use firn::catalog::Catalog;
use firn::schema::decl::TableDecl;
use firn::schema::layout::Grain;
use firn::tables;

use super::{Plan, assert_sound, cases, foreign_append, judge, per_day, rule, run_with, text};
use crate::common::Lake;

const TABLE: &str = "usage.http_requests";

/// What a scenario's lake holds before the operation runs.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Prep {
    /// Fresh minute files in several sealed hours (compaction's work), a
    /// day of week-old minute rows (rollup's), rows past retention.
    Busy,
    /// `Busy`, compacted, with a tag on its first snapshot.
    CompactedAndTagged,
    /// `Busy` with three orphan files two hours old.
    WithOrphans,
    /// An empty table (backfill's).
    Empty,
    /// The inputs backfilled once (a replace's).
    Backfilled,
    /// `Backfilled`, then a replace of two months of it staged on a branch
    /// (its name in `branch.txt`).
    Staged,
    /// `Staged`, then rows appended to main (a publish re-applies).
    StagedThenMoved,
}

struct Scenario {
    name: &'static str,
    prep: Prep,
    args: Vec<String>,
    /// The table whose commits are failed.
    table: &'static str,
    /// How far past the prepared data the operation plans.
    days_ahead: i64,
}

impl Scenario {
    fn new(name: &'static str, prep: Prep, args: Vec<String>) -> Self {
        Self {
            name,
            prep,
            args,
            table: TABLE,
            days_ahead: 0,
        }
    }
}

/// The planning time every run of a scenario shares.
fn anchor() -> DateTime<Utc> {
    let hour = Grain::Hour.truncate(Utc::now().timestamp_micros());
    DateTime::from_timestamp_micros(hour).unwrap() + ChronoDuration::minutes(30)
}

fn command(lake: &Lake, sc: &Scenario, anchor: DateTime<Utc>, inputs: &Path) -> Command {
    let mut c = lake.firn();
    let now = anchor + ChronoDuration::days(sc.days_ahead);
    c.env("FIRN_NOW", now.to_rfc3339());
    let branch = std::fs::read_to_string(lake.path().join("branch.txt")).unwrap_or_default();
    for a in &sc.args {
        c.arg(
            a.replace("{inputs}", &inputs.display().to_string())
                .replace("{branch}", branch.trim()),
        );
    }
    c
}

async fn prepared(
    prep: Prep,
    anchor: DateTime<Utc>,
    inputs: &Path,
) -> (Lake, Arc<dyn Catalog>, TableDecl) {
    let lake = Lake::without_broker();
    lake.run(&["tables", "sync"]);
    let catalog = lake.catalog().await;
    let decl = lake.decl();
    let append =
        |at, seed, n, hours| crate::upkeep::append(catalog.as_ref(), &decl, at, seed, n, hours);
    match prep {
        Prep::Empty => {}
        Prep::Backfilled | Prep::Staged | Prep::StagedThenMoved => {
            let out = lake
                .firn()
                .env("FIRN_NOW", anchor.to_rfc3339())
                .args(["backfill", TABLE, "--input"])
                .arg(format!("{}/*.ndjson*", inputs.display()))
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", text(&out));
            if matches!(prep, Prep::Staged | Prep::StagedThenMoved) {
                let (from, to) = replaced_months();
                let out = lake
                    .firn()
                    .env("FIRN_NOW", anchor.to_rfc3339())
                    .args(["backfill", TABLE, "--stage", "--replace", "--input"])
                    .arg(format!("{}/*.ndjson*", inputs.display()))
                    .args(["--from", &from, "--to", &to])
                    .output()
                    .unwrap();
                assert!(out.status.success(), "{}", text(&out));
                let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                let branch = report["staged"]["branch"].as_str().unwrap();
                std::fs::write(lake.path().join("branch.txt"), branch).unwrap();
            }
            if prep == Prep::StagedThenMoved {
                append(anchor - ChronoDuration::hours(2), 9, 50, 1).await;
            }
        }
        Prep::Busy | Prep::CompactedAndTagged | Prep::WithOrphans => {
            append(anchor - ChronoDuration::hours(2), 1, 300, 3).await;
            if prep == Prep::CompactedAndTagged {
                tag_current(&lake, "month-end");
            }
            for seed in 2..4 {
                append(anchor - ChronoDuration::hours(2), seed, 300, 3).await;
            }
            for seed in 4..6 {
                append(anchor - ChronoDuration::days(8), seed, 300, 24).await;
            }
            append(anchor - ChronoDuration::days(420), 6, 100, 3).await;
        }
    }
    if prep == Prep::CompactedAndTagged {
        let out = lake
            .firn()
            .env("FIRN_NOW", anchor.to_rfc3339())
            .args(["compact", TABLE])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
    }
    if prep == Prep::WithOrphans {
        let data = catalog
            .load(&tables::ident(&decl).unwrap())
            .await
            .unwrap()
            .metadata
            .location()
            .trim_start_matches("file://")
            .to_string();
        let two_hours_ago = SystemTime::now() - Duration::from_secs(7200);
        for i in 0..3 {
            let dir = Path::new(&data).join("data/stray");
            std::fs::create_dir_all(&dir).unwrap();
            let f = std::fs::File::create(dir.join(format!("orphan-{i}.parquet"))).unwrap();
            f.set_modified(two_hours_ago).unwrap();
        }
    }
    (lake, catalog, decl)
}

/// Tag the table's current snapshot through PyIceberg.
fn tag_current(lake: &Lake, name: &str) {
    let script =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/readers/foreign.py");
    let warehouse = format!(
        "file://{}",
        std::fs::canonicalize(lake.path().join("warehouse"))
            .unwrap()
            .display()
    );
    let out = Command::new(crate::common::python())
        .arg(script)
        .arg("--catalog-uri")
        .arg(format!(
            "sqlite:///{}",
            lake.path().join("catalog.db").display()
        ))
        .args(["--warehouse", &warehouse, "--table", TABLE, "tag", name])
        .output()
        .unwrap();
    assert!(out.status.success(), "tagging: {}", text(&out));
}

/// The gauntlet of one scenario.
async fn gauntlet(sc: Scenario) {
    let anchor = anchor();
    let inputs = tempfile::tempdir().unwrap();
    if matches!(
        sc.prep,
        Prep::Empty | Prep::Backfilled | Prep::Staged | Prep::StagedThenMoved
    ) {
        let lake = Lake::without_broker();
        crate::backfill::write_inputs(inputs.path(), &lake.decl(), 300);
    }

    // The undisturbed run: what every case must end with, and the steps
    // it goes through.
    let (lake, catalog, decl) = prepared(sc.prep, anchor, inputs.path()).await;
    let before = per_day(catalog.as_ref(), &decl).await;
    let plan = Plan::new(lake.path(), "reference", "");
    let out = run_with(command(&lake, &sc, anchor, inputs.path()), &plan);
    assert!(out.status.success(), "{}: {}", sc.name, text(&out));
    if std::env::var_os("FIRN_GAUNTLET_VERBOSE").is_some() {
        eprintln!("reference run: {}", text(&out));
    }
    let reference = per_day(catalog.as_ref(), &decl).await;
    let reference_rejects = rejects(catalog.as_ref(), &decl).await;
    if !matches!(sc.prep, Prep::Empty | Prep::Backfilled) && sc.name != "retention" {
        assert_eq!(
            reference, before,
            "{}: an undisturbed run changed the totals",
            sc.name
        );
    }
    let trace = plan.traced();
    let cases = cases(&trace, sc.table);
    assert!(
        cases.iter().any(|(p, _)| p.op == "swap") || sc.name == "remove-orphans",
        "{}: the undisturbed run committed nothing: {trace:?}",
        sc.name
    );
    let mut tally = super::Tally::default();

    for (i, (point, fault)) in cases.iter().enumerate() {
        let what = format!("{}: {fault} at {} #{}", sc.name, point.op, point.nth);
        let what = match point.step {
            Some(step) => format!("{what} ({step})"),
            None => what,
        };
        let (lake, catalog, decl) = prepared(sc.prep, anchor, inputs.path()).await;
        let plan = Plan::new(
            lake.path(),
            &format!("case-{i}"),
            &rule(point, fault, sc.table),
        );
        let out = run_with(command(&lake, &sc, anchor, inputs.path()), &plan);
        judge(&out, &plan, point, fault, &what);
        tally.run(&plan, &out);

        let mut expected = reference.clone();
        let foreign_at = anchor - ChronoDuration::minutes(10);
        foreign_append(&lake, catalog.as_ref(), i, foreign_at, &mut expected).await;

        let rerun = command(&lake, &sc, anchor, inputs.path()).output().unwrap();
        // A backfill the faulted run finished is refused when run again; a
        // branch the faulted run published or discarded is gone.
        let stderr = String::from_utf8_lossy(&rerun.stderr);
        let finished = stderr.contains("already committed (snapshot ");
        let gone = stderr.contains("has no branch");
        assert!(
            rerun.status.success()
                || (finished && sc.name.starts_with("backfill"))
                || (gone && matches!(sc.prep, Prep::Staged | Prep::StagedThenMoved)),
            "{what}: the rerun failed\n{}",
            text(&rerun)
        );
        assert_eq!(
            per_day(catalog.as_ref(), &decl).await,
            expected,
            "{what}: the totals per day differ from an undisturbed run's"
        );
        assert_eq!(
            rejects(catalog.as_ref(), &decl).await,
            reference_rejects,
            "{what}: the rejects differ from an undisturbed run's"
        );
        if sc.prep == Prep::CompactedAndTagged {
            let t = catalog.load(&tables::ident(&decl).unwrap()).await.unwrap();
            assert!(
                firn::maintain::refs::refs(&t.metadata)
                    .unwrap()
                    .contains_key("month-end"),
                "{what}: the tag is gone"
            );
        }
        tally.leaked += assert_sound(catalog.as_ref(), &decl, &what).await;
    }
    tally.report(&format!("{} ({} cases)", sc.name, cases.len()));
}

/// The rejects of `decl`'s table: where each came from, in order; a reject
/// recorded twice shows twice.
async fn rejects(catalog: &dyn Catalog, decl: &TableDecl) -> Vec<(String, i32, i64)> {
    let ident = tables::rejects_ident(decl).unwrap();
    if !catalog.exists(&ident).await.unwrap() {
        return Vec::new();
    }
    let t = catalog.load(&ident).await.unwrap();
    let mut out: Vec<_> = firn::read::rejects(&t)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.topic, r.partition, r.offset))
        .collect();
    out.sort();
    out
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_survives_a_fault_at_every_step() {
    gauntlet(Scenario::new(
        "compact",
        Prep::Busy,
        args(&["compact", TABLE]),
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollup_survives_a_fault_at_every_step() {
    gauntlet(Scenario::new(
        "rollup",
        Prep::Busy,
        args(&["rollup", TABLE]),
    ))
    .await;
}

/// Grouped commits: under a budget of one commit a minute the rollup's
/// partitions go in one commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grouped_rollup_survives_a_fault_at_every_step() {
    gauntlet(Scenario::new(
        "rollup-grouped",
        Prep::Busy,
        args(&["rollup", TABLE, "--max-commits-per-minute", "1"]),
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_survives_a_fault_at_every_step() {
    gauntlet(Scenario::new(
        "retention",
        Prep::Busy,
        args(&["retention", TABLE]),
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_rewrite_survives_a_fault_at_every_step() {
    gauntlet(Scenario::new(
        "rewrite-manifests",
        Prep::Busy,
        args(&["rewrite-manifests", TABLE]),
    ))
    .await;
}

/// Expiry with a tag on the first snapshot: the tag, and every file it
/// reads, survive every fault.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_with_a_tag_survives_a_fault_at_every_step() {
    gauntlet(Scenario::new(
        "expire-snapshots",
        Prep::CompactedAndTagged,
        args(&[
            "expire-snapshots",
            TABLE,
            "--older-than",
            "0s",
            "--retain-last",
            "1",
        ]),
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphan_removal_survives_a_fault_at_every_step() {
    gauntlet(Scenario::new(
        "remove-orphans",
        Prep::WithOrphans,
        args(&["remove-orphans", TABLE, "--older-than", "1h"]),
    ))
    .await;
}

/// A backfill in chunks closed by their row bound, whatever step a chunk's
/// commit fails at and whatever another engine appends before the rerun.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_survives_a_fault_at_every_step() {
    gauntlet(Scenario::new(
        "backfill",
        Prep::Empty,
        args(&[
            "backfill",
            TABLE,
            "--input",
            "{inputs}/*.ndjson*",
            "--chunk-events",
            "300",
            // Rows are counted every 256 events: a chunk that holds 100
            // rows by then closes at its row bound, before 300 events.
            "--chunk-rows",
            "100",
        ]),
    ))
    .await;
}

/// Two whole months of the backfilled inputs (a replace must not cut the
/// month partitions of day rows).
fn replaced_months() -> (String, String) {
    let month = |days: i64| {
        use chrono::Datelike;
        (Utc::now() - ChronoDuration::days(days))
            .date_naive()
            .with_day(1)
            .unwrap()
            .to_string()
    };
    (month(150), month(100))
}

/// Publishing a staged replace, whatever step it fails at and whatever
/// another engine appends before the rerun (then a re-apply on main's
/// files instead of a fast-forward).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_a_staged_backfill_survives_a_fault_at_every_step() {
    gauntlet(Scenario::new(
        "publish",
        Prep::Staged,
        args(&["publish", TABLE, "{branch}"]),
    ))
    .await;
}

/// Publishing a staged replace after main moved: its files re-applied on
/// main's in one commit, whatever step that commit fails at.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_applying_a_staged_backfill_survives_a_fault_at_every_step() {
    gauntlet(Scenario::new(
        "publish-re-applied",
        Prep::StagedThenMoved,
        args(&["publish", TABLE, "{branch}"]),
    ))
    .await;
}

/// Discarding a staged replace, whatever step it fails at.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discarding_a_staged_backfill_survives_a_fault_at_every_step() {
    gauntlet(Scenario::new(
        "discard",
        Prep::Staged,
        args(&["discard", TABLE, "{branch}"]),
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_replace_survives_a_fault_at_every_step() {
    let (from, to) = replaced_months();
    gauntlet(Scenario::new(
        "backfill-replace",
        Prep::Backfilled,
        args(&[
            "backfill",
            TABLE,
            "--input",
            "{inputs}/*.ndjson*",
            "--replace",
            "--from",
            &from,
            "--to",
            &to,
        ]),
    ))
    .await;
}

/// Retention of the rejects table: every reject past `rejects_retain` goes,
/// in one delete commit, whatever step it fails at.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejects_retention_survives_a_fault_at_every_step() {
    gauntlet(Scenario {
        table: "usage.http_requests_rejects",
        days_ahead: 40,
        ..Scenario::new(
            "rejects-retention",
            Prep::Backfilled,
            args(&["retention", TABLE]),
        )
    })
    .await;
}

/// Compaction of the rejects table: a closed day's small files (one a
/// backfill chunk) become one, whatever step it fails at.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejects_compaction_survives_a_fault_at_every_step() {
    gauntlet(Scenario {
        table: "usage.http_requests_rejects",
        days_ahead: 2,
        ..Scenario::new(
            "rejects-compaction",
            Prep::Backfilled,
            args(&["compact", TABLE]),
        )
    })
    .await;
}
