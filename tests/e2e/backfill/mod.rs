//! Backfill from event files: exact totals at the grain each age calls for,
//! refusal of a repeated backfill (and `--force`), resume after a kill, and
//! rejects naming file and line. The submodules hold what a backfill is
//! (its identity and resume), `--replace` isolation, and time-range replays.

mod replace;
mod resume;
mod stage;
mod time_range;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use firn::produce::{EventGenerator, ProduceOptions};
use firn::schema::decl::TableDecl;
use firn::{read, tables};
use serde_json::Value;

use crate::common::Lake;

pub(super) struct Inputs {
    pub(super) files: Vec<PathBuf>,
    pub(super) totals: std::collections::BTreeMap<String, Value>,
    pub(super) malformed: u64,
    pub(super) lines: u64,
}

/// Three files (plain, gzip, zstd) of events spread over 200 days, 1% malformed.
pub(super) fn write_inputs(dir: &Path, decl: &TableDecl, per_file: u64) -> Inputs {
    let mut generator = EventGenerator::new(
        decl,
        &ProduceOptions {
            seed: 99,
            bad_ratio: 0.01,
            spread: Duration::from_secs(200 * 86_400),
            ..Default::default()
        },
    );
    let now_ms = chrono::Utc::now().timestamp_millis() - 60_000;
    let mut files = Vec::new();
    for name in ["a.ndjson", "b.ndjson.gz", "c.ndjson.zst"] {
        let path = dir.join(name);
        let mut text = Vec::new();
        for _ in 0..per_file {
            let (_, mut line) = generator.next(now_ms);
            line.retain(|b| *b != b'\n');
            text.extend(line);
            text.push(b'\n');
        }
        let bytes = match name {
            n if n.ends_with(".gz") => {
                let mut e =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                e.write_all(&text).unwrap();
                e.finish().unwrap()
            }
            n if n.ends_with(".zst") => zstd::encode_all(&text[..], 3).unwrap(),
            _ => text,
        };
        std::fs::write(&path, bytes).unwrap();
        files.push(path);
    }
    Inputs {
        files,
        totals: generator.totals_by_name(),
        malformed: generator.malformed.values().sum(),
        lines: 3 * per_file,
    }
}

/// `firn backfill` of the files in `dir`, with `extra` flags.
pub(super) fn backfill_command(lake: &Lake, dir: &Path, extra: &[&str]) -> Command {
    let mut c = lake.firn();
    c.args(["backfill", "usage.http_requests", "--input"])
        .arg(format!("{}/*.ndjson*", dir.display()))
        .args(extra);
    c
}

pub(super) fn backfill(lake: &Lake, dir: &Path, extra: &[&str]) -> std::process::Output {
    backfill_command(lake, dir, extra).output().unwrap()
}

/// `firn backfill` replaying `topic`, with `extra` flags.
pub(super) fn replay_command(lake: &Lake, topic: &str, extra: &[&str]) -> Command {
    let mut c = lake.firn();
    c.args([
        "backfill",
        "usage.http_requests",
        "--from-kafka",
        "--topic",
        topic,
    ])
    .args(extra);
    c
}

/// Assert that the table's totals are those of `inputs`, measure by measure.
pub(super) async fn assert_holds(lake: &Lake, inputs: &Inputs) {
    let decl = lake.decl();
    let t = totals(lake).await;
    for m in &decl.measures {
        assert_eq!(
            serde_json::json!(t.long(&decl, &m.name)),
            inputs.totals[&m.name],
            "{}",
            m.name
        );
    }
}

/// The JSON report of a command that must have succeeded.
pub(super) fn succeeded(out: &std::process::Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

pub(super) async fn totals(lake: &Lake) -> read::Totals {
    let catalog = lake.catalog().await;
    let decl = lake.decl();
    read::totals(
        &catalog.load(&tables::ident(&decl).unwrap()).await.unwrap(),
        &decl,
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_is_exact_refused_twice_and_forced_on_request() {
    let (lake, data, inputs) = lake_with_inputs(4_000);
    let decl = lake.decl();

    let dry = backfill(&lake, data.path(), &["--dry-run"]);
    assert!(dry.status.success());
    let plan: Value = serde_json::from_slice(&dry.stdout).unwrap();
    assert_eq!(plan["totals"], serde_json::json!(inputs.totals));
    assert!(totals(&lake).await.rows == 0, "a dry run wrote rows");

    let started = Instant::now();
    let out = backfill(&lake, data.path(), &["--chunk-events", "2500"]);
    let report = succeeded(&out);
    eprintln!(
        "MEASURE backfill {} events in {:.2}s",
        inputs.lines,
        started.elapsed().as_secs_f64()
    );
    assert_eq!(report["events"], inputs.lines);
    assert_eq!(report["rejected"], inputs.malformed);
    for grain in ["minute", "hour", "day"] {
        assert!(
            report["rows_by_grain"][grain].as_u64().unwrap() > 0,
            "no {grain} rows: {report}"
        );
    }
    assert_holds(&lake, &inputs).await;
    let status: Value = serde_json::from_str(&lake.run(&["status", "--json"])).unwrap();
    assert!(status[0]["grains"]["day"]["rows"].as_u64().unwrap() > 0);

    // Rejects name the file and line; the payload is that line.
    let catalog = lake.catalog().await;
    let rejects = read::rejects(
        &catalog
            .load(&tables::rejects_ident(&decl).unwrap())
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(rejects.len() as u64, inputs.malformed);
    let plain = std::fs::read_to_string(&inputs.files[0]).unwrap();
    let plain_lines: Vec<&str> = plain.lines().collect();
    let mut checked = 0;
    for r in rejects.iter().filter(|r| r.topic.ends_with("a.ndjson")) {
        assert_eq!(
            r.payload,
            plain_lines[(r.offset - 1) as usize].as_bytes(),
            "line {}",
            r.offset
        );
        assert_eq!(r.partition, -1);
        checked += 1;
    }
    assert!(checked > 0);

    // The same backfill again is refused, naming the snapshot that holds it.
    let again = backfill(&lake, data.path(), &[]);
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("already committed (snapshot "), "{err}");
    assert!(err.contains("--force"), "{err}");

    // --force adds it again: totals double, as asked.
    let forced = backfill(&lake, data.path(), &["--force"]);
    assert!(
        forced.status.success(),
        "{}",
        String::from_utf8_lossy(&forced.stderr)
    );
    let t = totals(&lake).await;
    assert_eq!(
        t.long(&decl, "bytes"),
        2 * inputs.totals["bytes"].as_i64().unwrap()
    );
    assert_eq!(
        t.long(&decl, "ttfb_ms_max"),
        inputs.totals["ttfb_ms_max"].as_i64().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backfill_resumes_without_counting_a_chunk_twice() {
    let (lake, data, inputs) = killed_backfill(6_000, 4).await;
    let report = succeeded(&backfill(&lake, data.path(), &["--chunk-events", "500"]));
    assert!(report["resumed_at"]["at"].as_i64().unwrap() > 0, "{report}");
    assert!(
        report["events"].as_u64().unwrap() < inputs.lines,
        "{report}"
    );
    eprintln!(
        "MEASURE resume: resumed at {}, {} chunks committed",
        report["resumed_at"], report["chunks_committed"]
    );
    assert_holds(&lake, &inputs).await;
    assert_eq!(rejects(&lake).await.len() as u64, inputs.malformed);
}

/// A lake without Kafka, its table synced, and the inputs [`write_inputs`]
/// writes (`per_file` lines each) in a folder of their own.
pub(super) fn lake_with_inputs(per_file: u64) -> (Lake, tempfile::TempDir, Inputs) {
    let lake = Lake::without_broker();
    lake.run(&["tables", "sync"]);
    let data = tempfile::tempdir().unwrap();
    let inputs = write_inputs(data.path(), &lake.decl(), per_file);
    (lake, data, inputs)
}

/// A lake and the inputs [`write_inputs`] writes (`per_file` lines each),
/// whose backfill in chunks of 500 was killed once the table had
/// `snapshots` snapshots.
pub(super) async fn killed_backfill(
    per_file: u64,
    snapshots: usize,
) -> (Lake, tempfile::TempDir, Inputs) {
    let (lake, data, inputs) = lake_with_inputs(per_file);
    let mut child = backfill_command(&lake, data.path(), &["--chunk-events", "500"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    kill_at_snapshots(&lake, &mut child, snapshots).await;
    (lake, data, inputs)
}

/// Kill `child` (a backfill) once the table has `snapshots` snapshots; it
/// must still be running by then.
/// Snapshots the table holds now.
pub(super) async fn snapshot_count(lake: &Lake) -> usize {
    let catalog = lake.catalog().await;
    let ident = tables::ident(&lake.decl()).unwrap();
    let table = catalog.load(&ident).await.unwrap();
    table.metadata.snapshots().count()
}

pub(super) async fn kill_at_snapshots(
    lake: &Lake,
    child: &mut std::process::Child,
    snapshots: usize,
) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if snapshot_count(lake).await >= snapshots {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the backfill did not commit enough"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the backfill finished before it was killed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

/// The rejects table's records.
pub(super) async fn rejects(lake: &Lake) -> Vec<firn::rejects::RejectRecord> {
    let catalog = lake.catalog().await;
    read::rejects(
        &catalog
            .load(&tables::rejects_ident(&lake.decl()).unwrap())
            .await
            .unwrap(),
    )
    .await
    .unwrap()
}

/// A file of `n` valid events all on the UTC day `day`, and their totals.
pub(crate) fn day_file(
    path: &Path,
    decl: &TableDecl,
    day: chrono::NaiveDate,
    n: u64,
    seed: u64,
) -> firn::rows::Measures {
    let mut generator = EventGenerator::new(
        decl,
        &ProduceOptions {
            seed,
            spread: Duration::from_secs(86_400),
            ..Default::default()
        },
    );
    let end = day
        .succ_opt()
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
        .timestamp_millis()
        - 1;
    let mut text = Vec::new();
    for _ in 0..n {
        text.extend(generator.next(end).1);
        text.push(b'\n');
    }
    std::fs::write(path, text).unwrap();
    generator.totals
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_one_day_while_ingest_runs() {
    let broker = crate::common::Broker::start();
    let lake = Lake::new(&broker);
    lake.create_topic(4).await;
    lake.run(&["tables", "sync"]);
    let decl = lake.decl();
    let data = tempfile::tempdir().unwrap();
    let today = chrono::Utc::now().date_naive();
    let day = |n: i64| today - chrono::Duration::days(n);

    // History for three days, backfilled.
    let before: Vec<_> = [4, 3, 2]
        .iter()
        .map(|n| {
            day_file(
                &data.path().join(format!("d{n}.ndjson")),
                &decl,
                day(*n),
                3_000,
                *n as u64,
            )
        })
        .collect();
    let out = lake
        .firn()
        .args(["backfill", "usage.http_requests", "--input"])
        .arg(format!("{}/d*.ndjson", data.path().display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Live ingest on current data while the middle day is re-computed.
    let producing = lake.produce_in_background(ProduceOptions {
        count: 40_000,
        rate: Some(4_000),
        seed: 8,
        spread: Duration::from_secs(600),
        ..Default::default()
    });
    // The table holds the backfilled history and no offsets for the group:
    // where ingest starts is the operator's explicit choice.
    let mut worker = lake.spawn_ingest("live", &["--reset-offsets", "earliest"]);
    tokio::time::sleep(Duration::from_secs(3)).await;

    let fixed_dir = tempfile::tempdir().unwrap();
    let fixed = day_file(
        &fixed_dir.path().join("fixed.ndjson"),
        &decl,
        day(3),
        1_000,
        33,
    );
    let input = format!("{}/fixed.ndjson", fixed_dir.path().display());
    let from = day(3).to_string();
    let to = day(2).to_string();
    // Misaligned: half an hour cuts an hour partition of minute rows.
    let bad = lake
        .firn()
        .args([
            "backfill",
            "usage.http_requests",
            "--replace",
            "--input",
            &input,
            "--to",
            &to,
        ])
        .args(["--from", &format!("{from}T00:30:00Z")])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("cuts the ts_hour partition"), "{err}");
    // A dry run says what it would remove.
    let dry = lake.run(&[
        "backfill",
        "usage.http_requests",
        "--replace",
        "--dry-run",
        "--input",
        &input,
        "--from",
        &from,
        "--to",
        &to,
    ]);
    let dry: Value = serde_json::from_str(&dry).unwrap();
    assert!(dry["replaced_files"].as_u64().unwrap() > 0, "{dry}");
    let done = lake.run(&[
        "backfill",
        "usage.http_requests",
        "--replace",
        "--input",
        &input,
        "--from",
        &from,
        "--to",
        &to,
    ]);
    let done: Value = serde_json::from_str(&done).unwrap();
    assert_eq!(done["chunks_committed"], 1, "{done}");

    let report = producing.await.unwrap();
    lake.drain_and_stop(
        &mut worker,
        "live",
        report.sent as i64,
        Duration::from_secs(300),
    )
    .await;

    let t = totals(&lake).await;
    assert_eq!(
        t.per_day[&day(3)],
        fixed,
        "the replaced day holds the new input"
    );
    assert_eq!(t.per_day[&day(4)], before[0], "the day before is unchanged");
    assert_eq!(t.per_day[&day(2)], before[2], "the day after is unchanged");
    // Every live event is there too: no ingest commit was lost.
    let spec = firn::rows::MeasureSpec::new(&decl);
    let mut live = spec.empty();
    for (d, m) in &t.per_day {
        if *d > day(2) {
            spec.merge_saturating(&mut live, m);
        }
    }
    let requests = decl
        .measures
        .iter()
        .position(|m| m.name == "requests")
        .unwrap();
    assert_eq!(
        live.0[requests],
        firn::rows::MeasureValue::Long(Some(report.valid as i64))
    );
}

fn group_offsets(brokers: &str, topic: &str, partitions: i32) -> Vec<(i32, rdkafka::Offset)> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", crate::common::GROUP)
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    c.committed_offsets(tpl, Duration::from_secs(10))
        .unwrap()
        .elements()
        .iter()
        .map(|e| (e.partition(), e.offset()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_replay_leaves_the_ingest_group_untouched() {
    let broker = crate::common::Broker::start();
    let lake = Lake::new(&broker);
    lake.create_topic(3).await;
    lake.run(&["tables", "sync"]);
    let report = lake
        .produce(ProduceOptions {
            count: 15_000,
            seed: 5,
            ..Default::default()
        })
        .await;
    let mut worker = lake.spawn_ingest("live", &[]);
    let catalog = lake.catalog().await;
    lake.wait_for_offsets(
        catalog.as_ref(),
        report.sent as i64,
        Duration::from_secs(300),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = group_offsets(&lake.brokers, "http-requests", 3);
    assert!(
        before
            .iter()
            .all(|(_, o)| matches!(o, rdkafka::Offset::Offset(_))),
        "{before:?}"
    );
    let rebalances = lake.log("live").matches("assigned").count();

    let out = replay_command(
        &lake,
        "http-requests",
        &["--start-offsets", "0:0,1:0,2:0", "--chunk-events", "4000"],
    )
    .output()
    .unwrap();
    let replay = succeeded(&out);
    assert_eq!(replay["events"], report.sent);

    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        group_offsets(&lake.brokers, "http-requests", 3),
        before,
        "the replay moved the ingest group's offsets"
    );
    assert_eq!(
        lake.log("live").matches("assigned").count(),
        rebalances,
        "the replay joined the ingest group"
    );
    assert!(crate::common::terminate(&mut worker).success());

    // The replay added the whole topic again.
    let t = totals(&lake).await;
    let decl = lake.decl();
    assert_eq!(t.long(&decl, "requests"), 2 * report.valid as i64);
    assert_eq!(
        t.long(&decl, "bytes"),
        2 * report.totals["bytes"].as_i64().unwrap()
    );
    // The same range again is refused.
    let again = replay_command(&lake, "http-requests", &["--start-offsets", "0:0,1:0,2:0"])
        .output()
        .unwrap();
    assert!(!again.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_inputs_backfill_exactly() {
    use std::sync::Arc;

    use arrow_array::{Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
    use arrow_schema::{DataType, Field, Schema, TimeUnit};

    let lake = Lake::without_broker();
    lake.run(&["tables", "sync"]);
    let data = tempfile::tempdir().unwrap();
    let n = 5_000i64;
    let now = chrono::Utc::now().timestamp_millis();
    let ts: Vec<i64> = (0..n).map(|i| now - 60_000 - i * 3_600_000 / 7).collect();
    let bytes: Vec<i64> = (0..n).map(|i| i * 3 % 1000).collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ),
        Field::new("account_id", DataType::Int64, false),
        Field::new("zone_id", DataType::Int64, false),
        Field::new("colo", DataType::Utf8, false),
        Field::new("product", DataType::Utf8, false),
        Field::new("bytes", DataType::Int64, false),
        Field::new("cpu_ms", DataType::Int64, false),
        Field::new("ttfb_ms", DataType::Int64, true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(TimestampMillisecondArray::from(ts).with_timezone("UTC")),
            Arc::new(Int64Array::from_iter_values((0..n).map(|i| i % 9))),
            Arc::new(Int64Array::from_iter_values((0..n).map(|i| i % 4))),
            Arc::new(StringArray::from_iter_values(
                (0..n).map(|i| ["AMS", "Zürich"][(i % 2) as usize]),
            )),
            Arc::new(StringArray::from_iter_values((0..n).map(|_| "cdn"))),
            Arc::new(Int64Array::from(bytes.clone())),
            Arc::new(Int64Array::from_iter_values((0..n).map(|i| i % 7))),
            Arc::new(Int64Array::from_iter(
                (0..n).map(|i| (i % 10 != 0).then_some(i % 500)),
            )),
        ],
    )
    .unwrap();
    let path = data.path().join("events.parquet");
    let mut w =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), schema, None)
            .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();

    let out = lake
        .firn()
        .args(["backfill", "usage.http_requests", "--input"])
        .arg(&path)
        .output()
        .unwrap();
    let report = succeeded(&out);
    // Rows with no ttfb_ms are rejected (a required measure), with their row number.
    let missing = (0..n).filter(|i| i % 10 == 0).count() as u64;
    assert_eq!(report["rejected"], missing, "{report}");
    let t = totals(&lake).await;
    let decl = lake.decl();
    let kept = |i: &i64| i % 10 != 0;
    assert_eq!(
        t.long(&decl, "requests"),
        (0..n).filter(kept).count() as i64
    );
    assert_eq!(
        t.long(&decl, "bytes"),
        (0..n).filter(kept).map(|i| bytes[i as usize]).sum::<i64>()
    );
    assert_eq!(
        t.long(&decl, "ttfb_ms_max"),
        (0..n).filter(kept).map(|i| i % 500).max().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_replay_by_time_range() {
    let broker = crate::common::Broker::start();
    let lake = Lake::new(&broker);
    lake.create_topic(2).await;
    lake.run(&["tables", "sync"]);
    let batch = |count, seed| ProduceOptions {
        count,
        seed,
        ..Default::default()
    };
    lake.produce(batch(1_000, 1)).await;
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let start = chrono::Utc::now();
    let middle = lake.produce(batch(1_500, 2)).await;
    let end = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    lake.produce(batch(500, 3)).await;
    let (start, end) = (start.to_rfc3339(), end.to_rfc3339());
    let out = replay_command(
        &lake,
        "http-requests",
        &["--start-time", &start, "--end-time", &end],
    )
    .output()
    .unwrap();
    let replay = succeeded(&out);
    eprintln!(
        "MEASURE time-range replay read {} records, the middle batch had {}",
        replay["events"], middle.sent
    );
    assert_eq!(replay["events"], middle.sent, "{replay}");
    let t = totals(&lake).await;
    assert_eq!(t.long(&lake.decl(), "requests"), middle.valid as i64);
    assert_eq!(
        serde_json::json!(t.long(&lake.decl(), "bytes")),
        middle.totals["bytes"]
    );
}

/// `firn produce --to-file` writes a backfill input holding the totals it
/// reports: a backfill of it adds exactly those, and rejects the malformed
/// lines it counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_produced_file_backfills_to_the_totals_it_reports() {
    let lake = Lake::without_broker();
    lake.run(&["tables", "sync"]);
    let mut want: std::collections::BTreeMap<String, i64> = Default::default();
    for (i, name) in ["events.ndjson.gz", "events.ndjson.zst"].iter().enumerate() {
        let file = lake.path().join(name);
        let produced: Value = serde_json::from_str(&lake.run(&[
            "produce",
            "--count",
            "3000",
            "--seed",
            &i.to_string(),
            "--bad-ratio",
            "0.02",
            "--spread",
            "30d",
            "--to-file",
            file.to_str().unwrap(),
        ]))
        .unwrap();
        assert!(produced["malformed"].as_u64().unwrap() > 20, "{produced}");
        for m in ["requests", "bytes", "cpu_ms"] {
            *want.entry(m.to_string()).or_default() += produced["totals"][m].as_i64().unwrap();
        }
        let out = succeeded(
            &lake
                .firn()
                .args(["backfill", "usage.http_requests", "--input"])
                .arg(&file)
                .output()
                .unwrap(),
        );
        assert_eq!(out["rejected"], produced["malformed"], "{out}");
        assert_eq!(out["events"], produced["sent"], "{out}");
    }
    let decl = lake.decl();
    let t = totals(&lake).await;
    for (m, v) in want {
        assert_eq!(t.long(&decl, &m), v, "{m}");
    }
}
