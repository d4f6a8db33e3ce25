//! Decode + aggregate + Parquet encode throughput, on generated events.
//!
//! The fixture (JSON payloads from the same generator as `firn produce`) is
//! built outside the timed region. One iteration decodes every payload,
//! aggregates into minute rows, sorts them and encodes them as a zstd Parquet
//! file in memory, as a flush does. Run: `cargo bench --bench ingest_pipeline`.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arrow_schema::SchemaRef;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use firn::events::{Decoder, TimeWindow};
use firn::produce::{EventGenerator, ProduceOptions};
use firn::rows::{MeasureSpec, RowMap};
use firn::schema::decl::TableDecl;
use firn::schema::layout::{self, Grain};
use firn::write;
use parquet::arrow::ArrowWriter;

const EVENTS: usize = 200_000;

fn fixture() -> (TableDecl, Vec<Vec<u8>>, i64) {
    let decl = TableDecl::parse(
        Path::new("schemas/usage.http_requests.toml"),
        include_str!("../schemas/usage.http_requests.toml"),
    )
    .unwrap();
    let now_ms = 1_795_771_230_123;
    let mut generator = EventGenerator::new(
        &decl,
        &ProduceOptions {
            seed: 42,
            ..Default::default()
        },
    );
    let payloads = (0..EVENTS).map(|_| generator.next(now_ms).1).collect();
    (decl, payloads, now_ms)
}

fn pipeline(c: &mut Criterion) {
    let (decl, payloads, now_ms) = fixture();
    let decoder = Decoder::new(decl.clone());
    let spec = MeasureSpec::new(&decl);
    let schema = layout::initial_schema(&decl).unwrap();
    let arrow: SchemaRef = Arc::new(iceberg::arrow::schema_to_arrow_schema(&schema).unwrap());
    let now = chrono::DateTime::from_timestamp_millis(now_ms).unwrap();
    let window = TimeWindow::new(now, &decl, Duration::from_secs(3600));
    let bytes: usize = payloads.iter().map(Vec::len).sum();

    let mut group = c.benchmark_group("ingest");
    group.sample_size(10);
    group.throughput(Throughput::Elements(EVENTS as u64));
    group.bench_function("decode_aggregate_encode", |b| {
        b.iter(|| {
            let mut rows = RowMap::default();
            for p in &payloads {
                if let Ok(ev) = decoder.decode(p, window) {
                    rows.add_event(&spec, ev.key, &ev.values);
                }
            }
            let sorted = rows.into_sorted();
            let batches = write::to_batches(&arrow, &decl, Grain::Minute, &sorted).unwrap();
            let mut out = Vec::with_capacity(bytes / 4);
            let mut w =
                ArrowWriter::try_new(&mut out, arrow.clone(), Some(write::writer_properties()))
                    .unwrap();
            for batch in &batches {
                w.write(batch).unwrap();
            }
            w.close().unwrap();
            black_box(out.len())
        })
    });
    group.bench_function("decode_only", |b| {
        b.iter(|| {
            let mut ok = 0usize;
            for p in &payloads {
                ok += decoder.decode(p, window).is_ok() as usize;
            }
            black_box(ok)
        })
    });
    group.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
