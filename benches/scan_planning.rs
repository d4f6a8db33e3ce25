//! Scan planning for one hour of data, before and after `rewrite-manifests`.
//!
//! Builds a table from 2,000 small appends (one per minute, merge-on-commit
//! off, as a table that never had maintenance), then plans a scan of one hour
//! and counts the files planning opens (manifest list and manifests) and its
//! time; rewrites the manifests and plans again. Prints JSON.
//! Run: `cargo bench --bench scan_planning`.

use std::path::Path;
use std::time::Instant;

use chrono::{Duration, TimeZone, Utc};
use firn::catalog::{Catalog, TableHandle};
use firn::commit::manifests::MERGE_ENABLED_PROP;
use firn::commit::{self, Change, FirnOperation, RetryPolicy};
use firn::config::{Config, Overrides};
use firn::rows::{DimValue, MeasureSpec, MeasureValue, RowKey, RowMap};
use firn::schema::decl::TableDecl;
use firn::schema::layout::Grain;
use firn::{maintain, tables, write};
use futures::TryStreamExt;
use iceberg::expr::Reference;
use iceberg::spec::Datum;

const APPENDS: i64 = 2_000;

async fn plan_one_hour(catalog: &dyn Catalog, table: &TableHandle, hour: i64) -> (usize, u64, f64) {
    let opened = catalog.storage().files_opened();
    let started = Instant::now();
    let start = hour * 3_600_000_000;
    let filter = Reference::new("ts")
        .greater_than_or_equal_to(Datum::timestamptz_micros(start))
        .and(Reference::new("ts").less_than(Datum::timestamptz_micros(start + 3_600_000_000)));
    let t = table.table().unwrap();
    let tasks: Vec<_> = t
        .scan()
        .with_filter(filter)
        .build()
        .unwrap()
        .plan_files()
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let seconds = started.elapsed().as_secs_f64();
    (
        tasks.len(),
        catalog.storage().files_opened() - opened,
        seconds,
    )
}

fn main() {
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Config::with_overrides(&Overrides {
            catalog_uri: Some(format!("sqlite://{}?mode=rwc", dir.path().join("c.db").display())),
            warehouse: Some(dir.path().join("w").display().to_string()),
            ..Default::default()
        })
        .unwrap()
        .open_catalog()
        .await
        .unwrap();
        let decl = TableDecl::parse(
            Path::new("schemas/usage.http_requests.toml"),
            include_str!("../schemas/usage.http_requests.toml"),
        )
        .unwrap();
        tables::sync(catalog.as_ref(), &decl, Default::default())
        .await
        .unwrap();
        let ident = tables::ident(&decl).unwrap();
        commit::update_metadata(catalog.as_ref(), &ident, RetryPolicy::default(), |base| {
            let mut props = base.metadata.properties().clone();
            props.insert(MERGE_ENABLED_PROP.into(), "false".into());
            Ok(Some(
                (*base.metadata)
                    .clone()
                    .into_builder(Some(base.metadata_location.clone()))
                    .set_properties(props)
                    .map_err(|e| firn::Error::iceberg("properties", e))?,
            ))
        })
        .await
        .unwrap();

        let spec = MeasureSpec::new(&decl);
        let start = Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap();
        let started = Instant::now();
        for i in 0..APPENDS {
            let table = catalog.load(&ident).await.unwrap();
            let mut rows = RowMap::default();
            let ts = start + Duration::minutes(i);
            for k in 0..20 {
                rows.add_event(
                    &spec,
                    RowKey {
                        dims: vec![DimValue::Long(k), DimValue::Long(1), DimValue::Str("AMS".into()), DimValue::Str("cdn".into())],
                        ts_micros: ts.timestamp_micros(),
                    },
                    &[None, Some(MeasureValue::Long(Some(1))), Some(MeasureValue::Long(Some(1))), Some(MeasureValue::Long(Some(1)))],
                );
            }
            let files = write::write_rows(&table, &decl, Grain::Minute, rows.sorted(&firn::rows::MeasureSpec::new(&decl)), 1 << 27).await.unwrap();
            commit::commit(catalog.as_ref(), &ident, &Change::append(FirnOperation::Backfill, files), RetryPolicy::default())
                .await
                .unwrap();
            if i % 200 == 199 {
                let later = maintain::Context::new(catalog.as_ref(), Utc::now() + Duration::days(1));
                let keep_three = maintain::expire::ExpireSnapshotsOptions {
                    older_than: firn::clock::Span::from_secs(0),
                    retain_last: 3,
                    ..Default::default()
                };
                maintain::expire::run(&later, &decl, &keep_three).await.unwrap();
            }
        }
        eprintln!("{APPENDS} appends in {:.1}s", started.elapsed().as_secs_f64());
        let hour = Grain::Minute.partition_ordinal((start + Duration::hours(20)).timestamp_micros()) as i64;

        let table = catalog.load(&ident).await.unwrap();
        let manifests_before = table.manifest_list(table.metadata.current_snapshot().unwrap()).await.unwrap().entries().len();
        let (files_b, opened_b, secs_b) = plan_one_hour(catalog.as_ref(), &table, hour).await;
        let ctx = maintain::Context::new(catalog.as_ref(), Utc::now());
        let r = maintain::manifests::run(&ctx, &decl, &Default::default()).await.unwrap();
        let table = catalog.load(&ident).await.unwrap();
        let (files_a, opened_a, secs_a) = plan_one_hour(catalog.as_ref(), &table, hour).await;
        println!(
            "{}",
            serde_json::json!({
                "appends": APPENDS,
                "before": {"manifests": manifests_before, "data_files_planned": files_b, "files_opened": opened_b, "planning_ms": secs_b * 1000.0},
                "after": {"manifests": r.manifests_after, "data_files_planned": files_a, "files_opened": opened_a, "planning_ms": secs_a * 1000.0},
            })
        );
    });
}
