//! Decoding and aggregation on several threads (`--threads N`). The
//! consumer thread keeps everything exactly-once rests on — which records a
//! batch covers, per partition, and when it flushes — and hands the
//! records' payloads, a chunk at a time, to N shard threads that decode them
//! and fold them into minute rows of their own. A flush collects every
//! shard's rows and rejects for the table (after the chunks sent before it:
//! each shard's queue is in order) and commits them as one batch; a dropped
//! batch clears the shards' part too. Aggregation is order-free (sums, mins,
//! maxes; each reject recorded once), so chunks go to the shards in turn,
//! whatever their partition: a topic of one partition uses every thread.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;

use crate::error::{Error, ErrorKind, Result};
use crate::events::{Decoder, Origin, Scratch, TimeWindow};
use crate::rejects::RejectRecord;
use crate::rows::{MeasureSpec, RowMap};
use crate::telemetry::IngestMetrics;

/// Records per chunk handed to a shard.
const CHUNK_RECORDS: usize = 1024;

/// Chunks queued per shard before the consumer waits for it.
const QUEUE: usize = 4;

/// What a shard needs to decode one topic's records.
#[derive(Clone, Debug)]
pub struct TopicDecoding {
    /// The topic.
    pub topic: String,
    /// Its table's name, as metrics label it.
    pub table: String,
    /// The table's decoder.
    pub decoder: Decoder,
    /// Its measures.
    pub spec: MeasureSpec,
}

/// Records of one topic, their payloads back to back.
struct Chunk {
    topic: usize,
    window: TimeWindow,
    now_micros: i64,
    payloads: Vec<u8>,
    /// Partition, offset, and the payload's end in `payloads`.
    records: Vec<(i32, i64, usize)>,
}

/// A flush's share of one shard: its rows and rejects for a topic.
type Share = (RowMap, Vec<RejectRecord>);

enum Msg {
    Records(Chunk),
    Collect(usize, mpsc::Sender<Share>),
}

struct Shard {
    tx: mpsc::SyncSender<Msg>,
    /// Rows and rejects the shard holds, over all topics.
    buffered: Arc<AtomicUsize>,
    /// Records it has decoded.
    processed: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

/// N shard threads and the chunks being filled for them.
pub struct Shards {
    shards: Vec<Shard>,
    /// Topic → its index, hashed with hashbrown's fast hasher (a lookup
    /// a record).
    topics: hashbrown::HashMap<String, usize>,
    pending: Vec<Option<Chunk>>,
    next: usize,
    /// Records handed out (pending or sent).
    pushed: usize,
}

impl std::fmt::Debug for Shards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shards")
            .field("threads", &self.shards.len())
            .finish_non_exhaustive()
    }
}

impl Shards {
    /// Start `threads` shard threads for `topics`.
    pub fn start(
        threads: usize,
        topics: Vec<TopicDecoding>,
        metrics: IngestMetrics,
    ) -> Result<Self> {
        let index = topics
            .iter()
            .enumerate()
            .map(|(i, t)| (t.topic.clone(), i))
            .collect();
        let topics = Arc::new(topics);
        let mut shards = Vec::with_capacity(threads);
        for n in 0..threads.max(1) {
            let (tx, rx) = mpsc::sync_channel(QUEUE);
            let buffered = Arc::new(AtomicUsize::new(0));
            let processed = Arc::new(AtomicUsize::new(0));
            let state = ShardState {
                topics: topics.clone(),
                held: topics.iter().map(|_| Share::default()).collect(),
                buffered: buffered.clone(),
                processed: processed.clone(),
                metrics: metrics.clone(),
            };
            let thread = std::thread::Builder::new()
                .name(format!("firn-shard-{n}"))
                .spawn(move || state.run(rx))
                .map_err(|e| {
                    Error::new(ErrorKind::Internal, "starting a shard thread").with_source(e)
                })?;
            shards.push(Shard {
                tx,
                buffered,
                processed,
                thread: Some(thread),
            });
        }
        Ok(Self {
            shards,
            pending: topics.iter().map(|_| None).collect(),
            topics: index,
            next: 0,
            pushed: 0,
        })
    }

    /// Hand one record of `topic` to the shards (in a chunk, sent when
    /// full or by [`Shards::send_pending`]).
    pub fn push(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        payload: &[u8],
        window: impl FnOnce() -> (TimeWindow, i64),
    ) {
        let Some(&t) = self.topics.get(topic) else {
            return;
        };
        let chunk = self.pending[t].get_or_insert_with(|| {
            let (window, now_micros) = window();
            Chunk {
                topic: t,
                window,
                now_micros,
                payloads: Vec::with_capacity(CHUNK_RECORDS * (payload.len() + 16)),
                records: Vec::with_capacity(CHUNK_RECORDS),
            }
        });
        chunk.payloads.extend_from_slice(payload);
        chunk
            .records
            .push((partition, offset, chunk.payloads.len()));
        self.pushed += 1;
        if chunk.records.len() >= CHUNK_RECORDS {
            self.send(t);
        }
    }

    fn send(&mut self, topic: usize) {
        if let Some(chunk) = self.pending[topic].take() {
            let shard = &self.shards[self.next];
            self.next = (self.next + 1) % self.shards.len();
            // A shard only stops when this handle drops it.
            let _ = shard.tx.send(Msg::Records(chunk));
        }
    }

    /// Send every partly filled chunk.
    pub fn send_pending(&mut self) {
        for t in 0..self.pending.len() {
            self.send(t);
        }
    }

    /// Rows and rejects the shards hold, over all topics, counting each
    /// record not decoded yet as one (at most what it adds): a limit on
    /// buffered rows holds as on one thread.
    pub fn buffered(&self) -> usize {
        let (mut held, mut processed) = (0, 0);
        for s in &self.shards {
            processed += s.processed.load(Ordering::Acquire);
            held += s.buffered.load(Ordering::Relaxed);
        }
        held + self.pushed.saturating_sub(processed)
    }

    /// Take every row and reject of `topic` the shards hold, once each has
    /// done every chunk sent before.
    pub fn collect(&mut self, topic: &str) -> Share {
        let Some(&t) = self.topics.get(topic) else {
            return Share::default();
        };
        self.send(t);
        let replies: Vec<_> = self
            .shards
            .iter()
            .map(|s| {
                let (tx, rx) = mpsc::channel();
                let _ = s.tx.send(Msg::Collect(t, tx));
                rx
            })
            .collect();
        let mut out = Share::default();
        for rx in replies {
            if let Ok((rows, rejects)) = rx.recv() {
                out.0.append(rows);
                out.1.extend(rejects);
            }
        }
        out
    }
}

impl Drop for Shards {
    fn drop(&mut self) {
        let threads: Vec<_> = self
            .shards
            .drain(..)
            .filter_map(|mut s| s.thread.take())
            .collect();
        for t in threads {
            let _ = t.join();
        }
    }
}

/// One shard thread's state.
struct ShardState {
    topics: Arc<Vec<TopicDecoding>>,
    /// Per topic, what the shard aggregated since the last collect.
    held: Vec<Share>,
    buffered: Arc<AtomicUsize>,
    processed: Arc<AtomicUsize>,
    metrics: IngestMetrics,
}

impl ShardState {
    fn run(mut self, rx: mpsc::Receiver<Msg>) {
        while let Ok(msg) = rx.recv() {
            match msg {
                Msg::Records(chunk) => {
                    let records = chunk.records.len();
                    self.take(chunk);
                    self.count();
                    self.processed.fetch_add(records, Ordering::Release);
                }
                Msg::Collect(t, reply) => {
                    let share = std::mem::take(&mut self.held[t]);
                    // Counted before the reply: a flush sees what is left.
                    self.count();
                    let _ = reply.send(share);
                }
            }
        }
    }

    fn count(&self) {
        let held = self.held.iter().map(|(r, j)| r.len() + j.len()).sum();
        self.buffered.store(held, Ordering::Relaxed);
    }

    fn take(&mut self, chunk: Chunk) {
        let ctx = &self.topics[chunk.topic];
        let (rows, rejects) = &mut self.held[chunk.topic];
        let mut rejected: HashMap<&'static str, u64> = HashMap::new();
        let mut start = 0;
        let mut scratch = Scratch::default();
        for &(partition, offset, end) in &chunk.records {
            let payload = &chunk.payloads[start..end];
            start = end;
            match ctx.decoder.decode_into(payload, chunk.window, &mut scratch) {
                Ok(ev) => rows.add_event_ref(&ctx.spec, &ev.dims, ev.ts_micros, &ev.values),
                Err(reason) => {
                    let origin = Origin::Kafka {
                        topic: &ctx.topic,
                        partition,
                        offset,
                    };
                    *rejected.entry(reason.as_label()).or_default() += 1;
                    rejects.push(RejectRecord::new(
                        origin,
                        payload,
                        &reason,
                        chunk.now_micros,
                    ));
                }
            }
        }
        self.metrics
            .consumed_many(&ctx.table, &ctx.topic, chunk.records.len() as u64);
        for (reason, n) in rejected {
            self.metrics.rejected_many(&ctx.table, reason, n);
        }
    }
}

/// The threads to decode on by default: the cores available.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::batch::tests::sink;

    /// Records handed out in chunks to three shards, collected in two
    /// flushes: every record is in exactly one flush, accepted or
    /// rejected, and the rows are those of one thread doing it all.
    #[test]
    fn shards_aggregate_what_one_thread_does() {
        let mut one = sink();
        one.positions.insert(0, None);
        let decl = one.decl().clone();
        let topic = decl.topic.clone();
        let decoding = TopicDecoding {
            topic: topic.clone(),
            table: decl.qualified_name(),
            decoder: one.decoder.clone(),
            spec: one.spec.clone(),
        };
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-27T12:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let window = TimeWindow::new(now, &decl, std::time::Duration::from_secs(3600));
        let mut shards = Shards::start(3, vec![decoding], IngestMetrics::default()).unwrap();
        let mut generator = crate::produce::EventGenerator::new(
            &decl,
            &crate::produce::ProduceOptions {
                bad_ratio: 0.05,
                seed: 3,
                ..Default::default()
            },
        );
        let mut flushed = Vec::new();
        assert_eq!(shards.buffered(), 0);
        for offset in 0..5000i64 {
            let payload = generator.next(now.timestamp_millis()).1;
            one.consume(0, offset, &payload, window, now.timestamp_micros());
            shards.push(&topic, 0, offset, &payload, || {
                (window, now.timestamp_micros())
            });
            if offset == 10 {
                assert_eq!(shards.buffered(), 11, "records not decoded yet count");
            }
            if offset == 2999 {
                flushed.push(shards.collect(&topic));
            }
        }
        flushed.push(shards.collect(&topic));
        assert_eq!(shards.buffered(), 0);
        let mut rows = RowMap::default();
        let mut rejects = Vec::new();
        for (r, j) in flushed {
            rows.append(r);
            rejects.extend(j);
        }
        let batch = one.discard();
        assert!(batch.rejects.len() > 100, "{}", batch.rejects.len());
        assert_eq!(rejects.len(), batch.rejects.len());
        let key = |r: &RejectRecord| (r.partition, r.offset);
        let mut a: Vec<_> = rejects.iter().map(key).collect();
        let mut b: Vec<_> = batch.rejects.iter().map(key).collect();
        a.sort_unstable();
        b.sort_unstable();
        assert_eq!(a, b, "every reject once");
        assert_eq!(
            rows.into_sorted(&one.spec),
            batch.rows.into_sorted(&one.spec)
        );
    }
}
