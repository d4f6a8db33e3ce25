//! Backfill inputs: local paths and globs, `file://` and object-store URLs,
//! as NDJSON (plain, `.gz`, `.zst`) or Parquet, read line by line.

use std::io::{BufRead, BufReader, Read};

use serde::Serialize;

use super::source::{Source, SourceRecord};
use crate::error::{Error, ErrorKind, Result};
use crate::events::Origin;
use crate::storage::ObjectStoreStorage;

/// One input file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InputFile {
    /// Where it is (a local path or a URL).
    pub location: String,
    /// Its size in bytes.
    pub size: u64,
}

/// Expand paths, globs and URLs into files, in a stable order. A pattern
/// that matches nothing is an error naming it.
pub async fn expand(inputs: &[String], storage: &ObjectStoreStorage) -> Result<Vec<InputFile>> {
    let mut out = Vec::new();
    for input in inputs {
        if input.contains("://") && !input.starts_with("file://") {
            let bytes = storage
                .list(input)
                .await?
                .into_iter()
                .find(|f| f.location.trim_end_matches('/') == input.trim_end_matches('/'));
            let size = match bytes {
                Some(f) => f.size,
                None => {
                    return Err(Error::new(
                        ErrorKind::InvalidInput,
                        format!("input {input} does not exist"),
                    ));
                }
            };
            out.push(InputFile {
                location: input.clone(),
                size,
            });
            continue;
        }
        let pattern = input.strip_prefix("file://").unwrap_or(input);
        let mut matched: Vec<_> = glob::glob(pattern)
            .map_err(|e| {
                Error::new(
                    ErrorKind::InvalidInput,
                    format!("input pattern {input}: {e}"),
                )
            })?
            .filter_map(|p| p.ok())
            .filter(|p| p.is_file())
            .collect();
        matched.sort();
        if matched.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("input {input} matches no file"),
            ));
        }
        for p in matched {
            let size = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
            out.push(InputFile {
                location: p.display().to_string(),
                size,
            });
        }
    }
    Ok(out)
}

/// An input file's lines, each one record (a blank one too: it is no event,
/// but it is a line and takes bytes).
pub(super) struct Lines {
    location: String,
    reader: Box<dyn BufRead + Send>,
    /// The number of the line last read.
    line: i64,
    /// The last line, when it was copied out of the reader's buffer.
    buf: Vec<u8>,
    /// The length of the last line, when it was handed out from the
    /// reader's buffer (consumed at the next read).
    in_buffer: usize,
}

impl Source for Lines {
    fn next(&mut self) -> Result<Option<SourceRecord<'_>>> {
        // The message is only made when a read fails (not for every line).
        let failed = |location: &str, line: i64, e: std::io::Error| {
            Error::new(
                ErrorKind::Io,
                format!("reading {location} at line {}", line + 1),
            )
            .with_source(e)
        };
        // The line handed out last lies in the reader's buffer until now.
        self.reader.consume(std::mem::take(&mut self.in_buffer));
        let available = self
            .reader
            .fill_buf()
            .map_err(|e| failed(&self.location, self.line, e))?;
        let whole = memchr::memchr(b'\n', available);
        let (line, n): (&[u8], usize) = match whole {
            // A line whole in the buffer is handed out from there.
            Some(end) => {
                self.in_buffer = end + 1;
                // The buffer again (nothing is read): the search's borrow
                // of it has ended.
                let available = self
                    .reader
                    .fill_buf()
                    .map_err(|e| failed(&self.location, self.line, e))?;
                (&available[..end], end + 1)
            }
            // One that runs past it (or the last, unended) is copied out.
            None => {
                self.buf.clear();
                let n = self
                    .reader
                    .read_until(b'\n', &mut self.buf)
                    .map_err(|e| failed(&self.location, self.line, e))?;
                let line = self.buf.strip_suffix(b"\n").unwrap_or(&self.buf);
                (line, n)
            }
        };
        if n == 0 {
            return Ok(None);
        }
        self.line += 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        Ok(Some(SourceRecord {
            origin: Origin::Line {
                file: &self.location,
                line: self.line,
            },
            payload: line,
            bytes: n as u64,
        }))
    }

    fn position(&self) -> i64 {
        self.line
    }
}

/// Open an input as lines, decompressing by extension, past its first `at`
/// lines (an earlier run committed them).
pub(super) async fn open(file: &InputFile, storage: &ObjectStoreStorage, at: i64) -> Result<Lines> {
    let raw: Box<dyn Read + Send> = if file.location.contains("://") {
        let io = crate::storage::file_io(storage);
        let bytes = io
            .new_input(&file.location)
            .map_err(|e| Error::iceberg(format!("opening {}", file.location), e))?
            .read()
            .await
            .map_err(|e| Error::iceberg(format!("reading {}", file.location), e))?;
        Box::new(std::io::Cursor::new(bytes))
    } else {
        Box::new(std::fs::File::open(&file.location).map_err(|e| {
            Error::new(ErrorKind::Io, format!("opening {}", file.location)).with_source(e)
        })?)
    };
    let name = file.location.to_ascii_lowercase();
    let decoded: Box<dyn Read + Send> = if name.ends_with(".gz") {
        Box::new(flate2::read::MultiGzDecoder::new(raw))
    } else if name.ends_with(".zst") || name.ends_with(".zstd") {
        Box::new(zstd::stream::read::Decoder::new(raw).map_err(|e| {
            Error::new(ErrorKind::Io, format!("opening {}", file.location)).with_source(e)
        })?)
    } else if name.ends_with(".parquet") {
        let mut bytes = Vec::new();
        let mut raw = raw;
        raw.read_to_end(&mut bytes).map_err(|e| {
            Error::new(ErrorKind::Io, format!("reading {}", file.location)).with_source(e)
        })?;
        let lines = parquet_to_ndjson(&file.location, bytes::Bytes::from(bytes))?;
        Box::new(std::io::Cursor::new(lines))
    } else {
        raw
    };
    // A compressed file is decompressed on a thread of its own, a few
    // blocks ahead of the decoding.
    let decoded: Box<dyn Read + Send> =
        if name.ends_with(".gz") || name.ends_with(".zst") || name.ends_with(".zstd") {
            Box::new(ReadAhead::start(&file.location, decoded)?)
        } else {
            decoded
        };
    let mut lines = Lines {
        location: file.location.clone(),
        reader: Box::new(BufReader::with_capacity(1 << 20, decoded)),
        line: 0,
        buf: Vec::new(),
        in_buffer: 0,
    };
    while lines.line < at && lines.next()?.is_some() {}
    Ok(lines)
}

/// Bytes read from a reader on a thread of its own, [`READ_AHEAD_BLOCKS`]
/// blocks of [`READ_AHEAD_BYTES`] ahead at most: the thread stops when
/// the reader ends or fails (the error is passed on in order), or when this
/// is dropped. Blocks read are handed back to be filled again, so the
/// thread allocates only the few it needs.
struct ReadAhead {
    blocks: std::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
    emptied: std::sync::mpsc::Sender<Vec<u8>>,
    block: std::io::Cursor<Vec<u8>>,
    state: Ahead,
}

/// Where a [`ReadAhead`]'s reader is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ahead {
    Reading,
    Ended,
    /// It failed, and the failure was passed on.
    Failed,
}

/// Blocks a [`ReadAhead`] holds ready, at most.
const READ_AHEAD_BLOCKS: usize = 4;

/// Bytes per [`ReadAhead`] block, at most.
const READ_AHEAD_BYTES: usize = 1 << 20;

impl ReadAhead {
    fn start(location: &str, mut inner: Box<dyn Read + Send>) -> Result<Self> {
        let (send, blocks) = std::sync::mpsc::sync_channel(READ_AHEAD_BLOCKS);
        let (emptied, reuse) = std::sync::mpsc::channel::<Vec<u8>>();
        std::thread::Builder::new()
            .name("firn-read".into())
            .spawn(move || {
                loop {
                    let mut block = reuse.try_recv().unwrap_or_default();
                    block.resize(READ_AHEAD_BYTES, 0);
                    let (n, failed) = fill(&mut inner, &mut block);
                    block.truncate(n);
                    // A closed channel: the reading side is gone.
                    if n > 0 && send.send(Ok(block)).is_err() {
                        return;
                    }
                    match failed {
                        Some(e) => {
                            let _ = send.send(Err(e));
                            return;
                        }
                        // The end: an empty block says so.
                        None if n == 0 => {
                            let _ = send.send(Ok(Vec::new()));
                            return;
                        }
                        None => {}
                    }
                }
            })
            .map_err(|e| {
                Error::new(
                    ErrorKind::Io,
                    format!("starting a thread to read {location}"),
                )
                .with_source(e)
            })?;
        Ok(Self {
            blocks,
            emptied,
            block: std::io::Cursor::new(Vec::new()),
            state: Ahead::Reading,
        })
    }
}

/// Read from `inner` until `block` is full, `inner` ends or it fails: the
/// bytes read, and the failure.
fn fill(inner: &mut dyn Read, block: &mut [u8]) -> (usize, Option<std::io::Error>) {
    let mut n = 0;
    while n < block.len() {
        match inner.read(&mut block[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return (n, Some(e)),
        }
    }
    (n, None)
}

impl Read for ReadAhead {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let n = self.block.read(out)?;
            if n > 0 || out.is_empty() {
                return Ok(n);
            }
            match self.state {
                Ahead::Ended => return Ok(0),
                Ahead::Failed => return Err(std::io::Error::other("reading failed earlier")),
                Ahead::Reading => {}
            }
            match self.blocks.recv() {
                Ok(Ok(block)) if block.is_empty() => self.state = Ahead::Ended,
                Ok(Ok(block)) => {
                    let read = std::mem::replace(&mut self.block, std::io::Cursor::new(block));
                    // The thread may have stopped; the block is then dropped.
                    let _ = self.emptied.send(read.into_inner());
                }
                Ok(Err(e)) => {
                    self.state = Ahead::Failed;
                    return Err(e);
                }
                Err(_) => {
                    self.state = Ahead::Failed;
                    return Err(std::io::Error::other(
                        "the thread reading ahead stopped early",
                    ));
                }
            }
        }
    }
}

/// A Parquet file's rows as NDJSON, one object per row with every column
/// (timestamps as epoch milliseconds), so the ingest decoder reads them.
fn parquet_to_ndjson(location: &str, bytes: bytes::Bytes) -> Result<Vec<u8>> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::*;
    use arrow_array::{Array, ArrayRef};
    use arrow_schema::{DataType, TimeUnit};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use serde_json::{Map, Value, json};

    let bad = |e: &dyn std::fmt::Display| {
        Error::new(
            ErrorKind::InvalidInput,
            format!("{location} is not readable Parquet: {e}"),
        )
    };
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .map_err(|e| bad(&e))?
        .build()
        .map_err(|e| bad(&e))?;
    let value = |a: &ArrayRef, i: usize| -> Option<Value> {
        if a.is_null(i) {
            return None;
        }
        Some(match a.data_type() {
            DataType::Int8 => json!(a.as_primitive::<Int8Type>().value(i)),
            DataType::Int16 => json!(a.as_primitive::<Int16Type>().value(i)),
            DataType::Int32 => json!(a.as_primitive::<Int32Type>().value(i)),
            DataType::Int64 => json!(a.as_primitive::<Int64Type>().value(i)),
            DataType::UInt8 => json!(a.as_primitive::<UInt8Type>().value(i)),
            DataType::UInt16 => json!(a.as_primitive::<UInt16Type>().value(i)),
            DataType::UInt32 => json!(a.as_primitive::<UInt32Type>().value(i)),
            DataType::UInt64 => json!(a.as_primitive::<UInt64Type>().value(i)),
            DataType::Float32 => json!(a.as_primitive::<Float32Type>().value(i)),
            DataType::Float64 => json!(a.as_primitive::<Float64Type>().value(i)),
            DataType::Boolean => json!(a.as_boolean().value(i)),
            DataType::Utf8 => json!(a.as_string::<i32>().value(i)),
            DataType::LargeUtf8 => json!(a.as_string::<i64>().value(i)),
            DataType::Utf8View => json!(a.as_string_view().value(i)),
            DataType::Timestamp(unit, _) => {
                let v = match unit {
                    TimeUnit::Second => a.as_primitive::<TimestampSecondType>().value(i) * 1000,
                    TimeUnit::Millisecond => a.as_primitive::<TimestampMillisecondType>().value(i),
                    TimeUnit::Microsecond => {
                        a.as_primitive::<TimestampMicrosecondType>().value(i) / 1000
                    }
                    TimeUnit::Nanosecond => {
                        a.as_primitive::<TimestampNanosecondType>().value(i) / 1_000_000
                    }
                };
                json!(v)
            }
            _ => return None,
        })
    };
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| bad(&e))?;
        let schema = batch.schema();
        for i in 0..batch.num_rows() {
            let mut obj = Map::new();
            for (f, col) in schema.fields().iter().zip(batch.columns()) {
                if let Some(v) = value(col, i) {
                    obj.insert(f.name().clone(), v);
                }
            }
            out.extend(Value::Object(obj).to_string().into_bytes());
            out.push(b'\n');
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    /// Bytes in pieces of odd sizes, then an error if `fail`, and a flag
    /// set when the reader is dropped.
    struct Pieces {
        bytes: Vec<u8>,
        at: usize,
        fail: bool,
        dropped: Arc<AtomicBool>,
    }

    impl Read for Pieces {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            if self.at == self.bytes.len() {
                return match self.fail {
                    true => Err(std::io::Error::other("corrupt input")),
                    false => Ok(0),
                };
            }
            let n = out.len().min(7919).min(self.bytes.len() - self.at);
            out[..n].copy_from_slice(&self.bytes[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    impl Drop for Pieces {
        fn drop(&mut self) {
            self.dropped.store(true, Ordering::SeqCst);
        }
    }

    fn pieces(len: usize, fail: bool) -> (Vec<u8>, Box<dyn Read + Send>, Arc<AtomicBool>) {
        let bytes: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        let dropped = Arc::new(AtomicBool::new(false));
        let reader = Pieces {
            bytes: bytes.clone(),
            at: 0,
            fail,
            dropped: dropped.clone(),
        };
        (bytes, Box::new(reader), dropped)
    }

    #[test]
    fn reading_ahead_passes_every_byte_in_order() {
        for len in [0, 1, READ_AHEAD_BYTES, 3 * READ_AHEAD_BYTES + 12_345] {
            let (bytes, reader, _) = pieces(len, false);
            let mut read = Vec::new();
            ReadAhead::start("input", reader)
                .unwrap()
                .read_to_end(&mut read)
                .unwrap();
            assert_eq!(read.len(), bytes.len());
            assert!(read == bytes, "bytes differ for a {len}-byte input");
        }
    }

    #[test]
    fn reading_ahead_passes_an_error_on_after_the_bytes_before_it() {
        let (bytes, reader, _) = pieces(2 * READ_AHEAD_BYTES + 5, true);
        let mut ahead = ReadAhead::start("input", reader).unwrap();
        let mut read = vec![0; bytes.len()];
        ahead.read_exact(&mut read).unwrap();
        assert!(read == bytes);
        let e = ahead.read(&mut [0; 16]).unwrap_err();
        assert_eq!(e.to_string(), "corrupt input");
        // It is not taken for the end of the input afterwards.
        assert!(ahead.read(&mut [0; 16]).is_err());
    }

    #[test]
    fn dropping_a_read_ahead_stops_its_thread() {
        let (_, reader, dropped) = pieces(64 * READ_AHEAD_BYTES, false);
        let mut ahead = ReadAhead::start("input", reader).unwrap();
        ahead.read_exact(&mut [0; 1000]).unwrap();
        drop(ahead);
        // The thread drops the reader once it finds no one reading.
        for _ in 0..500 {
            if dropped.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("the reading thread still holds its reader");
    }
}
