//! A replay by time (`--start-time/--end-time`) selects records by their
//! Kafka timestamp up to the offset the range resolved to: records whose
//! producers set CreateTime out of order are all read, and a transactional
//! topic's commit markers do not stall the end of a partition.
//!
//! tansu 0.6.0 routes no EndTxn request, so no librdkafka transactional
//! producer can commit against it; the test writes the commit marker a
//! transaction coordinator writes (a control batch) with a Produce request
//! of its own, which tansu stores and serves back as a control batch.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use chrono::Utc;
use firn::produce::{EventGenerator, ProduceOptions};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::Value;

use super::{replay_command, totals};
use crate::common::{Broker, Lake};

/// Send valid events with these CreateTimes (ms) to partition 0 of `topic`.
fn send(lake: &Lake, topic: &str, timestamps: &[i64]) {
    let decl = lake.decl();
    let mut generator = EventGenerator::new(
        &decl,
        &ProduceOptions {
            seed: timestamps.len() as u64,
            ..Default::default()
        },
    );
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &lake.brokers)
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let now = Utc::now().timestamp_millis();
    for ts in timestamps {
        let (key, payload) = generator.next(now);
        let mut record = BaseRecord::to(topic)
            .partition(0)
            .key(&key)
            .payload(&payload)
            .timestamp(*ts);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(30)).unwrap();
}

/// CRC-32C (Castagnoli), as a record batch carries it.
fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for b in bytes {
        crc ^= u32::from(*b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn varint(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    loop {
        let byte = (z & 0x7f) as u8;
        z >>= 7;
        if z == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Append a transaction commit marker (a control batch of one record, as a
/// transaction coordinator writes it) to partition 0 of `topic`.
fn append_commit_marker(brokers: &str, topic: &str, timestamp: i64) {
    let mut record = vec![0u8]; // attributes
    varint(&mut record, 0); // timestamp delta
    varint(&mut record, 0); // offset delta
    let key = [0u8, 0, 0, 1]; // version 0, type 1: commit
    let value = [0u8, 0, 0, 0, 0, 0]; // version 0, coordinator epoch 0
    varint(&mut record, key.len() as i64);
    record.extend(key);
    varint(&mut record, value.len() as i64);
    record.extend(value);
    varint(&mut record, 0); // headers
    let mut body = Vec::new(); // from the attributes on: what the CRC covers
    body.extend(0x30i16.to_be_bytes()); // transactional, control
    body.extend(0i32.to_be_bytes()); // last offset delta
    body.extend(timestamp.to_be_bytes());
    body.extend(timestamp.to_be_bytes());
    body.extend(4_242i64.to_be_bytes()); // producer id
    body.extend(0i16.to_be_bytes()); // producer epoch
    body.extend((-1i32).to_be_bytes()); // base sequence
    body.extend(1i32.to_be_bytes()); // records
    varint(&mut body, record.len() as i64);
    body.extend(record);
    let mut batch = Vec::new();
    batch.extend(0i64.to_be_bytes()); // base offset
    batch.extend((4 + 1 + 4 + body.len() as i32).to_be_bytes());
    batch.extend(0i32.to_be_bytes()); // partition leader epoch
    batch.push(2); // magic
    batch.extend(crc32c(&body).to_be_bytes());
    batch.extend(body);

    let mut request = Vec::new();
    request.extend(0i16.to_be_bytes()); // Produce
    request.extend(3i16.to_be_bytes()); // version 3
    request.extend(7i32.to_be_bytes()); // correlation id
    request.extend(4i16.to_be_bytes());
    request.extend(b"test");
    request.extend((-1i16).to_be_bytes()); // no transactional id
    request.extend((-1i16).to_be_bytes()); // acks: all
    request.extend(30_000i32.to_be_bytes());
    request.extend(1i32.to_be_bytes());
    request.extend((topic.len() as i16).to_be_bytes());
    request.extend(topic.as_bytes());
    request.extend(1i32.to_be_bytes());
    request.extend(0i32.to_be_bytes()); // partition
    request.extend((batch.len() as i32).to_be_bytes());
    request.extend(batch);
    let mut conn = std::net::TcpStream::connect(brokers).unwrap();
    conn.write_all(&(request.len() as i32).to_be_bytes())
        .unwrap();
    conn.write_all(&request).unwrap();
    let mut size = [0u8; 4];
    conn.read_exact(&mut size).unwrap();
    let mut response = vec![0u8; i32::from_be_bytes(size) as usize];
    conn.read_exact(&mut response).unwrap();
    // correlation id, topics, name, partitions, partition, then the error code
    let at = 4 + 4 + 2 + topic.len() + 4 + 4;
    let error = i16::from_be_bytes([response[at], response[at + 1]]);
    assert_eq!(error, 0, "producing the commit marker: error {error}");
}

fn replay(lake: &Lake, topic: &str, start: i64, end: i64) -> (std::process::Output, f64) {
    let at = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .unwrap()
            .to_rfc3339()
    };
    let started = Instant::now();
    let out = replay_command(
        lake,
        topic,
        &["--start-time", &at(start), "--end-time", &at(end)],
    )
    .output()
    .unwrap();
    (out, started.elapsed().as_secs_f64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_time_range_replay_reads_to_its_end_offset() {
    let broker = Broker::start();
    let lake = Lake::new(&broker);
    lake.run(&["tables", "sync"]);
    for topic in ["shuffled", "transactional"] {
        firn::produce::create_topic(&lake.brokers, topic, 1)
            .await
            .unwrap();
    }
    let hour = 3_600_000;
    let start = Utc::now().timestamp_millis() - 3 * hour;
    let end = start + hour;

    // Producers that set CreateTime out of order: a record past the end
    // comes before most of the range's records.
    let mut shuffled = vec![start - 60_000; 100];
    shuffled.extend((0..2_000i64).map(|i| {
        if i % 5 == 0 {
            end + 60_000 + i
        } else {
            start + i * (hour / 2_000)
        }
    }));
    let in_range_shuffled = shuffled
        .iter()
        .filter(|t| **t >= start && **t < end)
        .count();
    send(&lake, "shuffled", &shuffled);
    // A transaction's records, then its commit marker at the partition's
    // last offset.
    let transactional: Vec<i64> = (0..1_000i64).map(|i| start + i * 1_000).collect();
    send(&lake, "transactional", &transactional);
    append_commit_marker(&lake.brokers, "transactional", start + 1_000_000);

    let (out, secs) = replay(&lake, "shuffled", start, end);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    eprintln!(
        "MEASURE out-of-order CreateTime: the replay read {} of the {in_range_shuffled} records \
         in range in {secs:.1}s",
        report["events"]
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(report["events"], in_range_shuffled as u64, "{report}");

    let (out, secs) = replay(&lake, "transactional", start, end);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    eprintln!(
        "MEASURE transactional topic: the replay read {} of the {} records in {secs:.1}s",
        report["events"],
        transactional.len()
    );
    assert!(
        out.status.success(),
        "the replay of a transactional topic failed after {secs:.1}s: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(report["events"], transactional.len() as u64, "{report}");

    let t = totals(&lake).await;
    assert_eq!(
        t.long(&lake.decl(), "requests"),
        (in_range_shuffled + transactional.len()) as i64
    );
}
