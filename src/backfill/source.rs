//! What a backfill reads: its inputs resolved to stretches that chunks never
//! cross (a file, or one partition's offset range of a topic), each read as
//! records that say where they were read.

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
}

/// One stretch of input, read in order.
pub trait Source: Send {
    /// The next record, or `None` at the end.
    fn next(&mut self) -> Result<Option<SourceRecord<'_>>>;
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
    /// Expand the input files, or resolve the topic range to offsets.
    pub async fn resolve(opts: &BackfillOptions, storage: &ObjectStoreStorage) -> Result<Self> {
        let Some(k) = &opts.kafka else {
            let files = input::expand(&opts.inputs, storage).await?;
            return Ok(Self { files, kafka: None });
        };
        let ranges = kafka::resolve(k).await?;
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

    /// Open the `index`th input.
    pub async fn open(
        &self,
        index: usize,
        storage: &ObjectStoreStorage,
    ) -> Result<Box<dyn Source>> {
        Ok(match &self.kafka {
            Some((k, ranges)) => Box::new(kafka::RangeReader::open(k, ranges[index])?),
            None => Box::new(input::open(&self.files[index], storage).await?),
        })
    }
}
