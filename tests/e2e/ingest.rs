//! Exactly-once ingest against a real tansu broker.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use firn::produce::{ProduceOptions, ProduceReport};
use firn::read::{self, Totals};
use firn::schema::decl::TableDecl;
use firn::tables;
use rand::Rng;

use crate::common::{Broker, Lake, peak_rss_kib, terminate};

const WAIT: Duration = Duration::from_secs(600);

fn assert_totals_match(decl: &TableDecl, totals: &Totals, reports: &[&ProduceReport]) {
    for m in &decl.measures {
        let produced: Vec<i64> = reports
            .iter()
            .map(|r| r.totals[&m.name].as_i64().unwrap_or(0))
            .collect();
        let want = match m.agg {
            firn::schema::decl::Agg::Max => produced.iter().copied().max().unwrap_or(0),
            firn::schema::decl::Agg::Min => produced.iter().copied().min().unwrap_or(0),
            _ => produced.iter().sum(),
        };
        assert_eq!(totals.long(decl, &m.name), want, "measure {}", m.name);
    }
    let valid: u64 = reports.iter().map(|r| r.valid).sum();
    assert_eq!(totals.long(decl, "requests"), valid as i64);
}

async fn table_totals(lake: &Lake) -> Totals {
    let catalog = lake.catalog().await;
    let decl = lake.decl();
    let t = catalog.load(&tables::ident(&decl).unwrap()).await.unwrap();
    read::totals(&t, &decl).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_totals_and_every_malformed_record_rejected() {
    let broker = Broker::start();
    let lake = Lake::new(&broker);
    lake.create_topic(4).await;
    let synced = lake.run(&["tables", "sync"]);
    assert!(synced.contains("usage.http_requests: created"), "{synced}");

    let report = lake
        .produce(ProduceOptions {
            count: 200_000,
            seed: 7,
            bad_ratio: 0.01,
            ..Default::default()
        })
        .await;
    assert!(report.malformed > 1500, "{report:?}");

    let started = Instant::now();
    let mut worker = lake.spawn_ingest("a", &[]);
    let catalog = lake.catalog().await;
    lake.wait_for_offsets(catalog.as_ref(), report.sent as i64, WAIT)
        .await;
    let elapsed = started.elapsed();
    let rss = peak_rss_kib(worker.id());
    assert!(terminate(&mut worker).success(), "{}", lake.log("a"));
    eprintln!(
        "MEASURE ingest {} records in {:.1}s = {:.0} records/s end to end; worker peak RSS {:?} KiB",
        report.sent,
        elapsed.as_secs_f64(),
        report.sent as f64 / elapsed.as_secs_f64(),
        rss
    );

    let decl = lake.decl();
    let totals = table_totals(&lake).await;
    assert_totals_match(&decl, &totals, &[&report]);
    // Each flush's snapshot states the totals of the rows it added.
    let table = catalog.load(&tables::ident(&decl).unwrap()).await.unwrap();
    let stated = crate::common::summary_totals(&table, "ingest", "firn.totals.added", "minute");
    for m in ["requests", "bytes", "cpu_ms"] {
        assert_eq!(
            stated[m],
            report.totals[m].as_i64().unwrap() as i128,
            "{m} as the flushes' summaries state it"
        );
    }

    // Every malformed record is in the rejects table, once, with its reason.
    let rejects_table = catalog
        .load(&tables::rejects_ident(&decl).unwrap())
        .await
        .unwrap();
    let rejects = read::rejects(&rejects_table).await.unwrap();
    assert_eq!(rejects.len() as u64, report.malformed);
    let mut by_reason: BTreeMap<String, u64> = BTreeMap::new();
    for r in &rejects {
        *by_reason.entry(r.reason_code.clone()).or_default() += 1;
        assert_eq!(r.topic, "http-requests");
        assert!(!r.payload.is_empty());
        assert!(!r.reason.is_empty());
    }
    assert_eq!(by_reason, report.malformed_by_reason);
    let positions: std::collections::BTreeSet<_> =
        rejects.iter().map(|r| (r.partition, r.offset)).collect();
    assert_eq!(positions.len(), rejects.len(), "a reject recorded twice");

    let status = lake.run(&["status", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(json[0]["grains"]["minute"]["rows"], totals.rows);
    assert_eq!(json[0]["rejects"], report.malformed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_keeps_totals_exact() {
    let broker = Broker::start();
    let lake = Lake::new(&broker);
    lake.create_topic(4).await;
    lake.run(&["tables", "sync"]);

    // Events keep arriving while the worker is killed and restarted.
    let producing = lake.produce_in_background(ProduceOptions {
        count: 120_000,
        rate: Some(4_000),
        seed: 11,
        bad_ratio: 0.005,
        ..Default::default()
    });

    let seed: u64 = rand::rng().random();
    eprintln!("kill schedule seed {seed}");
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
    for i in 0..5 {
        let mut w = lake.spawn_ingest(&format!("k{i}"), &[]);
        tokio::time::sleep(Duration::from_millis(rng.random_range(1_500..5_000))).await;
        w.kill().unwrap();
        w.wait().unwrap();
    }
    let report = producing.await.unwrap();
    let mut last = lake.spawn_ingest("final", &[]);
    let catalog = lake.catalog().await;
    lake.wait_for_offsets(catalog.as_ref(), report.sent as i64, WAIT)
        .await;
    assert!(terminate(&mut last).success(), "{}", lake.log("final"));

    let totals = table_totals(&lake).await;
    assert_totals_match(&lake.decl(), &totals, &[&report]);
    let rejects_table = catalog
        .load(&tables::rejects_ident(&lake.decl()).unwrap())
        .await
        .unwrap();
    let rejects = read::rejects(&rejects_table).await.unwrap();
    assert_eq!(rejects.len() as u64, report.malformed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_with_partitions_moving_keep_totals_exact() {
    let broker = Broker::start();
    let lake = Lake::new(&broker);
    lake.create_topic(6).await;
    lake.run(&["tables", "sync"]);

    let producing = lake.produce_in_background(ProduceOptions {
        count: 100_000,
        rate: Some(4_000),
        seed: 13,
        ..Default::default()
    });
    // a decodes on its consumer thread, b on three shard threads.
    let mut a = lake.spawn_ingest("a", &["--threads", "1"]);
    let mut b = lake.spawn_ingest("b1", &["--threads", "3"]);
    tokio::time::sleep(Duration::from_secs(8)).await;
    // Stop b mid-stream: its partitions move to a; then restart it: they move back.
    assert!(terminate(&mut b).success(), "{}", lake.log("b1"));
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut b = lake.spawn_ingest("b2", &["--threads", "3"]);

    let report = producing.await.unwrap();
    let catalog = lake.catalog().await;
    lake.wait_for_offsets(catalog.as_ref(), report.sent as i64, WAIT)
        .await;
    assert!(terminate(&mut b).success(), "{}", lake.log("b2"));
    assert!(terminate(&mut a).success(), "{}", lake.log("a"));

    for name in ["a", "b1"] {
        assert!(
            lake.log(name).contains("flushed"),
            "worker {name} never committed:\n{}",
            lake.log(name)
        );
    }
    assert!(
        lake.log("a").matches("assigned").count() >= 2,
        "{}",
        lake.log("a")
    );
    let totals = table_totals(&lake).await;
    assert_totals_match(&lake.decl(), &totals, &[&report]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_added_dimension_keeps_ingesting_after_sync() {
    let broker = Broker::start();
    let lake = Lake::new(&broker);
    lake.create_topic(2).await;
    lake.run(&["tables", "sync"]);
    let catalog = lake.catalog().await;

    let first = lake
        .produce(ProduceOptions {
            count: 20_000,
            seed: 3,
            ..Default::default()
        })
        .await;
    let mut w = lake.spawn_ingest("before", &[]);
    lake.wait_for_offsets(catalog.as_ref(), first.sent as i64, WAIT)
        .await;
    assert!(terminate(&mut w).success());

    // The declaration gains an optional dimension.
    let path = lake.path().join("schemas/usage.http_requests.toml");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "[[measure]]\nname = \"requests\"",
        "[[dimension]]\nname = \"method\"\ntype = \"string\"\noptional = true\n\n[[measure]]\nname = \"requests\"",
    );
    std::fs::write(&path, text).unwrap();
    let synced = lake.run(&["tables", "sync"]);
    assert!(
        synced.contains("usage.http_requests: added method"),
        "{synced}"
    );
    assert!(lake.run(&["tables", "sync"]).contains("unchanged"));

    let second = lake
        .produce(ProduceOptions {
            count: 20_000,
            seed: 4,
            ..Default::default()
        })
        .await;
    let mut w = lake.spawn_ingest("after", &[]);
    lake.wait_for_offsets(catalog.as_ref(), (first.sent + second.sent) as i64, WAIT)
        .await;
    assert!(terminate(&mut w).success(), "{}", lake.log("after"));

    let decl = lake.decl();
    let table = catalog.load(&tables::ident(&decl).unwrap()).await.unwrap();
    assert!(
        table
            .metadata
            .current_schema()
            .field_by_name("method")
            .is_some()
    );
    let totals = read::totals(&table, &decl).await.unwrap();
    assert_totals_match(&decl, &totals, &[&first, &second]);
}

#[test]
fn a_bad_declaration_names_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("schemas")).unwrap();
    let text = include_str!("../../schemas/usage.http_requests.toml")
        .replace("agg = \"max\"", "agg = \"median\"");
    std::fs::write(dir.path().join("schemas/bad.toml"), text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_firn"))
        .current_dir(dir.path())
        .args(["tables", "sync"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("schemas/bad.toml: measure `ttfb_ms_max`: unknown agg `median`"),
        "{err}"
    );
}

fn scrape(port: u16, path: &str) -> Option<(u16, String)> {
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            &format!("http://127.0.0.1:{port}{path}"),
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n')?;
    // curl reports 000 when nothing answered yet.
    let code: u16 = code.trim().parse().ok().filter(|c| *c != 0)?;
    Some((code, body.to_string()))
}

fn metric(body: &str, name: &str) -> u64 {
    body.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_readiness_follow_the_worker() {
    let broker = Broker::start();
    let lake = Lake::new(&broker);
    lake.create_topic(3).await;
    lake.run(&["tables", "sync"]);
    // Not ready before it has partitions: the broker is up but the worker
    // has not started; then it starts, is assigned, and commits.
    let port = crate::common::free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut worker = lake.spawn_ingest("m", &["--metrics-addr", &addr]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let first = loop {
        if let Some(r) = scrape(port, "/readyz") {
            break r;
        }
        assert!(Instant::now() < deadline, "no metrics endpoint");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(first.0, 503, "ready before any commit: {first:?}");
    assert_eq!(scrape(port, "/healthz").unwrap().0, 200);

    let report = lake
        .produce(ProduceOptions {
            count: 20_000,
            seed: 31,
            bad_ratio: 0.01,
            ..Default::default()
        })
        .await;
    let catalog = lake.catalog().await;
    lake.wait_for_offsets(catalog.as_ref(), report.sent as i64, WAIT)
        .await;
    // The worker learns its last commit landed a moment after the table
    // shows it; then the metrics count exactly what the table holds.
    let ready = ready_within(port).await;
    assert_eq!(ready.0, 200, "{ready:?}");
    let table = catalog
        .load(&tables::ident(&lake.decl()).unwrap())
        .await
        .unwrap();
    let rows = read::totals(&table, &lake.decl()).await.unwrap().rows;
    let state = firn::maintain::state::load(&table).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let body = loop {
        let (_, body) = scrape(port, "/metrics").unwrap();
        let files = metric(&body, "firn_ingest_files_committed_total");
        if files == state.files.len() as u64 || Instant::now() > deadline {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        metric(&body, "firn_ingest_events_consumed_total"),
        report.sent,
        "{body}"
    );
    assert_eq!(
        metric(&body, "firn_ingest_events_rejected_total"),
        report.malformed
    );
    assert_eq!(metric(&body, "firn_ingest_rows_written_total"), rows);
    let bytes: u64 = state.files.iter().map(|f| f.bytes).sum();
    assert_eq!(metric(&body, "firn_ingest_bytes_written_total"), bytes);
    assert_eq!(
        metric(&body, "firn_ingest_files_committed_total"),
        state.files.len() as u64
    );
    assert_eq!(
        metric(&body, "firn_ingest_commit_duration_seconds_count"),
        metric(&body, "firn_ingest_flush_duration_seconds_count")
    );
    let last = metric(&body, "firn_ingest_last_commit_timestamp_seconds") as i64;
    assert!((chrono::Utc::now().timestamp() - last).abs() < 60, "{body}");
    // Caught up: once librdkafka's statistics (every 5 s) report the high
    // watermarks, the lag over the 3 assigned partitions is 0.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, body) = scrape(port, "/metrics").unwrap();
        if body.contains("firn_ingest_consumer_lag_records{")
            && metric(&body, "firn_ingest_consumer_lag_records") == 0
        {
            assert_eq!(
                metric(&body, "firn_ingest_assigned_partitions"),
                3,
                "{body}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "lag not 0 when caught up: {body}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(terminate(&mut worker).success());
}

/// `/readyz` of the worker at `port`, once something answers.
async fn readyz(port: u16) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(r) = scrape(port, "/readyz") {
            return r;
        }
        assert!(Instant::now() < deadline, "no endpoint on port {port}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `/readyz` once it answers 200, or its last answer after 30 s.
async fn ready_within(port: u16) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = readyz(port).await;
        if r.0 == 200 || Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_wants_an_assigned_partition_and_a_commit() {
    // One partition, two members: once the group has rebalanced, one holds
    // the partition and the other has nothing assigned, so it is not ready
    // however long it runs. When the holder stops, the other takes the
    // partition, commits what arrives, and is ready.
    const IDLE: &str = "not ready: no partitions assigned\n";
    let broker = Broker::start();
    let lake = Lake::new(&broker);
    lake.create_topic(1).await;
    lake.run(&["tables", "sync"]);
    let catalog = lake.catalog().await;
    let ports = [crate::common::free_port(), crate::common::free_port()];
    let spawn = |name: &str, port: u16| {
        lake.spawn_ingest(name, &["--metrics-addr", &format!("127.0.0.1:{port}")])
    };
    let batch = |seed| ProduceOptions {
        count: 1_000,
        seed,
        ..Default::default()
    };
    let mut workers = vec![spawn("a", ports[0])];
    let one = lake.produce(batch(61)).await;
    lake.wait_for_offsets(catalog.as_ref(), one.sent as i64, WAIT)
        .await;
    // The worker learns its commit landed a moment after the table shows it.
    assert_eq!(ready_within(ports[0]).await, (200, "ready\n".into()));

    workers.push(spawn("b", ports[1]));
    let assigned = |port| {
        let (_, body) = scrape(port, "/metrics").unwrap();
        metric(&body, "firn_ingest_assigned_partitions")
    };
    let logs = || format!("a:\n{}\nb:\n{}", lake.log("a"), lake.log("b"));
    let deadline = Instant::now() + Duration::from_secs(30);
    let idle = loop {
        let joined = lake.log("b").contains("assigned;");
        let states = [readyz(ports[0]).await, readyz(ports[1]).await];
        let idle: Vec<usize> = (0..2).filter(|&i| states[i].1 == IDLE).collect();
        if joined && idle.len() == 1 && assigned(ports[1 - idle[0]]) == 1 {
            break idle[0];
        }
        assert!(Instant::now() < deadline, "{states:?}\n{}", logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The member without a partition stays not ready.
    for _ in 0..10 {
        assert_eq!(readyz(ports[idle]).await, (503, IDLE.into()), "{}", logs());
        assert_eq!(assigned(ports[idle]), 0);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    let holder = 1 - idle;
    assert!(terminate(&mut workers[holder]).success(), "{}", logs());
    let two = lake.produce(batch(62)).await;
    lake.wait_for_offsets(catalog.as_ref(), (one.sent + two.sent) as i64, WAIT)
        .await;
    let ready = ready_within(ports[idle]).await;
    assert_eq!(ready, (200, "ready\n".into()), "{}", logs());
    assert_eq!(assigned(ports[idle]), 1);
    assert!(terminate(&mut workers[idle]).success());
    let totals = table_totals(&lake).await;
    assert_totals_match(&lake.decl(), &totals, &[&one, &two]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_commits_the_buffer_and_exits_zero() {
    let broker = Broker::start();
    let lake = Lake::new(&broker);
    lake.create_topic(4).await;
    lake.run(&["tables", "sync"]);
    let producing = lake.produce_in_background(ProduceOptions {
        count: 60_000,
        rate: Some(6_000),
        seed: 41,
        ..Default::default()
    });
    // A long interval: the buffer holds everything consumed when SIGTERM lands.
    let port = crate::common::free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut worker = lake.spawn_ingest_every("t", "120s", &["--metrics-addr", &addr]);
    // Nothing committed yet, so the lag is every record the topic holds.
    let deadline = Instant::now() + Duration::from_secs(30);
    let lag = loop {
        if let Some((_, body)) = scrape(port, "/metrics") {
            let lag = metric(&body, "firn_ingest_consumer_lag_records");
            if lag > 0 {
                break lag;
            }
        }
        assert!(Instant::now() < deadline, "the lag never showed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(lag <= 60_000, "lag {lag} exceeds what was produced");
    let catalog = lake.catalog().await;
    assert_eq!(
        lake.committed_records(catalog.as_ref()).await,
        0,
        "committed before SIGTERM"
    );
    let started = Instant::now();
    let status = terminate(&mut worker);
    let took = started.elapsed();
    assert!(status.success(), "{}", lake.log("t"));
    eprintln!("MEASURE SIGTERM under load: exited 0 after {took:?}");
    assert!(took < Duration::from_secs(30), "took {took:?}");
    let committed = lake.committed_records(catalog.as_ref()).await;
    assert!(committed > 0, "the buffer was not committed on SIGTERM");

    // A new worker finishes the stream: nothing lost, nothing twice.
    let report = producing.await.unwrap();
    let mut again = lake.spawn_ingest("t2", &[]);
    lake.wait_for_offsets(catalog.as_ref(), report.sent as i64, WAIT)
        .await;
    assert!(terminate(&mut again).success());
    let totals = table_totals(&lake).await;
    assert_totals_match(&lake.decl(), &totals, &[&report]);
}
