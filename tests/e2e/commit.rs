//! The commit layer on a real SQLite catalog: compare-and-set conflicts are
//! retried until every commit lands; a batch whose offsets another commit
//! already covered is fenced, however the race falls.

use std::collections::BTreeMap;

use firn::catalog::Catalog;
use firn::commit::{self, Change, RetryPolicy};
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
    write::write_rows(&table, decl, Grain::Minute, rows.into_sorted(), 1 << 27)
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
                &Change::append("test", f),
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
            let mut change = Change::append("ingest", files(catalog.as_ref(), &decl, 7).await);
            change.offsets = Some(advance);
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
    let mut change = Change::append("ingest", files(catalog.as_ref(), &decl, 3).await);
    change.offsets = Some(claim(Some(100), 150));
    commit::commit(catalog.as_ref(), &ident, &change, RetryPolicy::default())
        .await
        .unwrap();
    let mut other = Change::append("ingest", Vec::new());
    other.offsets = Some(OffsetAdvance {
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
