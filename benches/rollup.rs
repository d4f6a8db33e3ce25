//! Rollup and compaction throughput and memory on generated minute files.
//!
//! Rollup: one week of minute rows (`FIRN_BENCH_ROWS`, default 50 million)
//! as sorted minute files, one per hour partition, rolled up to hours.
//! Compaction: 1,440 minute files of one hour partition (24 flushes a
//! minute, each holding every key of its minute: what ingest writes with a
//! 2.5 s commit interval; `FIRN_BENCH_COMPACT_KEYS` keys, default 2,000)
//! compacted into one file. Both in a local lake (`FIRN_BENCH_DIR`, default
//! `target/bench-rollup`), generated outside the measured part; each run is
//! a child process (so its peak RSS is the run's alone), once on one
//! thread (`--jobs 1` on a runtime of one worker thread) and, from the same
//! table state (the SQLite catalog is put back; the minute files are still
//! there), once with `--jobs 2` on two.
//! Each is run `FIRN_BENCH_REPEAT` times (default 3) and the fastest kept.
//! Prints one JSON line per run. `benches/rollup_vs_duckdb.sh` runs DuckDB
//! on the same files and checks the outputs agree.
//!
//! Run: `cargo bench --bench rollup` (add `FIRN_BENCH_ROWS=5000000` for a
//! quick run).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use chrono::{Duration, TimeZone, Utc};
use firn::commit::{self, Change, FirnOperation, RetryPolicy};
use firn::config::{Config, Overrides};
use firn::maintain::{self, PlanOptions};
use firn::rows::{DimValue, MeasureValue, Measures, RowKey, SortedRows};
use firn::schema::decl::TableDecl;
use firn::schema::layout::Grain;
use firn::totals::{ChangeTotals, DayTotals, Totals};
use firn::{tables, write};

/// The shipped binary's allocator (`src/bin/firn/main.rs`), so the merge is
/// measured as `firn maintain` runs it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const COLOS: [&str; 4] = ["AMS", "FRA", "SJC", "東京-1"];
const PRODUCTS: [&str; 2] = ["cdn", "workers"];

fn decl() -> TableDecl {
    TableDecl::parse(
        Path::new("schemas/usage.http_requests.toml"),
        include_str!("../schemas/usage.http_requests.toml"),
    )
    .unwrap()
}

fn config(dir: &Path) -> Config {
    Config::with_overrides(&Overrides {
        catalog_uri: Some(format!(
            "sqlite://{}?mode=rwc",
            dir.join("catalog.db").display()
        )),
        warehouse: Some(dir.join("warehouse").display().to_string()),
        ..Default::default()
    })
    .unwrap()
}

fn week_start() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 2, 0, 0, 0).unwrap()
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// A generated row: key `k` (account, zone, colo, product) at `ts`, with
/// measures from `v`.
fn gen_row(k: u64, ts_micros: i64, v: i64) -> (RowKey, Measures) {
    (
        RowKey {
            dims: vec![
                DimValue::Long((k / 8) as i64 + 1),
                DimValue::Long(((k / 8) % 7) as i64),
                DimValue::Str(COLOS[(k % 4) as usize].into()),
                DimValue::Str(PRODUCTS[((k / 4) % 2) as usize].into()),
            ],
            ts_micros,
        },
        Measures(vec![
            MeasureValue::Long(Some(1 + v % 5)),
            MeasureValue::Long(Some(v * 1000)),
            MeasureValue::Long(Some(v)),
            MeasureValue::Long(Some(v % 700)),
        ]),
    )
}

/// Write sorted minute rows as data files of `table`, noting their paths.
async fn write_minutes(
    table: &firn::catalog::TableHandle,
    decl: &TableDecl,
    rows: &[(RowKey, Measures)],
    paths: &mut Vec<String>,
) -> Vec<firn::commit::NewFile> {
    let written = write::write_rows(
        table,
        decl,
        Grain::Minute,
        SortedRows::from_rows(rows),
        1 << 30,
    )
    .await
    .unwrap();
    paths.extend(written.iter().map(|f| f.file.file_path().to_string()));
    written
}

/// Write one week of minute rows, one sorted file per hour partition.
async fn generate(dir: &Path, rows: u64) -> Vec<String> {
    let config = config(dir);
    let catalog = config.open_catalog().await.unwrap();
    let decl = decl();
    tables::sync(catalog.as_ref(), &decl, Default::default())
        .await
        .unwrap();
    if rows == 0 {
        return Vec::new();
    }
    let ident = tables::ident(&decl).unwrap();
    let hours = 7 * 24;
    // keys per minute so that the week holds `rows` rows
    let keys = (rows / (hours * 60)).max(1);
    let mut paths = Vec::new();
    for day in 0..7 {
        let mut files = Vec::new();
        // What the day's rows hold, stated in the commit as ingest states it.
        let mut totals = DayTotals::new(&Totals::new(&decl));
        for hour in 0..24 {
            let table = catalog.load(&ident).await.unwrap();
            let start = week_start() + Duration::hours(day * 24 + hour);
            let mut batch = Vec::with_capacity((keys * 60) as usize);
            for k in 0..keys {
                for m in 0..60 {
                    let v = ((k * 31 + m * 7 + hour as u64) % 1000) as i64;
                    let ts = (start + Duration::minutes(m as i64)).timestamp_micros();
                    batch.push(gen_row(k, ts, v));
                }
            }
            // Sorted by dimensions then ts, as every firn file is.
            batch.sort_by(|a, b| a.0.cmp(&b.0));
            for (key, measures) in &batch {
                totals.add_row(key.ts_micros, &measures.0);
            }
            files.extend(write_minutes(&table, &decl, &batch, &mut paths).await);
        }
        let mut added = ChangeTotals::default();
        added.add(Grain::Minute, &totals);
        commit::commit(
            catalog.as_ref(),
            &ident,
            &Change::append(FirnOperation::Backfill, files)
                .with_totals(&added, &ChangeTotals::default()),
            RetryPolicy::default(),
        )
        .await
        .unwrap();
    }
    paths
}

/// 1,440 minute files of one hour partition (the hour after the week).
async fn generate_compaction(dir: &Path, keys: u64) -> Vec<String> {
    let config = config(dir);
    let catalog = config.open_catalog().await.unwrap();
    let decl = decl();
    let ident = tables::ident(&decl).unwrap();
    let hour = week_start() + Duration::days(8);
    let mut paths = Vec::new();
    for chunk in 0..12 {
        let table = catalog.load(&ident).await.unwrap();
        let mut files = Vec::new();
        for f in chunk * 120..(chunk + 1) * 120 {
            let minute = hour + Duration::minutes(f / 24);
            let mut batch: Vec<_> = (0..keys)
                .map(|k| {
                    let v = ((k * 31 + f as u64 * 7) % 1000) as i64;
                    gen_row(k, minute.timestamp_micros(), v)
                })
                .collect();
            // Sorted by dimensions then ts, as every firn file is.
            batch.sort_by(|a, b| a.0.cmp(&b.0));
            files.extend(write_minutes(&table, &decl, &batch, &mut paths).await);
        }
        commit::commit(
            catalog.as_ref(),
            &ident,
            &Change::append(FirnOperation::Ingest, files),
            RetryPolicy::default(),
        )
        .await
        .unwrap();
    }
    paths
}

/// The measured part: plan and run the rollup of the week, or the
/// compaction of the hour, with `jobs` partitions at once; then list the
/// files written.
async fn measured(dir: &Path, what: &str, jobs: usize) {
    let config = config(dir);
    let catalog = config.open_catalog().await.unwrap();
    let decl = decl();
    let ident = tables::ident(&decl).unwrap();
    let started = Instant::now();
    let table = catalog.load(&ident).await.unwrap();
    let state = maintain::state::load(&table).await.unwrap();
    let rollup = what == "rollup";
    let opts = PlanOptions {
        now: if rollup {
            week_start() + Duration::days(15)
        } else {
            week_start() + Duration::days(8) + Duration::hours(3)
        },
        from: None,
        to: None,
        seal_delay: std::time::Duration::from_secs(3600),
        target_file_size: 128 << 20,
    };
    let tasks = if rollup {
        maintain::plan_rollup(&state, &decl.policy, &opts)
    } else {
        maintain::plan_compaction(&state, &decl.policy, &opts)
    };
    let ctx = maintain::Context {
        jobs,
        ..maintain::Context::new(catalog.as_ref(), opts.now)
    };
    let report = maintain::execute::run(&ctx, &decl, &tasks, 128 << 20)
        .await
        .unwrap();
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(report.failed, 0);
    let rows_in: u64 = report.tasks.iter().map(|t| t.rows_in).sum();
    let rows_out: u64 = report.tasks.iter().map(|t| t.rows_out).sum();
    let files_in: usize = report.tasks.iter().map(|t| t.files_in).sum();
    let files_out: usize = report.tasks.iter().map(|t| t.files_out).sum();
    let table = catalog.load(&ident).await.unwrap();
    let grain = if rollup { Grain::Hour } else { Grain::Minute };
    let written: Vec<String> = maintain::state::load(&table)
        .await
        .unwrap()
        .files
        .iter()
        .filter(|f| f.grain == grain)
        .map(|f| f.path.trim_start_matches("file://").to_string())
        .collect();
    std::fs::write(
        dir.join(format!("firn-{what}-{jobs}-files.txt")),
        written.join("\n"),
    )
    .unwrap();
    println!(
        "{}",
        serde_json::json!({
            "what": what,
            "jobs": jobs,
            "rows_in": rows_in,
            "rows_out": rows_out,
            "files_in": files_in,
            "files_out": files_out,
            "tasks": tasks.len(),
            "seconds": seconds,
            "rows_per_second": rows_in as f64 / seconds,
            "files_per_second": files_in as f64 / seconds,
            "peak_rss_mib": peak_rss_kib() as f64 / 1024.0,
        })
    );
}

/// Run `what` in a child process from the table state saved before the
/// first run (the catalog file is put back; the input files are untouched
/// by a rollup or a compaction), and return its JSON line.
fn run_child(dir: &Path, what: &str, jobs: usize) -> String {
    let saved = dir.join("catalog.db.before");
    if saved.exists() {
        std::fs::copy(&saved, dir.join("catalog.db")).unwrap();
    } else {
        std::fs::copy(dir.join("catalog.db"), &saved).unwrap();
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--child", what, dir.to_str().unwrap(), &jobs.to_string()])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        let jobs = args[i + 3].parse().unwrap();
        // As many runtime threads as jobs: "one thread" is one thread
        // doing the work, as DuckDB's `threads` is.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(jobs)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(measured(Path::new(&args[i + 2]), &args[i + 1], jobs));
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    if args.iter().any(|a| a == "--test" || a == "--list") {
        return; // `cargo test --benches` runs nothing heavy
    }
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let rows = env("FIRN_BENCH_ROWS", 50_000_000);
    let keys = env("FIRN_BENCH_COMPACT_KEYS", 2_000);
    let repeat = env("FIRN_BENCH_REPEAT", 3);
    let root = PathBuf::from(
        std::env::var("FIRN_BENCH_DIR").unwrap_or_else(|_| "target/bench-rollup".into()),
    );
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let root = std::fs::canonicalize(&root).unwrap();
    let list = |paths: &[String]| {
        paths
            .iter()
            .map(|p| p.trim_start_matches("file://").to_string())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let mut report = String::new();
    for what in ["rollup", "compact"] {
        let dir = root.join(what);
        std::fs::create_dir_all(&dir).unwrap();
        let started = Instant::now();
        let paths = if what == "rollup" {
            rt.block_on(generate(&dir, rows))
        } else {
            rt.block_on(async {
                // The table, then the hour's files.
                generate(&dir, 0).await;
                generate_compaction(&dir, keys).await
            })
        };
        eprintln!(
            "{what}: generated {} minute files in {:.1}s",
            paths.len(),
            started.elapsed().as_secs_f64()
        );
        std::fs::write(dir.join("minute-files.txt"), list(&paths)).unwrap();
        // The generated files on disk before any run is timed, so that no
        // run shares the disk with their write-back.
        let _ = Command::new("sync").status();
        for jobs in [1, 2] {
            // The fastest of `repeat` runs (a shared machine's noise only
            // ever slows a run down); the peak RSS of all.
            let runs: Vec<serde_json::Value> = (0..repeat.max(1))
                .map(|_| serde_json::from_str(&run_child(&dir, what, jobs)).unwrap())
                .collect();
            let seconds = |r: &serde_json::Value| r["seconds"].as_f64().unwrap();
            let mut best = runs
                .iter()
                .min_by(|a, b| seconds(a).total_cmp(&seconds(b)))
                .unwrap()
                .clone();
            best["peak_rss_mib"] = runs
                .iter()
                .map(|r| r["peak_rss_mib"].as_f64().unwrap())
                .fold(0.0, f64::max)
                .into();
            best["runs"] = runs.len().into();
            report.push_str(&format!("{best}\n"));
        }
    }
    std::fs::write(root.join("firn.jsonl"), &report).unwrap();
    print!("{report}");
}
