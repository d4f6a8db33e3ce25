//! Independent readers: after every step of a pipeline (appends, compaction,
//! rollup, manifest rewrite, expiry, orphan removal), PyIceberg and DuckDB's
//! iceberg extension read the table and their per-day totals must equal
//! firn's. Any disagreement fails the test and names the step.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use chrono::{Duration as ChronoDuration, Utc};
use firn::catalog::Catalog;
use firn::clock::Span;
use firn::maintain::expire::ExpireSnapshotsOptions;
use firn::maintain::orphans::RemoveOrphansOptions;
use firn::maintain::tier::{CompactOptions, RollupOptions};
use firn::maintain::{Context, Operation, Report};
use firn::read;
use firn::rows::{DimValue, MeasureSpec, MeasureValue, RowKey, RowMap};
use firn::schema::decl::{Agg, TableDecl};
use firn::schema::layout::Grain;
use firn::tables;
use serde_json::{Value, json};

use firn::config::{Config, Overrides};

use crate::common::{Seaweed, lake_named, postgres_uri, python};

/// firn's totals in the readers' JSON shape.
fn firn_json(decl: &TableDecl, t: &read::Totals) -> Value {
    let measures = |m: &firn::rows::Measures| -> Value {
        decl.measures
            .iter()
            .zip(&m.0)
            .map(|(d, v)| {
                let v = match v {
                    MeasureValue::Long(v) => json!(v),
                    MeasureValue::Double(v) => json!(v.map(|x| x as i64)),
                };
                (d.name.clone(), v)
            })
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    json!({
        "all": measures(&t.all),
        "per_day": t.per_day.iter().map(|(d, m)| (d.to_string(), measures(m))).collect::<BTreeMap<_, _>>(),
    })
}

/// How the Python readers reach the table.
pub(crate) struct ReaderArgs {
    pub(crate) args: Vec<String>,
    pub(crate) envs: Vec<(String, String)>,
}

pub(crate) fn readers(r: &ReaderArgs, decl: &TableDecl) -> Value {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/readers/totals.py");
    let mut cmd = Command::new(python());
    cmd.arg(script)
        .args(&r.args)
        .args(["--table", &decl.qualified_name()])
        .envs(r.envs.iter().map(|(k, v)| (k, v)));
    for m in &decl.measures {
        let agg = match m.agg {
            Agg::Max => "max",
            Agg::Min => "min",
            _ => "sum",
        };
        cmd.args(["--measure", &format!("{}:{agg}", m.name)]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "reader failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

async fn append(catalog: &dyn Catalog, decl: &TableDecl, hours_ago: i64, seed: i64) {
    let spec = MeasureSpec::new(decl);
    let mut rows = RowMap::default();
    for i in 0..500i64 {
        let ts = Utc::now()
            - ChronoDuration::hours(hours_ago)
            - ChronoDuration::minutes((i * 7 + seed) % 600);
        rows.add_event(
            &spec,
            RowKey {
                dims: vec![
                    DimValue::Long(i % 5),
                    if i % 4 == 0 {
                        DimValue::Null
                    } else {
                        DimValue::Long(2)
                    },
                    DimValue::Str(["AMS", "Zürich", "東京"][(i % 3) as usize].into()),
                    DimValue::Str("cdn".into()),
                ],
                ts_micros: Grain::Minute.truncate(ts.timestamp_micros()),
            },
            &[
                None,
                Some(MeasureValue::Long(Some(i * 13 + seed))),
                Some(MeasureValue::Long(Some(i % 11))),
                Some(MeasureValue::Long(Some((i * seed) % 977))),
            ],
        );
    }
    crate::common::append_minute_rows(catalog, decl, rows).await;
}

async fn pipeline_on_sql(uri: Option<&str>) {
    let (dir, catalog, decl, name) = lake_named(uri).await;
    let warehouse = format!(
        "file://{}",
        std::fs::canonicalize(dir.path().join("warehouse"))
            .unwrap()
            .display()
    );
    let py_uri = match uri {
        Some(u) => u.replacen("postgres://", "postgresql+psycopg2://", 1),
        None => format!("sqlite:///{}", dir.path().join("catalog.db").display()),
    };
    let args = ReaderArgs {
        args: [
            "--catalog-uri",
            &py_uri,
            "--catalog-name",
            &name,
            "--warehouse",
            &warehouse,
        ]
        .map(String::from)
        .to_vec(),
        envs: Vec::new(),
    };
    pipeline(catalog.as_ref(), &decl, &args, &format!("{uri:?}")).await;
}

async fn pipeline(catalog: &dyn Catalog, decl: &TableDecl, reader: &ReaderArgs, label: &str) {
    let decl = decl.clone();
    let ident = tables::ident(&decl).unwrap();
    let now = Utc::now();
    let steps = [
        "append",
        "append-late",
        "append-again",
        "compact",
        "rollup",
        "rewrite-manifests",
        "expire-snapshots",
        "remove-orphans",
    ];
    for step in steps {
        match step {
            "append" => append(catalog, &decl, 3, 1).await,
            "append-late" => append(catalog, &decl, 24 * 9, 2).await,
            "append-again" => append(catalog, &decl, 3, 3).await,
            "compact" | "rollup" => {
                let op = if step == "compact" {
                    Operation::Compact(CompactOptions::default())
                } else {
                    Operation::Rollup(RollupOptions::default())
                };
                let r = op.run(&Context::new(catalog, now), &decl).await.unwrap();
                let (Report::Compact(r) | Report::Rollup(r)) = r else {
                    unreachable!()
                };
                assert!(!r.plan.is_empty(), "{step} had nothing to do");
                assert_eq!(r.run.failed, 0);
            }
            "rewrite-manifests" => {
                let op = Operation::RewriteManifests(Default::default());
                op.run(&Context::new(catalog, now), &decl).await.unwrap();
            }
            "expire-snapshots" => {
                let op = Operation::ExpireSnapshots(ExpireSnapshotsOptions {
                    older_than: Span::from_secs(0),
                    retain_last: 2,
                    ..Default::default()
                });
                let later = Context::new(catalog, Utc::now() + ChronoDuration::days(1));
                let Report::ExpireSnapshots(r) = op.run(&later, &decl).await.unwrap() else {
                    unreachable!()
                };
                assert!(!r.expired_snapshots.is_empty());
            }
            _ => {
                let op = Operation::RemoveOrphans(RemoveOrphansOptions {
                    older_than: Span::from_secs(3600),
                    ..Default::default()
                });
                op.run(&Context::new(catalog, Utc::now()), &decl)
                    .await
                    .unwrap();
            }
        }
        let table = catalog.load(&ident).await.unwrap();
        let mine = firn_json(&decl, &read::totals(&table, &decl).await.unwrap());
        let theirs = readers(reader, &decl);
        for which in ["pyiceberg", "duckdb"] {
            assert_eq!(
                theirs[which]["all"], mine["all"],
                "{which} disagrees after {step} ({label})"
            );
            assert_eq!(
                theirs[which]["per_day"], mine["per_day"],
                "{which} disagrees per day after {step} ({label})"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyiceberg_and_duckdb_agree_after_every_step_on_sqlite() {
    pipeline_on_sql(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyiceberg_and_duckdb_agree_after_every_step_on_postgres() {
    if let Some(uri) = postgres_uri() {
        pipeline_on_sql(Some(&uri)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyiceberg_and_duckdb_agree_after_every_step_on_rest_and_s3() {
    let weed = Seaweed::start();
    let o = Overrides {
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
    let args = rest_reader(&weed);
    pipeline(catalog.as_ref(), &decl, &args, "REST + S3").await;
}

/// The conformance run: ingest from tansu (1% malformed, events over ten
/// days), then the hourly and daily jobs; after each step the totals are
/// exact and PyIceberg and DuckDB agree with firn.
async fn conformance(lake: &crate::common::Lake, reader: &ReaderArgs, label: &str) {
    lake.create_topic(4).await;
    assert!(lake.run(&["tables", "sync"]).contains("created"));
    let report = lake
        .produce(firn::produce::ProduceOptions {
            count: 30_000,
            seed: 17,
            bad_ratio: 0.01,
            spread: Duration::from_secs(10 * 86_400),
            ..Default::default()
        })
        .await;
    let mut worker = lake.spawn_ingest("conformance", &[]);
    let catalog = lake.catalog().await;
    lake.drain_and_stop(
        &mut worker,
        "conformance",
        report.sent as i64,
        Duration::from_secs(600),
    )
    .await;
    let decl = lake.decl();
    let ident = tables::ident(&decl).unwrap();
    let rejects = read::rejects(
        &catalog
            .load(&tables::rejects_ident(&decl).unwrap())
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(rejects.len() as u64, report.malformed, "{label}");
    for step in ["ingest", "hourly.toml", "daily.toml"] {
        if step != "ingest" {
            let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("jobs")
                .join(step);
            lake.run(&["maintain", "--job", path.to_str().unwrap()]);
        }
        let totals = read::totals(&catalog.load(&ident).await.unwrap(), &decl)
            .await
            .unwrap();
        for m in &decl.measures {
            assert_eq!(
                json!(totals.long(&decl, &m.name)),
                report.totals[&m.name],
                "{} after {step} on {label}",
                m.name
            );
        }
        let mine = firn_json(&decl, &totals);
        let theirs = readers(reader, &decl);
        for which in ["pyiceberg", "duckdb"] {
            assert_eq!(
                theirs[which]["per_day"], mine["per_day"],
                "{which} after {step} on {label}"
            );
        }
    }
}

fn rest_reader(weed: &Seaweed) -> ReaderArgs {
    let (args, envs) = weed.reader_args();
    ReaderArgs { args, envs }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_rest_catalog_and_s3() {
    let broker = crate::common::Broker::start();
    let weed = Seaweed::start();
    let lake = crate::common::Lake::on_rest(&broker, &weed);
    conformance(&lake, &rest_reader(&weed), "REST + S3").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_sqlite_and_local_files() {
    let broker = crate::common::Broker::start();
    let lake = crate::common::Lake::new(&broker);
    let reader = ReaderArgs {
        args: [
            "--catalog-uri".to_string(),
            format!("sqlite:///{}", lake.path().join("catalog.db").display()),
            "--warehouse".into(),
            format!("file://{}", lake.path().join("warehouse").display()),
        ]
        .to_vec(),
        envs: Vec::new(),
    };
    conformance(&lake, &reader, "SQLite + local files").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_postgres_and_local_files() {
    let Some(uri) = postgres_uri() else { return };
    let broker = crate::common::Broker::start();
    let name = format!("firn-test-{}", uuid::Uuid::now_v7());
    let lake = crate::common::Lake::on_sql(&broker, &uri, &name);
    let reader = ReaderArgs {
        args: [
            "--catalog-uri".to_string(),
            uri.replacen("postgres://", "postgresql+psycopg2://", 1),
            "--catalog-name".into(),
            name.clone(),
            "--warehouse".into(),
            format!("file://{}", lake.path().join("warehouse").display()),
        ]
        .to_vec(),
        envs: Vec::new(),
    };
    conformance(&lake, &reader, "PostgreSQL + local files").await;
}
