//! Staged backfills (write-audit-publish): a staged `--replace` of one day
//! leaves main as it was, PyIceberg reads the new totals on the branch and
//! the report shows the difference; `publish` makes main's day the branch's
//! and leaves every other day; a publish after ingest committed meanwhile
//! keeps the ingest's rows; `discard` leaves no files behind.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::NaiveDate;
use firn::produce::ProduceOptions;
use firn::rows::{MeasureValue, Measures};
use firn::tables;
use serde_json::Value;

use super::{day_file, totals};
use crate::common::{Broker, Lake};
use crate::shared_lake::foreign;

fn requests(m: &Measures) -> i64 {
    match m.0[0] {
        MeasureValue::Long(v) => v.unwrap_or(0),
        MeasureValue::Double(v) => v.unwrap_or(0.0) as i64,
    }
}

/// Per-day requests as PyIceberg reads main (`None`) or a ref.
fn pyiceberg_requests(lake: &Lake, r#ref: Option<&str>) -> BTreeMap<String, i64> {
    let sums = foreign(lake, "day-sums", r#ref);
    sums.into_iter()
        .map(|(d, s)| (d, s["requests"].as_i64().unwrap()))
        .collect()
}

fn staged_replace(lake: &Lake, input: &std::path::Path, day: NaiveDate) -> Value {
    let (from, to) = (day.to_string(), day.succ_opt().unwrap().to_string());
    serde_json::from_str(&lake.run(&[
        "backfill",
        "usage.http_requests",
        "--replace",
        "--stage",
        "--input",
        input.to_str().unwrap(),
        "--from",
        &from,
        "--to",
        &to,
    ]))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staged_replace_is_read_on_its_branch_then_published_or_discarded() {
    let broker = Broker::start();
    let lake = Lake::new(&broker);
    lake.create_topic(2).await;
    lake.run(&["tables", "sync"]);
    let decl = lake.decl();
    let data = tempfile::tempdir().unwrap();
    let today = chrono::Utc::now().date_naive();
    let day = |n: i64| today - chrono::Duration::days(n);
    for n in [5, 4, 3, 2] {
        day_file(
            &data.path().join(format!("d{n}.ndjson")),
            &decl,
            day(n),
            2_000,
            n as u64,
        );
    }
    lake.run(&[
        "backfill",
        "usage.http_requests",
        "--input",
        &format!("{}/d*.ndjson", data.path().display()),
    ]);
    let before = totals(&lake).await;

    // Stage a replace of day 3: main is unchanged, the branch holds the
    // new day, and the report says how they differ (only on day 3).
    let fixed = day_file(&data.path().join("fixed3.ndjson"), &decl, day(3), 700, 33);
    let staged = staged_replace(&lake, &data.path().join("fixed3.ndjson"), day(3));
    let branch = staged["staged"]["branch"].as_str().unwrap().to_string();
    assert!(branch.starts_with("backfill/"), "{staged:#}");
    let differences = staged["staged"]["differences"].as_array().unwrap();
    assert!(!differences.is_empty(), "{staged:#}");
    for d in differences {
        assert_eq!(d["day"], day(3).to_string(), "{d}");
    }
    let req = differences
        .iter()
        .find(|d| d["measure"] == "requests")
        .unwrap();
    assert_eq!(req["main"], requests(&before.per_day[&day(3)]).to_string());
    assert_eq!(req["branch"], requests(&fixed).to_string());
    assert_eq!(
        totals(&lake).await,
        before,
        "a staged backfill changed main"
    );
    let on_branch = pyiceberg_requests(&lake, Some(&branch));
    assert_eq!(on_branch[&day(3).to_string()], requests(&fixed));
    for n in [5, 4, 2] {
        assert_eq!(
            on_branch[&day(n).to_string()],
            requests(&before.per_day[&day(n)]),
            "day {n} on the branch"
        );
    }
    assert_eq!(
        pyiceberg_requests(&lake, None)[&day(3).to_string()],
        requests(&before.per_day[&day(3)]),
        "PyIceberg's main"
    );

    // Expiry and orphan removal keep everything the branch reaches.
    lake.run(&[
        "expire-snapshots",
        "usage.http_requests",
        "--older-than",
        "0s",
        "--retain-last",
        "1",
    ]);
    lake.run(&[
        "remove-orphans",
        "usage.http_requests",
        "--older-than",
        "0s",
        "--force",
    ]);
    assert_eq!(pyiceberg_requests(&lake, Some(&branch)), on_branch);

    // Published while main has not moved: a fast-forward.
    let out = lake.run(&["publish", "usage.http_requests", &branch]);
    assert!(out.contains("fast-forward"), "{out}");
    let after = totals(&lake).await;
    assert_eq!(after.per_day[&day(3)], fixed);
    for n in [5, 4, 2] {
        assert_eq!(after.per_day[&day(n)], before.per_day[&day(n)], "day {n}");
    }
    let catalog = lake.catalog().await;
    let ident = tables::ident(&decl).unwrap();
    let refs = |t: &firn::catalog::TableHandle| -> Vec<String> {
        firn::maintain::refs::refs(&t.metadata)
            .unwrap()
            .into_keys()
            .collect()
    };
    assert_eq!(refs(&catalog.load(&ident).await.unwrap()), ["main"]);
    // The same backfill is finished on main: staging it again is refused.
    let again = lake
        .firn()
        .args([
            "backfill",
            "usage.http_requests",
            "--replace",
            "--stage",
            "--input",
        ])
        .arg(data.path().join("fixed3.ndjson"))
        .args(["--from", &day(3).to_string(), "--to", &day(2).to_string()])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already committed"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    // Staged, then ingest commits to main meanwhile: publish re-applies the
    // replace on main's current files and keeps the ingest's rows.
    let fixed4 = day_file(&data.path().join("fixed4.ndjson"), &decl, day(4), 500, 44);
    let staged = staged_replace(&lake, &data.path().join("fixed4.ndjson"), day(4));
    let branch = staged["staged"]["branch"].as_str().unwrap().to_string();
    let live = lake
        .produce(ProduceOptions {
            count: 3_000,
            seed: 45,
            spread: Duration::from_secs(600),
            ..Default::default()
        })
        .await;
    let mut worker = lake.spawn_ingest("stage", &["--reset-offsets", "earliest"]);
    lake.drain_and_stop(
        &mut worker,
        "stage",
        live.sent as i64,
        Duration::from_secs(300),
    )
    .await;
    let ingested = totals(&lake).await;
    let out = lake.run(&["publish", "usage.http_requests", &branch]);
    assert!(out.contains("re-applied"), "{out}");
    let after = totals(&lake).await;
    assert_eq!(after.per_day[&day(4)], fixed4);
    for (d, m) in &ingested.per_day {
        if *d != day(4) {
            assert_eq!(&after.per_day[d], m, "{d} after the publish");
        }
    }
    assert_eq!(
        after.long(&decl, "requests"),
        ingested.long(&decl, "requests") - requests(&ingested.per_day[&day(4)]) + requests(&fixed4),
        "the ingest's rows are kept"
    );
    assert_eq!(refs(&catalog.load(&ident).await.unwrap()), ["main"]);

    // Staged and discarded: the branch's files are deleted, main is as it
    // was, and orphan removal finds nothing of it.
    day_file(&data.path().join("extra.ndjson"), &decl, day(6), 400, 46);
    let staged: Value = serde_json::from_str(&lake.run(&[
        "backfill",
        "usage.http_requests",
        "--stage",
        "--input",
        data.path().join("extra.ndjson").to_str().unwrap(),
    ]))
    .unwrap();
    let branch = staged["staged"]["branch"].as_str().unwrap().to_string();

    let table = catalog.load(&ident).await.unwrap();
    let on_branch = firn::maintain::state::load(&table.on_branch(&branch).unwrap())
        .await
        .unwrap();
    let on_main = firn::maintain::state::load(&table).await.unwrap();
    let only_branch: Vec<String> = on_branch
        .files
        .iter()
        .filter(|f| !on_main.files.iter().any(|m| m.path == f.path))
        .map(|f| f.path.clone())
        .collect();
    assert!(!only_branch.is_empty());
    assert_eq!(
        staged["staged"]["files_only_on_branch"].as_u64(),
        Some(only_branch.len() as u64),
        "{staged:#}"
    );
    for p in &only_branch {
        assert!(table.file_io.exists(p).await.unwrap(), "{p}");
    }
    let out = lake.run(&["discard", "usage.http_requests", &branch]);
    assert!(out.contains("discarded"), "{out}");
    let table = catalog.load(&ident).await.unwrap();
    assert_eq!(refs(&table), ["main"]);
    for p in &only_branch {
        assert!(!table.file_io.exists(p).await.unwrap(), "{p} is left");
    }
    assert_eq!(totals(&lake).await, after);
    let orphans: Value = serde_json::from_str(&lake.run(&[
        "remove-orphans",
        "usage.http_requests",
        "--older-than",
        "0s",
        "--force",
        "--dry-run",
    ]))
    .unwrap();
    let listed: Vec<&str> = orphans["orphans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["location"].as_str().unwrap())
        .collect();
    assert!(
        !listed.iter().any(|l| l.contains("/data/")),
        "data files left behind: {listed:?}"
    );
    // The whole history audits consistent.
    let audit = lake.run(&["audit", "usage.http_requests", "--json"]);
    let audit: Value = serde_json::from_str(&audit).unwrap();
    assert_eq!(audit["consistent"], true, "{audit:#}");
}
