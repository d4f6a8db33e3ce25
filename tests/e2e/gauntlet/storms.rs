//! Kill storms: SIGKILLs at random moments of ingest (two members of one
//! group, restarted at once, events arriving all along), of
//! `maintain --job jobs/hourly.toml` (fresh work appended between runs) and
//! of a long backfill (rerun after each kill). After each storm: exact
//! totals, every reject once, every referenced file present, and nothing
//! left that orphan removal does not collect.
//!
//! CI kills 12 ingest workers, 10 maintenance runs and 6 backfills;
//! `FIRN_GAUNTLET=full` (deploy/local/gauntlet.sh) kills 100, 50 and 30.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use chrono::Duration as ChronoDuration;
use firn::produce::ProduceOptions;
use firn::{read, tables};
use rand::{Rng, SeedableRng};

use super::{assert_sound, full, per_day, rejects_once, text};
use crate::common::{Broker, Lake, terminate};

const WAIT: Duration = Duration::from_secs(240);

fn kills(ci: usize, all: usize) -> usize {
    if full() { all } else { ci }
}

fn rng() -> rand::rngs::StdRng {
    let seed: u64 = std::env::var("FIRN_GAUNTLET_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    eprintln!("kill schedule seed {seed} (FIRN_GAUNTLET_SEED={seed} repeats it)");
    rand::rngs::StdRng::seed_from_u64(seed)
}

/// Whether a worker's log ends in an assignment (not a revocation).
fn settled(log: &str) -> bool {
    match (log.rfind("assigned; positioned"), log.rfind("revoked;")) {
        (Some(a), Some(r)) => a > r,
        (Some(_), None) => true,
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingest_kill_storm_counts_every_event_once() {
    let n = kills(12, 100);
    let broker = Broker::start();
    let lake = Lake::new(&broker);
    lake.create_topic(4).await;
    lake.run(&["tables", "sync"]);
    let mut rng = rng();

    // Events arrive all along.
    let producing = lake.produce_in_background(ProduceOptions {
        count: n as u64 * 4_000,
        rate: Some(500),
        seed: 17,
        bad_ratio: 0.01,
        ..Default::default()
    });
    let spawn = |w: usize, k: usize| lake.spawn_ingest(&format!("w{w}-{k}"), &[]);
    let mut workers: Vec<Child> = (0..2).map(|w| spawn(w, 0)).collect();
    let mut names: Vec<String> = (0..2).map(|w| format!("w{w}-0")).collect();
    let started = Instant::now();
    let mut last_kill = Instant::now();
    for k in 1..=n {
        // Each kill lands at a random moment of a settled group: the last
        // victim's session over (6 s) and both workers holding their
        // assignment. In these runs tansu 0.6 kept a member killed in the
        // middle of a rebalance in the group for minutes, its partitions
        // read by no one (a Kafka broker times a member's session from its
        // join); kills inside firn's own work (reads, flushes, commits) are
        // what the storm is for.
        let deadline = Instant::now() + WAIT;
        while last_kill.elapsed() < Duration::from_secs(7)
            || !names.iter().all(|name| settled(&lake.log(name)))
        {
            assert!(
                Instant::now() < deadline,
                "the group never settled: {names:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..2_000))).await;
        let w = rng.random_range(0..2);
        workers[w].kill().unwrap();
        workers[w].wait().unwrap();
        last_kill = Instant::now();
        workers[w] = spawn(w, k);
        names[w] = format!("w{w}-{k}");
    }
    let report = producing.await.unwrap();
    let catalog = lake.catalog().await;
    lake.wait_for_offsets(catalog.as_ref(), report.sent as i64, WAIT)
        .await;
    // The last restarted worker is stopped only once it runs (a SIGTERM
    // before its handler is installed kills it, which is not the point).
    let deadline = Instant::now() + WAIT;
    while !names.iter().all(|name| settled(&lake.log(name))) {
        assert!(
            Instant::now() < deadline,
            "the group never settled: {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (w, mut worker) in workers.into_iter().enumerate() {
        let status = terminate(&mut worker);
        assert!(
            status.success(),
            "worker {} did not stop cleanly ({status:?}):\n{}",
            names[w],
            lake.log(&names[w])
        );
    }
    eprintln!(
        "MEASURE ingest kill storm: {n} SIGKILLs in {:.0}s, {} events sent",
        started.elapsed().as_secs_f64(),
        report.sent
    );

    let decl = lake.decl();
    let t = catalog.load(&tables::ident(&decl).unwrap()).await.unwrap();
    let totals = read::totals(&t, &decl).await.unwrap();
    for m in ["requests", "bytes", "cpu_ms"] {
        assert_eq!(
            serde_json::json!(totals.long(&decl, m)),
            report.totals[m],
            "{m} after {n} kills: events lost or counted twice"
        );
    }
    assert_eq!(rejects_once(&lake, "ingest storm").await, report.malformed);
    let leaked = assert_sound(catalog.as_ref(), &decl, "ingest storm").await;
    eprintln!("MEASURE ingest storm: {leaked} files left behind, all deleted by orphan removal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_maintenance_kill_storm_changes_no_total() {
    let n = kills(10, 50);
    let lake = Lake::without_broker();
    lake.run(&["tables", "sync"]);
    let catalog = lake.catalog().await;
    let decl = lake.decl();
    let anchor = chrono::Utc::now();
    let job = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs/hourly.toml");
    let maintain = || {
        let mut c = lake.firn();
        c.arg("maintain")
            .arg("--job")
            .arg(&job)
            .env("FIRN_NOW", anchor.to_rfc3339());
        c
    };
    let mut rng = rng();
    let append = |seed: u64| {
        let at = anchor - ChronoDuration::hours(if seed.is_multiple_of(2) { 2 } else { 24 * 8 });
        crate::upkeep::append(catalog.as_ref(), &decl, at, seed, 200, 6)
    };

    // One undisturbed run with work of both kinds (a recent hour to
    // compact, an old day to roll up): how long a run takes, so kills land
    // inside runs.
    append(0).await;
    append(1).await;
    let started = Instant::now();
    let out = maintain().output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let run_ms = (started.elapsed().as_millis() as u64).max(20);

    let mut expected = per_day(catalog.as_ref(), &decl).await;
    let mut killed = 0;
    for k in 2..=n as u64 + 1 {
        append(k).await;
        let before = per_day(catalog.as_ref(), &decl).await;
        expected = before.clone();
        let mut child = maintain()
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Within the first three quarters of a run: a later run holds more
        // files, and a kill after it ended tests nothing.
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..run_ms * 3 / 4))).await;
        if child.try_wait().unwrap().is_none() {
            killed += 1;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(
            per_day(catalog.as_ref(), &decl).await,
            before,
            "a maintenance run killed at random ({k}) changed the totals"
        );
    }
    let out = maintain().output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(per_day(catalog.as_ref(), &decl).await, expected);
    eprintln!(
        "MEASURE maintenance kill storm: {killed} of {n} runs killed mid-way (run {run_ms} ms)"
    );
    assert!(
        killed * 2 >= n,
        "only {killed} of {n} runs were killed before they ended"
    );
    let leaked = assert_sound(catalog.as_ref(), &decl, "maintenance storm").await;
    eprintln!(
        "MEASURE maintenance storm: {leaked} files left behind, all deleted by orphan removal"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_kill_storm_adds_every_event_once() {
    let n = kills(6, 30);
    let lake = Lake::without_broker();
    lake.run(&["tables", "sync"]);
    let data = tempfile::tempdir().unwrap();
    let per_file = if full() { 40_000 } else { 8_000 };
    let inputs = crate::backfill::write_inputs(data.path(), &lake.decl(), per_file);
    let command =
        || crate::backfill::backfill_command(&lake, data.path(), &["--chunk-events", "1000"]);
    let mut rng = rng();
    let mut killed = 0;
    for _ in 0..n {
        let mut child = command()
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..1_500))).await;
        if child.try_wait().unwrap().is_some() {
            break;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        killed += 1;
    }
    let out = command().output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() || err.contains("already committed (snapshot "),
        "{}",
        text(&out)
    );
    eprintln!("MEASURE backfill kill storm: {killed} SIGKILLs survived");
    assert!(
        killed >= n.min(3),
        "the backfill finished after {killed} kills"
    );
    crate::backfill::assert_holds(&lake, &inputs).await;
    assert_eq!(
        rejects_once(&lake, "backfill storm").await,
        inputs.malformed
    );
    let catalog = lake.catalog().await;
    let leaked = assert_sound(catalog.as_ref(), &lake.decl(), "backfill storm").await;
    eprintln!("MEASURE backfill storm: {leaked} files left behind, all deleted by orphan removal");
}
