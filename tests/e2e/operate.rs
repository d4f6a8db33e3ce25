//! Operating firn: `firn status` judged against a declaration's health
//! thresholds, lag measured against the broker, and batch run metrics on a
//! real Pushgateway and in a node-exporter textfile.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use firn::catalog::Catalog;
use firn::produce::ProduceOptions;
use firn::rows::{DimValue, MeasureSpec, MeasureValue, RowKey, RowMap};
use firn::schema::decl::TableDecl;
use firn::tables;
use serde_json::Value;

use crate::common::{Broker, GROUP, Lake, append_minute_rows, free_port, terminate};

const TABLE: &str = "usage.http_requests";

/// Minute rows of `accounts` accounts, one event each, at `ts` (epoch seconds).
fn rows_at(decl: &TableDecl, ts: i64, accounts: i64) -> RowMap {
    let spec = MeasureSpec::new(decl);
    let mut rows = RowMap::default();
    for a in 1..=accounts {
        rows.add_event(
            &spec,
            RowKey {
                dims: vec![
                    DimValue::Long(a),
                    DimValue::Long(7),
                    DimValue::Str("AMS".into()),
                    DimValue::Str("cdn".into()),
                ],
                ts_micros: ts / 60 * 60 * 1_000_000,
            },
            &[
                None,
                Some(MeasureValue::Long(Some(100))),
                Some(MeasureValue::Long(Some(3))),
                Some(MeasureValue::Long(Some(9))),
            ],
        );
    }
    rows
}

/// Two days past minute-to-hour (7 days): day A has 6 minute rows in two
/// files of one hour partition, day B 3 rows in one file. A rollup makes 3
/// hour rows of each day: 9 rows in, 6 out, 2 partitions, 2 commits.
async fn seed_rollup_work(lake: &Lake, catalog: &dyn Catalog) -> (i64, i64) {
    let decl = lake.decl();
    let day_a = Utc::now().date_naive() - chrono::Days::new(10);
    let day_b = day_a + chrono::Days::new(1);
    let at = |d: chrono::NaiveDate, h: u32, m: u32| {
        Utc.from_utc_datetime(&d.and_hms_opt(h, m, 0).unwrap())
            .timestamp()
    };
    append_minute_rows(catalog, &decl, rows_at(&decl, at(day_a, 10, 5), 3)).await;
    append_minute_rows(catalog, &decl, rows_at(&decl, at(day_a, 10, 30), 3)).await;
    append_minute_rows(catalog, &decl, rows_at(&decl, at(day_b, 12, 0), 3)).await;
    let start = |d: chrono::NaiveDate| {
        Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0).unwrap())
            .timestamp()
    };
    (start(day_a), start(day_b))
}

/// Replace the lake declaration's `[health]` section with `health`.
fn declare_health(lake: &Lake, health: &str) {
    let path = lake.path().join("schemas/usage.http_requests.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let body = text.split("\n[health]").next().unwrap().trim_end();
    std::fs::write(&path, format!("{body}\n\n[health]\n{health}\n")).unwrap();
}

/// `firn status --json ARGS`: exit code, parsed output, stderr.
fn status(lake: &Lake, args: &[&str]) -> (i32, Value, String) {
    let out = lake
        .firn()
        .args(["status", "--json"])
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let json: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("status printed no JSON ({e}): {stderr}"));
    (out.status.code().unwrap(), json[0].clone(), stderr)
}

fn rfc3339(epoch: i64) -> String {
    Utc.timestamp_opt(epoch, 0)
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_lists_pending_rollups_and_exits_by_the_declared_thresholds() {
    let lake = Lake::without_broker();
    lake.run(&["tables", "sync"]);
    let catalog = lake.catalog().await;
    let (day_a, day_b) = seed_rollup_work(&lake, catalog.as_ref()).await;
    // A stray file under the table's location: the orphan estimate's.
    let table = catalog
        .load(&tables::ident(&lake.decl()).unwrap())
        .await
        .unwrap();
    let location = table.metadata.location().trim_start_matches("file://");
    let stray = Path::new(location).join("data/stray.parquet");
    std::fs::create_dir_all(stray.parent().unwrap()).unwrap();
    std::fs::write(&stray, vec![0u8; 1234]).unwrap();

    declare_health(&lake, "max_pending_rollup = 1\nmax_orphan_bytes = 2000");
    let (code, s, stderr) = status(&lake, &["--no-lag"]);
    assert_eq!(code, 2, "two rollups pending > 1 must be unhealthy: {s:#}");
    assert!(
        stderr.contains("unhealthy: usage.http_requests"),
        "{stderr}"
    );
    let pending = s["pending"]["rollup"].as_array().unwrap();
    let listed: Vec<(&str, &str, u64, u64)> = pending
        .iter()
        .map(|p| {
            (
                p["grain"].as_str().unwrap(),
                p["start"].as_str().unwrap(),
                p["files"].as_u64().unwrap(),
                p["rows"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            ("hour", rfc3339(day_a).as_str(), 2, 6),
            ("hour", rfc3339(day_b).as_str(), 1, 3)
        ]
    );
    assert_eq!(
        s["health"]["problems"],
        serde_json::json!(["partitions pending rollup 2 > 1"])
    );
    assert_eq!(s["pending"]["compaction"], serde_json::json!([]));
    assert_eq!(s["small_files"], 2, "the two files of day A's hour");
    assert_eq!(s["orphans"]["files"], 1);
    assert_eq!(s["orphans"]["bytes"], 1234);
    assert_eq!(s["grains"]["minute"]["rows"], 9);

    // The same table under looser thresholds is healthy.
    declare_health(&lake, "max_pending_rollup = 2\nmax_orphan_bytes = 2000");
    let (code, s, _) = status(&lake, &["--no-lag"]);
    assert_eq!(code, 0, "{s:#}");
    assert_eq!(s["health"]["healthy"], true);
    // Orphans over their threshold make it unhealthy again.
    declare_health(&lake, "max_pending_rollup = 2\nmax_orphan_bytes = 1000");
    let (code, s, _) = status(&lake, &["--no-lag"]);
    assert_eq!(code, 2);
    assert_eq!(
        s["health"]["problems"],
        serde_json::json!(["orphan bytes 1234 > 1000"])
    );

    // After the rollup nothing waits, even under the strictest threshold.
    std::fs::remove_file(&stray).unwrap();
    lake.run(&["rollup", TABLE]);
    declare_health(&lake, "max_pending_rollup = 0\nmax_small_files = 0");
    let (code, s, _) = status(&lake, &["--no-lag"]);
    assert_eq!(code, 0, "{s:#}");
    assert_eq!(s["pending"]["rollup"], serde_json::json!([]));
    assert_eq!(s["grains"]["hour"]["rows"], 6);
    assert_eq!(s["small_files"], 0);

    // The text view says the same.
    let text = lake.run(&["status", "--no-lag"]);
    assert!(
        text.contains("usage.http_requests (topic http-requests): healthy"),
        "{text}"
    );
    assert!(text.contains("rollup 0, retention 0"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_measures_lag_from_the_table_offsets_to_the_high_watermarks() {
    let broker = Broker::start();
    let lake = Lake::new(&broker);
    lake.create_topic(3).await;
    lake.run(&["tables", "sync"]);
    let report = lake
        .produce(ProduceOptions {
            count: 5_000,
            seed: 61,
            ..Default::default()
        })
        .await;
    declare_health(
        &lake,
        &format!("max_lag = {}\nmax_commit_age = \"10m\"", report.sent - 1),
    );
    let (code, s, _) = status(&lake, &["--no-orphans"]);
    assert_eq!(code, 2, "{s:#}");
    let lag = &s["lag"][0];
    assert_eq!(lag["group"], GROUP);
    assert_eq!(lag["records"].as_u64().unwrap(), report.sent, "{s:#}");
    assert_eq!(lag["partitions"].as_object().unwrap().len(), 3);
    assert_eq!(
        s["health"]["problems"],
        serde_json::json!([
            format!("lag of group {GROUP} {} > {}", report.sent, report.sent - 1),
            "no ingest commit yet"
        ])
    );

    let mut worker = lake.spawn_ingest("lag", &[]);
    let catalog = lake.catalog().await;
    lake.wait_for_offsets(
        catalog.as_ref(),
        report.sent as i64,
        Duration::from_secs(120),
    )
    .await;
    assert!(terminate(&mut worker).success());
    let (code, s, _) = status(&lake, &["--no-orphans"]);
    assert_eq!(code, 0, "{s:#}");
    assert_eq!(s["lag"][0]["records"], 0);
    assert!(s["last_ingest_age_seconds"].as_i64().unwrap() < 600);

    // A broker that does not answer: lag unknown, and unhealthy because a
    // lag threshold is declared.
    let out = lake
        .firn()
        .env("FIRN_BROKERS", format!("127.0.0.1:{}", free_port()))
        .args(["status", "--no-orphans"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("! lag unknown: "), "{text}");
}

/// A Pushgateway from the project's tools (deploy/local/install-deploy-tools.sh).
struct Pushgateway {
    child: Child,
    port: u16,
}

impl Pushgateway {
    fn start() -> Self {
        let bin = tool("pushgateway");
        for _ in 0..3 {
            let port = free_port();
            let child = Command::new(&bin)
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let mut pg = Pushgateway { child, port };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if pg.get().is_some() {
                    return pg;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = pg.child.kill();
        }
        panic!("the Pushgateway at {} did not start", bin.display());
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn get(&self) -> Option<String> {
        let out = Command::new("curl")
            .args(["-sf", &format!("{}/metrics", self.url())])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).to_string())
    }
}

impl Drop for Pushgateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tool(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/tools")
        .join(name);
    assert!(
        p.exists(),
        "{} is missing: run deploy/local/install-deploy-tools.sh",
        p.display()
    );
    p
}

/// The value of the sample of `name` whose labels include all of `labels`.
pub(crate) fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
        let has = labels
            .iter()
            .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
        (n == name && has).then(|| value.parse().ok())?
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_runs_publish_their_metrics_to_a_pushgateway_and_a_textfile() {
    let pg = Pushgateway::start();
    let lake = Lake::without_broker();
    lake.run(&["tables", "sync"]);
    let catalog = lake.catalog().await;
    seed_rollup_work(&lake, catalog.as_ref()).await;
    let job = Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs/hourly.toml");
    let textfile = lake.path().join("textfile/firn-hourly.prom");
    let publish = [
        "--pushgateway",
        &pg.url(),
        "--metrics-file",
        textfile.to_str().unwrap(),
    ];
    let mut args = vec!["maintain", "--job", job.to_str().unwrap()];
    args.extend(publish);
    lake.run(&args);

    let pushed = pg.get().unwrap();
    let text = std::fs::read_to_string(&textfile).unwrap();
    let step = [("job", "hourly"), ("table", TABLE), ("step", "rollup")];
    for (body, what) in [(&pushed, "pushgateway"), (&text, "textfile")] {
        let get = |name: &str, labels: &[(&str, &str)]| {
            sample(body, name, labels).unwrap_or_else(|| panic!("{what}: no {name}:\n{body}"))
        };
        assert_eq!(get("firn_job_success", &[("job", "hourly")]), 1.0);
        assert_eq!(get("firn_job_rows_in", &step), 9.0, "{what}");
        assert_eq!(get("firn_job_rows_out", &step), 6.0, "{what}");
        assert_eq!(get("firn_job_partitions", &step), 2.0, "{what}");
        assert_eq!(get("firn_job_commits", &step), 2.0, "{what}");
        assert_eq!(get("firn_job_failed_tasks", &step), 0.0, "{what}");
        assert!(get("firn_job_bytes_reclaimed", &step) > 0.0, "{what}");
        assert!(get("firn_job_duration_seconds", &[("job", "hourly")]) > 0.0);
    }
    let succeeded = sample(&pushed, "firn_job_last_success_timestamp_seconds", &[]).unwrap();
    assert!((succeeded - Utc::now().timestamp() as f64).abs() < 120.0);
    // node-exporter reads the textfile: promtool lints it as exposition text.
    let lint = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&textfile).unwrap())
        .output()
        .unwrap();
    assert!(
        lint.status.success(),
        "{}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );

    // A failed run says so and keeps the last success time in both places.
    std::thread::sleep(Duration::from_millis(1100));
    let out = lake
        .firn()
        .env("FIRN_CATALOG_URI", "sqlite:///nonexistent/firn/catalog.db")
        .args(&args[..3])
        .args(publish)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let pushed = pg.get().unwrap();
    let text = std::fs::read_to_string(&textfile).unwrap();
    for (body, what) in [(&pushed, "pushgateway"), (&text, "textfile")] {
        assert_eq!(
            sample(body, "firn_job_success", &[("job", "hourly")]),
            Some(0.0),
            "{what}:\n{body}"
        );
        assert_eq!(
            sample(
                body,
                "firn_job_last_success_timestamp_seconds",
                &[("job", "hourly")]
            ),
            Some(succeeded),
            "{what}"
        );
        let ran = sample(
            body,
            "firn_job_last_run_timestamp_seconds",
            &[("job", "hourly")],
        );
        assert!(ran.unwrap() > succeeded, "{what}");
    }

    // Single commands publish under their own name.
    let out = lake
        .firn()
        .args(["remove-orphans", TABLE, "--dry-run"])
        .args(publish)
        .output()
        .unwrap();
    assert!(out.status.success());
    let pushed = pg.get().unwrap();
    assert_eq!(
        sample(
            &pushed,
            "firn_table_orphan_bytes",
            &[("job", "remove-orphans"), ("table", TABLE)]
        ),
        Some(0.0),
        "{pushed}"
    );
}

/// A Pushgateway behind basic auth is given as `http://user:password@host`
/// (the password goes in the Authorization header): the run's metrics reach
/// it, but the password never reaches a log line or an error message; nor
/// does a catalog URI's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_passwords_stay_out_of_logs_and_errors() {
    const PASSWORD: &str = "hunter2-s3cret";
    let pg = Pushgateway::start();
    let lake = Lake::without_broker();
    lake.run(&["tables", "sync"]);
    let with_password = |url: &str| url.replacen("://", &format!("://firn:{PASSWORD}@"), 1);
    let run = |cmd: &mut Command| {
        let out = cmd.output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!text.contains(PASSWORD), "{text}");
        (out.status.success(), text)
    };
    let orphans = ["remove-orphans", TABLE, "--dry-run", "--pushgateway"];

    // Pushed: the log names the gateway with the password masked.
    let (ok, text) = run(lake.firn().args(orphans).arg(with_password(&pg.url())));
    assert!(ok, "{text}");
    assert!(pg.get().unwrap().contains("firn_job_success"));
    assert!(text.contains("run metrics pushed"), "{text}");
    assert!(text.contains("firn:***@127.0.0.1"), "{text}");

    // Not pushed (nothing listens there): nor does the error.
    let closed = format!("http://127.0.0.1:{}", free_port());
    let (_, text) = run(lake.firn().args(orphans).arg(with_password(&closed)));
    assert!(text.contains("run metrics not published"), "{text}");
    assert!(text.contains("firn:***@127.0.0.1"), "{text}");

    // A SQL catalog that cannot be reached: the error names it masked.
    let catalog = format!(
        "postgres://firn:{PASSWORD}@127.0.0.1:{}/iceberg",
        free_port()
    );
    let (ok, text) = run(lake.firn().env("FIRN_CATALOG_URI", &catalog).args([
        "status",
        "--json",
        "--no-lag",
        "--no-orphans",
    ]));
    assert!(!ok, "{text}");
    assert!(text.contains("postgres://firn:***@127.0.0.1"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_give_each_commit_one_line_and_follow_rust_log() {
    let lake = Lake::without_broker();
    lake.run(&["tables", "sync"]);
    let catalog = lake.catalog().await;
    seed_rollup_work(&lake, catalog.as_ref()).await;
    let run = |filter: &str, args: &[&str]| {
        let out = lake
            .firn()
            .env("RUST_LOG", filter)
            .args(["--log-format", "json"])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stderr).unwrap()
    };
    // Filtered to warnings, a dry run says nothing.
    assert_eq!(run("warn", &["rollup", TABLE, "--dry-run"]), "");

    let stderr = run("warn,firn::commit=info", &["rollup", TABLE]);
    let lines: Vec<Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    // Only the commit target passes the filter: one line per commit.
    assert_eq!(lines.len(), 2, "{stderr}");
    let table = catalog
        .load(&tables::ident(&lake.decl()).unwrap())
        .await
        .unwrap();
    let snapshots: Vec<i64> = table
        .metadata
        .snapshots()
        .map(|s| s.snapshot_id())
        .collect();
    let (mut rows_out, mut rows_in, mut files_in) = (0, 0, 0);
    for l in &lines {
        assert_eq!(l["level"], "INFO");
        assert_eq!(l["target"], "firn::commit");
        assert_eq!(l["message"], "committed");
        assert_eq!(l["table"], TABLE);
        assert_eq!(l["operation"], "rollup");
        assert!(
            snapshots.contains(&l["snapshot_id"].as_i64().unwrap()),
            "{l}"
        );
        assert_eq!(l["files"], 1, "{l}");
        assert!(l["timestamp"].as_str().unwrap().ends_with('Z'));
        rows_out += l["rows"].as_u64().unwrap();
        rows_in += l["removed_rows"].as_u64().unwrap();
        files_in += l["removed_files"].as_u64().unwrap();
    }
    // Day A: 6 minute rows in 2 files become 3 hour rows; day B: 3 in 1.
    assert_eq!((rows_in, files_in, rows_out), (9, 3, 6), "{stderr}");
    // The last commit's line names the table's current snapshot.
    assert_eq!(
        lines[1]["snapshot_id"].as_i64(),
        table.metadata.current_snapshot_id()
    );
}
