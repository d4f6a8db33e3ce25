//! A shared lake (DESIGN.md): other engines commit to firn's table between
//! ingest runs — PyIceberg appends, a full rewrite (another engine's
//! compaction), a partition delete, an expiry keeping only their own
//! snapshot, and iceberg-rust's own `fast_append`. After each, ingest resumes
//! exactly where firn's last commit left the offsets, the totals are what was
//! produced plus exactly what the other engine changed, and a finished
//! backfill is still refused. A table with data but no offsets for a group is
//! refused, and `--reset-offsets` does what it says.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use firn::catalog::Catalog;
use firn::commit::FirnOperation;
use firn::commit::summary;
use firn::config::Config;
use firn::ledger::{Ledger, LedgerSource};
use firn::produce::{EventGenerator, ProduceOptions, ProduceReport};
use firn::rows::{DimValue, MeasureSpec, MeasureValue, RowKey, RowMap};
use firn::schema::decl::TableDecl;
use firn::{offsets, read, tables};
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use iceberg::{Catalog as _, CatalogBuilder};
use serde_json::Value;

use crate::common::{Broker, GROUP, Lake, Seaweed, python, terminate};

const WAIT: Duration = Duration::from_secs(300);
const SUMS: [&str; 3] = ["requests", "bytes", "cpu_ms"];

type Sums = BTreeMap<String, i64>;

/// Commands of tests/readers/foreign.py, each with its argument.
type Commands<'a> = &'a [(&'a str, Option<&'a str>)];

fn add(into: &mut Sums, delta: &BTreeMap<String, Value>) {
    for m in SUMS {
        *into.entry(m.to_string()).or_default() +=
            delta.get(m).and_then(Value::as_i64).unwrap_or(0);
    }
}

async fn table_sums(catalog: &dyn Catalog, lake: &Lake) -> Sums {
    let decl = lake.decl();
    let t = catalog.load(&tables::ident(&decl).unwrap()).await.unwrap();
    let totals = read::totals(&t, &decl).await.unwrap();
    SUMS.iter()
        .map(|m| (m.to_string(), totals.long(&decl, m)))
        .collect()
}

fn warehouse_url(lake: &Lake) -> String {
    format!(
        "file://{}",
        std::fs::canonicalize(lake.path().join("warehouse"))
            .unwrap()
            .display()
    )
}

/// How tests/readers/foreign.py reaches the table.
pub(crate) struct Target {
    args: Vec<String>,
    envs: Vec<(String, String)>,
}

/// The lake's SQLite catalog and local warehouse.
pub(crate) fn sql_target(lake: &Lake) -> Target {
    Target {
        args: vec![
            "--catalog-uri".into(),
            format!("sqlite:///{}", lake.path().join("catalog.db").display()),
            "--warehouse".into(),
            warehouse_url(lake),
        ],
        envs: Vec::new(),
    }
}

/// Run one foreign-writer command (tests/readers/foreign.py); how it
/// changed the sums.
fn foreign_at(target: &Target, command: &str, arg: Option<&str>) -> BTreeMap<String, Value> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/readers/foreign.py");
    let out = Command::new(python())
        .arg(script)
        .args(&target.args)
        .envs(target.envs.iter().map(|(k, v)| (k, v)))
        .args(["--table", "usage.http_requests", command])
        .args(arg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "foreign.py {command} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

pub(crate) fn foreign(lake: &Lake, command: &str, arg: Option<&str>) -> BTreeMap<String, Value> {
    foreign_at(&sql_target(lake), command, arg)
}

/// iceberg-rust's own `Transaction::fast_append` as the other writer: one
/// minute row (requests 1, bytes 2000, cpu_ms 9). How it changed the sums.
async fn rust_fast_append(lake: &Lake, catalog: &dyn Catalog) -> BTreeMap<String, Value> {
    let at = chrono::Utc::now() - chrono::Duration::minutes(10);
    rust_fast_append_at(lake, catalog, at).await
}

/// [`rust_fast_append`] of a row in the minute of `at` (ttfb_ms_max 11).
pub(crate) async fn rust_fast_append_at(
    lake: &Lake,
    catalog: &dyn Catalog,
    at: chrono::DateTime<chrono::Utc>,
) -> BTreeMap<String, Value> {
    let decl = lake.decl();
    let ident = tables::ident(&decl).unwrap();
    let spec = MeasureSpec::new(&decl);
    let mut rows = RowMap::default();
    let ts = at.timestamp_micros().div_euclid(60_000_000) * 60_000_000;
    rows.add_event(
        &spec,
        RowKey {
            dims: vec![
                DimValue::Long(424_242),
                DimValue::Long(1),
                DimValue::Str("rust".into()),
                DimValue::Str("rust".into()),
            ],
            ts_micros: ts,
        },
        &[
            None,
            Some(MeasureValue::Long(Some(2000))),
            Some(MeasureValue::Long(Some(9))),
            Some(MeasureValue::Long(Some(11))),
        ],
    );
    let handle = catalog.load(&ident).await.unwrap();
    let files = firn::write::write_rows(
        &handle,
        &decl,
        firn::schema::layout::Grain::Minute,
        rows.sorted(&firn::rows::MeasureSpec::new(&decl)),
        128 << 20,
    )
    .await
    .unwrap();
    let storage = firn::storage::ObjectStoreStorage::new(Default::default());
    let sql = iceberg_catalog_sql::SqlCatalogBuilder::default()
        .uri(format!(
            "sqlite://{}?mode=rwc",
            lake.path().join("catalog.db").display()
        ))
        .warehouse_location(warehouse_url(lake))
        .sql_bind_style(iceberg_catalog_sql::SqlBindStyle::QMark)
        .with_storage_factory(Arc::new(firn::storage::ObjectStoreFactory::new(storage)))
        .load("firn", HashMap::new())
        .await
        .unwrap();
    let table = sql.load_table(&ident).await.unwrap();
    let tx = Transaction::new(&table);
    let tx = tx
        .fast_append()
        .add_data_files(files.into_iter().map(|f| f.file))
        .apply(tx)
        .unwrap();
    tx.commit(&sql).await.unwrap();
    serde_json::from_str(r#"{"requests": 1, "bytes": 2000, "cpu_ms": 9}"#).unwrap()
}

/// Sum of `group`'s offsets in the table's ledger.
async fn group_position(catalog: &dyn Catalog, lake: &Lake, group: &str) -> i64 {
    let t = catalog
        .load(&tables::ident(&lake.decl()).unwrap())
        .await
        .unwrap();
    offsets::read(&t.metadata, group)
        .unwrap()
        .values()
        .flat_map(|m| m.values())
        .sum()
}

async fn wait_for_position(catalog: &dyn Catalog, lake: &Lake, group: &str, records: i64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let at = group_position(catalog, lake, group).await;
        if at == records {
            return;
        }
        assert!(
            at <= records,
            "{group} at {at}, past the {records} records produced"
        );
        assert!(
            Instant::now() < deadline,
            "{group} reached {at} of {records} records"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Ingest as `GROUP` until the table's offsets cover `records`, then stop.
async fn ingest_until(lake: &Lake, catalog: &dyn Catalog, name: &str, records: i64) {
    let mut worker = lake.spawn_ingest(name, &[]);
    wait_for_position(catalog, lake, GROUP, records).await;
    assert!(terminate(&mut worker).success(), "{}", lake.log(name));
}

/// A small NDJSON file of recent events, and its sums.
fn backfill_input(dir: &Path, lake: &Lake) -> (PathBuf, BTreeMap<String, Value>) {
    let mut generator = EventGenerator::new(
        &lake.decl(),
        &ProduceOptions {
            seed: 77,
            spread: Duration::from_secs(3600),
            ..Default::default()
        },
    );
    let now_ms = chrono::Utc::now().timestamp_millis() - 60_000;
    let mut text = Vec::new();
    for _ in 0..300 {
        let (_, mut line) = generator.next(now_ms);
        line.retain(|b| *b != b'\n');
        text.extend(line);
        text.push(b'\n');
    }
    let path = dir.join("backfill.ndjson");
    std::fs::write(&path, text).unwrap();
    (path, generator.totals_by_name())
}

fn backfill(lake: &Lake, input: &Path) -> std::process::Output {
    lake.firn()
        .args(["backfill", "usage.http_requests", "--input"])
        .arg(input)
        .output()
        .unwrap()
}

async fn produce(lake: &Lake, count: u64, seed: u64) -> ProduceReport {
    lake.produce(ProduceOptions {
        count,
        seed,
        ..Default::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_commits_between_ingest_runs_keep_offsets_backfills_and_totals() {
    let broker = Broker::start();
    let lake = Lake::new(&broker);
    lake.create_topic(2).await;
    lake.run(&["tables", "sync"]);
    let catalog = lake.catalog().await;
    let mut expected = Sums::new();

    let first = produce(&lake, 3_000, 1).await;
    add(&mut expected, &first.totals);
    let mut sent = first.sent as i64;
    ingest_until(&lake, catalog.as_ref(), "first", sent).await;

    let (input, input_sums) = backfill_input(lake.path(), &lake);
    let out = backfill(&lake, &input);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    add(&mut expected, &input_sums);
    assert_eq!(table_sums(catalog.as_ref(), &lake).await, expected);

    let hour_ago = chrono::Utc::now() - chrono::Duration::hours(1);
    let hour = hour_ago.format("%Y-%m-%dT%H:00:00+00:00").to_string();
    let minute_ago = (chrono::Utc::now() - chrono::Duration::minutes(30))
        .format("%Y-%m-%dT%H:%M:00+00:00")
        .to_string();
    // Each step: what the other engine commits, one or more commands.
    let steps: [(&str, Commands); 5] = [
        ("append", &[("append", Some(&minute_ago))]),
        ("rewrite-all", &[("rewrite-all", None)]),
        ("delete-hour", &[("delete-hour", Some(&hour))]),
        (
            "expire-all-but-current",
            &[
                ("append", Some(&minute_ago)),
                ("expire-all-but-current", None),
            ],
        ),
        ("rust-fast-append", &[]),
    ];
    for (n, (step, commands)) in steps.into_iter().enumerate() {
        let before_step = expected.clone();
        if step == "rust-fast-append" {
            let delta = rust_fast_append(&lake, catalog.as_ref()).await;
            add(&mut expected, &delta);
        }
        for (command, arg) in commands {
            let delta = foreign(&lake, command, *arg);
            add(&mut expected, &delta);
        }
        let changed: Sums = SUMS
            .iter()
            .map(|m| (m.to_string(), expected[*m] - before_step[*m]))
            .collect();
        let table = catalog
            .load(&tables::ident(&lake.decl()).unwrap())
            .await
            .unwrap();
        let current = table.metadata.current_snapshot().unwrap();
        assert!(
            !current
                .summary()
                .additional_properties
                .contains_key(summary::OPERATION),
            "{step}: the current snapshot is the other engine's"
        );
        if step == "expire-all-but-current" {
            assert_eq!(table.metadata.snapshots().count(), 1, "{step}");
            assert!(
                matches!(Ledger::of(&table.metadata).source, LedgerSource::Mirror(_)),
                "{step}: firn's snapshots are gone, the mirror holds the ledger"
            );
        }
        assert_eq!(
            table_sums(catalog.as_ref(), &lake).await,
            expected,
            "after the other engine's {step}"
        );

        let more = produce(&lake, 1_000, 10 + n as u64).await;
        add(&mut expected, &more.totals);
        sent += more.sent as i64;
        ingest_until(&lake, catalog.as_ref(), &format!("after-{step}"), sent).await;
        assert_eq!(
            table_sums(catalog.as_ref(), &lake).await,
            expected,
            "ingest after the other engine's {step} counted each record once"
        );
        eprintln!(
            "{step}: the other engine changed {changed:?}; then {} records produced and \
             ingested; table {expected:?} (records sent in all: {sent})",
            more.sent
        );

        let again = backfill(&lake, &input);
        let stderr = String::from_utf8_lossy(&again.stderr);
        assert!(
            !again.status.success() && stderr.contains("already committed"),
            "after {step}, a finished backfill is refused: {stderr}"
        );
    }
    // The last firn commit re-established the ledger in its own summary.
    let table = catalog
        .load(&tables::ident(&lake.decl()).unwrap())
        .await
        .unwrap();
    assert!(matches!(
        Ledger::of(&table.metadata).source,
        LedgerSource::Snapshot(_)
    ));
}

fn snapshots_by(table: &firn::catalog::TableHandle, operation: FirnOperation) -> usize {
    table
        .metadata
        .snapshots()
        .filter(|s| FirnOperation::of(s.summary()) == Some(operation))
        .count()
}

/// Run ingest as `group` with `extra` flags until the table holds `resets`
/// reset snapshots and the group's offsets cover `records`, then stop it.
async fn ingest_as(
    lake: &Lake,
    catalog: &dyn Catalog,
    (group, name): (&str, &str),
    extra: &[&str],
    resets: usize,
    records: i64,
) {
    let mut worker = lake
        .firn()
        .env("FIRN_GROUP", group)
        .args([
            "ingest",
            "--commit-interval",
            "1s",
            "--kafka-property",
            "session.timeout.ms=6000",
        ])
        .args(extra)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(lake.path().join(format!("ingest-{name}.log"))).unwrap())
        .spawn()
        .unwrap();
    let ident = tables::ident(&lake.decl()).unwrap();
    let deadline = Instant::now() + WAIT;
    while snapshots_by(
        &catalog.load(&ident).await.unwrap(),
        FirnOperation::ResetOffsets,
    ) < resets
    {
        assert!(
            Instant::now() < deadline,
            "no reset committed: {}",
            lake.log(name)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_for_position(catalog, lake, group, records).await;
    // Stop it only once it holds its partitions (and so has read the table).
    while !lake.log(name).contains("assigned; positioned") {
        assert!(
            Instant::now() < deadline,
            "never assigned: {}",
            lake.log(name)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(terminate(&mut worker).success(), "{}", lake.log(name));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_with_data_and_no_offsets_is_refused_until_the_operator_resets() {
    let broker = Broker::start();
    let lake = Lake::new(&broker);
    lake.create_topic(2).await;
    lake.run(&["tables", "sync"]);
    let catalog = lake.catalog().await;
    let ident = tables::ident(&lake.decl()).unwrap();

    let first = produce(&lake, 2_000, 3).await;
    ingest_until(&lake, catalog.as_ref(), "first", first.sent as i64).await;
    let before = catalog.load(&ident).await.unwrap();

    // Another group on a table with data: refused, nothing committed.
    let out = lake
        .firn()
        .env("FIRN_GROUP", "other")
        .args(["ingest", "--stop-when-idle", "5s"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    for says in [
        "refusing to ingest topic http-requests into usage.http_requests",
        "no offsets for consumer group other",
        "firn-e2e",
        "--reset-offsets earliest",
    ] {
        assert!(stderr.contains(says), "missing {says:?} in: {stderr}");
    }
    let after = catalog.load(&ident).await.unwrap();
    assert_eq!(
        after.metadata.current_snapshot_id(),
        before.metadata.current_snapshot_id()
    );

    // latest: only what is produced from now on.
    let mut expected = Sums::new();
    add(&mut expected, &first.totals);
    let marks = first.sent as i64;
    let mut worker = lake
        .firn()
        .env("FIRN_GROUP", "other")
        .args([
            "ingest",
            "--commit-interval",
            "1s",
            "--reset-offsets",
            "latest",
        ])
        .stderr(std::fs::File::create(lake.path().join("ingest-latest.log")).unwrap())
        .spawn()
        .unwrap();
    wait_for_position(catalog.as_ref(), &lake, "other", marks).await;
    let second = produce(&lake, 1_000, 4).await;
    add(&mut expected, &second.totals);
    wait_for_position(catalog.as_ref(), &lake, "other", marks + second.sent as i64).await;
    assert!(terminate(&mut worker).success(), "{}", lake.log("latest"));
    assert_eq!(table_sums(catalog.as_ref(), &lake).await, expected);
    let t = catalog.load(&ident).await.unwrap();
    assert_eq!(snapshots_by(&t, FirnOperation::ResetOffsets), 1);
    assert_eq!(
        Ledger::of(&t.metadata)
            .get(&summary::reset_key("other"))
            .map(String::as_str),
        Some("latest")
    );
    assert!(lake.log("latest").contains("offsets reset by the operator"));

    // The same flag on a restart changes nothing: the table holds offsets.
    let total = marks + second.sent as i64;
    ingest_as(
        &lake,
        catalog.as_ref(),
        ("other", "latest-again"),
        &["--reset-offsets", "latest"],
        1,
        total,
    )
    .await;
    let t = catalog.load(&ident).await.unwrap();
    assert_eq!(snapshots_by(&t, FirnOperation::ResetOffsets), 1);
    assert_eq!(table_sums(catalog.as_ref(), &lake).await, expected);

    // Explicit offsets move a partition back: exactly those records again.
    let held = offsets::read(&t.metadata, "other").unwrap()["http-requests"].clone();
    let p0 = held[&0];
    let back = 100.min(p0);
    let spec = format!("http-requests:0:{}", p0 - back);
    ingest_as(
        &lake,
        catalog.as_ref(),
        ("other", "explicit"),
        &["--reset-offsets", &spec],
        2,
        total,
    )
    .await;
    let requests = table_sums(catalog.as_ref(), &lake).await["requests"];
    assert_eq!(
        requests,
        expected["requests"] + back,
        "re-read {back} records of partition 0"
    );
    // Applied once: the same spec again re-reads nothing.
    ingest_as(
        &lake,
        catalog.as_ref(),
        ("other", "explicit-again"),
        &["--reset-offsets", &spec],
        2,
        total,
    )
    .await;
    let t = catalog.load(&ident).await.unwrap();
    assert_eq!(snapshots_by(&t, FirnOperation::ResetOffsets), 2);
    assert_eq!(
        table_sums(catalog.as_ref(), &lake).await["requests"],
        requests
    );

    // earliest for a new group re-reads everything the topic retains.
    ingest_as(
        &lake,
        catalog.as_ref(),
        ("third", "earliest"),
        &["--reset-offsets", "earliest"],
        3,
        total,
    )
    .await;
    assert_eq!(
        table_sums(catalog.as_ref(), &lake).await["requests"],
        requests + total
    );
}

/// Minute rows for two whole days ten days ago (due for rollup), in three
/// appends so each partition holds several files.
async fn old_minute_rows(catalog: &dyn Catalog, lake: &Lake) {
    let decl = lake.decl();
    let spec = MeasureSpec::new(&decl);
    let day = (chrono::Utc::now() - chrono::Duration::days(10))
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
        .timestamp_micros();
    for batch in 0..3i64 {
        let mut rows = RowMap::default();
        for i in 0..400i64 {
            rows.add_event(
                &spec,
                RowKey {
                    dims: vec![
                        DimValue::Long(i % 7),
                        DimValue::Long(batch),
                        DimValue::Str(["AMS", "Zürich"][(i % 2) as usize].into()),
                        DimValue::Str("cdn".into()),
                    ],
                    ts_micros: day + ((i * 37 + batch * 11) % 2880) * 60_000_000,
                },
                &[
                    None,
                    Some(MeasureValue::Long(Some(i * 10 + batch))),
                    Some(MeasureValue::Long(Some(i % 13))),
                    Some(MeasureValue::Long(Some(i % 100))),
                ],
            );
        }
        crate::common::append_minute_rows(catalog, &decl, rows).await;
    }
}

/// A lake on the embedded default whose table holds [`old_minute_rows`]: the
/// lake, its catalog, the declaration and the table.
async fn lake_with_old_minute_rows() -> (Lake, Arc<dyn Catalog>, TableDecl, iceberg::TableIdent) {
    let lake = Lake::without_broker();
    lake.run(&["tables", "sync"]);
    let catalog = lake.catalog().await;
    let decl = lake.decl();
    let ident = tables::ident(&decl).unwrap();
    old_minute_rows(catalog.as_ref(), &lake).await;
    (lake, catalog, decl, ident)
}

/// PyIceberg reads the sums firn reads.
async fn pyiceberg_reads_our_sums(catalog: &dyn Catalog, lake: &Lake) {
    let theirs = foreign(lake, "sums", None);
    let ours = table_sums(catalog, lake).await;
    for m in SUMS {
        assert_eq!(theirs[m].as_i64().unwrap(), ours[m], "PyIceberg reads {m}");
    }
}

/// The table's whole and per-day totals (not its row count, which rollup changes).
async fn per_day(
    catalog: &dyn Catalog,
    lake: &Lake,
) -> (
    firn::rows::Measures,
    BTreeMap<chrono::NaiveDate, firn::rows::Measures>,
) {
    let decl = lake.decl();
    let t = catalog.load(&tables::ident(&decl).unwrap()).await.unwrap();
    let totals = read::totals(&t, &decl).await.unwrap();
    (totals.all, totals.per_day)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_plans_from_another_engines_layout() {
    let (lake, catalog, decl, ident) = lake_with_old_minute_rows().await;
    let before = per_day(catalog.as_ref(), &lake).await;
    assert_eq!(before.1.len(), 2);

    // A rollup planned on firn's files; another engine compacts them first.
    let table = catalog.load(&ident).await.unwrap();
    let state = firn::maintain::state::load_plannable(&table).await.unwrap();
    let opts = firn::maintain::PlanOptions {
        now: chrono::Utc::now(),
        from: None,
        to: None,
        seal_delay: Duration::from_secs(3600),
        target_file_size: 128 << 20,
    };
    let tasks = firn::maintain::plan_rollup(&state, &decl.policy, &opts);
    assert_eq!(tasks.len(), 2, "{tasks:?}");
    foreign(&lake, "rewrite-all", None);
    let ctx = firn::maintain::Context::new(catalog.as_ref(), opts.now);
    let raced = firn::maintain::execute::run(&ctx, &decl, &tasks, 128 << 20)
        .await
        .unwrap();
    assert_eq!((raced.superseded, raced.committed, raced.failed), (2, 0, 0));
    assert_eq!(per_day(catalog.as_ref(), &lake).await, before);

    // The next run plans from the other engine's files and rolls them up.
    lake.run(&["rollup", "usage.http_requests"]);
    let table = catalog.load(&ident).await.unwrap();
    let state = firn::maintain::state::load(&table).await.unwrap();
    assert!(
        state
            .files
            .iter()
            .all(|f| f.grain == firn::schema::layout::Grain::Hour),
        "{:?}",
        state.files
    );
    assert_eq!(per_day(catalog.as_ref(), &lake).await, before);
    pyiceberg_reads_our_sums(catalog.as_ref(), &lake).await;
    // And again: nothing left to do, nothing changes.
    let out = lake.run(&["rollup", "usage.http_requests"]);
    assert_eq!(per_day(catalog.as_ref(), &lake).await, before, "{out}");
}

/// A data file whose manifest entry says its rows are in the table's key
/// order though they are not (an engine that records the table's order
/// without sorting): the rollup finds the first row out of order, merges
/// again with the file sorted first, and every total stands. The files it
/// writes record the key order; another engine's files (which record none)
/// are sorted before they are merged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_recorded_as_sorted_that_is_not_is_sorted_before_it_is_merged() {
    use firn::schema::layout::{self, Grain};

    let (lake, catalog, decl, ident) = lake_with_old_minute_rows().await;
    foreign(
        &lake,
        "append",
        Some(&(chrono::Utc::now() - chrono::Duration::days(10)).to_rfc3339()),
    );

    let table = catalog.load(&ident).await.unwrap();
    let order = layout::key_order_id(&table.metadata, &decl);
    assert!(order.is_some(), "firn's table has its key order");
    let spec = MeasureSpec::new(&decl);
    let hour = (chrono::Utc::now() - chrono::Duration::days(10))
        .date_naive()
        .and_hms_opt(3, 0, 0)
        .unwrap()
        .and_utc()
        .timestamp_micros();
    let mut rows: Vec<(RowKey, firn::rows::Measures)> = (0..120i64)
        .map(|i| {
            let mut m = spec.empty();
            spec.add_event_saturating(
                &mut m,
                &[
                    None,
                    Some(MeasureValue::Long(Some(1000 + i))),
                    Some(MeasureValue::Long(Some(i % 9))),
                    Some(MeasureValue::Long(Some(i % 50))),
                ],
            );
            let key = RowKey {
                dims: vec![
                    DimValue::Long(i % 5),
                    DimValue::Long(9),
                    DimValue::Str(["AMS", "Zürich"][(i % 2) as usize].into()),
                    DimValue::Str("cdn".into()),
                ],
                ts_micros: hour + (i % 60) * 60_000_000,
            };
            (key, m)
        })
        .collect();
    // Descending: every row sorts before the one ahead of it.
    rows.sort_by(|a, b| b.0.cmp(&a.0));
    let schema =
        Arc::new(iceberg::arrow::schema_to_arrow_schema(table.metadata.current_schema()).unwrap());
    let batches: Vec<_> = rows
        .iter()
        .flat_map(|r| {
            firn::write::to_batches(&schema, &decl, Grain::Minute, std::slice::from_ref(r)).unwrap()
        })
        .collect();
    let batch = arrow_select::concat::concat_batches(&schema, &batches).unwrap();
    let key =
        firn::write::partition_key(&table, Grain::Minute, Grain::Minute.partition_ordinal(hour))
            .unwrap();
    let files =
        firn::write::write_batches(&table, Some(key), "unsorted", vec![batch], 128 << 20, order)
            .await
            .unwrap();
    assert!(files.iter().all(|f| f.file.sort_order_id() == order));
    crate::common::append_files(catalog.as_ref(), &ident, files).await;
    let before = per_day(catalog.as_ref(), &lake).await;
    let state = firn::maintain::state::load(&catalog.load(&ident).await.unwrap())
        .await
        .unwrap();
    assert!(
        state.files.iter().any(|f| f.sort_order.is_none()),
        "{:?}",
        state.files
    );

    let unsorted = state
        .files
        .iter()
        .find(|f| f.path.contains("unsorted"))
        .unwrap()
        .path
        .clone();
    let out = lake
        .firn()
        .args(["rollup", "usage.http_requests"])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("a data file recorded as in key order is not") && log.contains(&unsorted),
        "the rollup says which file it sorted again:\n{log}"
    );
    let state = firn::maintain::state::load(&catalog.load(&ident).await.unwrap())
        .await
        .unwrap();
    assert!(!state.files.is_empty());
    for f in &state.files {
        assert_eq!(f.grain, Grain::Hour, "{f:?}");
        assert_eq!(f.sort_order, order, "{f:?}");
        assert!(!f.path.contains("unsorted"), "{f:?}");
    }
    assert_eq!(per_day(catalog.as_ref(), &lake).await, before);
    pyiceberg_reads_our_sums(catalog.as_ref(), &lake).await;
}

/// Another engine's merge-on-read delete: a position-delete file removing
/// row 0 of the first live data file, committed in its own snapshot with a
/// delete manifest (as Spark or Trino write them). The delete file's path.
async fn commit_position_delete(catalog: &dyn Catalog, ident: &iceberg::TableIdent) -> String {
    use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray};
    use arrow_schema::{DataType, Field, Schema};
    use iceberg::spec::{
        DataContentType, DataFileBuilder, DataFileFormat, MAIN_BRANCH, ManifestListWriter,
        ManifestWriterBuilder, Operation, Snapshot, Summary,
    };

    let base = catalog.load(ident).await.unwrap();
    let meta = base.metadata.clone();
    let current = meta.current_snapshot().unwrap();
    let list = base.manifest_list(current).await.unwrap();
    let first = list.entries()[0].clone();
    let manifest = first.load_manifest(&base.file_io).await.unwrap();
    let victim = manifest
        .entries()
        .iter()
        .find(|e| e.is_alive())
        .unwrap()
        .data_file()
        .clone();

    let field = |name: &str, t: DataType, id: i32| {
        Field::new(name, t, false).with_metadata(HashMap::from([(
            "PARQUET:field_id".to_string(),
            id.to_string(),
        )]))
    };
    let schema = Arc::new(Schema::new(vec![
        field("file_path", DataType::Utf8, 2_147_483_546),
        field("pos", DataType::Int64, 2_147_483_545),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(vec![victim.file_path().to_string()])) as ArrayRef,
            Arc::new(Int64Array::from(vec![0i64])),
        ],
    )
    .unwrap();
    let mut bytes = Vec::new();
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut bytes, schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let location = meta.location().trim_end_matches('/').to_string();
    let path = format!(
        "{location}/data/other-engine-deletes-{}.parquet",
        uuid::Uuid::now_v7()
    );
    let size = bytes.len() as u64;
    base.file_io
        .new_output(&path)
        .unwrap()
        .write(bytes.into())
        .await
        .unwrap();
    let delete = DataFileBuilder::default()
        .content(DataContentType::PositionDeletes)
        .file_path(path.clone())
        .file_format(DataFileFormat::Parquet)
        .partition(victim.partition().clone())
        .partition_spec_id(first.partition_spec_id)
        .record_count(1)
        .file_size_in_bytes(size)
        .build()
        .unwrap();

    let snapshot_id = chrono::Utc::now().timestamp_micros() & 0x7fff_ffff_ffff;
    let sequence_number = meta.next_sequence_number();
    let spec = meta
        .partition_spec_by_id(first.partition_spec_id)
        .unwrap()
        .as_ref()
        .clone();
    let out = base
        .file_io
        .new_output(format!("{location}/metadata/other-{snapshot_id}-m0.avro"))
        .unwrap();
    let mut mw =
        ManifestWriterBuilder::new(out, Some(snapshot_id), meta.current_schema().clone(), spec)
            .build_v2_deletes();
    mw.add_file(delete, sequence_number).unwrap();
    let delete_manifest = mw.write_manifest_file().await.unwrap();
    let list_path = format!("{location}/metadata/snap-other-{snapshot_id}.avro");
    let mut lw = ManifestListWriter::v2(
        base.file_io
            .new_output(&list_path)
            .unwrap()
            .writer()
            .await
            .unwrap(),
        snapshot_id,
        meta.current_snapshot_id(),
        sequence_number,
    );
    lw.add_manifests(
        list.entries()
            .iter()
            .cloned()
            .chain(std::iter::once(delete_manifest)),
    )
    .unwrap();
    lw.close().await.unwrap();
    let snapshot = Snapshot::builder()
        .with_snapshot_id(snapshot_id)
        .with_parent_snapshot_id(meta.current_snapshot_id())
        .with_sequence_number(sequence_number)
        .with_timestamp_ms(chrono::Utc::now().timestamp_millis())
        .with_manifest_list(list_path)
        .with_schema_id(meta.current_schema_id())
        .with_summary(Summary {
            operation: Operation::Overwrite,
            additional_properties: HashMap::from([
                ("added-delete-files".to_string(), "1".to_string()),
                ("added-position-deletes".to_string(), "1".to_string()),
                ("engine-name".to_string(), "other".to_string()),
            ]),
        })
        .build();
    let built = meta
        .as_ref()
        .clone()
        .into_builder(Some(base.metadata_location.clone()))
        .set_branch_snapshot(snapshot, MAIN_BRANCH)
        .unwrap()
        .build()
        .unwrap();
    catalog
        .swap(
            &base,
            firn::catalog::StagedMetadata {
                metadata: built.metadata,
                changes: built.changes,
                branch: None,
            },
        )
        .await
        .unwrap();
    path
}

async fn delete_manifests(catalog: &dyn Catalog, ident: &iceberg::TableIdent) -> usize {
    let t = catalog.load(ident).await.unwrap();
    let list = t
        .manifest_list(t.metadata.current_snapshot().unwrap())
        .await
        .unwrap();
    list.entries()
        .iter()
        .filter(|m| m.content == iceberg::spec::ManifestContentType::Deletes)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_engines_delete_files_are_carried_and_refused_by_rewrites() {
    let (lake, catalog, _, ident) = lake_with_old_minute_rows().await;
    let before = table_sums(catalog.as_ref(), &lake).await;

    let delete_path = commit_position_delete(catalog.as_ref(), &ident).await;
    let deleted = table_sums(catalog.as_ref(), &lake).await;
    assert_eq!(
        deleted["requests"],
        before["requests"] - 1,
        "row 0 is deleted"
    );
    let theirs = foreign(&lake, "sums", None);
    for m in SUMS {
        assert_eq!(
            theirs[m].as_i64().unwrap(),
            deleted[m],
            "PyIceberg reads {m}"
        );
    }

    // firn's commits carry the delete manifest untouched.
    old_minute_rows(catalog.as_ref(), &lake).await;
    assert_eq!(delete_manifests(catalog.as_ref(), &ident).await, 1);
    let after_append = table_sums(catalog.as_ref(), &lake).await;
    for m in SUMS {
        assert_eq!(after_append[m], deleted[m] + before[m], "{m}");
    }
    let out = lake.run(&["rewrite-manifests", "usage.http_requests"]);
    assert_eq!(delete_manifests(catalog.as_ref(), &ident).await, 1, "{out}");
    assert_eq!(table_sums(catalog.as_ref(), &lake).await, after_append);

    // Rewrites would have to apply the deletes: refused, naming one.
    let unchanged = catalog
        .load(&ident)
        .await
        .unwrap()
        .metadata
        .current_snapshot_id();
    for command in ["rollup", "compact", "retention"] {
        let out = lake
            .firn()
            .args([command, "usage.http_requests"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{command}: {stderr}");
        assert!(
            stderr.contains("delete file") && stderr.contains(&delete_path),
            "{command}: {stderr}"
        );
    }
    assert_eq!(
        catalog
            .load(&ident)
            .await
            .unwrap()
            .metadata
            .current_snapshot_id(),
        unchanged
    );
}

/// An ingest-like commit of one minute row claiming `from -> to` on
/// partition 0 of topic `t` for group `g`.
async fn claim(
    catalog: &dyn Catalog,
    decl: &TableDecl,
    from: Option<i64>,
    to: i64,
) -> firn::Result<firn::commit::Committed> {
    let ident = tables::ident(decl).unwrap();
    let spec = MeasureSpec::new(decl);
    let mut rows = RowMap::default();
    rows.add_event(
        &spec,
        RowKey {
            dims: vec![
                DimValue::Long(to),
                DimValue::Long(0),
                DimValue::Str("x".into()),
                DimValue::Str("x".into()),
            ],
            ts_micros: chrono::Utc::now().timestamp_micros() / 60_000_000 * 60_000_000,
        },
        &[None, Some(MeasureValue::Long(Some(1))), None, None],
    );
    let table = catalog.load(&ident).await.unwrap();
    let files = firn::write::write_rows(
        &table,
        decl,
        firn::schema::layout::Grain::Minute,
        rows.sorted(&firn::rows::MeasureSpec::new(decl)),
        128 << 20,
    )
    .await
    .unwrap();
    let change = firn::commit::Change::append(FirnOperation::Ingest, files).with_offsets(
        offsets::OffsetAdvance {
            group: "g".into(),
            topic: "t".into(),
            from: BTreeMap::from([(0, from)]),
            to: BTreeMap::from([(0, to)]),
        },
    );
    firn::commit::commit(
        catalog,
        &ident,
        &change,
        firn::commit::RetryPolicy::default(),
    )
    .await
}

/// Other engines' append and expiry (keeping only their own snapshot)
/// between firn's batches: a zombie replaying a committed range is fenced,
/// and of two batches racing from the table's position exactly one commits.
async fn fence_across_other_engines(catalog: &dyn Catalog, decl: &TableDecl, target: &Target) {
    let ident = tables::ident(decl).unwrap();
    let position = async || -> i64 {
        let t = catalog.load(&ident).await.unwrap();
        offsets::read(&t.metadata, "g").unwrap()["t"][&0]
    };
    claim(catalog, decl, None, 10).await.unwrap();
    let minute_ago = (chrono::Utc::now() - chrono::Duration::minutes(5))
        .format("%Y-%m-%dT%H:%M:00+00:00")
        .to_string();
    for (step, arg) in [
        ("append", Some(minute_ago.as_str())),
        ("expire-all-but-current", None),
    ] {
        foreign_at(target, step, arg);
        let at = position().await;
        let zombie = claim(catalog, decl, None, 10).await.unwrap_err();
        assert_eq!(zombie.kind(), firn::ErrorKind::Fenced, "{step}: {zombie}");
        let (a, b) = tokio::join!(
            claim(catalog, decl, Some(at), at + 10),
            claim(catalog, decl, Some(at), at + 10)
        );
        let fenced = [&a, &b]
            .iter()
            .filter(|r| {
                r.as_ref()
                    .is_err_and(|e| e.kind() == firn::ErrorKind::Fenced)
            })
            .count();
        assert_eq!(
            (a.is_ok() as u8 + b.is_ok() as u8, fenced),
            (1, 1),
            "{step}: {a:?} {b:?}"
        );
        assert_eq!(position().await, at + 10, "{step}");
    }
    let t = catalog.load(&ident).await.unwrap();
    assert_eq!(
        t.metadata.snapshots().count(),
        2,
        "the other engine's snapshot and firn's last batch"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fence_admits_one_of_two_racing_batches_across_other_engines_commits() {
    let lake = Lake::without_broker();
    lake.run(&["tables", "sync"]);
    let catalog = lake.catalog().await;
    fence_across_other_engines(catalog.as_ref(), &lake.decl(), &sql_target(&lake)).await;
}

/// The same on the REST catalog and S3 (SeaweedFS): the ledger's mirror
/// travels in the REST commit's `set-properties` update.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_survives_other_engines_on_rest_and_s3() {
    let weed = Seaweed::start();
    let o = firn::config::Overrides {
        catalog_credential: Some(weed.credential()),
        ..weed.overrides()
    };
    let catalog = Config::with_overrides(&o)
        .unwrap()
        .open_catalog()
        .await
        .unwrap();
    let decl = TableDecl::load(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("schemas/usage.http_requests.toml"),
    )
    .unwrap();
    tables::sync(catalog.as_ref(), &decl, Default::default())
        .await
        .unwrap();
    let (args, envs) = weed.reader_args();
    let target = Target { args, envs };
    fence_across_other_engines(catalog.as_ref(), &decl, &target).await;
}
