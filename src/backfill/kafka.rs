//! Replaying a range of a Kafka topic for a backfill. The consumer is
//! assigned partitions directly (it joins no consumer group) and never
//! commits offsets, so the live ingest deployment is untouched.

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

/// Where a replay starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// Explicit start offsets per partition (`P:O,...`); each ends at its
    /// high watermark when the backfill starts.
    Offsets(BTreeMap<i32, i64>),
    /// A time range `[start, end)`, resolved with offsets-for-times.
    Time(DateTime<Utc>, DateTime<Utc>),
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
    /// With a time range: records with an earlier timestamp are skipped,
    /// and the partition ends at the first record at or after `until_ms`.
    pub since_ms: Option<i64>,
    /// See `since_ms`.
    pub until_ms: Option<i64>,
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

/// Resolve the range to per-partition offsets.
pub async fn resolve(range: &KafkaRange) -> Result<Vec<PartitionRange>> {
    let range = range.clone();
    tokio::task::spawn_blocking(move || resolve_blocking(&range))
        .await
        .map_err(|e| Error::new(ErrorKind::Internal, "resolving the Kafka range").with_source(e))?
}

fn resolve_blocking(range: &KafkaRange) -> Result<Vec<PartitionRange>> {
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
    match &range.start {
        Start::Offsets(starts) => {
            for (p, start) in starts {
                if !partitions.contains(p) {
                    return Err(Error::new(
                        ErrorKind::InvalidInput,
                        format!("topic {} has no partition {p}", range.topic),
                    ));
                }
                let (low, high) = c.fetch_watermarks(&range.topic, *p, TIMEOUT)?;
                out.push(PartitionRange {
                    partition: *p,
                    start: (*start).max(low),
                    end: high,
                    since_ms: None,
                    until_ms: None,
                });
            }
        }
        Start::Time(from, to) => {
            // offsets-for-times only gives a hint for the start (some brokers
            // answer it wrongly); the record timestamps decide: earlier ones
            // are skipped, and a partition ends at its first record at or
            // after the end time.
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
                out.push(PartitionRange {
                    partition: *p,
                    start,
                    end: high,
                    since_ms: Some(from.timestamp_millis()),
                    until_ms: Some(to.timestamp_millis()),
                });
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
    /// Assign the partition at the range's start.
    pub fn open(k: &KafkaRange, range: PartitionRange) -> Result<Self> {
        let consumer = consumer(k)?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&k.topic, range.partition, Offset::Offset(range.start))?;
        consumer.assign(&tpl)?;
        Ok(RangeReader {
            consumer,
            topic: k.topic.clone(),
            range,
            next: range.start,
            payload: Vec::new(),
        })
    }
}

impl Source for RangeReader {
    /// The next record in the range.
    fn next(&mut self) -> Result<Option<SourceRecord<'_>>> {
        if self.next >= self.range.end {
            return Ok(None);
        }
        let deadline = std::time::Instant::now() + TIMEOUT;
        loop {
            let polled =
                tokio::task::block_in_place(|| self.consumer.poll(Duration::from_millis(200)));
            match polled {
                Some(Ok(m)) if m.offset() < self.next => continue,
                Some(Ok(m)) if m.offset() >= self.range.end => return Ok(None),
                Some(Ok(m))
                    if self
                        .range
                        .until_ms
                        .zip(m.timestamp().to_millis())
                        .is_some_and(|(until, ts)| ts >= until) =>
                {
                    self.next = self.range.end;
                    return Ok(None);
                }
                Some(Ok(m))
                    if self
                        .range
                        .since_ms
                        .zip(m.timestamp().to_millis())
                        .is_some_and(|(since, ts)| ts < since) =>
                {
                    self.next = m.offset() + 1;
                    if self.next >= self.range.end {
                        return Ok(None);
                    }
                    continue;
                }
                Some(Ok(m)) => {
                    self.next = m.offset() + 1;
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
                None if std::time::Instant::now() > deadline => {
                    return Err(Error::new(
                        ErrorKind::Kafka,
                        format!(
                            "no record from {}/{} at offset {} within {TIMEOUT:?} (range ends at {})",
                            self.topic, self.range.partition, self.next, self.range.end
                        ),
                    ));
                }
                None => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_parse() {
        assert_eq!(
            parse_offsets("0:10, 3:0").unwrap(),
            BTreeMap::from([(0, 10), (3, 0)])
        );
        assert!(parse_offsets("0=10").is_err());
    }
}
