use std::sync::atomic::AtomicU64;
use std::time::Duration;

use super::*;
use crate::produce::{EventGenerator, ProduceOptions};

/// Lines of a file held in memory, counting the records handed out.
struct Memory {
    lines: Vec<Vec<u8>>,
    next: usize,
    /// Records in all: the lines over and over.
    records: usize,
    handed: Arc<AtomicU64>,
}

impl Memory {
    fn new(lines: Vec<Vec<u8>>, records: usize) -> Self {
        Self {
            lines,
            next: 0,
            records,
            handed: Arc::default(),
        }
    }
}

impl Source for Memory {
    fn next(&mut self) -> Result<Option<SourceRecord<'_>>> {
        if self.next >= self.records {
            return Ok(None);
        }
        let line = &self.lines[self.next % self.lines.len()];
        self.next += 1;
        self.handed.fetch_add(1, Ordering::Relaxed);
        Ok(Some(SourceRecord {
            origin: Origin::Line {
                file: "memory.ndjson",
                line: self.next as i64,
            },
            payload: line,
            bytes: line.len() as u64 + 1,
        }))
    }

    fn position(&self) -> i64 {
        self.next as i64
    }
}

/// `n` generated records of the example table, `bad_ratio` of them
/// malformed.
fn lines(n: usize, bad_ratio: f64, now: chrono::DateTime<chrono::Utc>) -> Vec<Vec<u8>> {
    let decl = TableDecl::example();
    let opts = ProduceOptions {
        accounts: 50,
        bad_ratio,
        spread: Duration::from_secs(3 * 3600),
        ..ProduceOptions::default()
    };
    let mut events = EventGenerator::new(&decl, &opts);
    (0..n)
        .map(|_| events.next(now.timestamp_millis()).1)
        .collect()
}

fn loader(opts: &BackfillOptions) -> Loader {
    Loader::new(&TableDecl::example(), opts, 0, Arc::new(|_| {}))
}

/// What a chunk holds, comparable.
fn content(chunk: Chunk, spec: &MeasureSpec) -> (u64, Vec<(i64, String)>, Vec<String>) {
    let rejects = chunk
        .rejects
        .iter()
        .map(|(at, r)| (*at, r.reason_code.clone()))
        .collect();
    let rows = chunk
        .rows
        .into_iter()
        .flat_map(|(g, rows)| {
            rows.into_sorted(spec)
                .into_iter()
                .map(move |row| format!("{g:?} {row:?}"))
        })
        .collect();
    (chunk.events, rejects, rows)
}

#[tokio::test]
async fn chunks_read_ahead_are_the_chunks_read_in_place_and_end_where_they_do() {
    let opts = BackfillOptions {
        chunk_events: 700,
        ..BackfillOptions::default()
    };
    let input = lines(5_000, 0.1, opts.now);
    let mut in_place = loader(&opts);
    let mut source = Memory::new(input.clone(), 5_000);
    let never = AtomicBool::new(false);
    let mut expected = Vec::new();
    loop {
        let (chunk, eof) = in_place.read_chunk(&mut source, &never).unwrap();
        expected.push((content(chunk, &in_place.spec), source.position(), eof));
        if eof {
            break;
        }
    }
    assert_eq!(expected.len(), 8, "5,000 records in chunks of 700");

    let mut got = Vec::new();
    let mut reading = loader(&opts).read_ahead(Box::new(Memory::new(input, 5_000)));
    let ahead = loop {
        let (ahead, source, (chunk, eof)) = reading.chunk().await.unwrap();
        got.push((content(chunk, &ahead.spec), source.position(), eof));
        if eof {
            break ahead;
        }
        reading = ahead.read_ahead(source);
    };
    assert_eq!(got, expected);
    let (mut a, mut b) = (BackfillReport::default(), BackfillReport::default());
    ahead.summarize(&mut a);
    in_place.summarize(&mut b);
    assert_eq!(a.totals, b.totals);
    assert_eq!(a.partitions_by_grain, b.partitions_by_grain);
    assert!(!a.totals.is_empty());
}

#[tokio::test]
async fn a_read_ahead_dropped_unread_stops_reading() {
    let opts = BackfillOptions {
        chunk_events: usize::MAX,
        chunk_rows: usize::MAX,
        ..BackfillOptions::default()
    };
    // Far more records than are read before it is dropped (a reader that
    // did not stop would still end, and the test with it).
    let source = Memory::new(lines(100, 0.0, opts.now), 5_000_000);
    let handed = source.handed.clone();
    let reading = loader(&opts).read_ahead(Box::new(source));
    while handed.load(Ordering::Relaxed) < 10_000 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let at_drop = handed.load(Ordering::Relaxed);
    drop(reading);
    // Stopped within a few thousand records of being dropped, and then
    // for good.
    let mut last = at_drop;
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = handed.load(Ordering::Relaxed);
        if now == last {
            break;
        }
        last = now;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(handed.load(Ordering::Relaxed), last, "still reading");
    assert!(
        last - at_drop <= 2 * PROGRESS_EVERY,
        "read {} records after it was dropped",
        last - at_drop
    );
}
