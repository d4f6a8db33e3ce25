//! Flushes pipelined with consumption: a flush takes every table's batch
//! and commits it on the runtime while the consumer thread reads on into
//! the next batch. One flush is in flight at a time, so commits land in the
//! order of the offsets they cover; a failed one drops what was read after
//! it too, and the partitions are re-read from the table's offsets.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::{Core, IngestContext};
use crate::error::{Error, ErrorKind, Result};
use crate::ingest::flush::{self, FlushOutcome};
use crate::telemetry::FlushStats;

/// A flush committing on the runtime: its tables, in the order the task
/// commits them, and the task (a result per table and its seconds).
pub(super) struct InFlight {
    tables: Vec<Flushing>,
    /// Rows and rejects, and payload bytes, of the batches.
    pub(super) held: (usize, u64),
    task: tokio::task::JoinHandle<Vec<(Result<FlushOutcome>, f64)>>,
}

/// One table's batch in a flush.
struct Flushing {
    topic: String,
    table: String,
    /// Next offset after the batch, per partition.
    covered: BTreeMap<i32, i64>,
}

impl Core {
    /// Flush every table with a batch now and wait for the commits (on
    /// revocation and at shutdown). With `reposition`, a dropped batch's
    /// partitions are sought back to the table's offsets (they stay
    /// assigned); on revocation they are being released anyway.
    pub(super) fn flush_all(&mut self, consumer: &BaseConsumer<IngestContext>, reposition: bool) {
        self.finish_flush(consumer, reposition, true);
        if self.fatal.is_some() {
            return;
        }
        self.start_flush();
        self.finish_flush(consumer, reposition, true);
    }

    /// Take every table's batch (with the shards' part of it) and commit
    /// them on the runtime, one table after another, while the consumer
    /// reads on into the next batches. One flush is in flight at a time, so
    /// the commits land in the order of the offsets they cover.
    pub(super) fn start_flush(&mut self) {
        debug_assert!(self.in_flight.is_none(), "one flush at a time");
        let mut tables = Vec::new();
        let mut jobs = Vec::new();
        for (topic, sink) in self.sinks.iter_mut() {
            if sink.batch.is_empty() {
                continue;
            }
            if let Some(shards) = &mut self.shards {
                let (rows, rejects) = shards.collect(topic);
                sink.batch.rows.append(rows);
                sink.batch.rejects.extend(rejects);
            }
            let Some(job) = sink.take_flush() else {
                continue;
            };
            let table = sink.decl().qualified_name();
            self.metrics.buffered(&table, 0);
            tables.push(Flushing {
                topic: topic.clone(),
                table,
                covered: job.batch.to.clone(),
            });
            jobs.push(job);
        }
        self.last_flush = Instant::now();
        if jobs.is_empty() {
            return;
        }
        let held = jobs.iter().fold((0, 0), |(rows, bytes), j| {
            let b = &j.batch;
            (rows + b.rows.len() + b.rejects.len(), bytes + b.bytes)
        });
        let (catalog, group) = (self.catalog.clone(), self.opts.group.clone());
        let (target_file_size, retry) = (self.opts.target_file_size, self.opts.retry);
        let task = self.handle.spawn(async move {
            let mut results = Vec::with_capacity(jobs.len());
            for job in jobs {
                let started = Instant::now();
                let result =
                    flush::flush(catalog.as_ref(), &group, job, target_file_size, retry).await;
                results.push((result, started.elapsed().as_secs_f64()));
            }
            results
        });
        self.in_flight = Some(InFlight { tables, held, task });
    }

    /// Take the result of the flush in flight, if any: once it is done, or
    /// (with `wait`) waiting for it. A committed batch's offsets are
    /// committed to the group too (for lag tools). A dropped batch drops what
    /// was read after it too, and its partitions are re-read from the
    /// table's offsets (sought there with `reposition`).
    pub(super) fn finish_flush(
        &mut self,
        consumer: &BaseConsumer<IngestContext>,
        reposition: bool,
        wait: bool,
    ) {
        match &self.in_flight {
            None => return,
            Some(f) if !wait && !f.task.is_finished() => return,
            Some(_) => {}
        }
        let InFlight { tables, task, .. } = self.in_flight.take().expect("checked above");
        let results = match self.handle.block_on(task) {
            Ok(results) => results,
            Err(e) => {
                let what = format!("a flush task ended abnormally: {e}");
                let failed = || (Err(Error::new(ErrorKind::Internal, what.clone())), 0.0);
                tables.iter().map(|_| failed()).collect()
            }
        };
        for (flushing, (result, secs)) in tables.into_iter().zip(results) {
            let Flushing {
                topic,
                table,
                covered,
            } = flushing;
            match result {
                Ok(FlushOutcome::Committed {
                    snapshot_id,
                    records,
                    rows,
                    files,
                    rejects,
                    bytes,
                    attempts,
                    write_seconds,
                    commit_seconds,
                }) => {
                    self.report.records += records;
                    self.report.rejected += rejects as u64;
                    self.report.commits += 1;
                    self.metrics.flush_committed(
                        &table,
                        FlushStats {
                            rows,
                            files,
                            bytes,
                            attempts,
                            write_seconds,
                            commit_seconds,
                        },
                    );
                    self.health.committed();
                    self.publish_lag();
                    tracing::info!(
                        table = %table, snapshot_id, records, rows, files, rejects, attempts,
                        seconds = secs, "flushed"
                    );
                    let mut tpl = TopicPartitionList::new();
                    for (p, to) in covered {
                        let _ = tpl.add_partition_offset(&topic, p, Offset::Offset(to));
                    }
                    if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
                        tracing::debug!(error = %e, "group offset commit (for lag tools) failed");
                    }
                }
                Ok(FlushOutcome::Empty) => {}
                Err(e) => {
                    let outcome = if e.kind() == ErrorKind::Fenced {
                        "fenced"
                    } else {
                        "failed"
                    };
                    self.metrics.flush_failed(&table, outcome);
                    tracing::warn!(table = %table, error = %e, "batch dropped; re-reading from the table's offsets");
                    self.report.dropped_batches += 1;
                    self.drop_batch(&topic);
                    self.metrics.buffered(&table, 0);
                    if reposition && let Err(e) = self.reposition(consumer, &topic) {
                        tracing::error!(error = %e, "cannot re-position after a dropped batch");
                        self.fatal = Some(e);
                        return;
                    }
                    if outcome == "failed" {
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
            }
        }
    }

    /// Drop what was read of `topic` since its last batch was taken (the
    /// shards' part too).
    pub(super) fn drop_batch(&mut self, topic: &str) {
        let Some(sink) = self.sinks.get_mut(topic) else {
            return;
        };
        if let Some(shards) = &mut self.shards {
            shards.collect(topic);
        }
        if !sink.batch.is_empty() {
            self.report.dropped_batches += 1;
        }
        sink.discard();
    }
}
