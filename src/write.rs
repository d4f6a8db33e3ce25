//! Rows to data files: the composed writer stack (Parquet, zstd, statistics
//! → rolling at a target size → data files with partition values), one group
//! of files per partition of the grain's spec. Rows arrive sorted by
//! dimensions then `ts`; each file keeps that order.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_array::builder::{BooleanBuilder, Float64Builder, Int64Builder, StringBuilder};
use arrow_array::{ArrayRef, RecordBatch, StringArray, TimestampMicrosecondArray, new_null_array};
use arrow_schema::SchemaRef as ArrowSchemaRef;
use iceberg::spec::{DataFileFormat, Literal, PartitionKey, Struct};
use iceberg::writer::base_writer::data_file_writer::DataFileWriterBuilder;
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
use crate::rows::{DimValue, MeasureValue, Measures, RowKey};
use crate::schema::decl::TableDecl;
use crate::schema::layout::Grain;

/// Rows per Arrow batch handed to the Parquet writer.
const BATCH_ROWS: usize = 64 * 1024;

/// Default target size of a data file.
pub const DEFAULT_TARGET_FILE_SIZE: usize = 128 * 1024 * 1024;

/// The partition ordinal of a bucket starting at `ts_micros` in `grain`'s
/// spec: hours, days or months since the epoch, as Iceberg's transforms say.
pub fn partition_ordinal(grain: Grain, ts_micros: i64) -> i32 {
    use chrono::Datelike;
    const HOUR: i64 = 3_600_000_000;
    const DAY: i64 = 24 * HOUR;
    match grain {
        Grain::Minute => ts_micros.div_euclid(HOUR) as i32,
        Grain::Hour => ts_micros.div_euclid(DAY) as i32,
        Grain::Day => {
            let date = chrono::DateTime::from_timestamp_micros(ts_micros)
                .unwrap_or_default()
                .date_naive();
            (date.year() - 1970) * 12 + date.month0() as i32
        }
    }
}

/// The partition value (an Iceberg literal) of a bucket in `grain`'s spec.
pub fn partition_value(grain: Grain, ts_micros: i64) -> Literal {
    let ordinal = partition_ordinal(grain, ts_micros);
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
        .build()
}

/// Build Arrow batches (in the table's current schema) from sorted rows.
pub fn to_batches(
    arrow_schema: &ArrowSchemaRef,
    decl: &TableDecl,
    grain: Grain,
    rows: &[(RowKey, Measures)],
) -> Result<Vec<RecordBatch>> {
    rows.chunks(BATCH_ROWS)
        .map(|chunk| to_batch(arrow_schema, decl, grain, chunk))
        .collect()
}

fn to_batch(
    schema: &ArrowSchemaRef,
    decl: &TableDecl,
    grain: Grain,
    rows: &[(RowKey, Measures)],
) -> Result<RecordBatch> {
    let n = rows.len();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        let name = field.name().as_str();
        let column: ArrayRef = if name == "ts" {
            let ts: TimestampMicrosecondArray =
                rows.iter().map(|(k, _)| Some(k.ts_micros)).collect();
            let tz = match field.data_type() {
                arrow_schema::DataType::Timestamp(_, tz) => tz.clone(),
                _ => None,
            };
            Arc::new(ts.with_timezone_opt(tz))
        } else if name == "grain" {
            Arc::new(StringArray::from(vec![grain.as_str(); n]))
        } else if let Some(i) = decl.dimensions.iter().position(|d| d.name == name) {
            dim_column(rows, i, field.data_type())
        } else if let Some(i) = decl.measures.iter().position(|m| m.name == name) {
            measure_column(rows, i, field.data_type())
        } else {
            // A column the table has but the declaration no longer lists.
            new_null_array(field.data_type(), n)
        };
        columns.push(column);
    }
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

fn dim_column(rows: &[(RowKey, Measures)], i: usize, ty: &arrow_schema::DataType) -> ArrayRef {
    use arrow_schema::DataType;
    match ty {
        DataType::Int64 => {
            let mut b = Int64Builder::with_capacity(rows.len());
            for (k, _) in rows {
                match &k.dims[i] {
                    DimValue::Long(v) => b.append_value(*v),
                    _ => b.append_null(),
                }
            }
            Arc::new(b.finish())
        }
        DataType::Boolean => {
            let mut b = BooleanBuilder::with_capacity(rows.len());
            for (k, _) in rows {
                match &k.dims[i] {
                    DimValue::Bool(v) => b.append_value(*v),
                    _ => b.append_null(),
                }
            }
            Arc::new(b.finish())
        }
        _ => {
            let mut b = StringBuilder::with_capacity(rows.len(), rows.len() * 8);
            for (k, _) in rows {
                match &k.dims[i] {
                    DimValue::Str(v) => b.append_value(v),
                    _ => b.append_null(),
                }
            }
            Arc::new(b.finish())
        }
    }
}

fn measure_column(rows: &[(RowKey, Measures)], i: usize, ty: &arrow_schema::DataType) -> ArrayRef {
    if matches!(ty, arrow_schema::DataType::Float64) {
        let mut b = Float64Builder::with_capacity(rows.len());
        for (_, m) in rows {
            match m.0[i] {
                MeasureValue::Double(v) => b.append_option(v),
                MeasureValue::Long(v) => b.append_option(v.map(|v| v as f64)),
            }
        }
        Arc::new(b.finish())
    } else {
        let mut b = Int64Builder::with_capacity(rows.len());
        for (_, m) in rows {
            match m.0[i] {
                MeasureValue::Long(v) => b.append_option(v),
                MeasureValue::Double(v) => b.append_option(v.map(|v| v as i64)),
            }
        }
        Arc::new(b.finish())
    }
}

/// Write sorted rows of one grain as data files of `table`, one or more per
/// partition, each at most about `target_file_size` bytes.
pub async fn write_rows(
    table: &TableHandle,
    decl: &TableDecl,
    grain: Grain,
    rows: Vec<(RowKey, Measures)>,
    target_file_size: usize,
) -> Result<Vec<NewFile>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let meta = table.metadata.as_ref();
    let ice = |what: String| move |e: iceberg::Error| Error::iceberg(what, e);
    let schema = meta.current_schema().clone();
    let spec = meta
        .partition_spec_by_id(grain.spec_id())
        .ok_or_else(|| {
            Error::new(
                crate::error::ErrorKind::Iceberg,
                format!(
                    "table {} has no partition spec for {} rows; run `firn tables sync`",
                    table.ident,
                    grain.as_str()
                ),
            )
        })?
        .as_ref()
        .clone();
    let arrow_schema: ArrowSchemaRef = Arc::new(
        iceberg::arrow::schema_to_arrow_schema(&schema)
            .map_err(ice(format!("arrow schema of {}", table.ident)))?,
    );

    // Split by partition, keeping the sort order within each.
    let mut partitions: BTreeMap<i32, Vec<(RowKey, Measures)>> = BTreeMap::new();
    for row in rows {
        partitions
            .entry(partition_ordinal(grain, row.0.ts_micros))
            .or_default()
            .push(row);
    }

    let mut files = Vec::new();
    for (_, part_rows) in partitions {
        let value = partition_value(grain, part_rows[0].0.ts_micros);
        let key = PartitionKey::new(
            spec.clone(),
            schema.clone(),
            Struct::from_iter([Some(value)]),
        );
        let batches = to_batches(&arrow_schema, decl, grain, &part_rows)?;
        let prefix = grain.as_str();
        files.extend(write_batches(table, Some(key), prefix, batches, target_file_size).await?);
    }
    Ok(files)
}

/// Write Arrow batches (already in the table's current schema) as data files
/// of one partition (`None` for an unpartitioned table), rolling at
/// `target_file_size`. File names start with `prefix`.
pub async fn write_batches(
    table: &TableHandle,
    partition: Option<PartitionKey>,
    prefix: &str,
    batches: Vec<RecordBatch>,
    target_file_size: usize,
) -> Result<Vec<NewFile>> {
    let meta = table.metadata.as_ref();
    let ice = |what: &str| {
        let what = format!("{what} for {}", table.ident);
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
    let mut writer = DataFileWriterBuilder::new(rolling)
        .build(partition)
        .await
        .map_err(ice("opening data file writer"))?;
    for batch in batches {
        writer
            .write(batch)
            .await
            .map_err(ice("writing data file"))?;
    }
    let files = writer.close().await.map_err(ice("closing data file"))?;
    Ok(files
        .into_iter()
        .map(|file| NewFile { spec_id, file })
        .collect())
}

#[cfg(test)]
mod tests {
    use iceberg::spec::{Datum, Transform};
    use iceberg::transform::create_transform_function;

    use super::*;

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
