//! The ingest CPU path on one core, on generated events: decode → aggregate
//! into minute rows → sort → encode a zstd Parquet file in memory, as a
//! flush does; beside it firn's decode alone, and a bare typed serde_json
//! decode of the same payloads into a borrowed struct (the ceiling a JSON
//! decoder is measured against).
//!
//! Then the shard threads (`--threads N`): decode and aggregate of the same
//! payloads handed to N shards as ingest's consumer thread hands them, N
//! from 1 to the cores, against one core doing it inline.
//!
//! Two fixtures (JSON payloads from the same generator as `firn produce`,
//! built outside the measured part), each printed with its events per
//! minute row: `high-cardinality` (1,000 accounts over two hours: about one
//! event per row, the worst case) and `realistic` (one account over two
//! minutes: tens of events per row, as per-account, per-zone, per-colo
//! traffic aggregates). Each figure is the best of `FIRN_BENCH_RUNS` runs
//! (default 5) over `FIRN_BENCH_EVENTS` events (default 200,000). Prints a
//! line per figure and one JSON line per fixture; `FIRN_BENCH_FIXTURE`
//! names the one fixture to run.
//!
//! Run: `cargo bench --bench ingest_pipeline`.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_schema::SchemaRef;
use firn::events::{Decoder, Scratch, TimeWindow};
use firn::ingest::shards::{Shards, TopicDecoding};
use firn::produce::{EventGenerator, ProduceOptions};
use firn::rows::{MeasureSpec, RowMap};
use firn::schema::decl::TableDecl;
use firn::schema::layout::{self, Grain};
use firn::telemetry::IngestMetrics;
use firn::write;
use parquet::arrow::ArrowWriter;

// As the binary allocates.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn decl() -> TableDecl {
    TableDecl::parse(
        Path::new("schemas/usage.http_requests.toml"),
        include_str!("../schemas/usage.http_requests.toml"),
    )
    .unwrap()
}

const NOW_MS: i64 = 1_795_771_230_123;

fn payloads(decl: &TableDecl, events: usize, accounts: i64, spread: Duration) -> Vec<Vec<u8>> {
    let mut generator = EventGenerator::new(
        decl,
        &ProduceOptions {
            seed: 42,
            accounts,
            spread,
            ..Default::default()
        },
    );
    (0..events).map(|_| generator.next(NOW_MS).1).collect()
}

/// An event time as sent: integer milliseconds or a string, borrowed.
#[allow(dead_code)]
enum Ts<'a> {
    Millis(i64),
    Text(&'a str),
}

impl<'de: 'a, 'a> serde::Deserialize<'de> for Ts<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Ts<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("milliseconds or a string")
            }
            fn visit_i64<E>(self, v: i64) -> Result<Ts<'de>, E> {
                Ok(Ts::Millis(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Ts<'de>, E> {
                i64::try_from(v).map(Ts::Millis).map_err(E::custom)
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Ts<'de>, E> {
                Ok(Ts::Text(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// The fields of a generated event, borrowed: what a typed decode with no
/// validation reads (the event time left as it was sent).
#[derive(serde::Deserialize)]
#[allow(dead_code)]
struct Bare<'a> {
    #[serde(borrow)]
    ts: Ts<'a>,
    account_id: i64,
    zone_id: i64,
    colo: &'a str,
    product: &'a str,
    bytes: Option<i64>,
    cpu_ms: Option<i64>,
    ttfb_ms: Option<i64>,
}

/// Events per second of the best of `runs` runs of `f` over `events`.
fn best(runs: usize, events: usize, mut f: impl FnMut() -> usize) -> f64 {
    let mut fastest = f64::INFINITY;
    for _ in 0..runs {
        let started = Instant::now();
        black_box(f());
        fastest = fastest.min(started.elapsed().as_secs_f64());
    }
    events as f64 / fastest
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is taken.
    let events = env("FIRN_BENCH_EVENTS", 200_000);
    let runs = env("FIRN_BENCH_RUNS", 5);
    let decl = decl();
    let decoder = Decoder::new(decl.clone());
    let spec = MeasureSpec::new(&decl);
    let schema = layout::initial_schema(&decl).unwrap();
    let arrow: SchemaRef = Arc::new(iceberg::arrow::schema_to_arrow_schema(&schema).unwrap());
    let now = chrono::DateTime::from_timestamp_millis(NOW_MS).unwrap();
    let window = TimeWindow::new(now, &decl, Duration::from_secs(3600));

    let fixtures = [
        ("high-cardinality", 1000, Duration::from_secs(2 * 3600)),
        ("realistic", 1, Duration::from_secs(120)),
    ];
    // `FIRN_BENCH_FIXTURE=realistic` (say) runs that fixture alone.
    let only = std::env::var("FIRN_BENCH_FIXTURE").ok();
    for (name, accounts, spread) in fixtures {
        if only.as_deref().is_some_and(|only| only != name) {
            continue;
        }
        let payloads = payloads(&decl, events, accounts, spread);
        let bytes: usize = payloads.iter().map(Vec::len).sum();
        let aggregate = || {
            let mut rows = RowMap::default();
            let mut scratch = Scratch::default();
            for p in &payloads {
                if let Ok(ev) = decoder.decode_into(p, window, &mut scratch) {
                    rows.add_event_ref(&spec, &ev.dims, ev.ts_micros, &ev.values);
                }
            }
            rows
        };
        let rows = aggregate().len();
        // The pipeline, timed part by part: its rate is that of the
        // fastest whole run, each part's time the fastest of that part.
        let mut phases = [f64::INFINITY; 4];
        let mut fastest = f64::INFINITY;
        for _ in 0..runs {
            let started = Instant::now();
            let map = aggregate();
            let aggregated = Instant::now();
            let sorted = map.sorted(&spec);
            let rows: Vec<_> = sorted.iter().collect();
            let ordered = Instant::now();
            let batches = write::sorted_batches(&arrow, &decl, Grain::Minute, &rows).unwrap();
            let built = Instant::now();
            let mut out = Vec::with_capacity(bytes / 4);
            let mut w =
                ArrowWriter::try_new(&mut out, arrow.clone(), Some(write::writer_properties()))
                    .unwrap();
            for batch in &batches {
                w.write(batch).unwrap();
            }
            w.close().unwrap();
            black_box(out.len());
            let encoded = Instant::now();
            let times = [
                aggregated - started,
                ordered - aggregated,
                built - ordered,
                encoded - built,
            ];
            for (best, t) in phases.iter_mut().zip(times) {
                *best = best.min(t.as_secs_f64());
            }
            fastest = fastest.min((encoded - started).as_secs_f64());
        }
        let pipeline = events as f64 / fastest;
        let decode = best(runs, events, || {
            let mut scratch = Scratch::default();
            payloads
                .iter()
                .filter(|p| decoder.decode_into(p, window, &mut scratch).is_ok())
                .count()
        });
        let bare = best(runs, events, || {
            payloads
                .iter()
                .filter(|p| serde_json::from_slice::<Bare>(p).is_ok())
                .count()
        });
        let per_row = events as f64 / rows as f64;
        println!(
            "{name}: {events} events ({:.0} bytes each), {rows} minute rows ({per_row:.1} events per row)",
            bytes as f64 / events as f64
        );
        println!(
            "  decode → aggregate → sort → encode: {:>10.0} events/s",
            pipeline
        );
        println!(
            "    of which (ms): decode + aggregate {:.1}, sort {:.1}, build batches {:.1}, encode Parquet {:.1}",
            phases[0] * 1e3,
            phases[1] * 1e3,
            phases[2] * 1e3,
            phases[3] * 1e3
        );
        println!(
            "  firn decode alone:                  {:>10.0} events/s",
            decode
        );
        println!(
            "  bare typed serde_json decode:       {:>10.0} events/s",
            bare
        );
        println!(
            "  pipeline / bare decode: {:.2}; decode / bare decode: {:.2}",
            pipeline / bare,
            decode / bare
        );
        let inline = best(runs, events, || aggregate().len());
        let mut scaling = Vec::new();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        for threads in 1..=cores {
            let decoding = TopicDecoding {
                topic: decl.topic.clone(),
                table: decl.qualified_name(),
                decoder: decoder.clone(),
                spec: spec.clone(),
            };
            let mut shards =
                Shards::start(threads, vec![decoding], IngestMetrics::default()).unwrap();
            let rate = best(runs, events, || {
                for (i, p) in payloads.iter().enumerate() {
                    shards.push(&decl.topic, (i % 4) as i32, i as i64, p, || {
                        (window, NOW_MS * 1000)
                    });
                }
                shards.collect(&decl.topic).0.len()
            });
            scaling.push((threads, rate));
        }
        println!(
            "{}",
            serde_json::json!({
                "fixture": name,
                "events": events,
                "rows": rows,
                "events_per_row": per_row,
                "pipeline_events_per_s": pipeline.round(),
                "decode_events_per_s": decode.round(),
                "bare_decode_events_per_s": bare.round(),
                "pipeline_over_bare": pipeline / bare,
                "pipeline_phases_ms": {
                    "decode_aggregate": phases[0] * 1e3,
                    "sort": phases[1] * 1e3,
                    "build_batches": phases[2] * 1e3,
                    "encode_parquet": phases[3] * 1e3,
                },
                "decode_aggregate_inline_events_per_s": inline.round(),
                "shards_events_per_s": scaling.iter().map(|(n, r)| (n.to_string(), r.round())).collect::<std::collections::BTreeMap<_, _>>(),
            })
        );
        println!("  decode + aggregate, one core inline: {inline:>10.0} events/s");
        for (n, rate) in &scaling {
            println!(
                "  on {n} shard thread(s):              {rate:>10.0} events/s = {:.2} × {n} × inline",
                rate / inline / *n as f64
            );
        }
    }
}
