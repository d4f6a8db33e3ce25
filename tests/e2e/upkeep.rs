//! Table upkeep: snapshot expiry over random histories, orphan removal,
//! manifest rewrites after many small appends, and maintenance jobs (run
//! twice, and sharded).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chrono::{DateTime, Duration as ChronoDuration, TimeZone, Utc};
use firn::catalog::Catalog;
use firn::clock::Span;
use firn::commit::manifests::partition_ordinal;
use firn::commit::{self, Change, FirnOperation, RetryPolicy};
use firn::maintain::expire::{self, ExpireSnapshotsOptions, Selection};
use firn::maintain::orphans::{self, RemoveOrphansOptions};
use firn::maintain::tier::{CompactOptions, RollupOptions};
use firn::maintain::{self, Context, Operation, manifests, reach};
use firn::read::{self, Totals};
use firn::rows::{DimValue, MeasureSpec, MeasureValue, RowKey, RowMap};
use firn::schema::decl::TableDecl;
use firn::schema::layout::Grain;
use firn::{ErrorKind, tables, write};
use proptest::prelude::*;

use crate::common::{Lake, local_lake};

/// Append `n` events spread over the hours before `now`; returns the commit.
pub(crate) async fn append(
    catalog: &dyn Catalog,
    decl: &TableDecl,
    now: DateTime<Utc>,
    seed: u64,
    n: u32,
    hours: i64,
) -> i64 {
    let spec = MeasureSpec::new(decl);
    let mut rows = RowMap::default();
    for i in 0..n as u64 {
        let x = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(i.wrapping_mul(1442695040888963407));
        let ts = now - ChronoDuration::minutes(1 + (x % (hours as u64 * 60)) as i64);
        rows.add_event(
            &spec,
            RowKey {
                dims: vec![
                    DimValue::Long((x % 3) as i64),
                    DimValue::Long(1),
                    DimValue::Str("AMS".into()),
                    DimValue::Str("cdn".into()),
                ],
                ts_micros: Grain::Minute.truncate(ts.timestamp_micros()),
            },
            &[
                None,
                Some(MeasureValue::Long(Some((x % 1000) as i64))),
                Some(MeasureValue::Long(Some((x % 7) as i64))),
                Some(MeasureValue::Long(Some((x % 300) as i64))),
            ],
        );
    }
    crate::common::append_minute_rows(catalog, decl, rows).await
}

/// Totals without the row count (which compaction and rollup change).
fn measures_only(mut t: Totals) -> Totals {
    t.rows = 0;
    t
}

#[derive(Debug, Clone)]
enum Op {
    Append(u64, u32),
    Compact,
    Rollup,
    Rewrite,
    Expire {
        cutoff_pick: usize,
        retain_last: usize,
    },
    AdvanceDays(u32),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any::<u64>(), 1u32..40).prop_map(|(s, n)| Op::Append(s, n)),
        1 => Just(Op::Compact),
        1 => Just(Op::Rollup),
        1 => Just(Op::Rewrite),
        3 => (any::<usize>(), 1usize..4).prop_map(|(c, r)| Op::Expire { cutoff_pick: c, retain_last: r }),
        1 => (1u32..12).prop_map(Op::AdvanceDays),
    ]
}

async fn expiry_history(ops: Vec<Op>) {
    let (_dir, catalog, decl) = local_lake().await;
    let ident = tables::ident(&decl).unwrap();
    let mut now = Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap();
    // Totals each snapshot must read with (no op here changes totals but appends).
    let mut expected: BTreeMap<i64, Totals> = BTreeMap::new();
    for op in &ops {
        let table = catalog.load(&ident).await.unwrap();
        let before_totals = measures_only(read::totals(&table, &decl).await.unwrap());
        let ctx = Context::new(catalog.as_ref(), now);
        match op {
            Op::Append(seed, n) => {
                append(catalog.as_ref(), &decl, now, *seed, *n, 24 * 10).await;
            }
            Op::Compact | Op::Rollup => {
                let op = if matches!(op, Op::Compact) {
                    Operation::Compact(CompactOptions::default())
                } else {
                    Operation::Rollup(RollupOptions::default())
                };
                let r = op.run(&ctx, &decl).await.unwrap();
                assert_eq!(r.failure(), None);
            }
            Op::Rewrite => {
                let op = Operation::RewriteManifests(Default::default());
                op.run(&ctx, &decl).await.unwrap();
            }
            Op::Expire {
                cutoff_pick,
                retain_last,
            } => {
                let mut times: Vec<i64> = table
                    .metadata
                    .snapshots()
                    .map(|s| s.timestamp_ms())
                    .collect();
                times.sort_unstable();
                let cutoff = times
                    .get(cutoff_pick % (times.len() + 1))
                    .copied()
                    .unwrap_or_else(|| (Utc::now() + ChronoDuration::days(1)).timestamp_millis());
                let sel = Selection {
                    now: Utc::now(),
                    older_than: DateTime::from_timestamp_millis(cutoff).unwrap(),
                    retain_last: *retain_last,
                    expire_refs: false,
                };
                let retry = RetryPolicy::default();
                let r = expire::expire(catalog.as_ref(), &ident, &sel, false, retry)
                    .await
                    .unwrap();
                assert_eq!(r.failed_deletes, 0);
                eprintln!(
                    "MEASURE expiry: {} snapshots, {} files, {} bytes reclaimed",
                    r.expired_snapshots.len(),
                    r.deleted_files,
                    r.deleted_bytes
                );
            }
            Op::AdvanceDays(d) => now += ChronoDuration::days(*d as i64),
        }
        // Record the totals every new snapshot must keep: an append's own;
        // anything else's is the totals from before it.
        let table = catalog.load(&ident).await.unwrap();
        let current_totals = measures_only(read::totals(&table, &decl).await.unwrap());
        for snap in table.metadata.snapshots() {
            let id = snap.snapshot_id();
            if expected.contains_key(&id) {
                continue;
            }
            let t = match op {
                Op::Append(..) => {
                    measures_only(read::totals_at(&table, &decl, Some(id)).await.unwrap())
                }
                _ => {
                    assert_eq!(current_totals, before_totals, "{op:?} changed the totals");
                    before_totals.clone()
                }
            };
            expected.insert(id, t);
        }
        if matches!(op, Op::Expire { .. }) {
            let reached = reach::reach(&table, &table.metadata, None).await.unwrap();
            for (location, _) in reached.all() {
                assert!(
                    table.file_io.exists(location).await.unwrap(),
                    "{location} is reachable from a retained snapshot but was deleted"
                );
            }
            for s in table.metadata.snapshots() {
                let id = s.snapshot_id();
                let t = measures_only(read::totals_at(&table, &decl, Some(id)).await.unwrap());
                assert_eq!(Some(&t), expected.get(&id), "snapshot {id} after {op:?}");
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, max_shrink_iters: 30, ..ProptestConfig::default() })]
    #[test]
    fn expiry_never_removes_what_a_retained_snapshot_reads(ops in prop::collection::vec(op(), 1..18)) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(expiry_history(ops));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_of_failed_commits_go_and_fresh_writes_stay() {
    let (_dir, catalog, decl) = local_lake().await;
    let ident = tables::ident(&decl).unwrap();
    let now = Utc::now();
    append(catalog.as_ref(), &decl, now, 1, 50, 5).await;

    // A commit that failed after writing its data files (the fence refused it).
    let table = catalog.load(&ident).await.unwrap();
    let spec = MeasureSpec::new(&decl);
    let mut rows = RowMap::default();
    rows.add_event(
        &spec,
        RowKey {
            dims: vec![
                DimValue::Long(9),
                DimValue::Null,
                DimValue::Null,
                DimValue::Null,
            ],
            ts_micros: Grain::Minute.truncate(now.timestamp_micros()),
        },
        &[
            None,
            Some(MeasureValue::Long(Some(1))),
            Some(MeasureValue::Long(Some(1))),
            None,
        ],
    );
    let failed_files = write::write_rows(
        &table,
        &decl,
        Grain::Minute,
        rows.sorted(&firn::rows::MeasureSpec::new(&decl)),
        1 << 20,
    )
    .await
    .unwrap();
    let change = Change::append(FirnOperation::Ingest, failed_files.clone()).with_offsets(
        firn::offsets::OffsetAdvance {
            group: "g".into(),
            topic: "t".into(),
            from: BTreeMap::from([(0, Some(99))]),
            to: BTreeMap::from([(0, 120)]),
        },
    );
    let err = commit::commit(catalog.as_ref(), &ident, &change, RetryPolicy::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Fenced);
    let failed_path = failed_files[0].file.file_path().to_string();
    let local = |l: &str| l.trim_start_matches("file://").to_string();
    // Age it: three days and a minute old.
    let status = std::process::Command::new("touch")
        .args(["-d", "3 days ago 1 minute ago", &local(&failed_path)])
        .status()
        .unwrap();
    assert!(status.success());
    // Committed files that old stay: they are referenced.
    let st = maintain::state::load(&catalog.load(&ident).await.unwrap())
        .await
        .unwrap();
    for f in &st.files {
        std::process::Command::new("touch")
            .args(["-d", "10 days ago", &local(&f.path)])
            .status()
            .unwrap();
    }
    // A write in flight: seconds old, not committed yet.
    let table = catalog.load(&ident).await.unwrap();
    let fresh = format!("{}/data/in-flight.parquet", table.metadata.location());
    table
        .file_io
        .new_output(&fresh)
        .unwrap()
        .write(bytes::Bytes::from_static(b"PAR1"))
        .await
        .unwrap();

    let three_days = RemoveOrphansOptions {
        older_than: Span::from_secs(3 * 86_400),
        ..Default::default()
    };
    let remove = async |dry_run: bool, o: &RemoveOrphansOptions| {
        let ctx = Context {
            dry_run,
            ..Context::new(catalog.as_ref(), Utc::now())
        };
        orphans::run(&ctx, &decl, o).await
    };
    let dry = remove(true, &three_days).await.unwrap();
    let listed: Vec<&str> = dry.orphans.iter().map(|o| o.location.as_str()).collect();
    assert_eq!(listed, [failed_path.as_str()], "{dry:?}");
    assert!(dry.orphans[0].size > 0);
    assert!(
        table.file_io.exists(&failed_path).await.unwrap(),
        "dry run deleted"
    );

    let done = remove(false, &three_days).await.unwrap();
    assert_eq!(done.orphans.len(), 1);
    eprintln!("MEASURE orphans: {} bytes reclaimed", done.orphan_bytes);
    assert!(!table.file_io.exists(&failed_path).await.unwrap());
    assert!(
        table.file_io.exists(&fresh).await.unwrap(),
        "a fresh write was removed"
    );
    assert!(done.too_new >= 1);
    for f in &st.files {
        assert!(table.file_io.exists(&f.path).await.unwrap());
    }
    let t = read::totals(&catalog.load(&ident).await.unwrap(), &decl)
        .await
        .unwrap();
    assert_eq!(t.long(&decl, "requests"), 50);

    // Under an hour needs --force.
    let minute = RemoveOrphansOptions {
        older_than: Span::from_secs(60),
        ..Default::default()
    };
    let e = remove(false, &minute).await.unwrap_err();
    assert!(e.to_string().contains("--force"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrite_after_two_thousand_appends_leaves_one_manifest_per_partition() {
    let (_dir, catalog, decl) = local_lake().await;
    let ident = tables::ident(&decl).unwrap();
    let now = Utc.with_ymd_and_hms(2026, 11, 20, 0, 0, 0).unwrap();
    for i in 0..2000u64 {
        // Each append lands in one of the last 40 hours, like per-minute flushes.
        let at = now - ChronoDuration::hours((i / 50) as i64);
        append(catalog.as_ref(), &decl, at, i, 3, 1).await;
        if i % 250 == 249 {
            let later = Context::new(catalog.as_ref(), Utc::now() + ChronoDuration::days(1));
            let keep_five = ExpireSnapshotsOptions {
                older_than: Span::from_secs(0),
                retain_last: 5,
                ..Default::default()
            };
            expire::run(&later, &decl, &keep_five).await.unwrap();
        }
    }
    let table = catalog.load(&ident).await.unwrap();
    let before = read::totals(&table, &decl).await.unwrap();
    let list_before = table
        .manifest_list(table.metadata.current_snapshot().unwrap())
        .await
        .unwrap();
    let ctx = Context::new(catalog.as_ref(), now);
    let r = manifests::run(&ctx, &decl, &Default::default())
        .await
        .unwrap();
    eprintln!(
        "MEASURE 2000 appends: {} manifests before rewrite, {} after",
        r.manifests_before, r.manifests_after
    );
    assert_eq!(r.manifests_before, list_before.entries().len());

    let table = catalog.load(&ident).await.unwrap();
    let list = table
        .manifest_list(table.metadata.current_snapshot().unwrap())
        .await
        .unwrap();
    let mut holders: BTreeMap<(i32, i32), BTreeSet<String>> = BTreeMap::new();
    for mf in list.entries() {
        let m = mf.load_manifest(&table.file_io).await.unwrap();
        for e in m.entries().iter().filter(|e| e.is_alive()) {
            holders
                .entry((
                    mf.partition_spec_id,
                    partition_ordinal(e.data_file()).unwrap(),
                ))
                .or_default()
                .insert(mf.manifest_path.clone());
        }
    }
    assert_eq!(holders.len(), 40, "40 hour partitions");
    assert!(
        holders.values().all(|h| h.len() == 1),
        "a partition spans manifests"
    );
    assert_eq!(
        measures_only(read::totals(&table, &decl).await.unwrap()),
        measures_only(before)
    );
    assert_eq!(
        table
            .metadata
            .current_snapshot()
            .unwrap()
            .summary()
            .operation,
        iceberg::spec::Operation::Replace
    );
    // Already clustered: a second rewrite changes nothing.
    let again = manifests::run(&ctx, &decl, &Default::default())
        .await
        .unwrap();
    assert_eq!(again.snapshot_id, None);
}

fn job_commits(out: &str) -> u64 {
    let v: serde_json::Value = serde_json::from_str(out).unwrap();
    v["tables"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["steps"].as_array().unwrap().iter())
        .map(|s| s["commits"].as_u64().unwrap())
        .sum()
}

fn this_hour() -> DateTime<Utc> {
    DateTime::from_timestamp_micros(Grain::Hour.truncate(Utc::now().timestamp_micros())).unwrap()
}

/// A lake with a week of minute data ten days old and fresh data in many
/// hour partitions: work for every task of both jobs.
async fn busy_lake(now: DateTime<Utc>) -> (Lake, Arc<dyn Catalog>, TableDecl) {
    let lake = Lake::without_broker();
    lake.run(&["tables", "sync"]);
    let catalog = lake.catalog().await;
    let decl = lake.decl();
    for i in 0..6u64 {
        append(
            catalog.as_ref(),
            &decl,
            now - ChronoDuration::days(8),
            i,
            400,
            24 * 6,
        )
        .await;
        append(
            catalog.as_ref(),
            &decl,
            now - ChronoDuration::hours(2),
            100 + i,
            200,
            24,
        )
        .await;
    }
    (lake, catalog, decl)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_twice_change_nothing_the_second_time() {
    let (lake, catalog, decl) = busy_lake(this_hour()).await;
    let ident = tables::ident(&decl).unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs");
    for job in ["hourly.toml", "daily.toml"] {
        let job = root.join(job);
        let first = lake.run(&["maintain", "--job", job.to_str().unwrap(), "--json"]);
        assert!(job_commits(&first) > 0, "{first}");
        let snapshot = catalog
            .load(&ident)
            .await
            .unwrap()
            .metadata
            .current_snapshot_id();
        let second = lake.run(&["maintain", "--job", job.to_str().unwrap(), "--json"]);
        assert_eq!(job_commits(&second), 0, "{second}");
        assert_eq!(
            catalog
                .load(&ident)
                .await
                .unwrap()
                .metadata
                .current_snapshot_id(),
            snapshot,
            "the second run of {} made a snapshot",
            job.display()
        );
    }
    // Dry runs print the plan and change nothing.
    let plan = lake.run(&[
        "maintain",
        "--job",
        root.join("hourly.toml").to_str().unwrap(),
        "--dry-run",
    ]);
    assert!(
        plan.contains("plan only") && plan.contains("usage.http_requests"),
        "{plan}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_shards_do_the_work_of_one_run() {
    let now = this_hour();
    let (whole, whole_catalog, decl) = busy_lake(now).await;
    let (sharded, sharded_catalog, _) = busy_lake(now).await;
    let job = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs/hourly.toml");
    let job = job.to_str().unwrap();

    let plan_lines = |out: &str| -> BTreeSet<String> {
        let v: serde_json::Value = serde_json::from_str(out).unwrap();
        v["tables"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|t| t["steps"].as_array().unwrap().iter())
            .flat_map(|s| s["lines"].as_array().unwrap().iter())
            .map(|l| l.as_str().unwrap().to_string())
            .collect()
    };
    let all = plan_lines(&whole.run(&["maintain", "--job", job, "--dry-run", "--json"]));
    let s0 = plan_lines(&sharded.run(&[
        "maintain",
        "--job",
        job,
        "--dry-run",
        "--json",
        "--shard",
        "0/2",
    ]));
    let s1 = plan_lines(&sharded.run(&[
        "maintain",
        "--job",
        job,
        "--dry-run",
        "--json",
        "--shard",
        "1/2",
    ]));
    assert!(all.len() > 4, "{all:?}");
    assert!(
        s0.is_disjoint(&s1),
        "shards overlap: {:?}",
        s0.intersection(&s1).collect::<Vec<_>>()
    );
    assert_eq!(&s0 | &s1, all, "the shards together differ from one run");
    assert!(!s0.is_empty() && !s1.is_empty());

    // Run them for real, in parallel; the tables end in the same shape.
    let c_all = job_commits(&whole.run(&["maintain", "--job", job, "--json"]));
    let a = sharded
        .firn()
        .args(["maintain", "--job", job, "--json", "--shard", "0/2"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let b = sharded
        .firn()
        .args(["maintain", "--job", job, "--json", "--shard", "1/2"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (oa, ob) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(oa.status.success() && ob.status.success());
    let c_shards = job_commits(&String::from_utf8_lossy(&oa.stdout))
        + job_commits(&String::from_utf8_lossy(&ob.stdout));
    eprintln!("MEASURE hourly job: {c_all} commits unsharded, {c_shards} over two shards");
    assert_eq!(c_all, c_shards);
    let ident = tables::ident(&decl).unwrap();
    let shape = |s: &maintain::state::TableState| -> BTreeMap<(Grain, i32), (usize, u64)> {
        let mut m = BTreeMap::new();
        for f in &s.files {
            let e: &mut (usize, u64) = m.entry((f.grain, f.partition)).or_default();
            e.0 += 1;
            e.1 += f.records;
        }
        m
    };
    let sw = maintain::state::load(&whole_catalog.load(&ident).await.unwrap())
        .await
        .unwrap();
    let ss = maintain::state::load(&sharded_catalog.load(&ident).await.unwrap())
        .await
        .unwrap();
    assert_eq!(shape(&sw), shape(&ss));
}

/// Every maintenance command and a job of that one task plan the same for
/// the same table: both map to the one operation, with the same defaults.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_plans_as_a_one_task_job_does() {
    let now = this_hour();
    let (lake, catalog, decl) = busy_lake(now).await;
    // An unreferenced file for remove-orphans to find.
    let table = catalog.load(&tables::ident(&decl).unwrap()).await.unwrap();
    let orphan = format!("{}/data/left-behind.parquet", table.metadata.location());
    table
        .file_io
        .new_output(&orphan)
        .unwrap()
        .write(bytes::Bytes::from_static(b"PAR1"))
        .await
        .unwrap();
    let aged = std::process::Command::new("touch")
        .args(["-d", "3 days ago", orphan.trim_start_matches("file://")])
        .status()
        .unwrap();
    assert!(aged.success());
    let at = |days: i64| (now + ChronoDuration::days(days)).to_rfc3339();
    // (command, its flags, the job task's fields, days after `now` to plan at)
    let cases: [(&str, &[&str], &str, i64); 9] = [
        ("compact", &[], "", 0),
        (
            "compact",
            &["--seal-delay", "0s", "--target-file-size", "67108864"],
            "seal_delay = \"0s\"\ntarget_file_size = 67108864",
            0,
        ),
        ("rollup", &[], "", 0),
        ("retention", &[], "", 420),
        ("rewrite-manifests", &[], "", 0),
        (
            "rewrite-manifests",
            &["--target-size", "2048"],
            "target_size = 2048",
            0,
        ),
        ("expire-snapshots", &[], "", 0),
        (
            "expire-snapshots",
            &["--older-than", "0s", "--retain-last", "3"],
            "older_than = \"0s\"\nretain_last = 3",
            1,
        ),
        (
            "remove-orphans",
            &["--older-than", "2h"],
            "older_than = \"2h\"",
            1,
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    let mut planned = 0;
    for (n, (command, flags, fields, days)) in cases.into_iter().enumerate() {
        let when = at(days);
        let mut args = vec![
            command,
            "usage.http_requests",
            "--dry-run",
            "--json",
            "--now",
            &when,
        ];
        args.extend(flags);
        let alone: serde_json::Value = serde_json::from_str(&lake.run(&args)).unwrap();

        let job = dir.path().join(format!("one-{n}.toml"));
        std::fs::write(
            &job,
            format!("schedule = \"0 * * * *\"\ntables = [\"usage.*\"]\n[[task]]\nkind = \"{command}\"\n{fields}\n"),
        )
        .unwrap();
        let job = job.to_str().unwrap();
        let out = lake.run(&[
            "maintain",
            "--job",
            job,
            "--dry-run",
            "--json",
            "--now",
            &when,
        ]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let in_job = &v["tables"][0]["steps"][0]["report"];
        assert_eq!(
            &alone, in_job,
            "{command} {flags:?} and a job with {fields:?}"
        );
        assert_eq!(alone["operation"], command);
        let work = ["plan", "expired_snapshots", "orphans"]
            .iter()
            .filter_map(|k| alone[k].as_array())
            .map(Vec::len)
            .sum::<usize>()
            + (alone["manifests_before"] != alone["manifests_after"]) as usize;
        planned += (work > 0) as usize;
        eprintln!("{command} {flags:?}: {work} planned items alike");
    }
    // The cases plan real work, not only empty plans that agree.
    assert!(planned >= 7, "only {planned} cases planned anything");
}

/// `--now` moves planning, never deletion bounds: with a planning time ten
/// days ahead, neither expiry nor orphan removal takes what the real clock
/// says is young (a running writer's fresh files, last minute's snapshots).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_future_now_deletes_nothing_young() {
    let now = this_hour();
    let (lake, catalog, decl) = busy_lake(now).await;
    let ident = tables::ident(&decl).unwrap();
    let table = catalog.load(&ident).await.unwrap();
    let in_flight = format!("{}/data/in-flight.parquet", table.metadata.location());
    table
        .file_io
        .new_output(&in_flight)
        .unwrap()
        .write(bytes::Bytes::from_static(b"PAR1"))
        .await
        .unwrap();
    let snapshots = table.metadata.snapshots().count();
    assert!(snapshots > 10, "{snapshots}");
    let later = (Utc::now() + ChronoDuration::days(10)).to_rfc3339();
    let out = lake.run(&["remove-orphans", "usage.http_requests", "--now", &later]);
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["orphans"].as_array().unwrap().len(), 0, "{out}");
    assert!(table.file_io.exists(&in_flight).await.unwrap());
    let job = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs/daily.toml");
    let out = lake.run(&[
        "maintain",
        "--job",
        job.to_str().unwrap(),
        "--json",
        "--now",
        &later,
    ]);
    assert!(table.file_io.exists(&in_flight).await.unwrap(), "{out}");
    let after = catalog.load(&ident).await.unwrap();
    // The daily job's expiry (5 days) found nothing that old by the real clock.
    assert_eq!(
        after.metadata.snapshots().count(),
        snapshots + 1,
        "only rewrite-manifests committed: {out}"
    );
}

/// A task whose files waited longer than orphan removal's margin before
/// their commit does not commit them (orphan removal may already have taken
/// them): the table keeps its files and totals, the task reports failed, and
/// what it wrote is left to orphan removal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_held_past_the_orphan_margin_are_not_committed() {
    let now = this_hour();
    let (_lake, catalog, decl) = busy_lake(now).await;
    let ident = tables::ident(&decl).unwrap();
    let before = catalog.load(&ident).await.unwrap();
    let totals = measures_only(read::totals(&before, &decl).await.unwrap());
    let ctx = Context {
        max_uncommitted: std::time::Duration::ZERO,
        ..Context::new(catalog.as_ref(), now)
    };
    let r = Operation::Compact(CompactOptions::default())
        .run(&ctx, &decl)
        .await
        .unwrap();
    let firn::maintain::Report::Compact(r) = &r else {
        unreachable!()
    };
    assert!(!r.plan.is_empty());
    assert_eq!((r.run.committed, r.run.failed), (0, r.plan.len()));
    let after = catalog.load(&ident).await.unwrap();
    assert_eq!(
        after.metadata.current_snapshot_id(),
        before.metadata.current_snapshot_id()
    );
    assert_eq!(
        measures_only(read::totals(&after, &decl).await.unwrap()),
        totals
    );
    // What it wrote is unreferenced: orphan removal finds it.
    let orphans = orphans::find(
        catalog.as_ref(),
        &ident,
        Utc::now(),
        std::time::Duration::ZERO,
    )
    .await
    .unwrap();
    assert!(!orphans.orphans.is_empty());
}
