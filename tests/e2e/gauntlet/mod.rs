//! The fault gauntlet: every state change meets an injected failure at each
//! step of its commit (data files, manifests, manifest list, metadata file,
//! catalog swap, post-commit deletes; a stale catalog read), as an error
//! before the step, a lost reply after it, or a SIGKILL on either side; then
//! another engine commits, and the operation runs again. After each case the
//! totals per day are exactly those of an undisturbed run (plus what the
//! other engine added), every file any retained snapshot or ref references
//! exists, and whatever the failure left behind is only orphans that orphan
//! removal deletes.
//!
//! The plan of each case is a `FIRN_FAULTS` file (src/faults); a first,
//! undisturbed run of each operation records the steps it goes through
//! (the plan's trace), and the cases inject at those steps. Under CI the
//! catalog swap meets every fault and each other step two of them, in
//! rotation; `FIRN_GAUNTLET=full` injects every fault at every step, at the
//! first and the last time the operation reaches it.

mod ingest;
mod soak;
mod steps;
mod storms;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};
use firn::catalog::Catalog;
use firn::clock::ManualClock;
use firn::maintain::orphans::{self, RemoveOrphansOptions};
use firn::rows::{MeasureSpec, MeasureValue, Measures};
use firn::schema::decl::TableDecl;
use firn::{read, tables};
use serde::Deserialize;

use crate::common::{Lake, python};

/// One line of a plan's trace.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Traced {
    pub op: String,
    pub step: String,
    pub path: String,
    pub fault: Option<String>,
}

/// A fault plan file and its trace.
pub(crate) struct Plan {
    pub file: PathBuf,
    pub trace: PathBuf,
}

impl Plan {
    /// A plan in `dir` with `rules` (TOML `[[rule]]` tables, maybe none).
    pub(crate) fn new(dir: &Path, name: &str, rules: &str) -> Self {
        let file = dir.join(format!("faults-{name}.toml"));
        let trace = dir.join(format!("trace-{name}.jsonl"));
        let _ = std::fs::remove_file(&trace);
        std::fs::write(
            &file,
            format!(
                "seed = 1\ntrace = {:?}\n{rules}",
                trace.display().to_string()
            ),
        )
        .unwrap();
        Self { file, trace }
    }

    /// What the processes that ran with this plan did, in order.
    pub(crate) fn traced(&self) -> Vec<Traced> {
        std::fs::read_to_string(&self.trace)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The faults that fired.
    pub(crate) fn fired(&self) -> Vec<Traced> {
        self.traced()
            .into_iter()
            .filter(|t| t.fault.is_some())
            .collect()
    }
}

/// A place to inject: the `nth` operation of a class.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Point {
    pub op: &'static str,
    pub step: Option<&'static str>,
    pub nth: usize,
}

/// The classes of operation a commit goes through, in order.
const CLASSES: [(&str, Option<&str>); 8] = [
    ("load", None),
    ("put", Some("data")),
    ("put", Some("manifest")),
    ("put", Some("manifest_list")),
    ("put", Some("metadata")),
    ("swap", None),
    ("list", None),
    ("delete", None),
];

const FAULTS: [&str; 4] = ["error", "lost_reply", "kill", "kill_after"];

pub(crate) fn full() -> bool {
    std::env::var("FIRN_GAUNTLET").is_ok_and(|v| v == "full")
}

/// The points an undisturbed run went through, each with the faults to
/// inject there (bounded under CI, see the module's doc).
pub(crate) fn cases(trace: &[Traced], table: &str) -> Vec<(Point, &'static str)> {
    let mut out = Vec::new();
    for (i, (op, step)) in CLASSES.iter().enumerate() {
        let n = trace
            .iter()
            .filter(|t| t.op == *op && step.is_none_or(|s| t.step == s) && belongs(t, table))
            .count();
        if n == 0 {
            continue;
        }
        // A stale read needs an earlier read to return.
        let first = if *op == "load" { 2 } else { 1 };
        if n < first {
            continue;
        }
        let mut nths = vec![first];
        if full() && n > first {
            nths.push(n);
        }
        let faults: Vec<&'static str> = match *op {
            "load" => vec!["stale"],
            "list" => vec!["error", "hidden"],
            "swap" => FAULTS.to_vec(),
            _ if full() => FAULTS.to_vec(),
            _ => vec![FAULTS[i % 4], FAULTS[(i + 1) % 4]],
        };
        for nth in nths {
            for f in &faults {
                out.push((
                    Point {
                        op,
                        step: *step,
                        nth,
                    },
                    *f,
                ));
            }
        }
    }
    out
}

fn belongs(t: &Traced, table: &str) -> bool {
    match t.op.as_str() {
        "load" | "swap" | "create" => t.path == table,
        _ => format!("/{}/", t.path).contains(&format!("/{}/", table.replace('.', "/"))),
    }
}

/// The plan rule injecting `fault` at `point` of `table`.
pub(crate) fn rule(point: &Point, fault: &str, table: &str) -> String {
    let step = point
        .step
        .map(|s| format!("step = \"{s}\"\n"))
        .unwrap_or_default();
    format!(
        "[[rule]]\nop = \"{}\"\n{step}table = \"{table}\"\nfault = \"{fault}\"\nnth = {}\n",
        point.op, point.nth
    )
}

/// `command` with `plan` (and the lake's settings).
pub(crate) fn run_with(command: Command, plan: &Plan) -> Output {
    with_plan(command, plan).output().unwrap()
}

/// `command`, its faults as `plan` says.
pub(crate) fn with_plan(mut command: Command, plan: &Plan) -> Command {
    command.env("FIRN_FAULTS", &plan.file);
    command
}

pub(crate) fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Check what a faulted run did against its fault: the fault fired, a kill
/// killed, and a fault the commit path absorbs (any but a data file's, whose
/// task fails, and a kill) left a successful run.
pub(crate) fn judge(out: &Output, plan: &Plan, point: &Point, fault: &str, what: &str) {
    let fired = plan.fired();
    assert!(
        !fired.is_empty(),
        "{what}: {fault} at {point:?} never fired\n{}",
        text(out)
    );
    match fault {
        "kill" | "kill_after" => assert_eq!(
            out.status.signal(),
            Some(9),
            "{what}: {fault} at {point:?} did not kill\n{}",
            text(out)
        ),
        _ => {
            let absorbed = matches!(point.step, Some("manifest" | "manifest_list" | "metadata"))
                || matches!(point.op, "swap" | "load" | "delete")
                || fault == "hidden";
            if absorbed {
                assert!(
                    out.status.success(),
                    "{what}: {fault} at {point:?} is retried or resolved, yet the run failed\n{}",
                    text(out)
                );
            } else if !out.status.success() {
                assert!(
                    text(out).contains("injected fault"),
                    "{what}: the failure does not name the injected fault\n{}",
                    text(out)
                );
            }
        }
    }
}

/// Per-day totals of a table.
pub(crate) async fn per_day(
    catalog: &dyn Catalog,
    decl: &TableDecl,
) -> BTreeMap<NaiveDate, Measures> {
    let t = catalog.load(&tables::ident(decl).unwrap()).await.unwrap();
    read::totals(&t, decl).await.unwrap().per_day
}

/// Another engine's commit between the faulted run and the rerun: a
/// PyIceberg append (even cases) or iceberg-rust's `fast_append` (odd), of one
/// minute row at `at`. `expected` gains that row.
pub(crate) async fn foreign_append(
    lake: &Lake,
    catalog: &dyn Catalog,
    case: usize,
    at: DateTime<Utc>,
    expected: &mut BTreeMap<NaiveDate, Measures>,
) {
    let decl = lake.decl();
    let spec = MeasureSpec::new(&decl);
    let values = if case.is_multiple_of(2) {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/readers/foreign.py");
        let warehouse = format!(
            "file://{}",
            std::fs::canonicalize(lake.path().join("warehouse"))
                .unwrap()
                .display()
        );
        let out = Command::new(python())
            .arg(script)
            .args(["--catalog-uri"])
            .arg(format!(
                "sqlite:///{}",
                lake.path().join("catalog.db").display()
            ))
            .args(["--warehouse", &warehouse])
            .args(["--table", "usage.http_requests", "append"])
            .arg(at.to_rfc3339())
            .output()
            .unwrap();
        assert!(out.status.success(), "PyIceberg append: {}", text(&out));
        // requests 1, bytes 1000, cpu_ms 5, ttfb_ms_max 7 (tests/readers/foreign.py)
        [None, Some(1000), Some(5), Some(7)]
    } else {
        crate::shared_lake::rust_fast_append_at(lake, catalog, at).await;
        [None, Some(2000), Some(9), Some(11)]
    };
    let values: Vec<Option<MeasureValue>> = values
        .iter()
        .map(|v| v.map(|v| MeasureValue::Long(Some(v))))
        .collect();
    let mut one = spec.empty();
    spec.add_event_saturating(&mut one, &values);
    let day = expected
        .entry(at.date_naive())
        .or_insert_with(|| spec.empty());
    spec.merge_saturating(day, &one);
}

/// After a case: every file the metadata of `decl`'s table and of its
/// rejects table references exists; orphan removal (run as if two hours had
/// passed) then deletes whatever the failure left behind, after which every
/// file under the table is referenced and the totals are unchanged. Returns
/// how many files were left behind (and deleted).
pub(crate) async fn assert_sound(catalog: &dyn Catalog, decl: &TableDecl, what: &str) -> usize {
    let before = per_day(catalog, decl).await;
    let idents = [
        tables::ident(decl).unwrap(),
        tables::rejects_ident(decl).unwrap(),
    ];
    for ident in &idents {
        if !catalog.exists(ident).await.unwrap() {
            continue;
        }
        assert_referenced_exist(catalog, ident, what).await;
    }
    let now = Utc::now() + chrono::Duration::hours(2);
    let mut ctx = firn::maintain::Context::new(catalog, now);
    ctx.clock = Arc::new(ManualClock::new(now));
    let opts = RemoveOrphansOptions {
        older_than: firn::clock::Span::from_secs(3600),
        ..Default::default()
    };
    let removed = orphans::run(&ctx, decl, &opts).await.unwrap();
    let leaked = removed.parts().map(|p| p.orphans.len()).sum();
    for ident in &idents {
        if !catalog.exists(ident).await.unwrap() {
            continue;
        }
        assert_referenced_exist(catalog, ident, what).await;
        let table = catalog.load(ident).await.unwrap();
        let referenced = orphans::referenced(&table).await.unwrap();
        let root = format!("{}/", table.metadata.location().trim_end_matches('/'));
        let left: BTreeSet<String> = catalog
            .storage()
            .list(&root)
            .await
            .unwrap()
            .into_iter()
            .filter_map(|f| firn::maintain::paths::normalize(&f.location))
            .filter(|l| !referenced.contains(l))
            .collect();
        assert!(
            left.is_empty(),
            "{what}: {ident} keeps files nothing references after orphan removal: {left:?}"
        );
    }
    assert_eq!(
        per_day(catalog, decl).await,
        before,
        "{what}: orphan removal changed the totals"
    );
    leaked
}

/// What a gauntlet saw: faults fired by kind, operation and step; commits
/// whose outcome was unknown, by how reading the table back resolved them;
/// files left behind for orphan removal.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub fired: BTreeMap<String, u64>,
    pub landed: usize,
    pub not_landed: usize,
    pub leaked: usize,
    /// Ingest runs started again because the broker never assigned them
    /// partitions (see `ingest::bounded`).
    pub stalled: usize,
}

impl Tally {
    /// Count a faulted run.
    pub(crate) fn run(&mut self, plan: &Plan, out: &Output) {
        for t in plan.fired() {
            let key = format!("{} {} {}", t.fault.unwrap_or_default(), t.op, t.step);
            *self.fired.entry(key).or_default() += 1;
        }
        let log = String::from_utf8_lossy(&out.stderr);
        self.landed += log.matches("the commit landed").count();
        self.not_landed += log.matches("it did not land").count();
    }

    pub(crate) fn report(&self, what: &str) {
        eprintln!(
            "MEASURE gauntlet {what}: faults fired {:?}; unknown outcomes resolved: {} landed, \
             {} not landed; {} files left behind, all deleted by orphan removal (0 after); \
             {} ingest runs restarted, never assigned partitions by the broker",
            self.fired, self.landed, self.not_landed, self.leaked, self.stalled
        );
    }
}

async fn assert_referenced_exist(catalog: &dyn Catalog, ident: &iceberg::TableIdent, what: &str) {
    let table = catalog.load(ident).await.unwrap();
    let referenced = orphans::referenced(&table).await.unwrap();
    for location in referenced {
        if location.ends_with("/version-hint.text") {
            continue;
        }
        assert!(
            catalog.file_io().exists(&location).await.unwrap(),
            "{what}: {ident} references {location}, which is missing"
        );
    }
}

/// Every reject of the lake's table, checked to be there once.
pub(crate) async fn rejects_once(lake: &Lake, what: &str) -> u64 {
    let catalog = lake.catalog().await;
    let t = catalog
        .load(&tables::rejects_ident(&lake.decl()).unwrap())
        .await
        .unwrap();
    let rejects = read::rejects(&t).await.unwrap();
    let mut seen = BTreeSet::new();
    for r in &rejects {
        assert!(
            seen.insert((r.topic.clone(), r.partition, r.offset)),
            "{what}: reject {}:{}@{} recorded twice",
            r.topic,
            r.partition,
            r.offset
        );
    }
    rejects.len() as u64
}
