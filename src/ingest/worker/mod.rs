//! The consumer-group member. A dedicated thread owns the Kafka consumer and
//! drives it; async work (catalog reads, Parquet writes, commits) runs on the
//! tokio runtime through its handle.
//!
//! Exactly-once, as DESIGN.md says: on assignment the worker seeks each
//! partition to the offset the table holds; each flush commits rows and the
//! batch's offsets in one snapshot, fenced per partition; Kafka's group
//! offsets are committed only after, for lag tools. On revocation the batch is
//! flushed before the partitions are released; if a flush fails for any
//! reason the batch is dropped and the partitions are re-read from the table's
//! offsets, so nothing is lost and nothing counted twice.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use tokio::runtime::Handle;

mod pipeline;

use self::pipeline::InFlight;
use super::IngestOptions;
use super::batch::{Consumed, TableSink};
use super::membership::{CLOSE_LIMIT, Unassigned, close_within};
use super::shards::{Shards, TopicDecoding};
use crate::catalog::Catalog;
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::events::TimeWindow;
use crate::retry::retry;
use crate::telemetry::IngestMetrics;
use crate::{kafka, offsets};

/// Records between two readings of the clock in the poll loop (for the
/// commit interval and idle time); between records there is no waiting,
/// so a reading is late by at most this many records' work.
const CLOCK_EVERY: u32 = 64;

/// Totals of one worker run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IngestReport {
    /// Records consumed and committed.
    pub records: u64,
    /// Records rejected (recorded in the rejects tables).
    pub rejected: u64,
    /// Successful flush commits.
    pub commits: u64,
    /// Flushes dropped by the fence or a failure, and re-read.
    pub dropped_batches: u64,
}

pub(super) struct Core {
    handle: Handle,
    catalog: Arc<dyn Catalog>,
    opts: IngestOptions,
    clock: Arc<dyn Clock>,
    metrics: IngestMetrics,
    health: Arc<crate::telemetry::Health>,
    sinks: HashMap<String, TableSink>,
    last_flush: Instant,
    /// The last record consumed or assignment received: idle time (for
    /// `stop_when_idle`) counts from whichever came last. Records move it
    /// when the clock is next read (see [`CLOCK_EVERY`]).
    last_activity: Instant,
    /// Records consumed since `last_activity` was last moved.
    active: bool,
    /// `topic -> partition -> (low, high)` from the latest statistics.
    watermarks: HashMap<String, BTreeMap<i32, (i64, i64)>>,
    fatal: Option<Error>,
    report: IngestReport,
    /// Shard threads decoding and aggregating (`--threads` above 1).
    shards: Option<Shards>,
    /// The flush being committed, if any.
    in_flight: Option<InFlight>,
}

pub(super) struct IngestContext {
    core: Mutex<Core>,
}

impl IngestContext {
    fn core(&self) -> MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ClientContext for IngestContext {
    fn stats(&self, statistics: rdkafka::statistics::Statistics) {
        self.core().record_watermarks(&statistics);
    }
}

impl ConsumerContext for IngestContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let mut core = self.core();
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                if let Err(e) = core.on_assign(tpl) {
                    tracing::error!(error = %e, "cannot read offsets from the table; not consuming");
                    core.fatal = Some(e);
                    let _ = consumer.assign(&TopicPartitionList::new());
                    return;
                }
                if let Err(e) = consumer.assign(tpl) {
                    core.fatal = Some(e.into());
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                core.on_revoke(consumer, tpl);
                let _ = consumer.unassign();
            }
            other => {
                tracing::error!(error = ?other, "rebalance error; releasing partitions");
                core.drop_all_positions(consumer);
                let _ = consumer.unassign();
            }
        }
    }
}

fn describe(tpl: &TopicPartitionList) -> String {
    tpl.elements()
        .iter()
        .map(|e| format!("{}/{}", e.topic(), e.partition()))
        .collect::<Vec<_>>()
        .join(",")
}

impl Core {
    /// Positions from the table, per topic, for the given partitions.
    fn table_positions(&self, topic: &str) -> Result<BTreeMap<i32, i64>> {
        let ident = &self.sinks[topic].ident;
        let what = format!("reading the offsets in {ident}");
        let table = self
            .handle
            .block_on(retry(self.opts.retry, &what, || self.catalog.load(ident)))?;
        Ok(offsets::read(&table.metadata, &self.opts.group)?
            .remove(topic)
            .unwrap_or_default())
    }

    fn on_assign(&mut self, tpl: &mut TopicPartitionList) -> Result<()> {
        let mut by_topic: BTreeMap<String, Vec<i32>> = BTreeMap::new();
        for e in tpl.elements() {
            by_topic
                .entry(e.topic().to_string())
                .or_default()
                .push(e.partition());
        }
        for (topic, partitions) in by_topic {
            if !self.sinks.contains_key(&topic) {
                continue;
            }
            let held = self.table_positions(&topic)?;
            let sink = self.sinks.get_mut(&topic).expect("checked above");
            for p in partitions {
                let pos = held.get(&p).copied();
                let offset = pos.map_or(Offset::Beginning, Offset::Offset);
                tpl.set_partition_offset(&topic, p, offset)?;
                sink.positions.insert(p, pos);
            }
        }
        self.health.set_assigned(tpl.count());
        self.last_activity = Instant::now();
        tracing::info!(partitions = %describe(tpl), "assigned; positioned at the table's offsets");
        Ok(())
    }

    fn on_revoke(&mut self, consumer: &BaseConsumer<IngestContext>, tpl: &TopicPartitionList) {
        tracing::info!(partitions = %describe(tpl), "revoked; flushing before release");
        self.flush_all(consumer, false);
        self.drop_all_positions(consumer);
        self.health.set_assigned(0);
    }

    /// Drop every batch and position (a rebalance error), after the flush in
    /// flight is done.
    fn drop_all_positions(&mut self, consumer: &BaseConsumer<IngestContext>) {
        self.finish_flush(consumer, false, true);
        let topics: Vec<String> = self.sinks.keys().cloned().collect();
        for topic in topics {
            self.drop_batch(&topic);
            if let Some(sink) = self.sinks.get_mut(&topic) {
                sink.positions.clear();
            }
        }
    }

    fn buffered_rows(&self) -> usize {
        let sharded = self.shards.as_ref().map_or(0, Shards::buffered);
        sharded
            + self
                .sinks
                .values()
                .map(|s| s.batch.rows.len() + s.batch.rejects.len())
                .sum::<usize>()
    }

    fn buffered_bytes(&self) -> u64 {
        self.sinks.values().map(|s| s.batch.bytes).sum()
    }

    fn anything_buffered(&self) -> bool {
        self.sinks.values().any(|s| !s.batch.is_empty())
    }

    /// Whether the rows or bytes held — buffered and being committed —
    /// reached their limit: the worker reads on only after the flush in
    /// flight is done.
    fn buffer_full(&self) -> bool {
        let (rows, bytes) = self.in_flight.as_ref().map_or((0, 0), |f| f.held);
        self.buffered_rows() + rows >= self.opts.max_buffered_rows
            || self.buffered_bytes() + bytes >= self.opts.max_buffered_bytes
    }

    /// Whether to flush: every `--commit-interval` (looked at when
    /// `timed`), or once half the buffer limits are reached, so that the
    /// next half fills while it commits and what a worker holds stays
    /// within the limits.
    fn flush_due(&self, timed: bool) -> bool {
        self.anything_buffered()
            && ((timed && self.last_flush.elapsed() >= self.opts.commit_interval)
                || self.buffered_rows() >= self.opts.max_buffered_rows.div_ceil(2)
                || self.buffered_bytes() >= self.opts.max_buffered_bytes.div_ceil(2))
    }

    /// Take one record of `topic` (`None`: the one topic subscribed to).
    fn consume(&mut self, topic: Option<&str>, partition: i32, offset: i64, payload: &[u8]) {
        self.active = true;
        let skew = self.opts.future_skew;
        let found = match topic {
            Some(topic) => self.sinks.get_mut(topic).map(|sink| (topic, sink)),
            None => self
                .sinks
                .iter_mut()
                .next()
                .map(|(t, sink)| (t.as_str(), sink)),
        };
        let Some((topic, sink)) = found else {
            return;
        };
        if let Some(shards) = &mut self.shards {
            if sink.admit(partition, offset, payload.len()).is_none() {
                let (clock, decl) = (&self.clock, sink.decl());
                shards.push(topic, partition, offset, payload, || {
                    let now = clock.now();
                    (TimeWindow::new(now, decl, skew), now.timestamp_micros())
                });
            }
            return;
        }
        let now = self.clock.now();
        let window = TimeWindow::new(now, sink.decl(), skew);
        let table = sink.decl().qualified_name();
        match sink.consume(partition, offset, payload, window, now.timestamp_micros()) {
            Consumed::Accepted => self.metrics.consumed(&table, topic),
            Consumed::Rejected(reason) => {
                self.metrics.consumed(&table, topic);
                self.metrics.rejected(&table, reason);
            }
            Consumed::Duplicate | Consumed::NotAssigned => {}
        }
    }

    /// Keep the watermarks librdkafka's statistics report (learnt from
    /// fetches of the assigned partitions), and publish the lag.
    fn record_watermarks(&mut self, stats: &rdkafka::statistics::Statistics) {
        for (topic, t) in &stats.topics {
            let known = self.watermarks.entry(topic.clone()).or_default();
            for (p, part) in &t.partitions {
                if *p >= 0 && part.hi_offset >= 0 {
                    known.insert(*p, (part.lo_offset.max(0), part.hi_offset));
                }
            }
        }
        self.publish_lag();
    }

    /// Consumer lag per topic: the last known high watermarks of the
    /// assigned partitions minus the offsets the table holds (after every
    /// statistics report and every commit).
    fn publish_lag(&self) {
        for (topic, sink) in &self.sinks {
            let known = self.watermarks.get(topic);
            let lag: i64 = sink
                .positions
                .iter()
                .filter_map(|(p, held)| {
                    let (low, high) = known?.get(p)?;
                    Some(records_behind(*held, *low, *high))
                })
                .sum();
            let table = sink.decl().qualified_name();
            self.metrics
                .topic_position(&table, topic, sink.positions.len(), lag);
        }
    }

    /// Whether partitions are assigned and nothing happened for `idle`.
    fn idle_for(&self, idle: Duration) -> bool {
        let assigned = self.sinks.values().any(|s| !s.positions.is_empty());
        assigned && self.last_activity.elapsed() >= idle
    }

    /// Where this worker is in each assigned partition: the next offset it
    /// consumes (`None`: from the partition's start, the table holding none).
    fn next_offsets(&self) -> Vec<(String, i32, Option<i64>)> {
        self.sinks
            .iter()
            .flat_map(|(topic, sink)| {
                sink.positions.iter().map(move |(p, held)| {
                    let next = sink.batch.to.get(p).copied().or(*held);
                    (topic.clone(), *p, next)
                })
            })
            .collect()
    }

    /// Seek the topic's assigned partitions back to the table's offsets.
    fn reposition(&mut self, consumer: &BaseConsumer<IngestContext>, topic: &str) -> Result<()> {
        let held = self.table_positions(topic)?;
        let sink = self.sinks.get_mut(topic).expect("known topic");
        for (p, pos) in sink.positions.iter_mut() {
            *pos = held.get(p).copied();
            let offset = pos.map_or(Offset::Beginning, Offset::Offset);
            consumer.seek(topic, *p, offset, Duration::from_secs(10))?;
        }
        Ok(())
    }
}

/// Records from `at` (`None`: the partition's start, `low`) to the high
/// watermark.
fn records_behind(at: Option<i64>, low: i64, high: i64) -> i64 {
    (high - at.unwrap_or(low)).max(0)
}

/// Records the assigned partitions hold past `next` (see
/// [`Core::next_offsets`]), by the high watermarks the broker reports now
/// (those in the statistics can be seconds old).
fn backlog(
    consumer: &BaseConsumer<IngestContext>,
    next: &[(String, i32, Option<i64>)],
) -> Result<i64> {
    // librdkafka's position also steps over what is never delivered
    // (transaction markers).
    let position = consumer.position()?;
    let mut behind = 0;
    for (topic, p, at) in next {
        let consumed = match position.find_partition(topic, *p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => Some(o),
            _ => None,
        };
        let (low, high) = consumer.fetch_watermarks(topic, *p, Duration::from_secs(10))?;
        behind += records_behind((*at).max(consumed), low, high);
    }
    Ok(behind)
}

/// Create the consumer, subscribe, and consume until `stop` is set (or, with
/// `opts.stop_when_idle`, the assigned partitions are caught up and idle).
/// Runs on its own thread.
pub(super) fn run_blocking(
    handle: Handle,
    catalog: Arc<dyn Catalog>,
    sinks: HashMap<String, TableSink>,
    opts: IngestOptions,
    clock: Arc<dyn Clock>,
    metrics: IngestMetrics,
    stop: Arc<AtomicBool>,
) -> Result<IngestReport> {
    let config = consumer_config(&opts);
    let topics: Vec<String> = sinks.keys().cloned().collect();
    let shards = if opts.threads > 1 {
        let decoding = sinks
            .iter()
            .map(|(topic, sink)| TopicDecoding {
                topic: topic.clone(),
                table: sink.decl().qualified_name(),
                decoder: sink.decoder.clone(),
                spec: sink.spec.clone(),
            })
            .collect();
        Some(Shards::start(opts.threads, decoding, metrics.clone())?)
    } else {
        None
    };
    let now = Instant::now();
    let context = IngestContext {
        core: Mutex::new(Core {
            handle,
            catalog,
            opts: opts.clone(),
            clock,
            health: metrics.health().clone(),
            metrics,
            sinks,
            last_flush: now,
            last_activity: now,
            active: false,
            watermarks: HashMap::new(),
            fatal: None,
            report: IngestReport::default(),
            shards,
            in_flight: None,
        }),
    };
    let consumer: BaseConsumer<IngestContext> = config.create_with_context(context)?;
    let topic_refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topic_refs)?;
    tracing::info!(
        topics = ?topics, group = %opts.group, instance = ?opts.instance_id,
        brokers = %opts.brokers, "consuming"
    );

    let mut stopped_idle = false;
    let mut unassigned = Unassigned::new(&opts.group, &topics);
    let mut records = 0u32;
    // With one topic, a record's topic is not read: naming it costs a
    // string check a record, as much as all the rest of taking it.
    let one_topic = topics.len() == 1;
    while !stop.load(Ordering::Relaxed) {
        let polled = consumer.poll(Duration::from_millis(100));
        // The clock is read between records only so often: at millions of
        // records a second, reading it at each one costs more than all
        // the rest of the loop.
        records = if polled.is_some() {
            records.wrapping_add(1)
        } else {
            0
        };
        let timed = records.is_multiple_of(CLOCK_EVERY);
        // One lock a record: rebalances (inside `poll`) and statistics
        // take it too.
        let mut core = consumer.context().core();
        match polled {
            None => {
                if let Some(shards) = &mut core.shards {
                    shards.send_pending();
                }
            }
            Some(Ok(msg)) => {
                let payload = msg.payload().unwrap_or_default();
                let topic = (!one_topic).then(|| msg.topic());
                core.consume(topic, msg.partition(), msg.offset(), payload);
            }
            Some(Err(KafkaError::PartitionEOF(_))) => {}
            Some(Err(e)) => tracing::warn!(error = %e, "kafka"),
        }
        if let Some(e) = core.fatal.take() {
            return Err(e);
        }
        core.finish_flush(&consumer, true, false);
        if let Some(e) = core.fatal.take() {
            return Err(e);
        }
        let idle = !core.anything_buffered() && core.in_flight.is_none();
        core.health.set_idle(idle);
        if timed {
            if std::mem::take(&mut core.active) {
                core.last_activity = Instant::now();
            }
            unassigned.check(
                core.sinks.values().any(|s| !s.positions.is_empty()),
                Instant::now(),
            );
        }
        if core.flush_due(timed) {
            // While a flush is in flight the next batch fills; it waits
            // for that flush only once the buffer is full.
            if core.in_flight.is_some() && core.buffer_full() {
                core.finish_flush(&consumer, true, true);
                if let Some(e) = core.fatal.take() {
                    return Err(e);
                }
            }
            if core.in_flight.is_none() && core.flush_due(timed) {
                core.start_flush();
            }
        }
        if let Some(idle) = opts.stop_when_idle
            && timed
            && core.idle_for(idle)
        {
            let next = core.next_offsets();
            drop(core);
            match backlog(&consumer, &next) {
                Ok(0) => {
                    tracing::info!(?idle, "idle and caught up; stopping");
                    stopped_idle = true;
                    break;
                }
                Ok(records) => tracing::info!(records, "idle, but behind the high watermarks"),
                Err(e) => tracing::warn!(error = %e, "reading the high watermarks"),
            }
            // Look again after another idle period.
            consumer.context().core().last_activity = Instant::now();
        }
    }
    if !stopped_idle {
        tracing::info!("shutting down: flushing what is buffered");
    }
    let report = {
        let mut core = consumer.context().core();
        core.flush_all(&consumer, false);
        if let Some(e) = core.fatal.take() {
            return Err(e);
        }
        core.report.clone()
    };
    // A static member stays in the group when it stops (KIP-345: closing
    // sends no LeaveGroup), so that its successor under the same id takes
    // its partitions back at once; a dynamic member leaves now.
    close_within(consumer, opts.instance_id.is_none(), CLOSE_LIMIT);
    Ok(report)
}

/// The ingest consumer's librdkafka configuration: the group, static
/// membership when `opts.instance_id` is set, then the operator's
/// properties.
fn consumer_config(opts: &IngestOptions) -> rdkafka::ClientConfig {
    let mut settings = vec![
        ("partition.assignment.strategy", "range,roundrobin"),
        ("client.id", "firn-ingest"),
        // Statistics carry the high watermarks consumer lag is measured from.
        ("statistics.interval.ms", "5000"),
        // When the prefetch queue is over its threshold (a flush or a burst
        // kept the worker behind its fetches), fetch again 10 ms later, not
        // librdkafka's 1 s: a worker that falls behind for a moment would
        // otherwise sit idle for the rest of that second, every time.
        ("fetch.queue.backoff.ms", "10"),
        // Prefetch up to 8 MiB of payloads (librdkafka: 64 MiB): with
        // fetches 10 ms apart that is ample, and a worker's memory stays
        // with its batches. librdkafka holds about five times the payload
        // bytes it counts (each record's op, whole decompressed message
        // sets): at 16 MiB it held some 90 MiB, and a high-cardinality
        // worker with frequent commits peaked over 256 MiB.
        ("queued.max.messages.kbytes", "8192"),
    ];
    if let Some(id) = &opts.instance_id {
        settings.push(("group.instance.id", id.as_str()));
    }
    kafka::consumer_config(&opts.brokers, &opts.group, &settings, &opts.kafka)
}

#[cfg(test)]
mod tests {
    use rdkafka::consumer::BaseConsumer;

    use super::*;

    #[test]
    fn records_behind_counts_from_the_position_or_the_start() {
        assert_eq!(records_behind(Some(90), 10, 100), 10);
        assert_eq!(records_behind(None, 10, 100), 90);
        assert_eq!(records_behind(Some(100), 10, 100), 0);
        assert_eq!(records_behind(None, 100, 100), 0);
    }

    /// `--instance-id` becomes librdkafka's `group.instance.id` (a consumer
    /// with it is created: librdkafka knows the property); without it the
    /// worker is a dynamic member.
    #[test]
    fn instance_id_makes_a_static_member() {
        let opts = IngestOptions {
            brokers: "127.0.0.1:1".into(),
            instance_id: Some("firn-ingest-0".into()),
            ..Default::default()
        };
        let config = consumer_config(&opts);
        assert_eq!(config.get("group.instance.id"), Some("firn-ingest-0"));
        assert_eq!(config.get("group.id"), Some("firn-ingest"));
        let consumer: std::result::Result<BaseConsumer, _> = config.create();
        assert!(consumer.is_ok(), "{:?}", consumer.err());
        let dynamic = consumer_config(&IngestOptions::default());
        assert_eq!(dynamic.get("group.instance.id"), None);
        assert_eq!(dynamic.get("fetch.queue.backoff.ms"), Some("10"));
        // The operator's properties come last: they win.
        let tuned = consumer_config(&IngestOptions {
            kafka: [("fetch.queue.backoff.ms".to_string(), "100".to_string())].into(),
            ..Default::default()
        });
        assert_eq!(tuned.get("fetch.queue.backoff.ms"), Some("100"));
    }
}
