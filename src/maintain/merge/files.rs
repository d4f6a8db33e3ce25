//! Reading the data files a merge folds. A small file — most of what a
//! compaction reads: minute files — is fetched whole in one request and
//! decoded in memory, its columns found by Iceberg field id (one GET per
//! file instead of a footer, a metadata and a column-chunk read). A large
//! one, or one this path cannot read as it stands (no field ids, a column
//! the file lacks), is read through iceberg's Arrow reader, which streams
//! row groups and fills missing columns.

use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::{Field, Schema};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use iceberg::arrow::ArrowReaderBuilder;
use iceberg::scan::{ArrowRecordBatchStream, FileScanTask};
use iceberg::spec::{DataFileFormat, SchemaRef as IcebergSchemaRef};
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::arrow::{PARQUET_FIELD_ID_META_KEY, ProjectionMask};

use super::super::state::LiveFile;
use super::BatchStream;
use crate::catalog::TableHandle;
use crate::error::{Error, ErrorKind, Result};

/// Files up to this size are fetched whole (a merge holds at most
/// [`super::spill::FAN_IN`] of them at once).
pub(super) const WHOLE_FILE_BYTES: u64 = 1 << 20;

/// Columns `field_ids` of `file` (named as the table's current schema names
/// them), in batches of `batch_rows`.
pub(super) fn read(
    table: &TableHandle,
    file: &LiveFile,
    field_ids: Vec<i32>,
    batch_rows: usize,
) -> Result<BatchStream> {
    if file.bytes > WHOLE_FILE_BYTES {
        return streamed(table, file, field_ids, batch_rows);
    }
    let table = table.clone();
    let file = file.clone();
    let whole = async move {
        let path = file.path.as_str();
        let bytes = table
            .file_io
            .new_input(path)
            .map_err(|e| Error::iceberg(format!("opening data file {path}"), e))?
            .read()
            .await
            .map_err(|e| Error::iceberg(format!("reading data file {path}"), e))?;
        let schema = table.metadata.current_schema();
        let stream = match in_memory(bytes, schema, &field_ids, batch_rows, path)? {
            Some(batches) => futures::stream::iter(batches).boxed(),
            None => streamed(&table, &file, field_ids, batch_rows)?,
        };
        Ok::<_, Error>(stream)
    };
    Ok(futures::stream::once(whole).try_flatten().boxed())
}

/// Decode a whole file held in memory: `None` when a column is not found by
/// field id (the streamed reader handles that).
fn in_memory(
    bytes: Bytes,
    schema: &IcebergSchemaRef,
    field_ids: &[i32],
    batch_rows: usize,
    path: &str,
) -> Result<Option<impl Iterator<Item = Result<RecordBatch>> + Send + 'static>> {
    let parquet_error = |e: parquet::errors::ParquetError| {
        Error::new(ErrorKind::Iceberg, format!("reading data file {path}")).with_source(e)
    };
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(parquet_error)?;
    let file_schema = builder.schema().clone();
    let id_of = |f: &Field| {
        f.metadata()
            .get(PARQUET_FIELD_ID_META_KEY)
            .and_then(|id| id.parse::<i32>().ok())
    };
    let mut roots = Vec::with_capacity(field_ids.len());
    for id in field_ids {
        match file_schema
            .fields()
            .iter()
            .position(|f| id_of(f) == Some(*id))
        {
            Some(root) => roots.push(root),
            None => return Ok(None),
        }
    }
    roots.sort_unstable();
    // The columns as read (in file order), named as the table names them now.
    let mut fields = Vec::with_capacity(roots.len());
    for &root in &roots {
        let f = &file_schema.fields()[root];
        let Some(current) = id_of(f).and_then(|id| schema.name_by_field_id(id)) else {
            return Ok(None);
        };
        fields.push(Field::new(current, f.data_type().clone(), true));
    }
    let out = Arc::new(Schema::new(fields));
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    let reader: ParquetRecordBatchReader = builder
        .with_projection(mask)
        .with_batch_size(batch_rows)
        .build()
        .map_err(parquet_error)?;
    let path = path.to_string();
    Ok(Some(reader.map(move |batch| {
        let batch = batch.map_err(|e| {
            Error::new(ErrorKind::Iceberg, format!("reading data file {path}")).with_source(e)
        })?;
        Ok(RecordBatch::try_new(out.clone(), batch.columns().to_vec())?)
    })))
}

/// Read columns `field_ids` of `file` through iceberg's Arrow reader.
pub(super) fn streamed(
    table: &TableHandle,
    file: &LiveFile,
    field_ids: Vec<i32>,
    batch_rows: usize,
) -> Result<BatchStream> {
    let path = file.path.clone();
    Ok(iceberg_stream(table, file, field_ids, batch_rows)?
        .map(move |b| b.map_err(|e| Error::iceberg(format!("reading data file {path}"), e)))
        .boxed())
}

/// Iceberg's Arrow reader over one file.
pub(super) fn iceberg_stream(
    table: &TableHandle,
    file: &LiveFile,
    field_ids: Vec<i32>,
    batch_rows: usize,
) -> Result<ArrowRecordBatchStream> {
    let (path, bytes, records) = (file.path.as_str(), file.bytes, file.records);
    let task = FileScanTask {
        file_size_in_bytes: bytes,
        start: 0,
        length: bytes,
        record_count: Some(records),
        data_file_path: path.to_string(),
        data_file_format: DataFileFormat::Parquet,
        schema: table.metadata.current_schema().clone(),
        project_field_ids: field_ids,
        predicate: None,
        deletes: Vec::new(),
        partition: None,
        partition_spec: None,
        name_mapping: None,
        case_sensitive: true,
    };
    let reader = ArrowReaderBuilder::new(table.file_io.clone(), iceberg::Runtime::current())
        .with_data_file_concurrency_limit(1)
        .with_batch_size(batch_rows)
        .build();
    Ok(reader
        .read(futures::stream::iter([Ok(task)]).boxed())
        .map_err(|e| Error::iceberg(format!("opening data file {path}"), e))?
        .stream())
}
