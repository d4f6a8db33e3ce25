//! Staying exact beside the other writers of a shared lake: a declaration
//! that drifted from its table is refused by every writer, a throttling REST
//! catalog (429 / 503 with Retry-After, as R2 Data Catalog answers past its
//! write budget) is waited out, and a catch-up run stays within a commit
//! budget by grouping partitions.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{Duration as ChronoDuration, Utc};
use firn::budget::CommitBudget;
use firn::catalog::Catalog;
use firn::maintain::{Context, PlanOptions, TaskKind, execute};
use firn::produce::{EventGenerator, ProduceOptions};
use firn::rows::{DimValue, MeasureSpec, MeasureValue, RowKey, RowMap};
use firn::schema::decl::{Agg, TableDecl};
use firn::schema::layout::Grain;
use firn::{read, tables};
use serde_json::Value;

use crate::common::{Broker, Lake, Seaweed, append_minute_rows, job, local_lake};

const DECLARATION: &str = "schemas/usage.http_requests.toml";

/// One minute row per day for `days` days, the newest `newest_days_ago`
/// days old (older than the policy's 7 days: each day is a rollup task).
fn daily_rows(decl: &TableDecl, days: i64, newest_days_ago: i64) -> RowMap {
    let spec = MeasureSpec::new(decl);
    let mut rows = RowMap::default();
    let noon = Utc::now()
        .date_naive()
        .and_hms_opt(12, 0, 0)
        .unwrap()
        .and_utc();
    for d in 0..days {
        for account in 1..=3 {
            let ts = noon - ChronoDuration::days(newest_days_ago + d);
            let key = RowKey {
                dims: vec![
                    DimValue::Long(account),
                    DimValue::Long(7),
                    DimValue::Str("AMS".into()),
                    DimValue::Str("cdn".into()),
                ],
                ts_micros: Grain::Minute.truncate(ts.timestamp_micros()),
            };
            let v = 1_000 * d + account;
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
    }
    rows
}

fn current_snapshot(table: &firn::catalog::TableHandle) -> Option<i64> {
    table.metadata.current_snapshot_id()
}

fn output(o: &std::process::Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `count` events over the last `days` days as an NDJSON file; their totals.
fn events_file(dir: &Path, decl: &TableDecl, count: u64, days: u64) -> BTreeMap<String, Value> {
    let mut generator = EventGenerator::new(
        decl,
        &ProduceOptions {
            seed: 77,
            spread: Duration::from_secs(days * 86_400),
            ..Default::default()
        },
    );
    let now_ms = Utc::now().timestamp_millis() - 60_000;
    let mut text = Vec::new();
    for _ in 0..count {
        let (_, mut line) = generator.next(now_ms);
        line.retain(|b| *b != b'\n');
        text.extend(line);
        text.push(b'\n');
    }
    std::fs::write(dir.join("events.ndjson"), text).unwrap();
    generator.totals_by_name()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drifted_declaration_is_refused_by_ingest_rollup_and_backfill() {
    let broker = Broker::start();
    let lake = Lake::new(&broker);
    lake.create_topic(1).await;
    lake.run(&["tables", "sync"]);
    let catalog = lake.catalog().await;
    let decl = lake.decl();
    let ident = tables::ident(&decl).unwrap();
    // Every writer has work: minute rows old enough to roll up, events in
    // the topic, and a file to backfill.
    append_minute_rows(catalog.as_ref(), &decl, daily_rows(&decl, 3, 10)).await;
    lake.produce(ProduceOptions {
        count: 2_000,
        seed: 5,
        ..Default::default()
    })
    .await;
    let data = tempfile::tempdir().unwrap();
    events_file(data.path(), &decl, 500, 30);
    let before = catalog.load(&ident).await.unwrap();
    let totals_before = read::totals(&before, &decl).await.unwrap();

    // The declaration loses the measure `bytes` (the table still has it).
    let path = lake.path().join(DECLARATION);
    let text = std::fs::read_to_string(&path).unwrap();
    let without = text.replace(
        "[[measure]]\nname = \"bytes\"\nagg = \"sum\"\nfield = \"bytes\"\ntype = \"long\"\n",
        "",
    );
    assert_ne!(without, text);
    std::fs::write(&path, without).unwrap();

    let input = data.path().join("events.ndjson").display().to_string();
    let hourly = job("hourly.toml");
    let runs: [(&str, Vec<&str>); 6] = [
        (
            "ingest",
            vec![
                "ingest",
                "--commit-interval",
                "1s",
                "--stop-when-idle",
                "5s",
            ],
        ),
        ("rollup", vec!["rollup", "usage.http_requests"]),
        (
            "compact",
            vec!["compact", "usage.http_requests", "--seal-delay", "0s"],
        ),
        ("maintain", vec!["maintain", "--job", &hourly]),
        (
            "backfill",
            vec!["backfill", "usage.http_requests", "--input", &input],
        ),
        ("sync", vec!["tables", "sync"]),
    ];
    for (what, args) in runs {
        let out = lake.firn().args(&args).output().unwrap();
        let text = output(&out);
        assert!(!out.status.success(), "{what} wrote through:\n{text}");
        for needle in [
            "table usage.http_requests has column `bytes` (long) that the declaration no longer declares",
            DECLARATION,
        ] {
            assert!(text.contains(needle), "{what}: no `{needle}` in\n{text}");
        }
        eprintln!("{what} refused");
    }

    let after = catalog.load(&ident).await.unwrap();
    assert_eq!(current_snapshot(&after), current_snapshot(&before));
    assert_eq!(after.metadata_location, before.metadata_location);
    assert_eq!(
        read::totals(&after, &decl).await.unwrap().all,
        totals_before.all
    );
    let rejects = catalog
        .load(&tables::rejects_ident(&decl).unwrap())
        .await
        .unwrap();
    assert!(
        rejects.metadata.current_snapshot_id().is_none(),
        "rejects were written"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grouped_commit_superseded_by_another_writer_keeps_the_other_partitions() {
    let (_dir, catalog, decl) = local_lake().await;
    let ident = tables::ident(&decl).unwrap();
    append_minute_rows(catalog.as_ref(), &decl, daily_rows(&decl, 12, 10)).await;
    let table = catalog.load(&ident).await.unwrap();
    let expected = read::totals(&table, &decl).await.unwrap();
    let opts = PlanOptions {
        now: Utc::now(),
        from: None,
        to: None,
        seal_delay: Duration::from_secs(3600),
        target_file_size: 128 << 20,
    };
    let tasks = execute::plan_table(catalog.as_ref(), &decl, TaskKind::Rollup, &opts)
        .await
        .unwrap();
    assert_eq!(tasks.len(), 12);
    // Another writer rolls the first day up before the run commits it.
    let ctx = Context::new(catalog.as_ref(), opts.now);
    let first = execute::execute(&ctx, &decl, &tasks[0], 128 << 20)
        .await
        .unwrap();
    assert!(first.snapshot_id.is_some());

    // 10 commits a minute: twelve partitions go in pairs.
    let budget = CommitBudget::new(10);
    assert_eq!(budget.group_size(tasks.len()), 2);
    let ctx = Context { budget, ..ctx };
    let report = execute::run(&ctx, &decl, &tasks, 128 << 20).await.unwrap();
    // The first pair is superseded as a whole, then committed one by one:
    // the raced day is superseded, its partner committed.
    assert_eq!(
        (report.committed, report.superseded, report.failed),
        (11, 1, 0),
        "{report:?}"
    );
    assert_eq!(report.commits, 6, "five pairs and one single: {report:?}");
    let table = catalog.load(&ident).await.unwrap();
    let t = read::totals(&table, &decl).await.unwrap();
    assert_eq!(t.all, expected.all);
    assert_eq!(t.per_day, expected.per_day);
    let s = firn::maintain::state::load(&table).await.unwrap();
    assert!(s.files.iter().all(|f| f.grain == Grain::Hour), "{s:?}");
    assert_eq!(s.files.len(), 12);
}

/// Commits (snapshots) a run added, and the most of them in any minute.
fn commit_rate(table: &firn::catalog::TableHandle, since: &[i64]) -> (usize, usize) {
    let mut times: Vec<i64> = table
        .metadata
        .snapshots()
        .filter(|s| !since.contains(&s.snapshot_id()))
        .map(|s| s.timestamp_ms())
        .collect();
    times.sort();
    let peak = times
        .iter()
        .enumerate()
        .map(|(i, t)| times[i..].iter().take_while(|u| **u < t + 60_000).count())
        .max()
        .unwrap_or(0);
    (times.len(), peak)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catch_up_rollup_of_200_partitions_groups_them_within_the_commit_budget() {
    let mut measured = Vec::new();
    for budget in ["0", "10"] {
        let lake = Lake::without_broker();
        // Hour rows stay hour rows: every day is one rollup target partition.
        let path = lake.path().join(DECLARATION);
        let text = std::fs::read_to_string(&path).unwrap().replace(
            "hour_to_day_after = \"90d\"",
            "hour_to_day_after = \"300d\"",
        );
        std::fs::write(&path, text).unwrap();
        lake.run(&["tables", "sync"]);
        let catalog = lake.catalog().await;
        let decl = lake.decl();
        let ident = tables::ident(&decl).unwrap();
        append_minute_rows(catalog.as_ref(), &decl, daily_rows(&decl, 200, 8)).await;
        let seeded = catalog.load(&ident).await.unwrap();
        let expected = read::totals(&seeded, &decl).await.unwrap();
        let seeded_ids: Vec<i64> = seeded
            .metadata
            .snapshots()
            .map(|s| s.snapshot_id())
            .collect();

        let started = Instant::now();
        let out = lake.run(&[
            "rollup",
            "usage.http_requests",
            "--json",
            "--max-commits-per-minute",
            budget,
        ]);
        let seconds = started.elapsed().as_secs_f64();
        let report: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(report["committed"], 200, "{budget}: {report}");
        assert_eq!(report["failed"], 0);

        let table = catalog.load(&ident).await.unwrap();
        let t = read::totals(&table, &decl).await.unwrap();
        assert_eq!(t.all, expected.all);
        assert_eq!(t.per_day, expected.per_day);
        let (commits, peak) = commit_rate(&table, &seeded_ids);
        assert_eq!(report["commits"], commits, "{budget}: {report}");
        eprintln!(
            "MEASURE catch-up rollup of 200 partitions, --max-commits-per-minute {budget}: \
             {commits} commits in {seconds:.1}s ({:.1} commits/min on average, at most {peak} in any minute)",
            commits as f64 * 60.0 / seconds
        );
        measured.push((commits, peak));
    }
    // Without a budget, one commit per partition; with 10 a minute, groups
    // of 16 partitions, never more than 10 snapshots in a minute (a count:
    // a slow machine only spreads them further).
    assert_eq!(measured[0].0, 200);
    assert_eq!(measured[1].0, 13);
    assert!(measured[1].1 <= 10, "{measured:?}");
}

/// A stub in front of an Iceberg REST catalog that answers like R2 Data
/// Catalog past its write budget: every other commit (a POST to a table) is
/// refused with 429 and `Retry-After: 1`, and every tenth table load with 503
/// and a `Retry-After` HTTP date. Everything else is passed through.
struct Throttle {
    upstream: String,
    client: reqwest::Client,
    commits: AtomicU32,
    throttled: AtomicU32,
    loads: AtomicU32,
    unavailable: AtomicU32,
}

impl Throttle {
    async fn start(upstream_port: u16) -> (Arc<Throttle>, u16) {
        let throttle = Arc::new(Throttle {
            upstream: format!("http://127.0.0.1:{upstream_port}"),
            client: reqwest::Client::new(),
            commits: AtomicU32::new(0),
            throttled: AtomicU32::new(0),
            loads: AtomicU32::new(0),
            unavailable: AtomicU32::new(0),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(throttle.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (throttle, port)
    }
}

/// `.../namespaces/NS/tables/NAME`: one table (not the table list).
fn is_table(path: &str) -> bool {
    path.contains("/namespaces/")
        && path
            .rsplit_once("/tables/")
            .is_some_and(|(_, name)| !name.is_empty() && !name.contains('/'))
}

async fn forward(State(t): State<Arc<Throttle>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    if is_table(&path) && parts.method == Method::POST {
        if t.commits.fetch_add(1, Ordering::SeqCst) % 2 == 0 {
            t.throttled.fetch_add(1, Ordering::SeqCst);
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, HeaderValue::from_static("1"))],
                r#"{"error":{"message":"too many table updates","type":"TooManyRequests","code":429}}"#,
            )
                .into_response();
        }
    } else if is_table(&path)
        && parts.method == Method::GET
        && t.loads.fetch_add(1, Ordering::SeqCst) % 10 == 9
    {
        t.unavailable.fetch_add(1, Ordering::SeqCst);
        let at = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(2));
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, HeaderValue::from_str(&at).unwrap())],
            "busy",
        )
            .into_response();
    }
    let target = format!(
        "{}{}",
        t.upstream,
        parts.uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let mut upstream = t.client.request(parts.method.clone(), target);
    for (k, v) in &parts.headers {
        if k != header::HOST && k != header::CONTENT_LENGTH {
            upstream = upstream.header(k, v);
        }
    }
    let answer = upstream.body(bytes).send().await.unwrap();
    let mut response = Response::builder().status(answer.status());
    for (k, v) in answer.headers() {
        if k != header::CONTENT_LENGTH && k != header::TRANSFER_ENCODING {
            response = response.header(k, v);
        }
    }
    response
        .body(Body::from(answer.bytes().await.unwrap()))
        .unwrap()
}

/// What the table must hold: each measure over every source of events.
fn combined(decl: &TableDecl, sources: &[&BTreeMap<String, Value>]) -> BTreeMap<String, i64> {
    decl.measures
        .iter()
        .map(|m| {
            let values = sources.iter().map(|s| s[&m.name].as_i64().unwrap_or(0));
            let v = match m.agg {
                Agg::Max => values.max().unwrap_or(0),
                Agg::Min => values.min().unwrap_or(0),
                _ => values.sum(),
            };
            (m.name.clone(), v)
        })
        .collect()
}

async fn assert_exact(
    catalog: &dyn Catalog,
    decl: &TableDecl,
    sources: &[&BTreeMap<String, Value>],
    after: &str,
) {
    let table = catalog.load(&tables::ident(decl).unwrap()).await.unwrap();
    let totals = read::totals(&table, decl).await.unwrap();
    for (name, want) in combined(decl, sources) {
        assert_eq!(totals.long(decl, &name), want, "{name} after {after}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_catalog_throttling_is_waited_out_by_ingest_jobs_and_backfills() {
    let broker = Broker::start();
    let weed = Seaweed::start();
    let (throttle, port) = Throttle::start(weed.rest_port).await;
    let lake = Lake::on_rest(&broker, &weed);
    // firn reaches the catalog through the stub; the test reads it directly.
    let config = lake.path().join("firn.toml");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &format!("http://127.0.0.1:{}", weed.rest_port),
        &format!("http://127.0.0.1:{port}"),
    );
    std::fs::write(&config, text).unwrap();
    lake.create_topic(2).await;
    let throttled = || throttle.throttled.load(Ordering::SeqCst);
    let mut seen = 0;
    let mut throttled_since = |phase: &str| {
        let now = throttled();
        assert!(now > seen, "no commit was answered 429 during {phase}");
        eprintln!("{phase}: {} commits answered 429", now - seen);
        seen = now;
    };
    lake.run(&["tables", "sync"]);
    let catalog = lake.catalog().await;
    let decl = lake.decl();

    // Ingest: events over ten days, so the hourly job has rollups and
    // compactions to do; a commit every second.
    let produced = lake
        .produce(ProduceOptions {
            count: 20_000,
            seed: 31,
            spread: Duration::from_secs(10 * 86_400),
            ..Default::default()
        })
        .await;
    let log = std::fs::File::create(lake.path().join("ingest-throttled.log")).unwrap();
    let status = lake
        .firn()
        .args([
            "ingest",
            "--commit-interval",
            "1s",
            "--stop-when-idle",
            "8s",
        ])
        .stderr(log)
        .status()
        .unwrap();
    let ingest_log = lake.log("throttled");
    assert!(status.success(), "{ingest_log}");
    assert!(
        !ingest_log.contains("batch dropped"),
        "a throttled commit dropped a batch:\n{ingest_log}"
    );
    assert_eq!(
        lake.committed_records(catalog.as_ref()).await,
        produced.sent as i64
    );
    assert_exact(catalog.as_ref(), &decl, &[&produced.totals], "ingest").await;
    throttled_since("sync and ingest");

    // The hourly job: compaction and rollup, grouped within the REST default
    // budget of 10 commits a minute.
    let out = lake.run(&["maintain", "--job", &job("hourly.toml"), "--json"]);
    let report: Value = serde_json::from_str(&out).unwrap();
    let commits: u64 = report["tables"][0]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["commits"].as_u64().unwrap())
        .sum();
    assert!(commits > 0, "the hourly job had nothing to do: {report}");
    assert_exact(
        catalog.as_ref(),
        &decl,
        &[&produced.totals],
        "the hourly job",
    )
    .await;
    throttled_since("the hourly job");

    // A backfill of 30 days of events in chunks of 1,000.
    let data = tempfile::tempdir().unwrap();
    let backfilled = events_file(data.path(), &decl, 3_000, 30);
    let input = data.path().join("events.ndjson").display().to_string();
    let out = lake.run(&[
        "backfill",
        "usage.http_requests",
        "--input",
        &input,
        "--chunk-events",
        "1000",
    ]);
    let report: Value = serde_json::from_str(&out).unwrap();
    assert!(
        report["chunks_committed"].as_u64().unwrap() >= 3,
        "{report}"
    );
    assert_exact(
        catalog.as_ref(),
        &decl,
        &[&produced.totals, &backfilled],
        "the backfill",
    )
    .await;
    throttled_since("the backfill");

    let commits = throttle.commits.load(Ordering::SeqCst);
    let unavailable = throttle.unavailable.load(Ordering::SeqCst);
    eprintln!(
        "MEASURE throttled REST catalog: {commits} commit requests, {} answered 429, \
         {unavailable} loads answered 503",
        throttled()
    );
    assert!(unavailable >= 1, "no load was answered 503");
}
