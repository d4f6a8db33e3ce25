//! Reading a backfill's input into chunks: each record decoded by the event
//! core into a row at the grain its age gives (or a reject that says where
//! it was read), with the totals and partitions the report shows.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::source::{Source, SourceRecord};
use super::{BackfillOptions, BackfillReport, Progress};
use crate::error::{Error, ErrorKind, Result};
use crate::events::{Decoder, EventRef, Origin, RejectReason, Scratch, TimeWindow};
use crate::maintain::plan::due_grain;
use crate::rejects::RejectRecord;
use crate::rows::{MeasureSpec, Measures, RowMap};
use crate::schema::decl::TableDecl;
use crate::schema::layout::Grain;

/// One chunk's decoded content: what one commit adds.
#[derive(Debug, Default)]
pub(super) struct Chunk {
    /// Rows per grain.
    pub rows: BTreeMap<Grain, RowMap>,
    /// Rejected records, each with its index in the input (see
    /// [`Source::position`]).
    pub rejects: Vec<(i64, RejectRecord)>,
    /// Events read (accepted, rejected and, replaying a range from Kafka,
    /// of other times).
    pub events: u64,
    /// With `--replace` from Kafka: events of other times, left out.
    pub outside: u64,
}

impl Chunk {
    /// Rows held, over every grain.
    pub fn rows(&self) -> usize {
        self.rows.values().map(RowMap::len).sum()
    }

    /// Add `other` to this chunk.
    pub fn absorb(&mut self, spec: &MeasureSpec, other: Chunk) {
        self.events += other.events;
        self.outside += other.outside;
        self.rejects.extend(other.rejects);
        for (g, rows) in other.rows {
            self.rows.entry(g).or_default().absorb(spec, rows);
        }
    }
}

/// A chunk being read on a thread of its own (see [`Loader::read_ahead`]);
/// dropped unread, it stops reading within [`PROGRESS_EVERY`] events.
pub(super) struct Reading {
    task: tokio::task::JoinHandle<(Loader, Box<dyn Source>, Result<ChunkRead>)>,
    stop: Arc<AtomicBool>,
}

/// A chunk, and whether its source ended.
type ChunkRead = (Chunk, bool);

impl Reading {
    /// The chunk read, whether its source ended, and the loader and source
    /// back (the source at the position after the chunk's last record).
    pub async fn chunk(mut self) -> Result<(Loader, Box<dyn Source>, ChunkRead)> {
        let (loader, source, read) = (&mut self.task).await.map_err(|e| {
            Error::new(ErrorKind::Internal, "reading a backfill's input failed").with_source(e)
        })?;
        Ok((loader, source, read?))
    }
}

impl Drop for Reading {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Events between two counts of a chunk's rows.
const ROWS_CHECKED_EVERY: u64 = 256;

/// Events between two reports of progress (each reads the clock, and
/// redraws the bar on a terminal).
const PROGRESS_EVERY: u64 = 4096;

/// How a backfill reports its progress (called from the thread that reads
/// its input).
pub type ProgressFn = Arc<dyn Fn(Progress) + Send + Sync>;

/// Turns input records into chunks of at most `chunk_events` events and
/// about `chunk_rows` rows.
pub(super) struct Loader {
    pub spec: MeasureSpec,
    decoder: Decoder,
    window: TimeWindow,
    /// The backfill's now (ages, and when its rejects were rejected).
    now_micros: i64,
    /// With `--replace`: `[from, to)`, microseconds.
    replaced: Option<(i64, i64)>,
    chunk_events: u64,
    chunk_rows: usize,
    /// Per-measure totals of the accepted events.
    totals: Measures,
    /// Partitions written, per grain.
    partitions: BTreeMap<Grain, BTreeSet<i32>>,
    /// The partition of the event before (consecutive events mostly share
    /// one: the set is only looked up when it changes).
    last_partition: Option<(Grain, i32)>,
    /// What was last reported.
    progress: Progress,
    report_progress: ProgressFn,
}

impl Loader {
    /// A loader for `decl` reading `total_bytes` of input.
    pub fn new(
        decl: &TableDecl,
        opts: &BackfillOptions,
        total_bytes: u64,
        report_progress: ProgressFn,
    ) -> Self {
        let spec = MeasureSpec::new(decl);
        Self {
            decoder: Decoder::new(decl.clone()),
            window: TimeWindow::new(opts.now, decl, opts.future_skew),
            now_micros: opts.now.timestamp_micros(),
            replaced: opts
                .replace
                .map(|(from, to)| (from.timestamp_micros(), to.timestamp_micros())),
            chunk_events: opts.chunk_events.max(1) as u64,
            chunk_rows: opts.chunk_rows.max(1),
            totals: spec.empty(),
            spec,
            partitions: BTreeMap::new(),
            last_partition: None,
            progress: Progress {
                bytes: 0,
                total_bytes,
                events: 0,
            },
            report_progress,
        }
    }

    /// The next chunk of `source`, and whether `source` ended; cut short
    /// (and to be thrown away) once `stop` is set.
    pub fn read_chunk(&mut self, source: &mut dyn Source, stop: &AtomicBool) -> Result<ChunkRead> {
        let mut chunk = Chunk::default();
        // Progress counts the events of the chunks this run reads.
        let events_before = self.progress.events;
        let mut eof = false;
        while chunk.events < self.chunk_events {
            let Some(record) = source.next()? else {
                eof = true;
                break;
            };
            self.progress.bytes += record.bytes;
            if chunk.events % PROGRESS_EVERY == 0 {
                self.progress.events = events_before + chunk.events;
                (self.report_progress)(self.progress);
                if stop.load(Ordering::Relaxed) {
                    break;
                }
            }
            if record.is_blank_line() {
                continue;
            }
            chunk.events += 1;
            self.take(&mut chunk, &record);
            // Rows are counted every so many events (a chunk passes its
            // bound by at most that many rows).
            if chunk.events % ROWS_CHECKED_EVERY == 0 && chunk.rows() >= self.chunk_rows {
                break;
            }
        }
        self.progress.events = events_before + chunk.events;
        (self.report_progress)(self.progress);
        Ok((chunk, eof))
    }

    /// Read the next chunk of `source` on a thread of the blocking pool,
    /// so that the chunk before it is written and committed meanwhile.
    pub fn read_ahead(mut self, mut source: Box<dyn Source>) -> Reading {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let task = tokio::task::spawn_blocking(move || {
            let read = self.read_chunk(source.as_mut(), &stopped);
            (self, source, read)
        });
        Reading { task, stop }
    }

    /// Decode one record into `chunk`: a row, or a reject. Replacing a
    /// range, an event of another time is rejected from a file (which was
    /// meant to hold the range), and left out of a topic (which holds every
    /// time).
    fn take(&mut self, chunk: &mut Chunk, record: &SourceRecord<'_>) {
        // Decoded in place, not moved out of the decoder.
        let mut scratch = Scratch::default();
        let decoded = self
            .decoder
            .decode_into(record.payload, self.window, &mut scratch)
            .and_then(|ev| {
                let ts = ev.ts_micros;
                match self.replaced {
                    Some((from, to)) if ts < from || ts >= to => {
                        Err(RejectReason::OutsideReplacedRange)
                    }
                    _ => Ok(ev),
                }
            });
        match decoded {
            Ok(ev) => self.add(chunk, ev),
            Err(RejectReason::OutsideReplacedRange)
                if matches!(record.origin, Origin::Kafka { .. }) =>
            {
                chunk.outside += 1;
            }
            Err(reason) => chunk.rejects.push((
                record.index(),
                RejectRecord::new(record.origin, record.payload, &reason, self.now_micros),
            )),
        }
    }

    /// Add an event at the grain the table's policy gives its age.
    fn add(&mut self, chunk: &mut Chunk, ev: &EventRef<'_>) {
        let minute = Grain::Minute.partition_ordinal(ev.ts_micros);
        let grain = due_grain(
            &self.decoder.decl().policy,
            self.now_micros,
            Grain::Minute,
            minute,
        );
        let ts_micros = grain.truncate(ev.ts_micros);
        let partition = (grain, grain.partition_ordinal(ts_micros));
        if self.last_partition != Some(partition) {
            self.last_partition = Some(partition);
            self.partitions
                .entry(grain)
                .or_default()
                .insert(partition.1);
        }
        self.spec.add_event_saturating(&mut self.totals, &ev.values);
        chunk
            .rows
            .entry(grain)
            .or_default()
            .add_event_ref(&self.spec, &ev.dims, ts_micros, &ev.values);
    }

    /// The partitions and totals of everything read, into `report`.
    pub fn summarize(self, report: &mut BackfillReport) {
        report.partitions_by_grain = self
            .partitions
            .into_iter()
            .map(|(g, p)| (g.as_str().to_string(), p.len()))
            .collect();
        report.totals = self.totals.by_name(self.decoder.decl());
    }
}

#[cfg(test)]
mod tests;
