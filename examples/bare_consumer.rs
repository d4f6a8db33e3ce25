//! A bare librdkafka consumer: drains RECORDS records of a topic from
//! offset 0 with no processing (or until none arrives for 5 s), and prints
//! the records and the rate as JSON. The baseline `benches/ingest_e2e.sh`
//! measures `firn ingest` against.
//!
//!   cargo run --release --example bare_consumer -- BROKERS TOPIC RECORDS [KEY=VALUE...]
//!
//! Each KEY=VALUE is a librdkafka property.

use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (brokers, topic, want) = match args.as_slice() {
        [_, b, t, n, ..] => (b.as_str(), t.as_str(), n.parse::<i64>().expect("RECORDS")),
        _ => {
            eprintln!("usage: bare_consumer BROKERS TOPIC RECORDS");
            std::process::exit(2);
        }
    };
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("group.id", "bare-consumer")
        .set("enable.auto.commit", "false");
    for kv in args.iter().skip(4) {
        if let Some((k, v)) = kv.split_once('=') {
            config.set(k, v);
        }
    }
    let consumer: BaseConsumer = config.create().expect("a consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("topic metadata");
    let partitions: Vec<i32> = metadata.topics()[0]
        .partitions()
        .iter()
        .map(|p| p.id())
        .collect();
    let mut tpl = TopicPartitionList::new();
    for &p in &partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("partition");
    }
    // `BARE_SUBSCRIBE=1`: join the group as a member, as `firn ingest`
    // does, rather than assign the partitions.
    let subscribed = std::env::var_os("BARE_SUBSCRIBE").is_some_and(|v| v == "1");
    if subscribed {
        consumer.subscribe(&[topic]).expect("subscribe");
    } else {
        consumer.assign(&tpl).expect("assign");
    }
    let (mut records, mut bytes) = (0i64, 0u64);
    let mut started = None;
    while records < want {
        match consumer.poll(Duration::from_secs(5)) {
            Some(Ok(m)) => {
                started.get_or_insert_with(Instant::now);
                records += 1;
                bytes += m.payload().map_or(0, |p| p.len() as u64);
            }
            Some(Err(e)) => eprintln!("kafka: {e}"),
            // A group member's first records wait for the group to form.
            None if started.is_none() && subscribed => {}
            None => {
                eprintln!("no record for 5 s; {records} of {want} read");
                break;
            }
        }
    }
    let seconds = started.map_or(0.0, |s| s.elapsed().as_secs_f64());
    println!(
        "{}",
        serde_json::json!({
            "records": records,
            "bytes": bytes,
            "seconds": seconds,
            "records_per_second": records as f64 / seconds.max(1e-9),
        })
    );
}
