//! Merged runs kept in temporary files. A merge of more inputs than
//! [`FAN_IN`] merges them a group at a time, each group's rows into one
//! sorted run written to a temporary file (Arrow IPC, LZ4-compressed), and
//! then merges the runs: memory is bounded by the fan-in, not by the number
//! of files (a compaction of 1,440 minute files holds 64 open readers, not
//! 1,440). The files are unlinked when created, so nothing outlives the
//! process, whatever ends it.

use std::fs::File;
use std::io::{BufReader, BufWriter, Seek};

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

/// One merged run being written.
pub(super) struct RunWriter {
    writer: StreamWriter<BufWriter<File>>,
    /// Rows per batch written (as the final merge reads them).
    batch_rows: usize,
}

impl RunWriter {
    /// A run of batches of `schema`, written `batch_rows` rows at a time.
    pub(super) fn new(schema: &SchemaRef, batch_rows: usize) -> Result<Self> {
        let file = tempfile::tempfile().map_err(|e| spill_error("creating", e))?;
        let options = IpcWriteOptions::default()
            .try_with_compression(Some(CompressionType::LZ4_FRAME))
            .map_err(|e| spill_error("compressing", e))?;
        let writer = StreamWriter::try_new_with_options(BufWriter::new(file), schema, options)
            .map_err(|e| spill_error("starting", e))?;
        Ok(Self {
            writer,
            batch_rows: batch_rows.max(1),
        })
    }

    pub(super) fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let mut at = 0;
        while at < batch.num_rows() {
            let len = self.batch_rows.min(batch.num_rows() - at);
            self.writer
                .write(&batch.slice(at, len))
                .map_err(|e| spill_error("writing", e))?;
            at += len;
        }
        Ok(())
    }

    /// The run, read back in order.
    pub(super) fn finish(mut self) -> Result<BatchStream> {
        self.writer
            .finish()
            .map_err(|e| spill_error("finishing", e))?;
        let mut file = self
            .writer
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
