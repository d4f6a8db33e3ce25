//! `firn audit`: on a lake after ingest, both jobs, late data, a backfill, a
//! replace and another engine's compaction, every commit is accounted for
//! and the per-day totals it prints are the independent readers'; after
//! another engine changes one day's totals, it exits 3 naming that snapshot
//! and that day, also once the history before it has expired.

use std::process::Output;
use std::time::Duration;

use firn::produce::ProduceOptions;
use firn::tables;
use serde_json::Value;

use crate::common::{Broker, Lake, job};
use crate::readers::{ReaderArgs, readers};
use crate::shared_lake::foreign;

/// `firn audit usage.http_requests --json EXTRA...`: its exit code and report.
fn audit(lake: &Lake, extra: &[&str]) -> (i32, Value, Output) {
    let out = lake
        .firn()
        .args(["audit", "usage.http_requests", "--json"])
        .args(extra)
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "audit printed no report ({e}):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), report, out)
}

/// The audit's per-day totals as the readers print them.
fn per_day(report: &Value) -> Value {
    report["days"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["day"].as_str().unwrap().to_string(), d["totals"].clone()))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// Only the sums of per-day totals (what `--trust-summaries` derives
/// exactly).
fn sums_only(per_day: &Value) -> Value {
    per_day
        .as_object()
        .unwrap()
        .iter()
        .map(|(d, t)| {
            let mut t = t.clone();
            t.as_object_mut().unwrap().remove("ttfb_ms_max");
            (d.clone(), t)
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_accounts_for_every_commit_and_names_a_tampered_day() {
    let broker = Broker::start();
    let lake = Lake::new(&broker);
    lake.create_topic(2).await;
    lake.run(&["tables", "sync"]);
    let decl = lake.decl();
    let ten_days = Duration::from_secs(10 * 86_400);

    // Ingest over ten days (rows old enough to roll up), both jobs; the
    // daily job's own audit passes.
    let first = lake
        .produce(ProduceOptions {
            count: 6_000,
            seed: 41,
            spread: ten_days,
            ..Default::default()
        })
        .await;
    let mut worker = lake.spawn_ingest("audit", &[]);
    lake.drain_and_stop(
        &mut worker,
        "audit",
        first.sent as i64,
        Duration::from_secs(300),
    )
    .await;
    lake.run(&["maintain", "--job", &job("hourly.toml")]);
    let first_metrics = lake.path().join("firn-daily-first.prom");
    let daily = lake.run(&[
        "maintain",
        "--job",
        &job("daily.toml"),
        "--metrics-file",
        first_metrics.to_str().unwrap(),
    ]);
    assert!(daily.contains("audit"), "{daily}");
    let metrics = std::fs::read_to_string(&first_metrics).unwrap();
    assert_eq!(
        crate::operate::sample(
            &metrics,
            "firn_audit_inconsistent_days",
            &[("table", "usage.http_requests")]
        ),
        Some(0.0),
        "{metrics}"
    );

    // Late data into compacted and rolled-up days, and the hourly job again.
    let late = lake
        .produce(ProduceOptions {
            count: 2_000,
            seed: 42,
            spread: ten_days,
            ..Default::default()
        })
        .await;
    let mut worker = lake.spawn_ingest("audit-late", &[]);
    lake.drain_and_stop(
        &mut worker,
        "audit-late",
        (first.sent + late.sent) as i64,
        Duration::from_secs(300),
    )
    .await;
    lake.run(&["maintain", "--job", &job("hourly.toml")]);

    // A backfill over twenty days, and a replace of one day.
    let data = tempfile::tempdir().unwrap();
    let file = data.path().join("history.ndjson.gz");
    lake.run(&[
        "produce",
        "--count",
        "3000",
        "--seed",
        "43",
        "--spread",
        "20d",
        "--to-file",
        file.to_str().unwrap(),
    ]);
    lake.run(&[
        "backfill",
        "usage.http_requests",
        "--input",
        file.to_str().unwrap(),
    ]);
    let day = chrono::Utc::now().date_naive() - chrono::Duration::days(3);
    let fixed = data.path().join("fixed.ndjson");
    crate::backfill::day_file(&fixed, &decl, day, 800, 44);
    let (from, to) = (day.to_string(), day.succ_opt().unwrap().to_string());
    lake.run(&[
        "backfill",
        "usage.http_requests",
        "--replace",
        "--input",
        fixed.to_str().unwrap(),
        "--from",
        &from,
        "--to",
        &to,
    ]);

    // Another engine's compaction: every file rewritten, the same totals.
    foreign(&lake, "rewrite-all", None);

    let reader = ReaderArgs {
        args: vec![
            "--catalog-uri".into(),
            format!("sqlite:///{}", lake.path().join("catalog.db").display()),
            "--warehouse".into(),
            format!(
                "file://{}",
                std::fs::canonicalize(lake.path().join("warehouse"))
                    .unwrap()
                    .display()
            ),
        ],
        envs: Vec::new(),
    };
    let theirs = readers(&reader, &decl);
    let (code, report, out) = audit(&lake, &[]);
    assert_eq!(
        code,
        0,
        "{report:#}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(report["consistent"], true);
    assert_eq!(report["mode"], "full");
    for which in ["pyiceberg", "duckdb"] {
        assert_eq!(per_day(&report), theirs[which]["per_day"], "{which}");
    }
    let verdicts: Vec<(String, String)> = report["commits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let op = match c["firn"].as_bool().unwrap() {
                true => c["operation"].as_str().unwrap(),
                false => "another engine's",
            };
            (op.to_string(), c["verdict"].as_str().unwrap().to_string())
        })
        .collect();
    for (op, verdict) in [
        ("ingest", "added"),
        ("compact", "conserved"),
        ("rollup", "conserved"),
        ("backfill", "added"),
        ("backfill-replace", "replaced"),
        ("another engine's", "conserved"),
    ] {
        assert!(
            verdicts.contains(&(op.to_string(), verdict.to_string())),
            "no {op} commit judged {verdict}: {verdicts:?}"
        );
    }
    // Every firn data commit states its totals by day.
    let ident = tables::ident(&decl).unwrap();
    let catalog = lake.catalog().await;
    let table = catalog.load(&ident).await.unwrap();
    for s in table.metadata.snapshots() {
        let props = &s.summary().additional_properties;
        if props.contains_key("firn.operation") && props.contains_key("added-data-files") {
            assert!(
                props.contains_key("firn.totals.added-by-day"),
                "snapshot {} ({:?}) states no totals",
                s.snapshot_id(),
                props.get("firn.operation")
            );
        }
    }

    // Trusting the summaries: the same sums, most files not read.
    let (code, trusted, _) = audit(&lake, &["--trust-summaries"]);
    assert_eq!(code, 0, "{trusted:#}");
    assert_eq!(
        sums_only(&per_day(&trusted)),
        sums_only(&theirs["pyiceberg"]["per_day"])
    );
    assert!(
        trusted["files_read"].as_u64() < report["files_read"].as_u64(),
        "trusted {} files, full {}",
        trusted["files_read"],
        report["files_read"]
    );

    // Another engine doubles one hour's requests: exit 3, naming its
    // snapshot and day.
    let hour = format!("{day}T12:00:00Z");
    foreign(&lake, "double-hour", Some(&hour));
    let tampered = catalog
        .load(&ident)
        .await
        .unwrap()
        .metadata
        .current_snapshot_id()
        .unwrap();
    let (code, report, out) = audit(&lake, &[]);
    assert_eq!(code, 3, "{report:#}");
    assert_eq!(report["consistent"], false);
    let finding = &report["findings"][0];
    assert_eq!(finding["snapshot_id"], tampered, "{finding}");
    assert_eq!(finding["check"], "foreign-change", "{finding}");
    assert_eq!(finding["delta"]["day"], from, "{finding}");
    assert_eq!(finding["delta"]["measure"], "requests", "{finding}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&tampered.to_string()) && err.contains(&from),
        "{err}"
    );
    assert!(report["inconsistent_days"].as_u64().unwrap() >= 1);
    // Only that day differs from what the history accounts for.
    for f in report["findings"].as_array().unwrap() {
        if let Some(d) = f["delta"]["day"].as_str() {
            assert_eq!(d, from, "{f}");
        }
    }
    // The terminal report says the same.
    let text = lake
        .firn()
        .args(["audit", "usage.http_requests"])
        .output()
        .unwrap();
    assert_eq!(text.status.code(), Some(3));
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("INCONSISTENT") && text.contains(&from),
        "{text}"
    );

    // Allowed, the change is listed and accounted: consistent.
    let (code, allowed, _) = audit(&lake, &["--allow-foreign-changes"]);
    assert_eq!(code, 0, "{allowed:#}");
    assert_eq!(allowed["foreign_changes"][0]["snapshot_id"], tampered);
    assert_eq!(
        per_day(&allowed),
        readers(&reader, &decl)["duckdb"]["per_day"]
    );

    // `firn status` shows the last audit (the allowed one: consistent).
    let status: Value = serde_json::from_str(&lake.run(&[
        "status",
        "usage.http_requests",
        "--no-lag",
        "--no-orphans",
        "--json",
    ]))
    .unwrap();
    assert_eq!(status[0]["audit"]["consistent"], true, "{status:#}");

    // Once every snapshot before the tamper has expired, the tamper is
    // still found: the baseline is what it started from.
    foreign(&lake, "expire-all-but-current", None);
    let (code, report, _) = audit(&lake, &[]);
    assert_eq!(code, 3, "{report:#}");
    assert_eq!(report["snapshots"], 1);
    assert_eq!(report["findings"][0]["snapshot_id"], tampered);
    assert_eq!(report["findings"][0]["delta"]["day"], from);
    let status = lake
        .firn()
        .args(["status", "usage.http_requests", "--no-lag", "--no-orphans"])
        .output()
        .unwrap();
    assert_eq!(
        status.status.code(),
        Some(2),
        "an inconsistent audit is unhealthy"
    );
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("audit: INCONSISTENT"), "{text}");

    // The daily job audits last: its run fails and its metrics say how many
    // days are inconsistent.
    let textfile = lake.path().join("firn-daily.prom");
    let out = lake
        .firn()
        .args(["maintain", "--job", &job("daily.toml"), "--metrics-file"])
        .arg(&textfile)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "the daily job passed an inconsistent table"
    );
    let metrics = std::fs::read_to_string(&textfile).unwrap();
    let days = crate::operate::sample(
        &metrics,
        "firn_audit_inconsistent_days",
        &[("table", "usage.http_requests")],
    );
    assert!(days.is_some_and(|d| d >= 1.0), "{metrics}");
    assert_eq!(
        crate::operate::sample(&metrics, "firn_job_success", &[]),
        Some(0.0),
        "{metrics}"
    );
}
