//! A soak: events at a steady rate, the hourly and daily jobs run back to
//! back with the planning clock moving 20 days over the soak (so days age
//! and roll up beside live ingest), a second ingest worker joining and leaving,
//! and about 2% of storage operations failing (errors, lost replies,
//! latency spikes) in every process. At the end: exact totals, every reject
//! once, each process's peak RSS, files and snapshots within the declared
//! health thresholds, `firn status` healthy, and nothing leaked.
//!
//! Two minutes under CI; `FIRN_SOAK_SECS=3600` for an hour.

use std::collections::BTreeMap;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use chrono::Duration as ChronoDuration;
use firn::produce::ProduceOptions;
use firn::{read, tables};
use serde_json::Value;

use super::{Plan, assert_sound, per_day, text};
use crate::common::{Broker, Lake, peak_rss_kib, terminate};

const RATE: u64 = 1_000;

/// Storage faults for every process of the soak: about 2% of operations.
const FAULTS: &str = r#"
[[rule]]
op = "put"
fault = "error"
probability = 0.01
[[rule]]
op = "put"
fault = "lost_reply"
probability = 0.005
[[rule]]
op = "get"
fault = "error"
probability = 0.005
[[rule]]
fault = "latency"
latency = "150ms"
probability = 0.01
"#;

fn soak_secs() -> u64 {
    std::env::var("FIRN_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120)
}

/// Watch `child` until it exits: its peak RSS in KiB (as last seen).
async fn run_watched(mut child: Child) -> (std::process::ExitStatus, u64) {
    let mut peak = 0;
    loop {
        if let Some(kib) = peak_rss_kib(child.id()) {
            peak = peak.max(kib);
        }
        if let Some(status) = child.try_wait().unwrap() {
            return (status, peak);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soak_with_faults_and_an_ageing_clock_stays_exact_and_healthy() {
    let secs = soak_secs();
    let broker = Broker::start();
    let lake = Lake::new(&broker);
    // The shipped health thresholds, which the Lake leaves out.
    let shipped = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/usage.http_requests.toml"),
    )
    .unwrap();
    let health = &shipped[shipped.find("[health]").unwrap()..];
    let schema = lake.path().join("schemas/usage.http_requests.toml");
    let mut declared = std::fs::read_to_string(&schema).unwrap();
    declared.push_str(health);
    std::fs::write(&schema, declared).unwrap();
    lake.create_topic(4).await;
    lake.run(&["tables", "sync"]);
    let plan = Plan::new(lake.path(), "soak", FAULTS);

    let producing = lake.produce_in_background(ProduceOptions {
        count: secs * RATE,
        rate: Some(RATE),
        seed: 23,
        bad_ratio: 0.005,
        spread: Duration::from_secs(6 * 3600),
        ..Default::default()
    });
    // Dynamic members: in these runs tansu 0.6 left a group of static
    // members (--instance-id) rebalancing for minutes once a second one
    // joined, with no partition assigned.
    let spawn = |name: &str| {
        let mut c = lake.firn();
        c.env("FIRN_FAULTS", &plan.file)
            .args(["ingest", "--commit-interval", "2s"])
            .args(["--kafka-property", "session.timeout.ms=6000"])
            .args(["--kafka-property", "heartbeat.interval.ms=500"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(lake.path().join(format!("ingest-{name}.log"))).unwrap())
            .spawn()
            .unwrap()
    };
    let mut a = spawn("a");
    let mut b: Option<Child> = None;
    let mut rss: BTreeMap<String, u64> = BTreeMap::new();
    let jobs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs");
    let started = Instant::now();
    // The planning clock runs from now to 20 days on over the soak: minute
    // rows age past the 7 days after which they roll up to hours, while
    // nothing reaches retention (400 days) and no reject its 30 days.
    let start = chrono::Utc::now();
    let mut now = start;
    let (mut runs, mut failed_runs) = (0, 0);
    while started.elapsed() < Duration::from_secs(secs) {
        let third = started.elapsed().as_secs() * 3 / secs;
        if third == 1 && b.is_none() {
            b = Some(spawn("b"));
        }
        if third == 2
            && let Some(mut worker) = b.take()
        {
            rss.insert("ingest b".into(), peak_rss_kib(worker.id()).unwrap_or(0));
            assert!(terminate(&mut worker).success(), "{}", lake.log("b"));
        }
        for job in ["hourly", "daily"] {
            let child = lake
                .firn()
                .env("FIRN_FAULTS", &plan.file)
                .env("FIRN_NOW", now.to_rfc3339())
                .arg("maintain")
                .arg("--job")
                .arg(jobs.join(format!("{job}.toml")))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let (status, peak) = run_watched(child).await;
            let entry = rss.entry(format!("maintain {job}")).or_default();
            *entry = (*entry).max(peak);
            runs += 1;
            if !status.success() {
                // A task that met a storage fault fails the run; the next
                // run does its work.
                failed_runs += 1;
            }
        }
        let ran = started.elapsed().as_secs_f64() / secs as f64;
        now = start + ChronoDuration::seconds((ran.min(1.0) * 20.0 * 86_400.0) as i64);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let report = producing.await.unwrap();
    let catalog = lake.catalog().await;
    lake.wait_for_offsets(
        catalog.as_ref(),
        report.sent as i64,
        Duration::from_secs(600),
    )
    .await;
    rss.insert("ingest a".into(), peak_rss_kib(a.id()).unwrap_or(0));
    assert!(terminate(&mut a).success(), "{}", lake.log("a"));

    // The jobs once more without faults, at the last planning time.
    let before = per_day(catalog.as_ref(), &lake.decl()).await;
    for job in ["hourly", "daily"] {
        let out = lake
            .firn()
            .env("FIRN_NOW", now.to_rfc3339())
            .arg("maintain")
            .arg("--job")
            .arg(jobs.join(format!("{job}.toml")))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
    }
    assert_eq!(per_day(catalog.as_ref(), &lake.decl()).await, before);

    let decl = lake.decl();
    let t = catalog.load(&tables::ident(&decl).unwrap()).await.unwrap();
    let totals = read::totals(&t, &decl).await.unwrap();
    for m in ["requests", "bytes", "cpu_ms"] {
        assert_eq!(
            serde_json::json!(totals.long(&decl, m)),
            report.totals[m],
            "{m} after the soak"
        );
    }
    assert_eq!(
        super::rejects_once(&lake, "soak").await,
        report.malformed,
        "rejects after the soak"
    );

    let mut injected: BTreeMap<String, u64> = BTreeMap::new();
    for t in plan.fired() {
        *injected
            .entry(format!("{} {}", t.fault.unwrap(), t.op))
            .or_default() += 1;
    }
    assert!(!injected.is_empty(), "no fault was injected");
    // Health as an operator sees it now (the wall clock: the last ingest
    // commit is seconds old, and every sealed partition was maintained).
    let status = lake
        .firn()
        .args(["status", "--json", "--no-lag"])
        .output()
        .unwrap();
    let json: Value = serde_json::from_slice(&status.stdout).unwrap_or(Value::Null);
    eprintln!(
        "MEASURE soak {secs}s: {} events, {runs} job runs ({failed_runs} met a fault and failed), \
         faults injected {injected:?}, peak RSS KiB {rss:?}, snapshots {}, status exit {:?}",
        report.sent,
        t.metadata.snapshots().count(),
        status.status.code()
    );
    assert!(
        status.status.success(),
        "firn status is not healthy after the soak: {json:#}\n{}",
        text(&status)
    );
    for (process, kib) in &rss {
        assert!(*kib < 512 * 1024, "{process} peaked at {kib} KiB");
    }
    let leaked = assert_sound(catalog.as_ref(), &decl, "soak").await;
    eprintln!("MEASURE soak: {leaked} files left behind, all deleted by orphan removal");
}
