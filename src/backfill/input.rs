//! Backfill inputs: local paths and globs, `file://` and object-store URLs,
//! as NDJSON (plain, `.gz`, `.zst`), read line by line.

use std::io::{BufRead, BufReader, Read};

use serde::Serialize;

use crate::error::{Error, ErrorKind, Result};
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

/// Open an input as a line reader, decompressing by extension.
pub async fn open(
    file: &InputFile,
    storage: &ObjectStoreStorage,
) -> Result<Box<dyn BufRead + Send>> {
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
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "{}: Parquet inputs are not supported yet; convert to NDJSON",
                file.location
            ),
        ));
    } else {
        raw
    };
    Ok(Box::new(BufReader::with_capacity(1 << 20, decoded)))
}
