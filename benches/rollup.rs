//! Rollup throughput and memory on generated minute files.
//!
//! Generates one week of minute rows (`FIRN_BENCH_ROWS`, default 50 million)
//! as sorted minute files in a local lake (`FIRN_BENCH_DIR`, default
//! `target/bench-rollup`), one file per hour partition, outside the measured
//! part. Then runs the minute → hour rollup of that week in a child process
//! (so its peak RSS is the rollup's alone) and prints rows/s and peak RSS as
//! JSON. `benches/rollup_vs_duckdb.sh` runs DuckDB on the same files.
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
use firn::rows::{DimValue, MeasureValue, Measures, RowKey};
use firn::schema::decl::TableDecl;
use firn::schema::layout::Grain;
use firn::{tables, write};

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

/// Write one week of minute rows, one sorted file per hour partition.
async fn generate(dir: &Path, rows: u64) -> Vec<String> {
    let config = config(dir);
    let catalog = config.open_catalog().await.unwrap();
    let decl = decl();
    tables::sync(catalog.as_ref(), &decl, Default::default())
        .await
        .unwrap();
    let ident = tables::ident(&decl).unwrap();
    let hours = 7 * 24;
    // keys per minute so that the week holds `rows` rows
    let keys = (rows / (hours * 60)).max(1);
    let mut paths = Vec::new();
    for day in 0..7 {
        let mut files = Vec::new();
        for hour in 0..24 {
            let table = catalog.load(&ident).await.unwrap();
            let start = week_start() + Duration::hours(day * 24 + hour);
            let mut batch = Vec::with_capacity((keys * 60) as usize);
            for k in 0..keys {
                let dims = vec![
                    DimValue::Long((k / 8) as i64 + 1),
                    DimValue::Long(((k / 8) % 7) as i64),
                    DimValue::Str(COLOS[(k % 4) as usize].into()),
                    DimValue::Str(PRODUCTS[((k / 4) % 2) as usize].into()),
                ];
                for m in 0..60 {
                    let v = ((k * 31 + m * 7 + hour as u64) % 1000) as i64;
                    batch.push((
                        RowKey {
                            dims: dims.clone(),
                            ts_micros: (start + Duration::minutes(m as i64)).timestamp_micros(),
                        },
                        Measures(vec![
                            MeasureValue::Long(Some(1 + v % 5)),
                            MeasureValue::Long(Some(v * 1000)),
                            MeasureValue::Long(Some(v)),
                            MeasureValue::Long(Some(v % 700)),
                        ]),
                    ));
                }
            }
            let written = write::write_rows(&table, &decl, Grain::Minute, batch, 1 << 30)
                .await
                .unwrap();
            paths.extend(written.iter().map(|f| f.file.file_path().to_string()));
            files.extend(written);
        }
        commit::commit(
            catalog.as_ref(),
            &ident,
            &Change::append(FirnOperation::Backfill, files),
            RetryPolicy::default(),
        )
        .await
        .unwrap();
    }
    paths
}

/// The measured part: plan and run the rollup of the week.
async fn rollup(dir: &Path) {
    let config = config(dir);
    let catalog = config.open_catalog().await.unwrap();
    let decl = decl();
    let ident = tables::ident(&decl).unwrap();
    let started = Instant::now();
    let table = catalog.load(&ident).await.unwrap();
    let state = maintain::state::load(&table).await.unwrap();
    let opts = PlanOptions {
        now: week_start() + Duration::days(15),
        from: None,
        to: None,
        seal_delay: std::time::Duration::from_secs(3600),
        target_file_size: 128 << 20,
    };
    let tasks = maintain::plan_rollup(&state, &decl.policy, &opts);
    let ctx = maintain::Context::new(catalog.as_ref(), opts.now);
    let report = maintain::execute::run(&ctx, &decl, &tasks, 128 << 20)
        .await
        .unwrap();
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(report.failed, 0);
    let rows_in: u64 = report.tasks.iter().map(|t| t.rows_in).sum();
    let rows_out: u64 = report.tasks.iter().map(|t| t.rows_out).sum();
    let files_in: usize = report.tasks.iter().map(|t| t.files_in).sum();
    let files_out: usize = report.tasks.iter().map(|t| t.files_out).sum();
    println!(
        "{}",
        serde_json::json!({
            "rows_in": rows_in,
            "rows_out": rows_out,
            "files_in": files_in,
            "files_out": files_out,
            "tasks": tasks.len(),
            "seconds": seconds,
            "rows_per_second": rows_in as f64 / seconds,
            "peak_rss_mib": peak_rss_kib() as f64 / 1024.0,
        })
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    if let Some(i) = args.iter().position(|a| a == "--child-rollup") {
        rt.block_on(rollup(Path::new(&args[i + 1])));
        return;
    }
    if args.iter().any(|a| a == "--test" || a == "--list") {
        return; // `cargo test --benches` runs nothing heavy
    }
    let rows: u64 = std::env::var("FIRN_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000_000);
    let dir = PathBuf::from(
        std::env::var("FIRN_BENCH_DIR").unwrap_or_else(|_| "target/bench-rollup".into()),
    );
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let dir = std::fs::canonicalize(&dir).unwrap();

    let started = Instant::now();
    let paths = rt.block_on(generate(&dir, rows));
    eprintln!(
        "generated {} minute files in {:.1}s",
        paths.len(),
        started.elapsed().as_secs_f64()
    );
    let list: Vec<String> = paths
        .iter()
        .map(|p| p.trim_start_matches("file://").to_string())
        .collect();
    std::fs::write(dir.join("minute-files.txt"), list.join("\n")).unwrap();

    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--child-rollup", dir.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = String::from_utf8(out.stdout).unwrap();
    std::fs::write(dir.join("firn-rollup.json"), &report).unwrap();
    print!("{report}");
}
