//! Ingest flushes (rows, and the rejects committed before them) and an
//! operator's `--reset-offsets` commit, each failed at every step of its
//! commit: the worker retries, re-reads or is restarted, another engine
//! commits in between, and every event is counted once, every reject
//! recorded once.

use std::collections::BTreeMap;
use std::process::{Command, Output};
use std::time::Duration;

use firn::produce::{ProduceOptions, ProduceReport};
use firn::{read, tables};

use super::{Plan, Point, Tally, assert_sound, foreign_append, judge, rule, text, with_plan};
use crate::common::{Broker, Lake, output_within};

const TABLE: &str = "usage.http_requests";
const REJECTS: &str = "usage.http_requests_rejects";

/// A lake on `broker` reading its own topic, `http-requests-NAME`.
async fn lake_on_own_topic(broker: &Broker, name: &str) -> Lake {
    let lake = Lake::new(broker);
    let schema = lake.path().join("schemas/usage.http_requests.toml");
    let text = std::fs::read_to_string(&schema).unwrap().replace(
        "topic = \"http-requests\"",
        &format!("topic = \"http-requests-{name}\""),
    );
    std::fs::write(&schema, text).unwrap();
    lake.run(&["tables", "sync"]);
    lake.create_topic(2).await;
    lake
}

async fn produce(lake: &Lake, count: u64, seed: u64) -> ProduceReport {
    lake.produce(ProduceOptions {
        count,
        seed,
        bad_ratio: 0.02,
        spread: std::time::Duration::from_secs(3 * 3600),
        ..Default::default()
    })
    .await
}

fn ingest(lake: &Lake, group: &str, extra: &[&str]) -> Command {
    let mut c = lake.firn();
    c.env("FIRN_GROUP", group)
        .args([
            "ingest",
            "--commit-interval",
            "1s",
            "--stop-when-idle",
            "3s",
            // Several flushes a run, whatever the decoding speed: a fault
            // at a step's second occurrence has one to meet.
            "--max-buffered-rows",
            "500",
            "--kafka-property",
            "session.timeout.ms=6000",
            "--kafka-property",
            "heartbeat.interval.ms=500",
        ])
        .args(extra);
    c
}

/// How long an ingest run that stops when idle may take, and how many times
/// one the broker never assigns partitions to is started.
const RUN_LIMIT: Duration = Duration::from_secs(120);
const ATTEMPTS: usize = 3;

/// Run an ingest that stops when idle (`command` builds it), bounded. tansu
/// 0.6 now and then never completes the rebalance that follows a killed
/// member, and the new member waits for partitions forever; a run that ends
/// its time without partitions is stopped (it holds nothing) and started
/// again, counted in `tally`. A run that holds partitions and does not stop
/// fails the test.
fn bounded(command: impl Fn() -> Command, what: &str, tally: &mut Tally) -> Output {
    for attempt in 1..=ATTEMPTS {
        match output_within(command(), RUN_LIMIT) {
            Ok(out) => return out,
            Err(out) => {
                let log = String::from_utf8_lossy(&out.stderr);
                let assigned = log.matches("assigned; positioned").count();
                let revoked = log.matches("revoked; flushing").count();
                assert!(
                    assigned <= revoked,
                    "{what}: holding partitions, yet not stopped within {RUN_LIMIT:?}\n{}",
                    text(&out)
                );
                assert!(
                    out.status.code().is_some(),
                    "{what}: unassigned, and it did not stop on SIGTERM\n{}",
                    text(&out)
                );
                tally.stalled += 1;
                eprintln!(
                    "{what}: no partitions assigned within {RUN_LIMIT:?} (attempt {attempt} of \
                     {ATTEMPTS}); stopped cleanly on SIGTERM, starting it again"
                );
            }
        }
    }
    panic!("{what}: the broker assigned no partitions in {ATTEMPTS} attempts")
}

fn ok(o: &Output, what: &str) {
    assert!(o.status.success(), "{what}\n{}", text(o));
}

fn sums(reports: &[&ProduceReport]) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for r in reports {
        for m in ["requests", "bytes", "cpu_ms"] {
            *out.entry(m.to_string()).or_default() += r.totals[m].as_i64().unwrap();
        }
    }
    out
}

/// The table's sums, less the other engine's row, and its rejects, each
/// checked to be there once.
async fn table_state(lake: &Lake, what: &str) -> (BTreeMap<String, i64>, u64) {
    let catalog = lake.catalog().await;
    let decl = lake.decl();
    let t = catalog.load(&tables::ident(&decl).unwrap()).await.unwrap();
    let totals = read::totals(&t, &decl).await.unwrap();
    let sums = ["requests", "bytes", "cpu_ms"]
        .iter()
        .map(|m| (m.to_string(), totals.long(&decl, m)))
        .collect();
    (sums, super::rejects_once(lake, what).await)
}

/// The other engine's row, in the sums [`super::foreign_append`] adds.
fn foreign_sums(case: usize) -> BTreeMap<String, i64> {
    let (bytes, cpu) = if case.is_multiple_of(2) {
        (1000, 5)
    } else {
        (2000, 9)
    };
    BTreeMap::from([
        ("requests".to_string(), 1),
        ("bytes".to_string(), bytes),
        ("cpu_ms".to_string(), cpu),
    ])
}

fn plus(a: &BTreeMap<String, i64>, b: &BTreeMap<String, i64>) -> BTreeMap<String, i64> {
    a.iter().map(|(k, v)| (k.clone(), v + b[k])).collect()
}

/// The places an ingest flush is failed at: the rows' commit steps and the
/// rejects' (committed first), and a stale catalog read.
fn flush_cases() -> Vec<(Point, &'static str, &'static str)> {
    let p = |op, step, nth| Point { op, step, nth };
    let mut out = vec![
        (p("load", None, 2), "stale", TABLE),
        (p("put", Some("data"), 1), "error", TABLE),
        (p("put", Some("data"), 1), "kill_after", TABLE),
        (p("put", Some("manifest"), 1), "lost_reply", TABLE),
        (p("put", Some("manifest_list"), 1), "kill", TABLE),
        (p("put", Some("metadata"), 1), "error", TABLE),
        (p("put", Some("metadata"), 1), "kill_after", TABLE),
        (p("swap", None, 1), "error", TABLE),
        (p("swap", None, 1), "lost_reply", TABLE),
        (p("swap", None, 1), "kill", TABLE),
        (p("swap", None, 1), "kill_after", TABLE),
        (p("put", Some("data"), 1), "lost_reply", REJECTS),
        (p("swap", None, 1), "lost_reply", REJECTS),
        (p("swap", None, 1), "kill_after", REJECTS),
    ];
    if super::full() {
        for step in ["data", "manifest", "manifest_list", "metadata"] {
            for fault in super::FAULTS {
                for table in [TABLE, REJECTS] {
                    out.push((p("put", Some(step), 1), fault, table));
                }
            }
        }
        for fault in super::FAULTS {
            out.push((p("swap", None, 2), fault, TABLE));
            out.push((p("swap", None, 1), fault, REJECTS));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_flushes_survive_a_fault_at_every_step() {
    let broker = Broker::start();
    let cases = flush_cases();
    let mut tally = Tally::default();
    for (i, (point, fault, table)) in cases.iter().enumerate() {
        let what = format!("ingest: {fault} at {point:?} of {table}");
        let lake = lake_on_own_topic(&broker, &format!("flush-{i}")).await;
        // Each case its own group: whatever a kill leaves in one group does
        // not reach the next case.
        let group = format!("g{i}");
        let run = || ingest(&lake, &group, &[]);
        // A first batch committed undisturbed: the faulted run resumes from
        // the table's offsets, and the other engine writes to a firn table.
        let first = produce(&lake, 500, 1_000 + i as u64).await;
        ok(&bounded(run, &what, &mut tally), &what);
        let produced = produce(&lake, 2_000, i as u64).await;

        let plan = Plan::new(lake.path(), "case", &rule(point, fault, table));
        let out = bounded(|| with_plan(run(), &plan), &what, &mut tally);
        judge_ingest(&out, &plan, point, fault, &what);
        tally.run(&plan, &out);

        let catalog = lake.catalog().await;
        let at = chrono::Utc::now() - chrono::Duration::minutes(10);
        foreign_append(&lake, catalog.as_ref(), i, at, &mut BTreeMap::new()).await;
        ok(&bounded(run, &what, &mut tally), &what);

        let (sums_now, rejects) = table_state(&lake, &what).await;
        assert_eq!(
            sums_now,
            plus(&sums(&[&first, &produced]), &foreign_sums(i)),
            "{what}: events lost or counted twice"
        );
        assert_eq!(
            rejects,
            first.malformed + produced.malformed,
            "{what}: rejects lost"
        );
        tally.leaked += assert_sound(catalog.as_ref(), &lake.decl(), &what).await;
    }
    tally.report(&format!("ingest flushes ({} cases)", cases.len()));
}

/// Ingest absorbs every failure but a kill: a failed flush is dropped and
/// re-read, so the run ends cleanly.
fn judge_ingest(out: &Output, plan: &Plan, point: &Point, fault: &str, what: &str) {
    if fault.starts_with("kill") {
        judge(out, plan, point, fault, what);
        return;
    }
    assert!(
        !plan.fired().is_empty(),
        "{what}: never fired\n{}",
        text(out)
    );
    ok(out, what);
}

/// An operator's reset, failed at each step of its commit, another engine
/// committing before the same command runs again: the reset applies once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_of_offsets_survives_a_fault_at_every_step() {
    let broker = Broker::start();
    let p = |op, step| Point { op, step, nth: 1 };
    let cases = [
        (p("put", Some("manifest_list")), "kill"),
        (p("put", Some("metadata")), "lost_reply"),
        (p("swap", None), "error"),
        (p("swap", None), "lost_reply"),
        (p("swap", None), "kill"),
        (p("swap", None), "kill_after"),
    ];
    let mut tally = Tally::default();
    for (i, (point, fault)) in cases.iter().enumerate() {
        let what = format!("reset: {fault} at {point:?}");
        let lake = lake_on_own_topic(&broker, &format!("reset-{i}")).await;
        let (a, b) = (format!("a{i}"), format!("b{i}"));
        let first = produce(&lake, 1_000, 100 + i as u64).await;
        ok(
            &bounded(|| ingest(&lake, &a, &[]), &what, &mut tally),
            &what,
        );
        let skipped = produce(&lake, 500, 200 + i as u64).await;

        // Group b starts at the end of the topic, skipping what a read.
        let reset = ["--reset-offsets", "latest"];
        let plan = Plan::new(lake.path(), "case", &rule(point, fault, TABLE));
        let faulted = || with_plan(ingest(&lake, &b, &reset), &plan);
        let out = bounded(faulted, &what, &mut tally);
        judge(&out, &plan, point, fault, &what);
        tally.run(&plan, &out);

        let catalog = lake.catalog().await;
        let at = chrono::Utc::now() - chrono::Duration::minutes(10);
        foreign_append(&lake, catalog.as_ref(), i, at, &mut BTreeMap::new()).await;
        ok(
            &bounded(|| ingest(&lake, &b, &reset), &what, &mut tally),
            &what,
        );
        let last = produce(&lake, 300, 300 + i as u64).await;
        ok(
            &bounded(|| ingest(&lake, &b, &[]), &what, &mut tally),
            &what,
        );

        let (sums_now, _) = table_state(&lake, &what).await;
        assert_eq!(
            sums_now,
            plus(&sums(&[&first, &last]), &foreign_sums(i)),
            "{what}: group b did not start exactly at the end of the topic \
             ({} events skipped)",
            skipped.valid
        );
        let t = catalog
            .load(&tables::ident(&lake.decl()).unwrap())
            .await
            .unwrap();
        let resets = t
            .metadata
            .snapshots()
            .filter(|s| {
                s.summary().additional_properties.get("firn.operation")
                    == Some(&"reset-offsets".to_string())
            })
            .count();
        assert_eq!(resets, 1, "{what}: the reset was committed {resets} times");
        tally.leaked += assert_sound(catalog.as_ref(), &lake.decl(), &what).await;
    }
    tally.report(&format!("reset-offsets ({} cases)", cases.len()));
}
