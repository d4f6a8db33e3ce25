//! Rows to data files: the composed writer stack (Parquet, zstd, statistics
//! → rolling at a target size → data files with partition values), one group
//! of files per partition of the grain's spec. Rows arrive sorted by
//! dimensions then `ts`; each file keeps that order.

use std::sync::Arc;

use arrow_array::builder::{Float64Builder, Int64Builder};
use arrow_array::{
    ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
    new_null_array,
};
use arrow_buffer::{BooleanBufferBuilder, NullBufferBuilder, OffsetBuffer};
use arrow_schema::SchemaRef as ArrowSchemaRef;
use iceberg::spec::{DataFile, DataFileBuilder, DataFileFormat, Literal, PartitionKey, Struct};
use iceberg::writer::base_writer::data_file_writer::{DataFileWriter, DataFileWriterBuilder};
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::file_writer::location_generator::{
    DefaultFileNameGenerator, DefaultLocationGenerator,
};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::{IcebergWriter, IcebergWriterBuilder};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use uuid::Uuid;

use crate::catalog::TableHandle;
use crate::commit::NewFile;
use crate::error::{Error, Result};
use crate::rows::key::KeyDim;
use crate::rows::{MeasureValue, Measures, RowCopies, RowKey, SortedRow, SortedRows};
use crate::schema::decl::TableDecl;
use crate::schema::layout::{self, Grain};

/// Rows per Arrow batch handed to the Parquet writer.
const BATCH_ROWS: usize = 64 * 1024;

/// Rows per Parquet row group: small enough that a merge over many files
/// holds one modest row group per input, large enough for good compression.
const ROW_GROUP_ROWS: usize = 128 * 1024;

/// Default target size of a data file.
pub const DEFAULT_TARGET_FILE_SIZE: usize = 128 * 1024 * 1024;

/// The partition value (an Iceberg literal) of a bucket in `grain`'s spec.
pub fn partition_value(grain: Grain, ts_micros: i64) -> Literal {
    ordinal_literal(grain, grain.partition_ordinal(ts_micros))
}

/// A partition ordinal as the literal its spec's transform produces.
fn ordinal_literal(grain: Grain, ordinal: i32) -> Literal {
    match grain {
        Grain::Hour => Literal::date(ordinal),
        Grain::Minute | Grain::Day => Literal::int(ordinal),
    }
}

/// Parquet writer settings for every file firn writes.
pub fn writer_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .build()
}

/// Build Arrow batches (in the table's current schema) from sorted rows.
pub fn to_batches(
    arrow_schema: &ArrowSchemaRef,
    decl: &TableDecl,
    grain: Grain,
    rows: &[(RowKey, Measures)],
) -> Result<Vec<RecordBatch>> {
    let sorted = SortedRows::from_rows(rows);
    let rows: Vec<SortedRow<'_>> = sorted.iter().collect();
    sorted_batches(arrow_schema, decl, grain, &rows)
}

/// Build Arrow batches (in the table's current schema) from rows in the
/// table's sort order: each key's dimensions are read once, into every
/// dimension's column.
pub fn sorted_batches(
    arrow_schema: &ArrowSchemaRef,
    decl: &TableDecl,
    grain: Grain,
    rows: &[SortedRow<'_>],
) -> Result<Vec<RecordBatch>> {
    rows.chunks(BATCH_ROWS)
        .map(|chunk| to_batch(arrow_schema, decl, grain, chunk))
        .collect()
}

fn to_batch(
    schema: &ArrowSchemaRef,
    decl: &TableDecl,
    grain: Grain,
    rows: &[SortedRow<'_>],
) -> Result<RecordBatch> {
    let n = rows.len();
    let mut dims: Vec<DimColumn> = decl
        .dimensions
        .iter()
        .map(|d| DimColumn::new(schema.field_with_name(&d.name).ok(), n))
        .collect();
    let mut ts = Vec::with_capacity(n);
    // The measures the schema has, each as it types it.
    let mut measures: Vec<Option<MeasureColumn>> = decl
        .measures
        .iter()
        .map(|m| {
            let field = schema.field_with_name(&m.name).ok()?;
            Some(MeasureColumn::new(field.data_type(), n))
        })
        .collect();
    // A few thousand rows at a time, their keys and measures are copied out
    // first, in order: rows in sort order lie here and there in memory, and
    // a plain copy lets those reads overlap, where decoding each row in
    // place would wait on each in turn. Then one pass over the copies.
    let mut copied = RowCopies::default();
    for some in rows.chunks(COPY_ROWS) {
        copied.fill(some);
        for row in copied.rows() {
            let mut key = row.dims();
            for column in &mut dims {
                column.push(key.next_dim());
            }
            ts.push(row.ts_micros());
            for (column, value) in measures.iter_mut().zip(row.measures) {
                if let Some(column) = column {
                    column.push(*value);
                }
            }
        }
    }
    let mut measures: Vec<Option<ArrayRef>> = measures
        .into_iter()
        .map(|c| c.map(MeasureColumn::finish))
        .collect();
    let mut dims: Vec<Option<ArrayRef>> = dims
        .into_iter()
        .map(DimColumn::finish)
        .collect::<Result<_>>()?;
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    let mut ts = Some(ts);
    for field in schema.fields() {
        let name = field.name().as_str();
        let column: Option<ArrayRef> = if name == "ts" {
            let tz = match field.data_type() {
                arrow_schema::DataType::Timestamp(_, tz) => tz.clone(),
                _ => None,
            };
            ts.take().map(|ts| {
                Arc::new(TimestampMicrosecondArray::from(ts).with_timezone_opt(tz)) as ArrayRef
            })
        } else if name == "grain" {
            Some(Arc::new(StringArray::from(vec![grain.as_str(); n])))
        } else if let Some(i) = decl.dimensions.iter().position(|d| d.name == name) {
            dims[i].take()
        } else if let Some(i) = decl.measures.iter().position(|m| m.name == name) {
            measures[i].take()
        } else {
            None
        };
        // A column the table has but the declaration no longer lists.
        columns.push(column.unwrap_or_else(|| new_null_array(field.data_type(), n)));
    }
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// Rows copied out together by [`to_batch`], at most.
const COPY_ROWS: usize = 4096;

/// One dimension's column being built, as the table's schema types it.
enum DimColumn {
    Long(Vec<i64>, NullBufferBuilder),
    Bool(BooleanBufferBuilder, NullBufferBuilder),
    Str(Vec<i32>, Vec<u8>, NullBufferBuilder),
    /// Not a column of the table's schema.
    Absent,
}

impl DimColumn {
    fn new(field: Option<&arrow_schema::Field>, n: usize) -> Self {
        use arrow_schema::DataType;
        let nulls = NullBufferBuilder::new(n);
        match field.map(arrow_schema::Field::data_type) {
            None => DimColumn::Absent,
            Some(DataType::Int64) => DimColumn::Long(Vec::with_capacity(n), nulls),
            Some(DataType::Boolean) => DimColumn::Bool(BooleanBufferBuilder::new(n), nulls),
            Some(_) => {
                let mut offsets = Vec::with_capacity(n + 1);
                offsets.push(0);
                DimColumn::Str(offsets, Vec::with_capacity(n * 8), nulls)
            }
        }
    }

    /// Append a row's value (a null where the key holds none of the
    /// column's type).
    fn push(&mut self, dim: Option<KeyDim<'_>>) {
        match (self, dim) {
            (DimColumn::Long(values, nulls), Some(KeyDim::Long(v))) => {
                values.push(v);
                nulls.append_non_null();
            }
            (DimColumn::Bool(values, nulls), Some(KeyDim::Bool(v))) => {
                values.append(v);
                nulls.append_non_null();
            }
            (DimColumn::Str(offsets, bytes, nulls), Some(KeyDim::Str(v))) => {
                bytes.extend_from_slice(&v);
                // Past 2 GiB of one batch's strings the offsets stop
                // growing, and the array is refused when it is finished.
                offsets.push(i32::try_from(bytes.len()).unwrap_or(i32::MAX));
                nulls.append_non_null();
            }
            (DimColumn::Long(values, nulls), _) => {
                values.push(0);
                nulls.append_null();
            }
            (DimColumn::Bool(values, nulls), _) => {
                values.append(false);
                nulls.append_null();
            }
            (DimColumn::Str(offsets, bytes, nulls), _) => {
                offsets.push(i32::try_from(bytes.len()).unwrap_or(i32::MAX));
                nulls.append_null();
            }
            (DimColumn::Absent, _) => {}
        }
    }

    fn finish(self) -> Result<Option<ArrayRef>> {
        Ok(Some(match self {
            DimColumn::Absent => return Ok(None),
            DimColumn::Long(values, mut nulls) => {
                Arc::new(Int64Array::new(values.into(), nulls.finish()))
            }
            DimColumn::Bool(mut values, mut nulls) => {
                Arc::new(BooleanArray::new(values.finish(), nulls.finish()))
            }
            DimColumn::Str(offsets, bytes, mut nulls) => Arc::new(StringArray::try_new(
                OffsetBuffer::new(offsets.into()),
                bytes.into(),
                nulls.finish(),
            )?),
        }))
    }
}

/// One measure's column being built, as the table's schema types it.
enum MeasureColumn {
    Double(Float64Builder),
    Long(Int64Builder),
}

impl MeasureColumn {
    fn new(ty: &arrow_schema::DataType, n: usize) -> Self {
        if matches!(ty, arrow_schema::DataType::Float64) {
            MeasureColumn::Double(Float64Builder::with_capacity(n))
        } else {
            MeasureColumn::Long(Int64Builder::with_capacity(n))
        }
    }

    fn push(&mut self, value: MeasureValue) {
        match (self, value) {
            (MeasureColumn::Double(b), MeasureValue::Double(v)) => b.append_option(v),
            (MeasureColumn::Double(b), MeasureValue::Long(v)) => {
                b.append_option(v.map(|v| v as f64))
            }
            (MeasureColumn::Long(b), MeasureValue::Long(v)) => b.append_option(v),
            (MeasureColumn::Long(b), MeasureValue::Double(v)) => {
                b.append_option(v.map(|v| v as i64))
            }
        }
    }

    fn finish(self) -> ArrayRef {
        match self {
            MeasureColumn::Double(mut b) => Arc::new(b.finish()),
            MeasureColumn::Long(mut b) => Arc::new(b.finish()),
        }
    }
}

/// Write sorted rows of one grain as data files of `table`, one or more per
/// partition, each at most about `target_file_size` bytes.
pub async fn write_rows(
    table: &TableHandle,
    decl: &TableDecl,
    grain: Grain,
    rows: SortedRows,
    target_file_size: usize,
) -> Result<Vec<NewFile>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let arrow_schema: ArrowSchemaRef = Arc::new(
        iceberg::arrow::schema_to_arrow_schema(table.metadata.current_schema())
            .map_err(|e| Error::iceberg(format!("arrow schema of {}", table.ident), e))?,
    );

    // Split by partition, keeping the sort order within each.
    let partitions = rows.grouped_by(|ts| grain.partition_ordinal(ts));

    let order = layout::key_order_id(&table.metadata, decl);
    let mut files = Vec::new();
    for (ordinal, part_rows) in partitions {
        let key = partition_key(table, grain, ordinal)?;
        let mut writer =
            PartitionWriter::open(table, Some(key), grain.as_str(), target_file_size, order)
                .await?;
        // Each batch is written as soon as it is built: the partition's
        // rows are never held as columns all at once.
        for some in part_rows.chunks(BATCH_ROWS) {
            writer
                .write(to_batch(&arrow_schema, decl, grain, some)?)
                .await?;
        }
        files.extend(writer.close().await?);
    }
    Ok(files)
}

/// Writes Arrow batches (in the table's current schema) as data files of one
/// partition (`None` for an unpartitioned table), rolling at a target size.
/// The writer stack: Parquet → rolling → data files with partition values.
pub struct PartitionWriter {
    inner: DataFileWriter<ParquetWriterBuilder, DefaultLocationGenerator, DefaultFileNameGenerator>,
    spec_id: i32,
    /// The sort order the rows arrive in, recorded on each file.
    sort_order: Option<i32>,
    ident: String,
}

impl std::fmt::Debug for PartitionWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionWriter")
            .field("table", &self.ident)
            .field("spec_id", &self.spec_id)
            .finish_non_exhaustive()
    }
}

impl PartitionWriter {
    /// A writer for one partition of `table`; file names start with
    /// `prefix`. Rows written in one of the table's sort orders,
    /// `sort_order`, are recorded as such (see [`layout::key_order_id`]),
    /// so that a merge need not sort them again.
    pub async fn open(
        table: &TableHandle,
        partition: Option<PartitionKey>,
        prefix: &str,
        target_file_size: usize,
        sort_order: Option<i32>,
    ) -> Result<Self> {
        let meta = table.metadata.as_ref();
        let ident = table.ident.to_string();
        let ice = |what: &str| {
            let what = format!("{what} for {ident}");
            move |e: iceberg::Error| Error::iceberg(what, e)
        };
        let location = DefaultLocationGenerator::new(meta).map_err(ice("data location"))?;
        let names = DefaultFileNameGenerator::new(
            format!("{prefix}-{}", Uuid::now_v7()),
            None,
            DataFileFormat::Parquet,
        );
        let parquet = ParquetWriterBuilder::new(writer_properties(), meta.current_schema().clone());
        let rolling = RollingFileWriterBuilder::new(
            parquet,
            target_file_size,
            table.file_io.clone(),
            location,
            names,
        );
        let spec_id = partition
            .as_ref()
            .map_or(meta.default_partition_spec_id(), |k| k.spec().spec_id());
        let inner = DataFileWriterBuilder::new(rolling)
            .build(partition)
            .await
            .map_err(ice("opening data file writer"))?;
        Ok(Self {
            inner,
            spec_id,
            sort_order,
            ident,
        })
    }

    /// Write one batch.
    pub async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        let ident = &self.ident;
        self.inner
            .write(batch)
            .await
            .map_err(|e| Error::iceberg(format!("writing data file for {ident}"), e))
    }

    /// Finish the files and return them.
    pub async fn close(mut self) -> Result<Vec<NewFile>> {
        let ident = &self.ident;
        let files = self
            .inner
            .close()
            .await
            .map_err(|e| Error::iceberg(format!("closing data file for {ident}"), e))?;
        let spec_id = self.spec_id;
        files
            .into_iter()
            .map(|file| {
                let file = match self.sort_order {
                    Some(order) => in_order(&file, spec_id, order)
                        .map_err(|e| Error::iceberg(format!("data file for {ident}"), e))?,
                    None => file,
                };
                Ok(NewFile { spec_id, file })
            })
            .collect()
    }
}

/// `file` (of partition spec `spec_id`) recorded as sorted in `order`.
fn in_order(file: &DataFile, spec_id: i32, order: i32) -> iceberg::Result<DataFile> {
    let mut b = DataFileBuilder::default();
    b.content(file.content_type())
        .file_path(file.file_path().to_string())
        .file_format(file.file_format())
        .partition(file.partition().clone())
        .record_count(file.record_count())
        .file_size_in_bytes(file.file_size_in_bytes())
        .column_sizes(file.column_sizes().clone())
        .value_counts(file.value_counts().clone())
        .null_value_counts(file.null_value_counts().clone())
        .nan_value_counts(file.nan_value_counts().clone())
        .lower_bounds(file.lower_bounds().clone())
        .upper_bounds(file.upper_bounds().clone())
        .key_metadata(file.key_metadata().map(<[u8]>::to_vec))
        .split_offsets(file.split_offsets().map(<[i64]>::to_vec))
        .equality_ids(file.equality_ids())
        .sort_order_id(order)
        .first_row_id(file.first_row_id())
        .partition_spec_id(spec_id)
        .referenced_data_file(file.referenced_data_file())
        .content_offset(file.content_offset())
        .content_size_in_bytes(file.content_size_in_bytes());
    b.build().map_err(|e| {
        iceberg::Error::new(
            iceberg::ErrorKind::Unexpected,
            format!("recording the sort order: {e}"),
        )
    })
}

/// The partition key of `grain`'s partition `ordinal` in `table`.
pub fn partition_key(table: &TableHandle, grain: Grain, ordinal: i32) -> Result<PartitionKey> {
    let meta = table.metadata.as_ref();
    let spec = meta.partition_spec_by_id(grain.spec_id()).ok_or_else(|| {
        Error::new(
            crate::error::ErrorKind::Iceberg,
            format!(
                "table {} has no partition spec for {} rows; run `firn tables sync`",
                table.ident,
                grain.as_str()
            ),
        )
    })?;
    Ok(PartitionKey::new(
        spec.as_ref().clone(),
        meta.current_schema().clone(),
        Struct::from_iter([Some(ordinal_literal(grain, ordinal))]),
    ))
}

/// Write batches as data files of one partition (rows in `sort_order`,
/// when they are in one; see [`PartitionWriter::open`]).
pub async fn write_batches(
    table: &TableHandle,
    partition: Option<PartitionKey>,
    prefix: &str,
    batches: Vec<RecordBatch>,
    target_file_size: usize,
    sort_order: Option<i32>,
) -> Result<Vec<NewFile>> {
    let mut writer =
        PartitionWriter::open(table, partition, prefix, target_file_size, sort_order).await?;
    for batch in batches {
        writer.write(batch).await?;
    }
    writer.close().await
}

#[cfg(test)]
mod tests {
    use iceberg::spec::{Datum, Transform};
    use iceberg::transform::create_transform_function;

    use super::*;

    /// Recording a sort order changes that and nothing else of a file.
    #[test]
    fn a_file_recorded_in_order_keeps_every_other_field() {
        use std::collections::HashMap;
        let file = |order: Option<i32>| {
            let mut b = DataFileBuilder::default();
            b.content(iceberg::spec::DataContentType::Data)
                .file_path("s3://b/t/data/f.parquet".to_string())
                .file_format(DataFileFormat::Parquet)
                .partition(Struct::from_iter([Some(Literal::int(7))]))
                .record_count(12)
                .file_size_in_bytes(3456)
                .column_sizes(HashMap::from([(1, 10)]))
                .value_counts(HashMap::from([(1, 12)]))
                .null_value_counts(HashMap::from([(2, 1)]))
                .nan_value_counts(HashMap::from([(3, 0)]))
                .lower_bounds(HashMap::from([(1, Datum::long(1))]))
                .upper_bounds(HashMap::from([(1, Datum::long(9))]))
                .key_metadata(Some(vec![1, 2]))
                .split_offsets(Some(vec![4]))
                .first_row_id(Some(100))
                .partition_spec_id(2);
            if let Some(order) = order {
                b.sort_order_id(order);
            }
            b.build().unwrap()
        };
        let recorded = in_order(&file(None), 2, 3).unwrap();
        assert_eq!(recorded.sort_order_id(), Some(3));
        assert_eq!(recorded, file(Some(3)));
    }

    #[test]
    fn partition_values_match_icebergs_transforms() {
        for ts in [
            0i64,
            1_795_771_230_123_000,
            -1,
            951_782_400_000_000, // 2000-02-29
            4_102_444_799_000_000,
        ] {
            for grain in Grain::ALL {
                let f = create_transform_function(&match grain {
                    Grain::Minute => Transform::Hour,
                    Grain::Hour => Transform::Day,
                    Grain::Day => Transform::Month,
                })
                .unwrap();
                let want = f
                    .transform_literal(&Datum::timestamptz_micros(ts))
                    .unwrap()
                    .unwrap();
                let got = partition_value(grain, ts);
                assert_eq!(
                    got,
                    Literal::Primitive(want.literal().clone()),
                    "{grain:?} {ts}"
                );
            }
        }
    }
}
