//! Replaying a range of a Kafka topic for a backfill. The consumer is
//! assigned partitions directly (it joins no consumer group) and never
//! commits offsets, so the live ingest deployment is untouched.
//!
//! A range is resolved to offsets once, when its backfill first starts (the
//! progress record keeps them), and each partition is read to its resolved
//! end offset: a time range selects records by their timestamp all the way
//! there, whatever order producers set them in, and the end is known reached
//! from the consumer's position, which moves past the transaction markers a
//! consumer is never handed.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::source::{Source, SourceRecord};
use crate::error::{Error, ErrorKind, Result};
use crate::events::Origin;
use crate::kafka;

/// Where a replay starts. Each partition ends at its high watermark when
/// the backfill first starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// Explicit start offsets per partition (`P:O,...`).
    Offsets(BTreeMap<i32, i64>),
    /// A time range `[start, end)` of record timestamps: each partition is
    /// read from the offset offsets-for-times gives for `start`, and its
    /// records with a timestamp in the range are replayed.
    Time(DateTime<Utc>, DateTime<Utc>),
    /// Every partition from its earliest offset.
    Earliest,
}

impl Start {
    /// The range as asked for (part of a backfill's identity).
    pub fn describe(&self) -> String {
        match self {
            Start::Offsets(o) => {
                let pairs: Vec<String> = o.iter().map(|(p, o)| format!("{p}:{o}")).collect();
                format!("offsets {}", pairs.join(","))
            }
            Start::Time(from, to) => format!(
                "time {}..{}",
                from.timestamp_millis(),
                to.timestamp_millis()
            ),
            Start::Earliest => "earliest".to_string(),
        }
    }

    /// The record-timestamp window a time range selects, in milliseconds.
    fn window(&self) -> (Option<i64>, Option<i64>) {
        match self {
            Start::Time(from, to) => (Some(from.timestamp_millis()), Some(to.timestamp_millis())),
            _ => (None, None),
        }
    }
}

/// A topic range to replay.
#[derive(Debug, Clone)]
pub struct KafkaRange {
    /// Bootstrap servers.
    pub brokers: String,
    /// Topic.
    pub topic: String,
    /// Where to start (and end).
    pub start: Start,
    /// Extra librdkafka properties.
    pub properties: BTreeMap<String, String>,
}

/// One partition's `[start, end)` offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionRange {
    /// Partition.
    pub partition: i32,
    /// First offset.
    pub start: i64,
    /// Offset after the last.
    pub end: i64,
    /// With a time range: only records with a timestamp in
    /// `[since_ms, until_ms)` are replayed (all up to `end` are read).
    pub since_ms: Option<i64>,
    /// See `since_ms`.
    pub until_ms: Option<i64>,
}

impl PartitionRange {
    /// Whether a record with this timestamp is replayed (one without is).
    fn selects(&self, timestamp_ms: Option<i64>) -> bool {
        timestamp_ms.is_none_or(|ts| {
            self.since_ms.is_none_or(|s| ts >= s) && self.until_ms.is_none_or(|u| ts < u)
        })
    }

    /// As a progress record keeps it.
    pub fn recorded(&self) -> (i32, i64, i64) {
        (self.partition, self.start, self.end)
    }
}

/// The ranges an earlier run of the same backfill resolved `range` to, as
/// its progress record keeps them.
pub fn recorded(range: &KafkaRange, recorded: &[(i32, i64, i64)]) -> Vec<PartitionRange> {
    let (since_ms, until_ms) = range.start.window();
    recorded
        .iter()
        .map(|&(partition, start, end)| PartitionRange {
            partition,
            start,
            end,
            since_ms,
            until_ms,
        })
        .collect()
}

/// Parse `P:O,P:O`.
pub fn parse_offsets(s: &str) -> std::result::Result<BTreeMap<i32, i64>, String> {
    s.split(',')
        .map(|pair| {
            let (p, o) = pair
                .split_once(':')
                .ok_or_else(|| format!("`{pair}` is not PARTITION:OFFSET"))?;
            Ok((
                p.trim()
                    .parse()
                    .map_err(|_| format!("bad partition `{p}`"))?,
                o.trim().parse().map_err(|_| format!("bad offset `{o}`"))?,
            ))
        })
        .collect()
}

/// A consumer that is assigned partitions: it never subscribes nor commits,
/// so no group sees it.
fn consumer(range: &KafkaRange) -> Result<BaseConsumer> {
    let group = kafka::unshared_group("backfill");
    Ok(kafka::consumer_config(&range.brokers, &group, &[], &range.properties).create()?)
}

const TIMEOUT: Duration = Duration::from_secs(30);

/// Resolve the range to per-partition offsets, each ending at its high
/// watermark, or at `caps` where that is lower.
pub async fn resolve(range: &KafkaRange, caps: &BTreeMap<i32, i64>) -> Result<Vec<PartitionRange>> {
    let range = range.clone();
    let caps = caps.clone();
    tokio::task::spawn_blocking(move || resolve_blocking(&range, &caps))
        .await
        .map_err(|e| Error::new(ErrorKind::Internal, "resolving the Kafka range").with_source(e))?
}

fn resolve_blocking(range: &KafkaRange, caps: &BTreeMap<i32, i64>) -> Result<Vec<PartitionRange>> {
    let c = consumer(range)?;
    let meta = c.fetch_metadata(Some(&range.topic), TIMEOUT)?;
    let partitions: Vec<i32> = meta
        .topics()
        .iter()
        .filter(|t| t.name() == range.topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("topic {} has no partitions (does it exist?)", range.topic),
        ));
    }
    let mut out = Vec::new();
    let (since_ms, until_ms) = range.start.window();
    let mut add = |partition: i32, start: i64, high: i64| {
        out.push(PartitionRange {
            partition,
            start,
            end: caps.get(&partition).map_or(high, |c| high.min(*c)),
            since_ms,
            until_ms,
        })
    };
    match &range.start {
        Start::Earliest => {
            for p in &partitions {
                let (low, high) = c.fetch_watermarks(&range.topic, *p, TIMEOUT)?;
                add(*p, low, high);
            }
        }
        Start::Offsets(starts) => {
            for (p, start) in starts {
                if !partitions.contains(p) {
                    return Err(Error::new(
                        ErrorKind::InvalidInput,
                        format!("topic {} has no partition {p}", range.topic),
                    ));
                }
                let (low, high) = c.fetch_watermarks(&range.topic, *p, TIMEOUT)?;
                add(*p, (*start).max(low), high);
            }
        }
        Start::Time(from, _) => {
            // offsets-for-times only gives a hint for the start (some brokers
            // answer it wrongly); the record timestamps decide which records
            // between it and the end offset are replayed.
            let mut tpl = TopicPartitionList::new();
            for p in &partitions {
                tpl.add_partition_offset(
                    &range.topic,
                    *p,
                    Offset::Offset(from.timestamp_millis()),
                )?;
            }
            let starts = c.offsets_for_times(tpl, TIMEOUT)?;
            for p in &partitions {
                let (low, high) = c.fetch_watermarks(&range.topic, *p, TIMEOUT)?;
                let hint = match starts.find_partition(&range.topic, *p).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) if o >= low && o <= high => o,
                    _ => low,
                };
                // Trust the hint only if the record before it is earlier than `from`.
                let start = if hint > low
                    && timestamp_at(range, *p, hint - 1)?
                        .is_none_or(|ts| ts >= from.timestamp_millis())
                {
                    low
                } else {
                    hint
                };
                add(*p, start, high);
            }
        }
    }
    Ok(out)
}

/// The timestamp of the record at `offset`, if it can be read.
fn timestamp_at(range: &KafkaRange, partition: i32, offset: i64) -> Result<Option<i64>> {
    let c = consumer(range)?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&range.topic, partition, Offset::Offset(offset))?;
    c.assign(&tpl)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if let Some(m) = c.poll(Duration::from_millis(200)) {
            let m = m?;
            return Ok(m.timestamp().to_millis());
        }
    }
    Ok(None)
}

/// Reads one partition range, in offset order.
pub struct RangeReader {
    consumer: BaseConsumer,
    topic: String,
    range: PartitionRange,
    next: i64,
    payload: Vec<u8>,
}

impl std::fmt::Debug for RangeReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RangeReader")
            .field("topic", &self.topic)
            .field("range", &self.range)
            .finish_non_exhaustive()
    }
}

impl RangeReader {
    /// Assign the partition at the range's start, or at offset `at` if an
    /// earlier run committed the records before it.
    pub fn open(k: &KafkaRange, range: PartitionRange, at: i64) -> Result<Self> {
        let consumer = consumer(k)?;
        let next = range.start.max(at);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&k.topic, range.partition, Offset::Offset(next))?;
        consumer.assign(&tpl)?;
        Ok(RangeReader {
            consumer,
            topic: k.topic.clone(),
            range,
            next,
            payload: Vec::new(),
        })
    }

    /// The consumer's position in the partition: past the last record it
    /// was handed, and past the transaction markers after it.
    fn consumer_position(&self) -> Result<Option<i64>> {
        let tpl = self.consumer.position()?;
        Ok(tpl
            .find_partition(&self.topic, self.range.partition)
            .and_then(|e| match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            }))
    }
}

impl Source for RangeReader {
    /// The next record in the range with a timestamp it selects.
    fn next(&mut self) -> Result<Option<SourceRecord<'_>>> {
        let mut deadline = std::time::Instant::now() + TIMEOUT;
        loop {
            if self.next >= self.range.end {
                return Ok(None);
            }
            let polled =
                tokio::task::block_in_place(|| self.consumer.poll(Duration::from_millis(200)));
            match polled {
                Some(Ok(m)) if m.offset() < self.next => continue,
                Some(Ok(m)) if m.offset() >= self.range.end => {
                    self.next = self.range.end;
                    return Ok(None);
                }
                Some(Ok(m)) => {
                    self.next = m.offset() + 1;
                    deadline = std::time::Instant::now() + TIMEOUT;
                    if !self.range.selects(m.timestamp().to_millis()) {
                        continue;
                    }
                    self.payload.clear();
                    self.payload
                        .extend_from_slice(m.payload().unwrap_or_default());
                    return Ok(Some(SourceRecord {
                        origin: Origin::Kafka {
                            topic: &self.topic,
                            partition: self.range.partition,
                            offset: m.offset(),
                        },
                        payload: &self.payload,
                        bytes: self.payload.len() as u64,
                    }));
                }
                Some(Err(e)) => return Err(e.into()),
                None => {
                    // Nothing handed over: the offsets left may be
                    // transaction markers, which the position moves past.
                    if let Some(p) = self.consumer_position()? {
                        self.next = self.next.max(p);
                        if self.next >= self.range.end {
                            continue;
                        }
                    }
                    if std::time::Instant::now() > deadline {
                        return Err(Error::new(
                            ErrorKind::Kafka,
                            format!(
                                "no record from {}/{} at offset {} within {TIMEOUT:?} (range ends \
                                 at {}; an open transaction holds back what follows it)",
                                self.topic, self.range.partition, self.next, self.range.end
                            ),
                        ));
                    }
                }
            }
        }
    }

    fn position(&self) -> i64 {
        self.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_time_range_selects_by_timestamp() {
        let r = PartitionRange {
            partition: 0,
            start: 0,
            end: 10,
            since_ms: Some(100),
            until_ms: Some(200),
        };
        assert!(!r.selects(Some(99)));
        assert!(r.selects(Some(100)));
        assert!(r.selects(Some(199)));
        assert!(!r.selects(Some(200)));
        assert!(r.selects(None));
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().to_utc();
        let k = KafkaRange {
            brokers: String::new(),
            topic: "t".into(),
            start: Start::Time(t("2024-05-01T00:00:00Z"), t("2024-05-02T00:00:00Z")),
            properties: BTreeMap::new(),
        };
        assert_eq!(k.start.describe(), "time 1714521600000..1714608000000");
        assert_eq!(
            recorded(&k, &[(3, 5, 9)]),
            vec![PartitionRange {
                partition: 3,
                start: 5,
                end: 9,
                since_ms: Some(1_714_521_600_000),
                until_ms: Some(1_714_608_000_000),
            }]
        );
        assert_eq!(
            Start::Offsets(BTreeMap::from([(0, 10), (1, 0)])).describe(),
            "offsets 0:10,1:0"
        );
    }

    #[test]
    fn offsets_parse() {
        assert_eq!(
            parse_offsets("0:10, 3:0").unwrap(),
            BTreeMap::from([(0, 10), (3, 0)])
        );
        assert!(parse_offsets("0=10").is_err());
    }
}
