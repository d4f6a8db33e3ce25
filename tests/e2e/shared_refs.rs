//! A shared lake's refs and paths: a tag and a branch other writers made
//! survive `firn expire-snapshots` with every file they read, and
//! `firn remove-orphans` on S3 keeps every file the metadata references
//! however its writer spelled the path (percent-encoded partition values),
//! while it still removes real orphans.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use chrono::{Duration as ChronoDuration, Utc};
use firn::catalog::Catalog;
use firn::commit::{self, RetryPolicy};
use firn::config::{Config, Overrides};
use firn::maintain::reach;
use firn::read;
use firn::rows::{DimValue, MeasureSpec, MeasureValue, RowKey, RowMap};
use firn::schema::decl::TableDecl;
use firn::schema::layout::Grain;
use firn::tables;
use iceberg::spec::{PartitionStatisticsFile, StatisticsFile};
use serde_json::Value;

use crate::common::{Lake, S3_KEY, Seaweed, python};

/// Run a PyIceberg script (`catalog` and `table` are bound, `args` holds
/// the extra arguments); its last stdout line is JSON.
fn pyiceberg(catalog: &PyCatalog, script: &str, args: &[String]) -> Value {
    let prelude = r#"
import json, sys
from datetime import datetime, timedelta, timezone
import pyarrow as pa
import pyarrow.compute as pc
kind, uri, warehouse, s3 = sys.argv[1:5]
args = sys.argv[5:]
if kind == "rest":
    import os
    from pyiceberg.catalog.rest import RestCatalog
    catalog = RestCatalog("firn", **{
        "uri": uri, "warehouse": warehouse,
        "credential": os.environ["FIRN_CATALOG_CREDENTIAL"],
        "s3.endpoint": s3, "s3.region": "us-east-1",
        "s3.access-key-id": os.environ["AWS_ACCESS_KEY_ID"],
        "s3.secret-access-key": os.environ["AWS_SECRET_ACCESS_KEY"],
    })
else:
    from pyiceberg.catalog.sql import SqlCatalog
    catalog = SqlCatalog("firn", uri=uri, warehouse=warehouse)
table = catalog.load_table("usage.http_requests")

def sums(arrow):
    return {"rows": arrow.num_rows,
            **{m: int(pc.sum(arrow[m]).as_py() or 0) for m in ["requests", "bytes", "cpu_ms"]}}

def rows(values):
    schema = table.schema().as_arrow()
    n = len(next(iter(values.values())))
    cols = [pa.array(values.get(f.name, [None] * n), type=f.type) for f in schema]
    return pa.Table.from_arrays(cols, schema=schema)
"#;
    let out = Command::new(python())
        .arg("-c")
        .arg(format!("{prelude}\n{script}"))
        .args([&catalog.kind, &catalog.uri, &catalog.warehouse, &catalog.s3])
        .args(args)
        .envs(catalog.envs.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "PyIceberg failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or("null")).unwrap()
}

/// How PyIceberg reaches the catalog a test uses.
struct PyCatalog {
    kind: String,
    uri: String,
    warehouse: String,
    s3: String,
    envs: Vec<(String, String)>,
}

/// Minute rows `hours_ago` hours back and earlier, `n` of them; the commit.
async fn append(catalog: &dyn Catalog, decl: &TableDecl, seed: i64, n: i64, hours_ago: i64) -> i64 {
    let spec = MeasureSpec::new(decl);
    let mut rows = RowMap::default();
    let now = Utc::now();
    for i in 0..n {
        let ts = now - ChronoDuration::hours(hours_ago) - ChronoDuration::minutes((i * 13) % 240);
        rows.add_event(
            &spec,
            RowKey {
                dims: vec![
                    DimValue::Long(i % 4),
                    DimValue::Long(seed),
                    DimValue::Str("AMS".into()),
                    DimValue::Str("cdn".into()),
                ],
                ts_micros: Grain::Minute.truncate(ts.timestamp_micros()),
            },
            &[
                None,
                Some(MeasureValue::Long(Some(100 * seed + i))),
                Some(MeasureValue::Long(Some(i % 9))),
                Some(MeasureValue::Long(Some(i % 100))),
            ],
        );
    }
    crate::common::append_minute_rows(catalog, decl, rows).await
}

/// firn's own totals of a snapshot, in the PyIceberg script's shape.
async fn firn_sums(catalog: &dyn Catalog, decl: &TableDecl, snapshot: i64) -> Value {
    let table = catalog.load(&tables::ident(decl).unwrap()).await.unwrap();
    let t = read::totals_at(&table, decl, Some(snapshot)).await.unwrap();
    serde_json::json!({
        "requests": t.long(decl, "requests"),
        "bytes": t.long(decl, "bytes"),
        "cpu_ms": t.long(decl, "cpu_ms"),
    })
}

fn without_rows(mut v: Value) -> Value {
    v.as_object_mut().unwrap().remove("rows");
    v
}

const TAG_AND_BRANCH: &str = r#"
tag_on, branch_on = int(args[0]), int(args[1])
table.manage_snapshots().create_tag(tag_on, "month-end").commit()
table = catalog.load_table("usage.http_requests")
table.manage_snapshots().create_branch(branch_on, "audit").commit()
table = catalog.load_table("usage.http_requests")
ts = datetime.now(timezone.utc).replace(second=0, microsecond=0) - timedelta(hours=3)
table.append(rows({"ts": [ts], "grain": ["minute"], "account_id": [77], "zone_id": [7],
                   "colo": ["audit"], "product": ["audit"], "requests": [1000],
                   "bytes": [5], "cpu_ms": [3], "ttfb_ms_max": [1]}), branch="audit")
table = catalog.load_table("usage.http_requests")
print(json.dumps({"audit": table.refs()["audit"].snapshot_id}))
"#;

const READ_REFS: &str = r#"
refs = table.refs()
out = {"refs": sorted(refs)}
for name in ["month-end", "audit"]:
    if name in refs:
        out[name] = {"snapshot": refs[name].snapshot_id,
                     **sums(table.scan(snapshot_id=refs[name].snapshot_id).to_arrow())}
print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_and_a_branch_survive_expiry_with_every_file_they_read() {
    let lake = Lake::without_broker();
    lake.run(&["tables", "sync"]);
    let catalog = lake.catalog().await;
    let decl = lake.decl();
    let ident = tables::ident(&decl).unwrap();
    let py = PyCatalog {
        kind: "sql".into(),
        uri: format!("sqlite:///{}", lake.path().join("catalog.db").display()),
        warehouse: format!("file://{}", lake.path().join("warehouse").display()),
        s3: String::new(),
        envs: Vec::new(),
    };

    // Month end: an operator tags it; an auditor branches off the next
    // snapshot and commits to the branch.
    let month_end = append(catalog.as_ref(), &decl, 1, 60, 2).await;
    let branch_base = append(catalog.as_ref(), &decl, 2, 50, 2).await;
    let audit = pyiceberg(
        &py,
        TAG_AND_BRANCH,
        &[month_end.to_string(), branch_base.to_string()],
    )["audit"]
        .as_i64()
        .unwrap();
    assert_ne!(audit, branch_base);
    let tag_sums = firn_sums(catalog.as_ref(), &decl, month_end).await;
    let audit_sums = firn_sums(catalog.as_ref(), &decl, audit).await;
    assert_eq!(tag_sums["requests"], 60);
    assert_eq!(audit_sums["requests"], 60 + 50 + 1000);

    // Main moves on and compaction replaces the files main reads, so some
    // files are read by the tag and the branch only.
    append(catalog.as_ref(), &decl, 3, 40, 2).await;
    lake.run(&["compact", &decl.qualified_name()]);
    let before = catalog.load(&ident).await.unwrap();
    let refs_ids = BTreeSet::from([month_end, audit]);
    let theirs = reach::reach(&before, &before.metadata, Some(&refs_ids))
        .await
        .unwrap();
    let main_id = before.metadata.current_snapshot_id().unwrap();
    let mains = reach::reach(&before, &before.metadata, Some(&BTreeSet::from([main_id])))
        .await
        .unwrap();
    let only_theirs = theirs.minus(&mains);
    assert!(
        !only_theirs.data_files.is_empty(),
        "compaction left the tag nothing of its own: {only_theirs:?}"
    );

    let out = lake.run(&[
        "expire-snapshots",
        &decl.qualified_name(),
        "--older-than",
        "0s",
        "--retain-last",
        "1",
    ]);
    let report: Value = serde_json::from_str(&out).unwrap();
    let expired: BTreeSet<i64> = report["expired_snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert!(expired.contains(&branch_base), "{report}");
    assert!(
        !expired.contains(&month_end) && !expired.contains(&audit),
        "{report}"
    );
    assert!(report["deleted_files"].as_u64().unwrap() > 0, "{report}");

    let after = catalog.load(&ident).await.unwrap();
    assert_eq!(
        after
            .metadata
            .snapshot_for_ref("month-end")
            .map(|s| s.snapshot_id()),
        Some(month_end)
    );
    assert_eq!(
        after
            .metadata
            .snapshot_for_ref("audit")
            .map(|s| s.snapshot_id()),
        Some(audit)
    );
    let mut missing = Vec::new();
    for (location, _) in theirs.all() {
        if !after.file_io.exists(location).await.unwrap() {
            missing.push(location.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "expiry deleted files refs read: {missing:?}"
    );
    assert_eq!(
        firn_sums(catalog.as_ref(), &decl, month_end).await,
        tag_sums
    );
    assert_eq!(firn_sums(catalog.as_ref(), &decl, audit).await, audit_sums);
    let read = pyiceberg(&py, READ_REFS, &[]);
    assert_eq!(
        read["refs"],
        serde_json::json!(["audit", "main", "month-end"])
    );
    assert_eq!(without_rows(read["month-end"].clone()), {
        let mut t = tag_sums.clone();
        t["snapshot"] = month_end.into();
        t
    });
    assert_eq!(without_rows(read["audit"].clone()), {
        let mut t = audit_sums.clone();
        t["snapshot"] = audit.into();
        t
    });
}

/// The values a Java engine or PyIceberg percent-encodes into partition
/// paths, and what they become.
const AWKWARD: [&str; 6] = ["a%20b", "k=v", "x y", "zürich", "東京", "100%"];

const PARTITION_BY_COLO: &str = r#"
values = json.loads(args[0])
with table.update_spec() as spec:
    spec.add_identity("colo")
table = catalog.load_table("usage.http_requests")
ts = datetime.now(timezone.utc).replace(second=0, microsecond=0) - timedelta(hours=3)
n = len(values)
table.append(rows({"ts": [ts] * n, "grain": ["minute"] * n, "account_id": list(range(n)),
                   "zone_id": [1] * n, "colo": values, "product": ["py"] * n,
                   "requests": [10] * n, "bytes": [100] * n, "cpu_ms": [1] * n,
                   "ttfb_ms_max": [1] * n}))
table = catalog.load_table("usage.http_requests")
print(json.dumps(sums(table.scan().to_arrow())))
"#;

const SCAN: &str = r#"
a = table.scan().to_arrow()
print(json.dumps({**sums(a), "colos": sorted(set(a["colo"].to_pylist()) - {None})}))
"#;

/// firn's CLI on this SeaweedFS (REST catalog, S3), from `dir`.
fn firn_on(weed: &Seaweed, dir: &Path) -> Command {
    let o = weed.overrides();
    let mut toml = format!(
        "[catalog]\ntype = \"rest\"\nuri = \"{}\"\nwarehouse = \"warehouse\"\n[storage]\n",
        o.catalog_uri.clone().unwrap()
    );
    for (k, v) in &o.storage {
        if !k.contains("secret") && !k.contains("key_id") {
            toml.push_str(&format!("{k} = \"{v}\"\n"));
        }
    }
    std::fs::write(dir.join("firn.toml"), toml).unwrap();
    let mut c = Command::new(env!("CARGO_BIN_EXE_firn"));
    c.current_dir(dir)
        .env("FIRN_CATALOG_CREDENTIAL", weed.credential())
        .env("AWS_ACCESS_KEY_ID", S3_KEY)
        .env("AWS_SECRET_ACCESS_KEY", &weed.secret)
        .env(
            "FIRN_SCHEMAS",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas"),
        )
        .env("RUST_LOG", "info");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_orphans_on_rest_and_s3_keeps_every_path_the_metadata_spells() {
    let weed = Seaweed::start();
    let catalog = Config::with_overrides(&Overrides {
        catalog_credential: Some(weed.credential()),
        ..weed.overrides()
    })
    .unwrap()
    .open_catalog()
    .await
    .unwrap();
    let decl = TableDecl::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/usage.http_requests.toml"),
    )
    .unwrap();
    let ident = tables::ident(&decl).unwrap();
    tables::sync(catalog.as_ref(), &decl, Default::default())
        .await
        .unwrap();
    let py = PyCatalog {
        kind: "rest".into(),
        uri: format!("http://127.0.0.1:{}", weed.rest_port),
        warehouse: "s3://warehouse/".into(),
        s3: format!("http://127.0.0.1:{}", weed.s3_port),
        envs: vec![
            ("AWS_ACCESS_KEY_ID".into(), S3_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY".into(), weed.secret.clone()),
            ("FIRN_CATALOG_CREDENTIAL".into(), weed.credential()),
        ],
    };

    // firn's files, then PyIceberg's, partitioned by awkward values.
    append(catalog.as_ref(), &decl, 1, 30, 2).await;
    let values = serde_json::to_string(&AWKWARD).unwrap();
    let written = pyiceberg(&py, PARTITION_BY_COLO, &[values]);
    assert_eq!(written["rows"], 30 + AWKWARD.len() as u64, "{written}");

    // A statistics and a partition-statistics file, registered in the
    // metadata as another engine (Spark's ANALYZE) would.
    let table = catalog.load(&ident).await.unwrap();
    let location = table.metadata.location().trim_end_matches('/').to_string();
    let snapshot = table.metadata.current_snapshot_id().unwrap();
    let put = |l: String, bytes: &'static [u8]| {
        let io = table.file_io.clone();
        async move {
            io.new_output(&l)
                .unwrap()
                .write(bytes::Bytes::from_static(bytes))
                .await
                .unwrap();
            l
        }
    };
    // Named as Java names them (SeaweedFS's table buckets refuse `.puffin`).
    let stats = put(
        format!("{location}/metadata/{snapshot}-0b5e.stats"),
        b"PFA1 stats",
    )
    .await;
    let pstats = put(
        format!("{location}/metadata/partition-stats-{snapshot}-0b5e.avro"),
        b"Obj pstats",
    )
    .await;
    commit::update_metadata(catalog.as_ref(), &ident, RetryPolicy::default(), |base| {
        Ok(Some(
            (*base.metadata)
                .clone()
                .into_builder(Some(base.metadata_location.clone()))
                .set_statistics(StatisticsFile {
                    snapshot_id: snapshot,
                    statistics_path: stats.clone(),
                    file_size_in_bytes: 10,
                    file_footer_size_in_bytes: 4,
                    key_metadata: None,
                    blob_metadata: Vec::new(),
                })
                .set_partition_statistics(PartitionStatisticsFile {
                    snapshot_id: snapshot,
                    statistics_path: pstats.clone(),
                    file_size_in_bytes: 11,
                }),
        ))
    })
    .await
    .unwrap()
    .unwrap();

    let table = catalog.load(&ident).await.unwrap();
    assert_eq!(table.metadata.statistics_iter().count(), 1);
    assert_eq!(table.metadata.partition_statistics_iter().count(), 1);
    let reached = reach::reach(&table, &table.metadata, None).await.unwrap();
    let encoded: Vec<&String> = reached
        .data_files
        .keys()
        .filter(|l| l.contains('%'))
        .collect();
    assert!(
        encoded.len() >= 4,
        "PyIceberg wrote no percent-encoded paths: {:?}",
        reached.data_files.keys().collect::<Vec<_>>()
    );

    // Real orphans: one beside the data, one inside a percent-encoded
    // partition folder; and files that must stay although nothing in the
    // snapshots names them.
    let zurich_dir = reached
        .data_files
        .keys()
        .find(|l| l.contains("z%C3%BCrich"))
        .map(|l| l.rsplit_once('/').unwrap().0.to_string())
        .expect("a file in the zürich partition");
    let orphan = put(format!("{location}/data/orphan.parquet"), b"PAR1 orphan").await;
    let orphan_encoded = put(format!("{zurich_dir}/orphan.parquet"), b"PAR1 orphan").await;
    let unreadable = put(format!("{location}/data/colo=bad%zz/f.parquet"), b"PAR1 ?").await;
    let hint = put(format!("{location}/metadata/version-hint.text"), b"1").await;
    let metadata_files: Vec<String> = std::iter::once(table.metadata_location.clone())
        .chain(
            table
                .metadata
                .metadata_log()
                .iter()
                .map(|m| m.metadata_file.clone()),
        )
        .collect();
    let before_scan = pyiceberg(&py, SCAN, &[]);
    tokio::time::sleep(Duration::from_secs(2)).await;

    let dir = tempfile::tempdir().unwrap();
    let out = firn_on(&weed, dir.path())
        .args([
            "remove-orphans",
            &decl.qualified_name(),
            "--older-than",
            "1s",
            "--force",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "remove-orphans failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("remove-orphans: {report}");
    let removed: BTreeSet<String> = report["orphans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["location"].as_str().unwrap().to_string())
        .collect();
    for l in removed.iter() {
        assert!(
            !reached.all().any(|(r, _)| r == l) && !metadata_files.contains(l),
            "removed a referenced file {l}: {report}"
        );
    }

    assert_eq!(
        removed,
        BTreeSet::from([orphan.clone(), orphan_encoded.clone()]),
        "{report}"
    );
    assert_eq!(report["unreadable_paths"], 1, "{report}");

    let io = &table.file_io;
    for gone in [&orphan, &orphan_encoded] {
        assert!(
            !io.exists(gone).await.unwrap(),
            "orphan {gone} is still there"
        );
    }
    let mut missing = Vec::new();
    let live = reached
        .all()
        .map(|(l, _)| l.clone())
        .chain(metadata_files)
        .chain([stats, pstats, hint, unreadable]);
    for l in live {
        if !io.exists(&l).await.unwrap() {
            missing.push(l);
        }
    }
    assert!(
        missing.is_empty(),
        "remove-orphans deleted live files: {missing:?}"
    );
    let after_scan = pyiceberg(&py, SCAN, &[]);
    assert_eq!(after_scan, before_scan);
    assert_eq!(
        after_scan["colos"].as_array().unwrap().len(),
        AWKWARD.len() + 1
    );
}
