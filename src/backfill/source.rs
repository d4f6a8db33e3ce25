//! What a backfill reads: its inputs resolved to stretches that chunks never
//! cross (a file, or one partition's offset range of a topic), each read as
//! records that say where they were read.

use std::collections::BTreeMap;

use super::BackfillOptions;
use super::input::{self, InputFile};
use super::kafka::{self, KafkaRange, PartitionRange};
use crate::error::Result;
use crate::events::Origin;
use crate::storage::ObjectStoreStorage;

/// One record of an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceRecord<'a> {
    /// Where it was read (what a reject records).
    pub origin: Origin<'a>,
    /// The record: a JSON event, if it is well formed.
    pub payload: &'a [u8],
    /// Input bytes it took (progress).
    pub bytes: u64,
}

impl SourceRecord<'_> {
    /// Whether this is a blank line of a file, which is no event (every
    /// Kafka record is one).
    pub fn is_blank_line(&self) -> bool {
        matches!(self.origin, Origin::Line { .. })
            && self.payload.iter().all(u8::is_ascii_whitespace)
    }

    /// Its index in its input, as [`Source::position`] counts: a line's
    /// number less one, a record's offset.
    pub fn index(&self) -> i64 {
        match self.origin {
            Origin::Line { line, .. } => line - 1,
            Origin::Kafka { offset, .. } => offset,
        }
    }
}

/// One stretch of input, read in order.
pub trait Source: Send {
    /// The next record, or `None` at the end.
    fn next(&mut self) -> Result<Option<SourceRecord<'_>>>;

    /// The index of the next record: a file's lines read so far, a
    /// partition's next offset. A progress record holds it, and a rerun
    /// opens the input there.
    fn position(&self) -> i64;
}

/// A backfill's inputs, resolved.
#[derive(Debug)]
pub(super) struct Inputs {
    /// What the backfill's identity and report name: each file, or each
    /// partition range as `kafka:TOPIC/PARTITION[START..END)` with its
    /// record count as its size.
    pub files: Vec<InputFile>,
    /// With a replay: the topic, and the partition range of each of `files`.
    kafka: Option<(KafkaRange, Vec<PartitionRange>)>,
}

impl Inputs {
    /// The inputs: `files`, or the topic range as an earlier run of the
    /// backfill resolved it (`recorded`), else resolved now, no partition
    /// ending past `caps`.
    pub async fn resolve(
        opts: &BackfillOptions,
        files: Vec<InputFile>,
        recorded: &[(i32, i64, i64)],
        caps: &BTreeMap<i32, i64>,
    ) -> Result<Self> {
        let Some(k) = &opts.kafka else {
            return Ok(Self { files, kafka: None });
        };
        let ranges = if recorded.is_empty() {
            kafka::resolve(k, caps).await?
        } else {
            kafka::recorded(k, recorded)
        };
        let files = ranges
            .iter()
            .map(|r| InputFile {
                location: format!("kafka:{}/{}[{}..{})", k.topic, r.partition, r.start, r.end),
                size: (r.end - r.start).max(0) as u64,
            })
            .collect();
        Ok(Self {
            files,
            kafka: Some((k.clone(), ranges)),
        })
    }

    /// A replay's partition ranges, as a progress record keeps them.
    pub fn ranges(&self) -> Vec<(i32, i64, i64)> {
        self.kafka
            .iter()
            .flat_map(|(_, ranges)| ranges.iter().map(PartitionRange::recorded))
            .collect()
    }

    /// Open the `index`th input at position `at` (see [`Source::position`]).
    pub async fn open(
        &self,
        index: usize,
        storage: &ObjectStoreStorage,
        at: i64,
    ) -> Result<Box<dyn Source>> {
        Ok(match &self.kafka {
            Some((k, ranges)) => Box::new(kafka::RangeReader::open(k, ranges[index], at)?),
            None => Box::new(input::open(&self.files[index], storage, at).await?),
        })
    }
}
