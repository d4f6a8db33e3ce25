//! Reading the data files a merge folds, columns found by Iceberg field
//! id and string columns read as dictionaries. A small file — most of what
//! a compaction reads: minute files — is fetched whole in one request and
//! decoded in memory (one GET per file instead of a footer, a metadata and
//! a column-chunk read) and decoded with one zstd context per thread (see
//! [`super::pages`]); a large one is streamed by row group. A file this
//! path cannot read as it stands (no field ids, a column the file lacks) is
//! read through iceberg's Arrow reader, which fills missing columns.

use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::{DataType, Field, Schema};
use futures::{StreamExt, TryStreamExt};
use iceberg::arrow::{ArrowFileReader, ArrowReaderBuilder};
use iceberg::io::FileMetadata;
use iceberg::scan::{ArrowRecordBatchStream, FileScanTask};
use iceberg::spec::{DataFileFormat, SchemaRef as IcebergSchemaRef};
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReader,
};
use parquet::arrow::{PARQUET_FIELD_ID_META_KEY, ParquetRecordBatchStreamBuilder, ProjectionMask};
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};

use super::super::state::LiveFile;
use super::BatchStream;
use super::pages;
use crate::catalog::TableHandle;
use crate::error::{Error, ErrorKind, Result};
use crate::schema::layout::Grain;

/// Files up to this size are fetched whole (a merge holds at most
/// [`super::spill::FAN_IN`] of them at once).
pub(super) const WHOLE_FILE_BYTES: u64 = 1 << 20;

/// Columns `field_ids` of `file` (named as the table's current schema names
/// them, string columns as dictionaries when the file holds them so), in
/// batches of `batch_rows`.
pub fn read(
    table: &TableHandle,
    file: &LiveFile,
    field_ids: Vec<i32>,
    batch_rows: usize,
) -> Result<BatchStream> {
    let table = table.clone();
    let file = file.clone();
    let opened = async move {
        let path = file.path.as_str();
        let input = table
            .file_io
            .new_input(path)
            .map_err(|e| Error::iceberg(format!("opening data file {path}"), e))?;
        let schema = table.metadata.current_schema();
        let parquet_error = |e: parquet::errors::ParquetError| {
            Error::new(ErrorKind::Iceberg, format!("reading data file {path}")).with_source(e)
        };
        if file.bytes <= WHOLE_FILE_BYTES {
            // Its size is the manifest's: one ranged read, no stat.
            let bytes = input
                .reader()
                .await
                .map_err(|e| Error::iceberg(format!("opening data file {path}"), e))?
                .read(0..file.bytes)
                .await
                .map_err(|e| Error::iceberg(format!("reading data file {path}"), e))?;
            let found = ParquetMetaDataReader::new()
                .parse_and_finish(&bytes)
                .map_err(parquet_error)?;
            let hinted = hinted(Arc::new(found)).map_err(parquet_error)?;
            if let Some(plan) = Plan::new(hinted, schema, &field_ids).map_err(parquet_error)? {
                let reader: ParquetRecordBatchReader =
                    pages::reader(bytes, &plan.metadata, plan.mask, batch_rows)
                        .map_err(parquet_error)?;
                let (out, path) = (plan.out, path.to_string());
                return Ok(
                    futures::stream::iter(reader.map(move |b| renamed(&out, b, &path))).boxed(),
                );
            }
        } else {
            let reader = input
                .reader()
                .await
                .map_err(|e| Error::iceberg(format!("opening data file {path}"), e))?;
            let mut reader = ArrowFileReader::new(FileMetadata { size: file.bytes }, reader);
            let found = ArrowReaderMetadata::load_async(&mut reader, ArrowReaderOptions::new())
                .await
                .map_err(parquet_error)?;
            let hinted = hinted(found.metadata().clone()).map_err(parquet_error)?;
            if let Some(plan) = Plan::new(hinted, schema, &field_ids).map_err(parquet_error)? {
                let stream =
                    ParquetRecordBatchStreamBuilder::new_with_metadata(reader, plan.metadata)
                        .with_projection(plan.mask)
                        .with_batch_size(batch_rows)
                        .build()
                        .map_err(parquet_error)?;
                let (out, path) = (plan.out, path.to_string());
                return Ok(stream.map(move |b| renamed(&out, b, &path)).boxed());
            }
        }
        streamed(&table, &file, field_ids, batch_rows)
    };
    Ok(futures::stream::once(opened).try_flatten().boxed())
}

/// How a file whose columns are all found by field id is read.
struct Plan {
    /// Its metadata, string columns read as dictionaries (see [`hinted`]).
    metadata: ArrowReaderMetadata,
    /// The columns read.
    mask: ProjectionMask,
    /// The batches' schema: the columns as read (in file order), named as
    /// the table names them now.
    out: Arc<Schema>,
}

impl Plan {
    /// `None` when a column is not found by field id (iceberg's reader
    /// handles that).
    fn new(
        metadata: ArrowReaderMetadata,
        schema: &IcebergSchemaRef,
        field_ids: &[i32],
    ) -> parquet::errors::Result<Option<Self>> {
        let file_schema = metadata.schema().clone();
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
        let mut fields = Vec::with_capacity(roots.len());
        for &root in &roots {
            let f = &file_schema.fields()[root];
            let Some(current) = id_of(f).and_then(|id| schema.name_by_field_id(id)) else {
                return Ok(None);
            };
            fields.push(Field::new(current, f.data_type().clone(), true));
        }
        let mask = ProjectionMask::roots(metadata.parquet_schema(), roots);
        Ok(Some(Self {
            metadata,
            mask,
            out: Arc::new(Schema::new(fields)),
        }))
    }
}

/// A column's Iceberg field id, as its Parquet schema records it.
fn id_of(f: &Field) -> Option<i32> {
    f.metadata()
        .get(PARQUET_FIELD_ID_META_KEY)
        .and_then(|id| id.parse::<i32>().ok())
}

/// Arrow schemas of the Parquet schemas read lately (with the Arrow schema a
/// file embeds, if any), string columns as dictionaries: the files of a
/// table share a few schemas, and deriving one is a good part of opening a
/// small file.
static HINTS: std::sync::LazyLock<std::sync::Mutex<Vec<Hint>>> =
    std::sync::LazyLock::new(Default::default);

/// Schemas kept in [`HINTS`], at most.
const HINTS_KEPT: usize = 16;

/// A Parquet schema, the Arrow schema its file embeds, and the Arrow schema
/// it is read with.
type Hint = (parquet::schema::types::TypePtr, Option<String>, Arc<Schema>);

/// `metadata` ready for reading, string columns as dictionaries (no string
/// is copied out of a dictionary-encoded column chunk: a merge compares and
/// folds the keys, and copies strings only for the rows it keeps).
fn hinted(metadata: Arc<ParquetMetaData>) -> parquet::errors::Result<ArrowReaderMetadata> {
    let root = metadata.file_metadata().schema_descr().root_schema_ptr();
    let embedded = metadata
        .file_metadata()
        .key_value_metadata()
        .and_then(|kv| {
            kv.iter()
                .find(|e| e.key == parquet::arrow::ARROW_SCHEMA_META_KEY)
        })
        .and_then(|e| e.value.clone());
    let known = HINTS
        .lock()
        .expect("hints")
        .iter()
        .find(|(r, e, _)| *r == root && *e == embedded)
        .map(|(_, _, hint)| hint.clone());
    let hint = match known {
        Some(hint) => hint,
        None => {
            let found = ArrowReaderMetadata::try_new(metadata.clone(), ArrowReaderOptions::new())?;
            let file_schema = found.schema();
            let hinted: Vec<Field> = file_schema
                .fields()
                .iter()
                .map(|f| match f.data_type() {
                    DataType::Utf8 => Field::new(
                        f.name(),
                        DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
                        f.is_nullable(),
                    )
                    .with_metadata(f.metadata().clone()),
                    _ => f.as_ref().clone(),
                })
                .collect();
            let hint = Arc::new(Schema::new_with_metadata(
                hinted,
                file_schema.metadata().clone(),
            ));
            let mut hints = HINTS.lock().expect("hints");
            if hints.len() >= HINTS_KEPT {
                hints.remove(0);
            }
            hints.push((root, embedded, hint.clone()));
            hint
        }
    };
    ArrowReaderMetadata::try_new(metadata, ArrowReaderOptions::new().with_schema(hint))
}

/// `batch` under the table's current names.
fn renamed<E: std::error::Error + Send + Sync + 'static>(
    out: &Arc<Schema>,
    batch: std::result::Result<RecordBatch, E>,
    path: &str,
) -> Result<RecordBatch> {
    let batch = batch.map_err(|e| {
        Error::new(ErrorKind::Iceberg, format!("reading data file {path}")).with_source(e)
    })?;
    Ok(RecordBatch::try_new(out.clone(), batch.columns().to_vec())?)
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

/// The field ids of `table`'s columns `names`, in order.
pub fn field_ids<'a>(
    table: &TableHandle,
    names: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<i32>> {
    let schema = table.metadata.current_schema();
    names
        .into_iter()
        .map(|c| {
            schema.field_by_name(c).map(|f| f.id).ok_or_else(|| {
                Error::new(
                    ErrorKind::Iceberg,
                    format!(
                        "table {} has no column `{c}`; run `firn tables sync`",
                        table.ident
                    ),
                )
            })
        })
        .collect()
}

/// Read one data file of `table` (every column of the current schema), in
/// batches.
pub fn read_file(
    table: &TableHandle,
    path: &str,
    bytes: u64,
    records: u64,
) -> Result<ArrowRecordBatchStream> {
    let schema = table.metadata.current_schema();
    let field_ids = schema.as_struct().fields().iter().map(|f| f.id).collect();
    let file = LiveFile {
        path: path.to_string(),
        grain: Grain::Minute,
        spec_id: 0,
        partition: 0,
        records,
        bytes,
        sort_order: None,
        ts_bounds: None,
    };
    iceberg_stream(table, &file, field_ids, super::READ_BATCH)
}
