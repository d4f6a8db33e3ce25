//! The streaming k-way merge behind compaction and rollup. Every input file
//! is sorted by dimensions then `ts`; truncating `ts` to a coarser grain keeps
//! that order, so merging the inputs and collapsing equal keys yields the
//! output already sorted, holding one batch per input in memory, not a hash
//! table of all rows.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type, TimestampMicrosecondType};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::DataType;
use futures::StreamExt;
use iceberg::arrow::ArrowReaderBuilder;
use iceberg::scan::{ArrowRecordBatchStream, FileScanTask};
use iceberg::spec::DataFileFormat;

use super::state::LiveFile;
use crate::catalog::TableHandle;
use crate::error::{Error, Result};
use crate::rows::{DimValue, MeasureSpec, MeasureValue, Measures, RowKey};
use crate::schema::decl::{DimType, MeasureType, TableDecl};
use crate::schema::layout::Grain;

/// Rows read per batch from each input.
const READ_BATCH: usize = 8192;

/// One input file as a stream of rows in key order.
struct Input {
    stream: ArrowRecordBatchStream,
    batch: Option<Decoded>,
    row: usize,
    path: String,
}

/// A batch's columns, located once.
struct Decoded {
    ts: arrow_array::PrimitiveArray<TimestampMicrosecondType>,
    dims: Vec<ArrayRef>,
    measures: Vec<ArrayRef>,
    len: usize,
}

fn decode(batch: &RecordBatch, decl: &TableDecl, path: &str) -> Result<Decoded> {
    let col = |name: &str| {
        batch.column_by_name(name).cloned().ok_or_else(|| {
            Error::new(
                crate::ErrorKind::Iceberg,
                format!("data file {path} has no column `{name}`"),
            )
        })
    };
    Ok(Decoded {
        ts: col("ts")?
            .as_primitive::<TimestampMicrosecondType>()
            .clone(),
        dims: decl
            .dimensions
            .iter()
            .map(|d| col(&d.name))
            .collect::<Result<_>>()?,
        measures: decl
            .measures
            .iter()
            .map(|m| col(&m.name))
            .collect::<Result<_>>()?,
        len: batch.num_rows(),
    })
}

fn dim_at(array: &ArrayRef, ty: DimType, row: usize) -> DimValue {
    if array.is_null(row) {
        return DimValue::Null;
    }
    match (ty, array.data_type()) {
        (DimType::Long, DataType::Int64) => {
            DimValue::Long(array.as_primitive::<Int64Type>().value(row))
        }
        (DimType::Boolean, DataType::Boolean) => DimValue::Bool(array.as_boolean().value(row)),
        (DimType::String, DataType::Utf8) => {
            DimValue::Str(array.as_string::<i32>().value(row).into())
        }
        (DimType::String, DataType::LargeUtf8) => {
            DimValue::Str(array.as_string::<i64>().value(row).into())
        }
        (DimType::String, DataType::Utf8View) => {
            DimValue::Str(array.as_string_view().value(row).into())
        }
        _ => DimValue::Null,
    }
}

fn measure_at(array: &ArrayRef, ty: MeasureType, row: usize) -> MeasureValue {
    let null = array.is_null(row);
    match ty {
        MeasureType::Long => {
            MeasureValue::Long((!null).then(|| array.as_primitive::<Int64Type>().value(row)))
        }
        MeasureType::Double => {
            MeasureValue::Double((!null).then(|| array.as_primitive::<Float64Type>().value(row)))
        }
    }
}

/// Merges sorted input files into rows of `grain`.
pub struct MergeReader {
    inputs: Vec<Input>,
    heap: BinaryHeap<Reverse<(RowKey, usize)>>,
    /// A row kept apart from the last one returned (their sum would
    /// overflow), to continue the same key from.
    pending: Option<(RowKey, Measures)>,
    decl: TableDecl,
    spec: MeasureSpec,
    grain: Grain,
    /// Rows read from the inputs so far.
    pub rows_read: u64,
}

impl std::fmt::Debug for MergeReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MergeReader")
            .field(
                "inputs",
                &self.inputs.iter().map(|i| &i.path).collect::<Vec<_>>(),
            )
            .field("grain", &self.grain)
            .finish_non_exhaustive()
    }
}

/// Read one data file of `table` (every column of the current schema), in
/// batches.
pub fn read_file(
    table: &TableHandle,
    path: &str,
    bytes: u64,
    records: u64,
) -> Result<ArrowRecordBatchStream> {
    let schema = table.metadata.current_schema().clone();
    let field_ids: Vec<i32> = schema.as_struct().fields().iter().map(|f| f.id).collect();
    let task = FileScanTask {
        file_size_in_bytes: bytes,
        start: 0,
        length: bytes,
        record_count: Some(records),
        data_file_path: path.to_string(),
        data_file_format: DataFileFormat::Parquet,
        schema,
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
        .with_batch_size(READ_BATCH)
        .build();
    Ok(reader
        .read(futures::stream::iter([Ok(task)]).boxed())
        .map_err(|e| Error::iceberg(format!("opening data file {path}"), e))?
        .stream())
}

impl MergeReader {
    /// Open `files` of `table` for a merge into rows of `grain`.
    pub async fn open(
        table: &TableHandle,
        decl: &TableDecl,
        files: &[LiveFile],
        grain: Grain,
    ) -> Result<Self> {
        let mut inputs = Vec::with_capacity(files.len());
        for f in files {
            let stream = read_file(table, &f.path, f.bytes, f.records)?;
            inputs.push(Input {
                stream,
                batch: None,
                row: 0,
                path: f.path.clone(),
            });
        }
        let mut merge = Self {
            inputs,
            heap: BinaryHeap::new(),
            pending: None,
            spec: MeasureSpec::new(decl),
            decl: decl.clone(),
            grain,
            rows_read: 0,
        };
        for i in 0..merge.inputs.len() {
            if let Some(key) = merge.advance(i, false).await? {
                merge.heap.push(Reverse((key, i)));
            }
        }
        Ok(merge)
    }

    /// Move input `i` to its next row (or the first, with `step` false) and
    /// return that row's key.
    async fn advance(&mut self, i: usize, step: bool) -> Result<Option<RowKey>> {
        let input = &mut self.inputs[i];
        if step {
            input.row += 1;
        }
        loop {
            if let Some(b) = &input.batch
                && input.row < b.len
            {
                break;
            }
            match input.stream.next().await {
                None => {
                    input.batch = None;
                    return Ok(None);
                }
                Some(batch) => {
                    let batch = batch.map_err(|e| {
                        Error::iceberg(format!("reading data file {}", input.path), e)
                    })?;
                    input.batch = Some(decode(&batch, &self.decl, &input.path)?);
                    input.row = 0;
                }
            }
        }
        let b = input.batch.as_ref().expect("checked above");
        let row = input.row;
        self.rows_read += 1;
        Ok(Some(RowKey {
            dims: self
                .decl
                .dimensions
                .iter()
                .zip(&b.dims)
                .map(|(d, a)| dim_at(a, d.ty, row))
                .collect(),
            ts_micros: self.grain.truncate(b.ts.value(row)),
        }))
    }

    fn measures_of(&self, i: usize) -> Measures {
        let input = &self.inputs[i];
        let b = input.batch.as_ref().expect("a row is current");
        Measures(
            self.decl
                .measures
                .iter()
                .zip(&b.measures)
                .map(|(m, a)| measure_at(a, m.ty, input.row))
                .collect(),
        )
    }

    /// The next merged row: every input row with the same key (after
    /// truncation to the grain) collapsed into one — or, when a sum would
    /// overflow, into as few rows as keep every value exact.
    pub async fn next_row(&mut self) -> Result<Option<(RowKey, Measures)>> {
        let (key, mut acc) = match self.pending.take() {
            Some(row) => row,
            None => {
                let Some(Reverse((key, i))) = self.heap.pop() else {
                    return Ok(None);
                };
                let acc = self.measures_of(i);
                if let Some(next) = self.advance(i, true).await? {
                    self.heap.push(Reverse((next, i)));
                }
                (key, acc)
            }
        };
        while let Some(Reverse((k, _))) = self.heap.peek() {
            if *k != key {
                break;
            }
            let Some(Reverse((_, j))) = self.heap.pop() else {
                break;
            };
            let m = self.measures_of(j);
            let kept_apart = !self.spec.merge(&mut acc, &m);
            if let Some(next) = self.advance(j, true).await? {
                self.heap.push(Reverse((next, j)));
            }
            if kept_apart {
                self.pending = Some((key.clone(), m));
                break;
            }
        }
        Ok(Some((key, acc)))
    }
}

/// An arrow schema handle for writers of merged rows.
pub fn arrow_schema(table: &TableHandle) -> Result<arrow_schema::SchemaRef> {
    Ok(Arc::new(
        iceberg::arrow::schema_to_arrow_schema(table.metadata.current_schema())
            .map_err(|e| Error::iceberg(format!("arrow schema of {}", table.ident), e))?,
    ))
}
