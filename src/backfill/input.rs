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
    buf: Vec<u8>,
}

impl Source for Lines {
    fn next(&mut self) -> Result<Option<SourceRecord<'_>>> {
        self.buf.clear();
        let n = self.reader.read_until(b'\n', &mut self.buf).map_err(|e| {
            Error::new(
                ErrorKind::Io,
                format!("reading {} at line {}", self.location, self.line + 1),
            )
            .with_source(e)
        })?;
        if n == 0 {
            return Ok(None);
        }
        self.line += 1;
        let line = self.buf.strip_suffix(b"\n").unwrap_or(&self.buf);
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
    let mut lines = Lines {
        location: file.location.clone(),
        reader: Box::new(BufReader::with_capacity(1 << 20, decoded)),
        line: 0,
        buf: Vec::new(),
    };
    while lines.line < at && lines.next()?.is_some() {}
    Ok(lines)
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
