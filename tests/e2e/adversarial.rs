//! Adversarial input and operators' mistakes: each test drives a case that
//! once ended in a wrong total, and checks the exact outcome.

use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use chrono::{Duration as ChronoDuration, Utc};
use firn::catalog::Catalog;
use firn::tables;
use futures::TryStreamExt;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use crate::common::{Broker, Lake};

/// Send `payloads` to the table's topic, in order, on partition 0.
fn send(lake: &Lake, payloads: &[String]) {
    let producer: BaseProducer =
        firn::kafka::client_config(&lake.brokers, &[], &Default::default())
            .create()
            .unwrap();
    let topic = lake.decl().topic;
    for p in payloads {
        producer
            .send(BaseRecord::<(), _>::to(&topic).payload(p).partition(0))
            .unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();
}

/// Every stored value of `bytes` in the table, row by row.
async fn stored_bytes(catalog: &dyn Catalog, lake: &Lake) -> Vec<i64> {
    let table = catalog
        .load(&tables::ident(&lake.decl()).unwrap())
        .await
        .unwrap();
    let batches: Vec<_> = table
        .table()
        .unwrap()
        .scan()
        .select(["bytes"])
        .build()
        .unwrap()
        .to_arrow()
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    batches
        .iter()
        .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
        .collect()
}

/// Three events of one key whose `bytes` sum past `i64::MAX`: ingest keeps
/// them in rows whose every value is exact (never a wrapped, negative sum),
/// and so do compaction and rollup when they merge those rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sums_past_the_long_range_are_split_never_wrapped() {
    let broker = Broker::start();
    let lake = Lake::new(&broker);
    lake.run(&["tables", "sync"]);
    lake.create_topic(1).await;
    let big = 1i64 << 62;
    let ts = (Utc::now() - ChronoDuration::days(10)).timestamp_millis();
    let event = |extra: i64| {
        format!(
            r#"{{"ts":{},"account_id":7,"zone_id":1,"colo":"AMS","product":"cdn","bytes":{},"cpu_ms":1,"ttfb_ms":3}}"#,
            ts + extra,
            big
        )
    };
    send(&lake, &[event(0), event(1), event(2)]);
    lake.run(&["ingest", "--stop-when-idle", "5s"]);
    let catalog = lake.catalog().await;
    let exact = 3 * i128::from(big);
    let check = |what: &str, values: &[i64]| {
        assert!(
            values.iter().all(|v| *v > 0),
            "{what}: a wrapped value in {values:?}"
        );
        let sum: i128 = values.iter().map(|v| i128::from(*v)).sum();
        assert_eq!(sum, exact, "{what}: {values:?}");
    };
    let ingested = stored_bytes(catalog.as_ref(), &lake).await;
    check("ingest", &ingested);
    assert_eq!(
        ingested.len(),
        3,
        "one row per event that would overflow: {ingested:?}"
    );

    // Compaction and rollup merge those rows: they stay apart, exact.
    lake.run(&["compact", "usage.http_requests", "--seal-delay", "0s"]);
    check("compact", &stored_bytes(catalog.as_ref(), &lake).await);
    let out = lake.run(&["rollup", "usage.http_requests", "--json"]);
    assert!(out.contains("\"committed\": 1"), "{out}");
    check("rollup", &stored_bytes(catalog.as_ref(), &lake).await);
}

/// A rejects table ages out as its declaration says (`rejects_retain`,
/// 30 days in the example): retention drops the files of records rejected
/// before then and keeps younger ones; expiry reaches the rejects table too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejects_tables_age_out_and_expire() {
    let lake = Lake::without_broker();
    lake.run(&["tables", "sync"]);
    let dir = tempfile::tempdir().unwrap();
    let good = |ts: i64| {
        format!(
            r#"{{"ts":{ts},"account_id":7,"zone_id":1,"colo":"AMS","product":"cdn","bytes":5,"cpu_ms":1,"ttfb_ms":3}}"#
        )
    };
    let long_ago = Utc::now() - ChronoDuration::days(40);
    let old = dir.path().join("old.ndjson");
    std::fs::write(
        &old,
        format!(
            "{}\nnot json\n{{\"ts\":true}}\n",
            good(long_ago.timestamp_millis())
        ),
    )
    .unwrap();
    let fresh = dir.path().join("fresh.ndjson");
    std::fs::write(
        &fresh,
        format!("{}\n[1]\n", good(Utc::now().timestamp_millis() - 60_000)),
    )
    .unwrap();
    let at = long_ago.to_rfc3339();
    lake.run(&[
        "backfill",
        "usage.http_requests",
        "--input",
        old.to_str().unwrap(),
        "--now",
        &at,
    ]);
    lake.run(&[
        "backfill",
        "usage.http_requests",
        "--input",
        fresh.to_str().unwrap(),
    ]);
    let catalog = lake.catalog().await;
    let decl = lake.decl();
    let rejects_ident = tables::rejects_ident(&decl).unwrap();
    let rejects = async || {
        let t = catalog.load(&rejects_ident).await.unwrap();
        firn::read::rejects(&t).await.unwrap()
    };
    assert_eq!(rejects().await.len(), 3);

    let out = lake.run(&["retention", "usage.http_requests", "--json"]);
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["rejects"]["files"], 1, "{out}");
    assert_eq!(r["rejects"]["records"], 2, "{out}");
    let left = rejects().await;
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].reason_code, "not_json");
    // A second run finds nothing more to drop.
    let again: serde_json::Value =
        serde_json::from_str(&lake.run(&["retention", "usage.http_requests", "--json"])).unwrap();
    assert_eq!(again["rejects"]["files"], 0);

    let out = lake.run(&[
        "expire-snapshots",
        "usage.http_requests",
        "--older-than",
        "0s",
        "--retain-last",
        "1",
    ]);
    let e: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        !e["rejects"]["expired_snapshots"]
            .as_array()
            .unwrap()
            .is_empty(),
        "{out}"
    );
    assert_eq!(rejects().await.len(), 1);
}
