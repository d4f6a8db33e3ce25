//! Compaction and rollup on real tables: racing live ingest from tansu, and
//! killed at random moments.

use std::time::{Duration, Instant};

use chrono::{Duration as ChronoDuration, Utc};
use firn::catalog::Catalog;
use firn::commit::{self, Change, FirnOperation, RetryPolicy};
use firn::maintain::state::{self, TableState};
use firn::produce::ProduceOptions;
use firn::rows::{DimValue, MeasureSpec, MeasureValue, RowKey, RowMap};
use firn::schema::decl::TableDecl;
use firn::schema::layout::Grain;
use firn::{read, tables, write};
use rand::Rng;

use crate::common::{Broker, Lake, terminate};

const TARGET: u64 = 128 << 20;

/// The layout the policy promises after a rollup and a compaction at `now`:
/// sealed minute partitions hold at most one file per target size, hour rows
/// of a day one file, day rows of a month one file, and nothing is left at a
/// finer grain than the policy wants.
fn assert_layout(s: &TableState, decl: &TableDecl, now_micros: i64) {
    let mut per: std::collections::BTreeMap<(Grain, i32), (usize, u64)> = Default::default();
    for f in &s.files {
        let e = per.entry((f.grain, f.partition)).or_default();
        e.0 += 1;
        e.1 += f.bytes;
    }
    for ((grain, p), (files, bytes)) in per {
        let due = firn::maintain::plan::due_grain(&decl.policy, now_micros, grain, p);
        assert_eq!(
            due, grain,
            "{grain:?} partition {p} should have been rolled up to {due:?}"
        );
        let sealed = grain.partition_bounds(p).1 + 3_600_000_000 <= now_micros;
        if grain != Grain::Minute || sealed {
            assert!(
                files as u64 <= bytes.div_ceil(TARGET).max(1),
                "{grain:?} partition {p}: {files} files for {bytes} bytes"
            );
        }
    }
}

fn parse_report(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("bad report {e}: {out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollup_and_compaction_racing_live_ingest_keep_totals_exact() {
    let broker = Broker::start();
    let lake = Lake::new(&broker);
    lake.create_topic(4).await;
    lake.run(&["tables", "sync"]);
    let catalog = lake.catalog().await;

    // Events spread over ten days: days older than seven are rolled up while
    // late events for them keep arriving.
    let producing = lake.produce_in_background(ProduceOptions {
        count: 200_000,
        rate: Some(2_000),
        seed: 21,
        spread: Duration::from_secs(10 * 86_400),
        accounts: 50,
        ..Default::default()
    });
    // Late events for ten days touch many partitions per flush: flush every
    // five seconds, as a deployment with late data would.
    let mut worker = lake.spawn_ingest_every("a", "5s", &[]);

    let mut retries = 0u64;
    let mut runs = 0;
    let mut committed = 0u64;
    while !producing.is_finished() {
        for cmd in [
            &[
                "compact",
                "usage.http_requests",
                "--seal-delay",
                "0s",
                "--json",
            ][..],
            &["rollup", "usage.http_requests", "--json"],
        ] {
            let out = lake.run(cmd);
            let cmd = cmd[0];
            let r = parse_report(&out);
            assert_eq!(r["failed"], 0, "{cmd}: {out}");
            retries += r["retries"].as_u64().unwrap();
            committed += r["committed"].as_u64().unwrap();
            runs += 1;
        }
    }
    let report = producing.await.unwrap();
    eprintln!("produced in {:.0}s", report.seconds);
    let waited = Instant::now();
    lake.wait_for_offsets(
        catalog.as_ref(),
        report.sent as i64,
        Duration::from_secs(600),
    )
    .await;
    eprintln!(
        "caught up {:.0}s after the producer finished",
        waited.elapsed().as_secs_f64()
    );
    assert!(terminate(&mut worker).success(), "{}", lake.log("a"));
    eprintln!(
        "MEASURE {runs} compact/rollup runs beside live ingest: {committed} commits, {retries} commit retries"
    );
    assert!(committed > 0, "the maintenance runs had nothing to do");

    let decl = lake.decl();
    let ident = tables::ident(&decl).unwrap();
    let check = |totals: &read::Totals| {
        for m in &decl.measures {
            assert_eq!(
                serde_json::json!(totals.long(&decl, &m.name)),
                report.totals[&m.name],
                "measure {}",
                m.name
            );
        }
    };
    let table = catalog.load(&ident).await.unwrap();
    check(&read::totals(&table, &decl).await.unwrap());

    // A final pass leaves the layout the policy promises, totals unchanged.
    lake.run(&["rollup", "usage.http_requests"]);
    lake.run(&["compact", "usage.http_requests", "--seal-delay", "0s"]);
    let table = catalog.load(&ident).await.unwrap();
    check(&read::totals(&table, &decl).await.unwrap());
    let s = state::load(&table).await.unwrap();
    assert!(s.files.iter().any(|f| f.grain == Grain::Hour));
    assert_layout(&s, &decl, Utc::now().timestamp_micros());
    let status: serde_json::Value = serde_json::from_str(&lake.run(&["status", "--json"])).unwrap();
    let rows: u64 = ["minute", "hour", "day"]
        .iter()
        .map(|g| status[0]["grains"][g]["rows"].as_u64().unwrap())
        .sum();
    assert_eq!(rows, read::totals(&table, &decl).await.unwrap().rows);
    assert!(status[0]["grains"]["hour"]["bytes"].as_u64().unwrap() > 0);
}

/// Minute files for `days` days ending `until_days_ago` days ago, `per_hour`
/// files per hour partition. Returns the table's totals after the appends.
async fn seed_minute_files(
    catalog: &dyn Catalog,
    decl: &TableDecl,
    days: i64,
    until_days_ago: i64,
    per_hour: usize,
) -> read::Totals {
    let ident = tables::ident(decl).unwrap();
    let spec = MeasureSpec::new(decl);
    let start = Utc::now() - ChronoDuration::days(until_days_ago + days);
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(5);
    let mut files = Vec::new();
    for h in 0..days * 24 {
        for _ in 0..per_hour {
            let table = catalog.load(&ident).await.unwrap();
            let mut rows = RowMap::default();
            for _ in 0..300 {
                let ts = start
                    + ChronoDuration::hours(h)
                    + ChronoDuration::minutes(rng.random_range(0..60));
                let key = RowKey {
                    dims: vec![
                        DimValue::Long(rng.random_range(1..40)),
                        DimValue::Long(rng.random_range(1..5)),
                        DimValue::Str("AMS".into()),
                        DimValue::Str(["cdn", "waf"][rng.random_range(0..2)].into()),
                    ],
                    ts_micros: Grain::Minute.truncate(ts.timestamp_micros()),
                };
                let v = rng.random_range(0..10_000);
                rows.add_event(
                    &spec,
                    key,
                    &[
                        None,
                        Some(MeasureValue::Long(Some(v))),
                        Some(MeasureValue::Long(Some(v % 97))),
                        Some(MeasureValue::Long(Some(v % 1000))),
                    ],
                );
            }
            files.extend(
                write::write_rows(
                    &table,
                    decl,
                    Grain::Minute,
                    rows.sorted(&firn::rows::MeasureSpec::new(decl)),
                    TARGET as usize,
                )
                .await
                .unwrap(),
            );
        }
        if h % 6 == 5 {
            let batch = std::mem::take(&mut files);
            commit::commit(
                catalog,
                &ident,
                &Change::append(FirnOperation::Backfill, batch),
                RetryPolicy::default(),
            )
            .await
            .unwrap();
        }
    }
    let table = catalog.load(&ident).await.unwrap();
    read::totals(&table, decl).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_rollups_leave_every_snapshot_exact() {
    let lake = Lake::without_broker();
    lake.run(&["tables", "sync"]);
    let catalog = lake.catalog().await;
    let decl = lake.decl();
    let ident = tables::ident(&decl).unwrap();
    let expected = seed_minute_files(catalog.as_ref(), &decl, 12, 9, 2).await;
    let seeded = catalog.load(&ident).await.unwrap();
    let seeded_snapshots: std::collections::BTreeSet<i64> = seeded
        .metadata
        .snapshots()
        .map(|s| s.snapshot_id())
        .collect();

    let seed: u64 = rand::rng().random();
    eprintln!("kill schedule seed {seed}");
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
    let mut checked = std::collections::BTreeSet::new();
    // A round killed before its first commit (a loaded machine starts the
    // process slowly) widens the next round's window.
    let mut scale = 1u64;
    for round in 0..6 {
        let mut child = lake
            .firn()
            .args(["rollup", "usage.http_requests"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let wait = Duration::from_millis(rng.random_range(150..1_500) * scale);
        let checked_before = checked.len();
        let started = Instant::now();
        let finished = loop {
            if child.try_wait().unwrap().is_some() {
                break true;
            }
            if started.elapsed() >= wait {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        if !finished {
            child.kill().unwrap();
        }
        child.wait().unwrap();

        // Every snapshot since the seed holds the same totals.
        let table = catalog.load(&ident).await.unwrap();
        for s in table.metadata.snapshots() {
            let id = s.snapshot_id();
            if seeded_snapshots.contains(&id) || !checked.insert(id) {
                continue;
            }
            let t = read::totals_at(&table, &decl, Some(id)).await.unwrap();
            assert_eq!(t.all, expected.all, "snapshot {id} (round {round})");
            assert_eq!(t.per_day, expected.per_day, "snapshot {id} (round {round})");
        }
        eprintln!(
            "round {round}: killed {}, {} rollup snapshots checked so far",
            !finished,
            checked.len()
        );
        if finished {
            break;
        }
        if checked.len() == checked_before {
            scale *= 2;
        }
    }
    // Finish the job; the layout is what the policy says.
    lake.run(&["rollup", "usage.http_requests"]);
    let table = catalog.load(&ident).await.unwrap();
    assert!(
        checked.len() >= 3,
        "too few rollup commits were checked: {checked:?}"
    );
    let t = read::totals(&table, &decl).await.unwrap();
    assert_eq!(t.per_day, expected.per_day);
    let s = state::load(&table).await.unwrap();
    assert_layout(&s, &decl, Utc::now().timestamp_micros());
    assert!(s.files.iter().any(|f| f.grain == Grain::Hour));
    assert_eq!(
        s.files.iter().filter(|f| f.grain == Grain::Minute).count(),
        0,
        "every seeded day is older than the policy's 7 days"
    );
}

/// A merge that loses a row (the fault plan's `drop_row`: a stand-in for
/// any bug in the merge) is refused before its commit: the run fails naming
/// the partition and the measure, and the table is left as it was. The same
/// run without the fault then rolls the days up with the same totals.
#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_merge_is_refused_and_the_table_is_left_as_it_was() {
    let lake = Lake::without_broker();
    lake.run(&["tables", "sync"]);
    let catalog = lake.catalog().await;
    let decl = lake.decl();
    let ident = tables::ident(&decl).unwrap();
    let expected = seed_minute_files(catalog.as_ref(), &decl, 2, 9, 2).await;
    let before = catalog.load(&ident).await.unwrap();
    let before_id = before.metadata.current_snapshot_id();

    let plan = lake.path().join("faults.toml");
    std::fs::write(
        &plan,
        "seed = 1\n[[rule]]\nop = \"merge\"\nfault = \"drop_row\"\nprobability = 1.0\n",
    )
    .unwrap();
    for jobs in ["1", "2"] {
        let out = lake
            .firn()
            .args(["rollup", "usage.http_requests", "--jobs", jobs])
            .env("FIRN_FAULTS", &plan)
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "a wrong merge was committed:\n{log}");
        assert!(
            log.contains("refusing to commit the rollup of table usage.http_requests into hour rows of ts_day [")
                && log.contains("measure `requests` totals"),
            "the refusal names the partition and the measure:\n{log}"
        );
        let after = catalog.load(&ident).await.unwrap();
        assert_eq!(
            after.metadata.current_snapshot_id(),
            before_id,
            "the table is left as it was"
        );
    }
    let totals = read::totals_at(&catalog.load(&ident).await.unwrap(), &decl, None)
        .await
        .unwrap();
    assert_eq!(totals.per_day, expected.per_day);

    lake.run(&["rollup", "usage.http_requests"]);
    let table = catalog.load(&ident).await.unwrap();
    assert_ne!(table.metadata.current_snapshot_id(), before_id);
    let st = state::load(&table).await.unwrap();
    assert!(st.files.iter().all(|f| f.grain == Grain::Hour), "rolled up");
    let totals = read::totals_at(&table, &decl, None).await.unwrap();
    assert_eq!(totals.all, expected.all);
    assert_eq!(totals.per_day, expected.per_day);
    // The rollup's snapshots state what they added and removed: the same.
    let added = crate::common::summary_totals(&table, "rollup", "firn.totals.added", "hour");
    let removed = crate::common::summary_totals(&table, "rollup", "firn.totals.removed", "minute");
    assert_eq!(added, removed);
    for m in ["requests", "bytes", "cpu_ms"] {
        assert_eq!(added[m], totals.long(&decl, m) as i128, "{m}");
    }
}

/// A rollup of more files than a merge opens at once (144 minute files over
/// a day or two, at least 72 in one: merged 64 at a time into spilled runs, then the runs), after
/// the declaration gained a measure the files were written without: every
/// total is kept, the new measure is null in the old rows, and a wrong
/// merge is still refused through the spilled runs.
#[tokio::test(flavor = "multi_thread")]
async fn a_rollup_of_many_files_after_a_new_measure_keeps_every_total() {
    let lake = Lake::without_broker();
    lake.run(&["tables", "sync"]);
    let catalog = lake.catalog().await;
    let ident = tables::ident(&lake.decl()).unwrap();
    let expected = seed_minute_files(catalog.as_ref(), &lake.decl(), 1, 9, 6).await;
    let mut per_day = std::collections::BTreeMap::<i32, usize>::new();
    for f in state::load(&catalog.load(&ident).await.unwrap())
        .await
        .unwrap()
        .files
    {
        let day = f.partition_bounds().0.div_euclid(86_400_000_000) as i32;
        *per_day.entry(day).or_default() += 1;
    }
    let most = per_day.values().max().copied().unwrap_or(0);
    assert!(
        most > 64,
        "{most} files in a day: more than one merge's fan-in"
    );

    let schema = lake.path().join("schemas/usage.http_requests.toml");
    let text = std::fs::read_to_string(&schema).unwrap().replace(
        "[policy]",
        "[[measure]]\nname = \"errors\"\nagg = \"sum\"\nfield = \"errors\"\ntype = \"long\"\n\
         optional = true\n\n[policy]",
    );
    std::fs::write(&schema, text).unwrap();
    lake.run(&["tables", "sync"]);
    let decl = lake.decl();
    assert_eq!(decl.measures.len(), 5);

    let plan = lake.path().join("faults.toml");
    std::fs::write(
        &plan,
        "seed = 1\n[[rule]]\nop = \"merge\"\nfault = \"drop_row\"\nprobability = 1.0\n",
    )
    .unwrap();
    let before = catalog.load(&ident).await.unwrap();
    let out = lake
        .firn()
        .args(["rollup", "usage.http_requests"])
        .env("FIRN_FAULTS", &plan)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && log.contains("refusing to commit the rollup"),
        "a wrong merge of spilled runs was committed:\n{log}"
    );
    assert_eq!(
        catalog
            .load(&ident)
            .await
            .unwrap()
            .metadata
            .current_snapshot_id(),
        before.metadata.current_snapshot_id()
    );

    lake.run(&["rollup", "usage.http_requests"]);
    let table = catalog.load(&ident).await.unwrap();
    let st = state::load(&table).await.unwrap();
    assert!(st.files.iter().all(|f| f.grain == Grain::Hour), "rolled up");
    assert_eq!(st.files.len(), per_day.len(), "one file a day");
    let totals = read::totals(&table, &decl).await.unwrap();
    assert_eq!(totals.all.0[..4], expected.all.0[..]);
    assert_eq!(
        totals.all.0[4],
        MeasureValue::Long(Some(0)),
        "the new measure: no value in any row (a sum of none)"
    );
    for (day, m) in &expected.per_day {
        assert_eq!(totals.per_day[day].0[..4], m.0[..], "{day}");
    }
}
