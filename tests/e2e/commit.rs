//! The commit layer on a real SQLite catalog: compare-and-set conflicts are
//! retried until every commit lands; a batch whose offsets another commit
//! already covered is fenced, however the race falls.

use std::collections::BTreeMap;

use firn::catalog::Catalog;
use firn::commit::{self, Change, FirnOperation, RetryPolicy};
use firn::offsets::{self, OffsetAdvance};
use firn::rows::{DimValue, MeasureSpec, MeasureValue, RowKey, RowMap};
use firn::schema::decl::TableDecl;
use firn::schema::layout::Grain;
use firn::{ErrorKind, read, tables, write};

use crate::common::{lake_on, postgres_uri};

/// Files holding `events` events of one key at a recent minute.
async fn files(catalog: &dyn Catalog, decl: &TableDecl, events: i64) -> Vec<commit::NewFile> {
    let spec = MeasureSpec::new(decl);
    let mut rows = RowMap::default();
    let minute = (chrono::Utc::now().timestamp() / 60 * 60) * 1_000_000;
    for _ in 0..events {
        rows.add_event(
            &spec,
            RowKey {
                dims: vec![
                    DimValue::Long(1),
                    DimValue::Long(2),
                    DimValue::Str("AMS".into()),
                    DimValue::Str("cdn".into()),
                ],
                ts_micros: minute,
            },
            &[
                None,
                Some(MeasureValue::Long(Some(10))),
                Some(MeasureValue::Long(Some(1))),
                Some(MeasureValue::Long(Some(5))),
            ],
        );
    }
    let table = catalog.load(&tables::ident(decl).unwrap()).await.unwrap();
    write::write_rows(
        &table,
        decl,
        Grain::Minute,
        rows.sorted(&firn::rows::MeasureSpec::new(decl)),
        1 << 27,
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_all_land_through_retries() {
    concurrent_appends(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_all_land_through_retries_on_postgres() {
    if let Some(uri) = postgres_uri() {
        concurrent_appends(Some(&uri)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_range_commits_once() {
    same_range(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_range_commits_once_on_postgres() {
    if let Some(uri) = postgres_uri() {
        same_range(Some(&uri)).await;
    }
}

async fn concurrent_appends(uri: Option<&str>) {
    let (_dir, catalog, decl) = lake_on(uri).await;
    let ident = tables::ident(&decl).unwrap();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let catalog = catalog.clone();
        let decl = decl.clone();
        let ident = ident.clone();
        tasks.push(tokio::spawn(async move {
            let f = files(catalog.as_ref(), &decl, i + 1).await;
            commit::commit(
                catalog.as_ref(),
                &ident,
                &Change::append(FirnOperation::Backfill, f),
                RetryPolicy::default(),
            )
            .await
            .unwrap()
            .attempts
        }));
    }
    let mut attempts = 0;
    for t in tasks {
        attempts += t.await.unwrap();
    }
    let table = catalog.load(&ident).await.unwrap();
    assert_eq!(table.metadata.snapshots().count(), 8);
    let totals = read::totals(&table, &decl).await.unwrap();
    assert_eq!(totals.long(&decl, "requests"), (1..=8).sum::<i64>());
    assert_eq!(totals.long(&decl, "bytes"), 10 * (1..=8).sum::<i64>());
    eprintln!("MEASURE 8 concurrent appends on {uri:?} took {attempts} attempts in all");
}

async fn same_range(uri: Option<&str>) {
    let (_dir, catalog, decl) = lake_on(uri).await;
    let ident = tables::ident(&decl).unwrap();
    let claim = |from: Option<i64>, to: i64| OffsetAdvance {
        group: "g".into(),
        topic: decl.topic.clone(),
        from: BTreeMap::from([(0, from), (1, from)]),
        to: BTreeMap::from([(0, to), (1, to)]),
    };

    // Two workers race with batches over the same range: one lands, the
    // other is fenced, whichever order the catalog sees them in.
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let catalog = catalog.clone();
        let decl = decl.clone();
        let ident = ident.clone();
        let advance = claim(None, 100);
        tasks.push(tokio::spawn(async move {
            let change = Change::append(
                FirnOperation::Ingest,
                files(catalog.as_ref(), &decl, 7).await,
            )
            .with_offsets(advance);
            commit::commit(catalog.as_ref(), &ident, &change, RetryPolicy::default()).await
        }));
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap());
    }
    assert_eq!(outcomes.iter().filter(|r| r.is_ok()).count(), 1);
    let err = outcomes.into_iter().find_map(Result::err).unwrap();
    assert_eq!(err.kind(), ErrorKind::Fenced, "{err}");

    let table = catalog.load(&ident).await.unwrap();
    assert_eq!(
        offsets::read(&table.metadata, "g").unwrap()["http-requests"][&0],
        100
    );
    let totals = read::totals(&table, &decl).await.unwrap();
    assert_eq!(totals.long(&decl, "requests"), 7);

    // The next batch from where the table is lands; another group's offsets
    // are carried forward untouched by every commit.
    let change = Change::append(
        FirnOperation::Ingest,
        files(catalog.as_ref(), &decl, 3).await,
    )
    .with_offsets(claim(Some(100), 150));
    commit::commit(catalog.as_ref(), &ident, &change, RetryPolicy::default())
        .await
        .unwrap();
    let other = Change::append(FirnOperation::Ingest, Vec::new()).with_offsets(OffsetAdvance {
        group: "other".into(),
        ..claim(None, 5)
    });
    let table = commit::commit(catalog.as_ref(), &ident, &other, RetryPolicy::default())
        .await
        .unwrap()
        .table;
    let all = offsets::read_all(&table.metadata).unwrap();
    assert_eq!(all["g"]["http-requests"][&1], 150);
    assert_eq!(all["other"]["http-requests"][&1], 5);
    assert_eq!(
        read::totals(&table, &decl)
            .await
            .unwrap()
            .long(&decl, "requests"),
        10
    );
}

async fn rest_lake(
    weed: &crate::common::Seaweed,
) -> (std::sync::Arc<dyn firn::catalog::Catalog>, TableDecl) {
    let o = firn::config::Overrides {
        catalog_credential: Some(weed.credential()),
        ..weed.overrides()
    };
    let catalog = firn::config::Config::with_overrides(&o)
        .unwrap()
        .open_catalog()
        .await
        .unwrap();
    let decl = TableDecl::load(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/usage.http_requests.toml"),
    )
    .unwrap();
    tables::sync(catalog.as_ref(), &decl, Default::default())
        .await
        .unwrap();
    (catalog, decl)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rest_commit_conflicts_are_retried_and_every_commit_lands() {
    let weed = crate::common::Seaweed::start();
    let (catalog, decl) = rest_lake(&weed).await;
    let ident = tables::ident(&decl).unwrap();
    let mut tasks = Vec::new();
    for i in 0..6 {
        let catalog = catalog.clone();
        let decl = decl.clone();
        let ident = ident.clone();
        tasks.push(tokio::spawn(async move {
            let f = files(catalog.as_ref(), &decl, i + 1).await;
            let started = std::time::Instant::now();
            let c = commit::commit(
                catalog.as_ref(),
                &ident,
                &Change::append(FirnOperation::Backfill, f),
                RetryPolicy::default(),
            )
            .await
            .unwrap();
            (c.attempts, started.elapsed())
        }));
    }
    let mut attempts = 0;
    let mut latencies = Vec::new();
    for t in tasks {
        let (a, l) = t.await.unwrap();
        attempts += a;
        latencies.push(l);
    }
    latencies.sort();
    eprintln!(
        "MEASURE REST: 6 concurrent appends took {attempts} attempts; latency p50 {:?} max {:?}",
        latencies[latencies.len() / 2],
        latencies.last().unwrap()
    );
    assert!(
        attempts > 6,
        "no commit conflicted, so the test proved nothing"
    );
    let table = catalog.load(&ident).await.unwrap();
    assert_eq!(table.metadata.snapshots().count(), 6);
    let totals = read::totals(&table, &decl).await.unwrap();
    assert_eq!(totals.long(&decl, "requests"), (1..=6).sum::<i64>());
}

#[test]
fn credentials_never_reach_logs_or_errors() {
    let weed = crate::common::Seaweed::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("schemas")).unwrap();
    std::fs::copy(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/usage.http_requests.toml"),
        dir.path().join("schemas/usage.http_requests.toml"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("firn.toml"),
        format!(
            "[catalog]\ntype = \"rest\"\nuri = \"http://127.0.0.1:{}\"\nwarehouse = \"warehouse\"\n\
             [storage]\naws_endpoint = \"http://127.0.0.1:{}\"\naws_region = \"us-east-1\"\naws_allow_http = \"true\"\n",
            weed.rest_port, weed.s3_port
        ),
    )
    .unwrap();
    let run = |args: &[&str], secret: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_firn"))
            .current_dir(dir.path())
            .args(args)
            .env("RUST_LOG", "trace")
            .env(
                "FIRN_CATALOG_CREDENTIAL",
                format!("{}:{secret}", crate::common::S3_KEY),
            )
            .env("AWS_ACCESS_KEY_ID", crate::common::S3_KEY)
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // Exit 2 is `status` reporting an unhealthy table (no broker, no
        // ingest here): the command ran, which is what counts.
        (matches!(out.status.code(), Some(0 | 2)), text)
    };
    let mut seen = String::new();
    for args in [
        &["tables", "sync"][..],
        &["status", "--json"],
        &[
            "maintain",
            "--job",
            concat!(env!("CARGO_MANIFEST_DIR"), "/jobs/daily.toml"),
        ],
    ] {
        let (ok, text) = run(args, &weed.secret);
        assert!(ok, "firn {args:?} failed: {text}");
        seen.push_str(&text);
    }
    assert!(seen.len() > 1000, "too little output to prove anything");
    assert!(!seen.contains(&weed.secret), "the secret appeared in a log");
    // A wrong secret fails, and the error does not echo it.
    let wrong = "wrong-secret-hunter2";
    let (ok, text) = run(&["status"], wrong);
    assert!(!ok);
    assert!(!text.contains(wrong), "{text}");
}

async fn sequential_latency(catalog: &dyn firn::catalog::Catalog, decl: &TableDecl, label: &str) {
    let ident = tables::ident(decl).unwrap();
    let mut took = Vec::new();
    for i in 0..20 {
        let f = files(catalog, decl, i + 1).await;
        let started = std::time::Instant::now();
        commit::commit(
            catalog,
            &ident,
            &Change::append(FirnOperation::Backfill, f),
            RetryPolicy::default(),
        )
        .await
        .unwrap();
        took.push(started.elapsed());
    }
    took.sort();
    eprintln!(
        "MEASURE {label}: commit latency p50 {:?} p99 {:?} over 20 sequential appends",
        took[10], took[19]
    );
    let table = catalog.load(&ident).await.unwrap();
    assert_eq!(table.metadata.snapshots().count(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_latency_on_every_catalog() {
    let (_d, sqlite, decl) = lake_on(None).await;
    sequential_latency(sqlite.as_ref(), &decl, "SQLite").await;
    if let Some(uri) = postgres_uri() {
        let (_d, pg, decl) = lake_on(Some(&uri)).await;
        sequential_latency(pg.as_ref(), &decl, "PostgreSQL").await;
    }
    let weed = crate::common::Seaweed::start();
    let (rest, decl) = rest_lake(&weed).await;
    sequential_latency(rest.as_ref(), &decl, "REST (SeaweedFS, S3)").await;
}
