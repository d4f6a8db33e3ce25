//! `--replace` is isolated: an append that lands in the range between the
//! replace's plan and its commit is never silently overwritten, and a replay
//! from Kafka replaces a range with exactly the events whose event time lies
//! in it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use firn::backfill::BackfillOptions;
use firn::catalog::{Catalog, StagedMetadata, TableHandle};
use firn::clock::ManualClock;
use firn::produce::{ProduceOptions, ProduceReport};
use firn::rows::{DimValue, MeasureSpec, MeasureValue, Measures, RowKey, RowMap};
use firn::schema::decl::TableDecl;
use firn::schema::layout::Grain;
use iceberg::TableIdent;
use iceberg::io::FileIO;
use iceberg::spec::{Operation, TableMetadata};

use super::{day_file, rejects, replay_command, succeeded, totals};
use crate::common::{Broker, Lake, append_minute_rows, terminate};

/// A catalog that, just before the first overwrite reaches the real one,
/// commits an append of `rows` through it: an ingest flush landing between
/// the replace's plan and its commit.
#[derive(Debug)]
struct AppendBeforeOverwrite {
    inner: Arc<dyn Catalog>,
    decl: TableDecl,
    rows: Mutex<Option<RowMap>>,
    appended: Mutex<Option<i64>>,
}

#[async_trait]
impl Catalog for AppendBeforeOverwrite {
    fn file_io(&self) -> &FileIO {
        self.inner.file_io()
    }

    fn storage(&self) -> &firn::storage::ObjectStoreStorage {
        self.inner.storage()
    }

    fn default_location(&self, ident: &TableIdent) -> String {
        self.inner.default_location(ident)
    }

    async fn load(&self, ident: &TableIdent) -> firn::error::Result<TableHandle> {
        self.inner.load(ident).await
    }

    async fn exists(&self, ident: &TableIdent) -> firn::error::Result<bool> {
        self.inner.exists(ident).await
    }

    async fn create(
        &self,
        ident: &TableIdent,
        metadata: TableMetadata,
    ) -> firn::error::Result<TableHandle> {
        self.inner.create(ident, metadata).await
    }

    async fn swap(
        &self,
        base: &TableHandle,
        staged: StagedMetadata,
    ) -> firn::error::Result<TableHandle> {
        let overwrite = staged
            .metadata
            .current_snapshot()
            .is_some_and(|s| s.summary().operation == Operation::Overwrite);
        let rows = if overwrite {
            self.rows.lock().unwrap().take()
        } else {
            None
        };
        if let Some(rows) = rows {
            let id = append_minute_rows(self.inner.as_ref(), &self.decl, rows).await;
            *self.appended.lock().unwrap() = Some(id);
        }
        self.inner.swap(base, staged).await
    }
}

fn midnight(day: NaiveDate) -> DateTime<Utc> {
    day.and_hms_opt(0, 0, 0).unwrap().and_utc()
}

/// A few minute rows at noon of `day`, and their totals.
fn late_rows(decl: &TableDecl, day: NaiveDate) -> (RowMap, Measures) {
    let spec = MeasureSpec::new(decl);
    let mut rows = RowMap::default();
    let mut total = spec.empty();
    for account in 1..=3 {
        let key = RowKey {
            dims: vec![
                DimValue::Long(account),
                DimValue::Long(7),
                DimValue::Str("AMS".into()),
                DimValue::Str("cdn".into()),
            ],
            ts_micros: Grain::Minute.truncate(
                day.and_hms_opt(12, 0, 0)
                    .unwrap()
                    .and_utc()
                    .timestamp_micros(),
            ),
        };
        let values = [
            None,
            Some(MeasureValue::Long(Some(1_000 + account))),
            Some(MeasureValue::Long(Some(account))),
            Some(MeasureValue::Long(Some(10 * account))),
        ];
        rows.add_event(&spec, key, &values);
        spec.add_event_saturating(&mut total, &values);
    }
    (rows, total)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_into_the_range_during_a_replace_is_not_overwritten() {
    let lake = Lake::without_broker();
    lake.run(&["tables", "sync"]);
    let decl = lake.decl();
    let spec = MeasureSpec::new(&decl);
    let data = tempfile::tempdir().unwrap();
    let day = Utc::now().date_naive() - chrono::Duration::days(3);
    let held = day_file(&data.path().join("held.ndjson"), &decl, day, 2_000, 3);
    lake.run(&[
        "backfill",
        "usage.http_requests",
        "--input",
        &data.path().join("held.ndjson").display().to_string(),
    ]);
    let fixed_dir = tempfile::tempdir().unwrap();
    let fixed_path = fixed_dir.path().join("fixed.ndjson");
    let fixed = day_file(&fixed_path, &decl, day, 1_000, 33);
    let (rows, late) = late_rows(&decl, day);

    let racing = AppendBeforeOverwrite {
        inner: lake.catalog().await,
        decl: decl.clone(),
        rows: Mutex::new(Some(rows)),
        appended: Mutex::new(None),
    };
    let opts = BackfillOptions {
        inputs: vec![fixed_path.display().to_string()],
        replace: Some((midnight(day), midnight(day.succ_opt().unwrap()))),
        ..Default::default()
    };
    let result = firn::backfill::run(&racing, &decl, &opts, std::sync::Arc::new(|_| {})).await;
    let appended = racing
        .appended
        .lock()
        .unwrap()
        .expect("no overwrite reached the catalog");
    let t = totals(&lake).await;
    match result {
        Ok(report) => {
            // Committed anyway: only right if the append was re-planned into the removal.
            let mut with_late = fixed.clone();
            spec.merge_saturating(&mut with_late, &late);
            assert_eq!(
                t.per_day[&day],
                fixed,
                "the append (snapshot {appended}) that landed between the replace's plan and \
                 its commit survived the overwrite: the day holds the new input plus those rows \
                 ({}), report {}",
                if t.per_day[&day] == with_late {
                    "exactly"
                } else {
                    "not even exactly"
                },
                serde_json::to_string(&report).unwrap()
            );
        }
        Err(e) => {
            eprintln!("MEASURE replace refused: {e}");
            assert_eq!(e.kind(), firn::error::ErrorKind::Superseded, "{e}");
            let msg = e.to_string();
            assert!(msg.contains(&appended.to_string()), "{msg}");
            assert!(msg.contains(&format!("{day}T00:00:00Z")), "{msg}");
            let mut before = held.clone();
            spec.merge_saturating(&mut before, &late);
            assert_eq!(t.per_day[&day], before, "a refused replace changed the day");
            // Run again, nothing racing it: the day holds the new input.
            let racing_done = racing.inner.clone();
            firn::backfill::run(
                racing_done.as_ref(),
                &decl,
                &opts,
                std::sync::Arc::new(|_| {}),
            )
            .await
            .unwrap();
            assert_eq!(totals(&lake).await.per_day[&day], fixed);
        }
    }
}

/// Produce as if the clock read `at`: event times spread over the day before it.
async fn produce_at(lake: &Lake, at: DateTime<Utc>, count: u64, seed: u64) -> ProduceReport {
    let decl = lake.decl();
    let opts = ProduceOptions {
        brokers: lake.brokers.clone(),
        count,
        seed,
        spread: Duration::from_secs(86_400),
        ..Default::default()
    };
    tokio::task::spawn_blocking(move || {
        firn::produce::produce(&decl, &opts, Arc::new(ManualClock::new(at))).unwrap()
    })
    .await
    .unwrap()
}

fn long(decl: &TableDecl, m: &Measures, name: &str) -> i64 {
    let i = decl.measures.iter().position(|x| x.name == name).unwrap();
    match m.0[i] {
        MeasureValue::Long(v) => v.unwrap_or(0),
        MeasureValue::Double(v) => v.unwrap_or(0.0) as i64,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replace_from_kafka_replays_the_range_by_event_time() {
    let broker = Broker::start();
    let lake = Lake::new(&broker);
    lake.create_topic(2).await;
    lake.run(&["tables", "sync"]);
    let decl = lake.decl();
    let day = Utc::now().date_naive() - chrono::Duration::days(3);
    let next = day.succ_opt().unwrap();
    let end_of = |d: NaiveDate| midnight(d.succ_opt().unwrap()) - chrono::Duration::milliseconds(1);

    // The next day's events, then the day's on time, then late ones of the
    // day (Kafka record times after the on-time batch).
    let other = produce_at(&lake, end_of(next), 2_000, 50).await;
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let start = Utc::now();
    let on_time = produce_at(&lake, end_of(day), 4_000, 51).await;
    let end = Utc::now();
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let late = produce_at(&lake, end_of(day), 1_000, 52).await;
    let in_day = (on_time.valid + late.valid) as i64;
    let day_bytes =
        on_time.totals["bytes"].as_i64().unwrap() + late.totals["bytes"].as_i64().unwrap();

    let mut worker = lake.spawn_ingest("live", &[]);
    let catalog = lake.catalog().await;
    lake.wait_for_offsets(catalog.as_ref(), 7_000, Duration::from_secs(300))
        .await;
    assert!(terminate(&mut worker).success(), "{}", lake.log("live"));
    assert_eq!(
        long(&decl, &totals(&lake).await.per_day[&day], "requests"),
        in_day
    );

    let (from, to) = (day.to_string(), next.to_string());
    let replace = ["--replace", "--from", &from, "--to", &to];
    let (start, end) = (start.to_rfc3339(), end.to_rfc3339());
    let timed = replay_command(
        &lake,
        "http-requests",
        &[
            &["--start-time", &start, "--end-time", &end][..],
            &replace[..],
        ]
        .concat(),
    )
    .output()
    .unwrap();
    if timed.status.success() {
        let held = long(&decl, &totals(&lake).await.per_day[&day], "requests");
        assert_eq!(
            held,
            in_day,
            "the replace by Kafka record time removed the day and re-added {held} of its \
             {in_day} events: {} late events lost",
            in_day - held
        );
    } else {
        let err = String::from_utf8_lossy(&timed.stderr);
        eprintln!("MEASURE a replace selecting by record time is refused: {err}");
        assert!(err.contains("event time"), "{err}");
        succeeded(
            &replay_command(&lake, "http-requests", &replace)
                .output()
                .unwrap(),
        );
    }
    let t = totals(&lake).await;
    assert_eq!(long(&decl, &t.per_day[&day], "requests"), in_day);
    assert_eq!(long(&decl, &t.per_day[&day], "bytes"), day_bytes);
    assert_eq!(
        long(&decl, &t.per_day[&next], "requests"),
        other.valid as i64,
        "the next day is unchanged"
    );
    let outside = rejects(&lake)
        .await
        .iter()
        .filter(|r| r.reason_code == "outside_range")
        .count();
    assert_eq!(outside, 0, "the replay rejected events of other days");
}
