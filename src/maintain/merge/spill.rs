//! Merged runs kept in temporary files. A merge of more inputs than
//! [`FAN_IN`] merges them a group at a time, each group's rows into one
//! sorted run written to a temporary file (Arrow IPC, LZ4-compressed), and
//! then merges the runs: memory is bounded by the fan-in, not by the number
//! of files (a compaction of 1,440 minute files holds 64 open readers, not
//! 1,440). A run may instead be held in memory while the runs of every
//! merge of the process hold less than a [`Budget`] of [`HELD_BYTES`]
//! (runs folded from many files are small: the 1,440 minute files of an
//! hour fold into 60 minutes of keys), which spares encoding, compressing,
//! writing and reading it back; a run that would pass the budget goes to a
//! file, the batches it held first. The files are unlinked when created, so
//! nothing outlives the process, whatever ends it.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufReader, BufWriter, Seek};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arrow_array::RecordBatch;
use arrow_ipc::CompressionType;
use arrow_ipc::reader::StreamReader;
use arrow_ipc::writer::{IpcWriteOptions, StreamWriter};
use arrow_schema::SchemaRef;

use super::BatchStream;
use crate::error::{Error, ErrorKind, Result};

/// Inputs merged at once, at most.
pub(super) const FAN_IN: usize = 64;

fn spill_error(what: &str, e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::new(
        ErrorKind::Io,
        format!(
            "{what} a merged run in the temporary directory ({})",
            std::env::temp_dir().display()
        ),
    )
    .with_source(e)
}

/// Bytes the runs of every merge of the process may hold in memory, at
/// most, whatever the number of merges at once.
pub(super) const HELD_BYTES: usize = 32 << 20;

/// What merged runs may still hold in memory, in bytes: taken by a batch a
/// run holds, given back as the batch is read or dropped.
#[derive(Debug, Clone)]
pub(super) struct Budget(Arc<AtomicUsize>);

impl Budget {
    pub(super) fn new(bytes: usize) -> Self {
        Self(Arc::new(AtomicUsize::new(bytes)))
    }

    /// The budget of [`HELD_BYTES`] every merge of the process shares.
    pub(super) fn shared() -> Self {
        static SHARED: std::sync::OnceLock<Budget> = std::sync::OnceLock::new();
        SHARED.get_or_init(|| Self::new(HELD_BYTES)).clone()
    }

    /// Take `bytes`, if that much is left.
    fn take(&self, bytes: usize) -> bool {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                left.checked_sub(bytes)
            })
            .is_ok()
    }

    fn give(&self, bytes: usize) {
        self.0.fetch_add(bytes, Ordering::AcqRel);
    }

    /// Bytes left.
    #[cfg(test)]
    pub(super) fn left(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

/// The sizes of the groups a merge of inputs in `buckets` (each input's
/// bucket of the grain, in merge order: equal buckets next to each other)
/// merges at once, at most `fan_in` each: a bucket is never split unless it
/// alone holds more, so that its rows fold before the groups' runs are
/// merged; a bucket of a quarter of `fan_in` inputs or more is a group of
/// its own (a smaller tree), and smaller ones are packed together.
pub(super) fn group_sizes<B: PartialEq>(buckets: &[B], fan_in: usize) -> Vec<usize> {
    let fan_in = fan_in.max(2);
    let alone = (fan_in / 4).max(1);
    let mut sizes = Vec::new();
    let mut current = 0;
    // Whether the group being filled holds a bucket of `alone` or more.
    let mut big = false;
    let mut at = 0;
    while at < buckets.len() {
        let mut left = buckets[at..]
            .iter()
            .take_while(|b| **b == buckets[at])
            .count();
        at += left;
        if current > 0 && (current + left > fan_in || left >= alone || big) {
            sizes.push(current);
            current = 0;
        }
        big = left >= alone;
        while left > 0 {
            let take = left.min(fan_in - current);
            current += take;
            left -= take;
            if current == fan_in {
                sizes.push(current);
                current = 0;
            }
        }
    }
    if current > 0 {
        sizes.push(current);
    }
    sizes
}

/// One merged run being written.
pub(super) struct RunWriter {
    schema: SchemaRef,
    /// The run's file, once it has one.
    writer: Option<StreamWriter<BufWriter<File>>>,
    /// Batches held in memory (while it has no file), with their sizes.
    held: VecDeque<(RecordBatch, usize)>,
    budget: Option<Budget>,
    /// Rows per batch written (as the final merge reads them).
    batch_rows: usize,
}

impl RunWriter {
    /// A run of batches of `schema`, written `batch_rows` rows at a time,
    /// held in memory while `budget` (if any) allows.
    pub(super) fn new(schema: &SchemaRef, batch_rows: usize, budget: Option<Budget>) -> Self {
        Self {
            schema: schema.clone(),
            writer: None,
            held: VecDeque::new(),
            budget,
            batch_rows: batch_rows.max(1),
        }
    }

    /// The run's file, made (with the batches held so far written to it)
    /// if it has none.
    fn file(&mut self) -> Result<&mut StreamWriter<BufWriter<File>>> {
        if self.writer.is_none() {
            let file = tempfile::tempfile().map_err(|e| spill_error("creating", e))?;
            let options = IpcWriteOptions::default()
                .try_with_compression(Some(CompressionType::LZ4_FRAME))
                .map_err(|e| spill_error("compressing", e))?;
            let mut writer =
                StreamWriter::try_new_with_options(BufWriter::new(file), &self.schema, options)
                    .map_err(|e| spill_error("starting", e))?;
            while let Some((batch, bytes)) = self.held.pop_front() {
                writer
                    .write(&batch)
                    .map_err(|e| spill_error("writing", e))?;
                if let Some(budget) = &self.budget {
                    budget.give(bytes);
                }
            }
            self.writer = Some(writer);
        }
        Ok(self.writer.as_mut().expect("made above"))
    }

    pub(super) fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let mut at = 0;
        while at < batch.num_rows() {
            let len = self.batch_rows.min(batch.num_rows() - at);
            let part = batch.slice(at, len);
            at += len;
            if self.writer.is_none()
                && let Some(budget) = &self.budget
            {
                // The slice's share of the batch's buffers.
                let bytes = batch.get_array_memory_size() * len / batch.num_rows();
                if budget.take(bytes) {
                    self.held.push_back((part, bytes));
                    continue;
                }
            }
            self.file()?
                .write(&part)
                .map_err(|e| spill_error("writing", e))?;
        }
        Ok(())
    }

    /// The run, read back in order.
    pub(super) fn finish(mut self) -> Result<BatchStream> {
        let Some(mut writer) = self.writer.take() else {
            let held = Held {
                batches: std::mem::take(&mut self.held),
                budget: self.budget.take(),
            };
            return Ok(Box::pin(futures::stream::iter(held)));
        };
        writer.finish().map_err(|e| spill_error("finishing", e))?;
        let mut file = writer
            .into_inner()
            .map_err(|e| spill_error("flushing", e))?
            .into_inner()
            .map_err(|e| spill_error("flushing", e.into_error()))?;
        file.rewind().map_err(|e| spill_error("reading", e))?;
        let reader = StreamReader::try_new(BufReader::new(file), None)
            .map_err(|e| spill_error("reading", e))?;
        Ok(Box::pin(futures::stream::iter(
            reader.map(|b| b.map_err(|e| spill_error("reading", e))),
        )))
    }
}

impl Drop for RunWriter {
    fn drop(&mut self) {
        if let Some(budget) = &self.budget {
            budget.give(self.held.iter().map(|(_, bytes)| bytes).sum());
        }
    }
}

/// A run held in memory, read in order: each batch's bytes go back to the
/// budget as it is read, and the rest when the run is dropped.
struct Held {
    batches: VecDeque<(RecordBatch, usize)>,
    budget: Option<Budget>,
}

impl Iterator for Held {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        let (batch, bytes) = self.batches.pop_front()?;
        if let Some(budget) = &self.budget {
            budget.give(bytes);
        }
        Some(Ok(batch))
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(budget) = &self.budget {
            budget.give(self.batches.iter().map(|(_, bytes)| bytes).sum());
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn groups_keep_each_bucket_whole_and_big_buckets_apart() {
        let sizes = |runs: &[(u32, usize)], fan_in| {
            let buckets: Vec<u32> = runs
                .iter()
                .flat_map(|&(b, n)| std::iter::repeat_n(b, n))
                .collect();
            super::group_sizes(&buckets, fan_in)
        };
        // An hour of minute files, 24 a minute: a group a minute.
        let hour: Vec<(u32, usize)> = (0..60).map(|m| (m, 24)).collect();
        assert_eq!(sizes(&hour, 64), vec![24; 60]);
        // One file a bucket: packed to the fan-in.
        let ones: Vec<(u32, usize)> = (0..150).map(|m| (m, 1)).collect();
        assert_eq!(sizes(&ones, 64), vec![64, 64, 22]);
        // Small buckets packed without splitting one; a big one alone, split
        // only when it holds more than the fan-in.
        assert_eq!(
            sizes(
                &[
                    (0, 1),
                    (1, 2),
                    (2, 3),
                    (3, 20),
                    (4, 3),
                    (5, 70),
                    (6, 2),
                    (7, 3)
                ],
                16
            ),
            vec![6, 16, 4, 3, 16, 16, 16, 16, 6, 5]
        );
        assert_eq!(sizes(&[], 64), Vec::<usize>::new());
    }
}
