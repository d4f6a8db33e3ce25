//! Inputs not known to be in key order, sorted before they are merged. A
//! data file's manifest entry records the sort order its rows are in;
//! firn writes its files in the table's key order and says so. A file
//! another engine wrote (unsorted, as a PyIceberg append or overwrite
//! writes, or in an order of its own), or one written in an older key
//! order (before a dimension was added), is sorted here first: read
//! [`SORT_ROWS`] rows at a time, each chunk sorted by key in arrow's row
//! format (the merge's own order). A file of one small chunk stays in
//! memory; a larger one's chunks are written to temporary files as sorted
//! runs, and a file of several runs is merged from them into one, so it
//! is still one input of the merge. Memory is bounded by the chunk, not
//! by the file.

use std::sync::Arc;

use arrow_array::{RecordBatch, UInt32Array};
use arrow_row::{RowConverter, SortField};
use arrow_schema::{Field, Schema};
use futures::StreamExt;

use super::{BatchStream, Layout, MergeReader, next_batch, runs, spill};
use crate::error::{Error, ErrorKind, Result};

/// Rows sorted in memory at once, at most.
pub(super) const SORT_ROWS: usize = 1 << 17;

/// The rows of `stream` (input `name`, as read) in key order, in batches
/// of `batch_rows`, sorted `chunk_rows` (see [`SORT_ROWS`]) at a time.
pub(super) async fn sorted(
    layout: &Layout,
    name: &str,
    mut stream: BatchStream,
    batch_rows: usize,
    chunk_rows: usize,
) -> Result<BatchStream> {
    let mut runs: Vec<(String, BatchStream)> = Vec::new();
    let mut pending: Vec<RecordBatch> = Vec::new();
    let mut rows = 0;
    loop {
        let next = next_batch(&mut stream).await?;
        let done = next.is_none();
        if let Some(batch) = next {
            rows += batch.num_rows();
            pending.push(plain(layout, name, &batch)?);
        }
        if rows >= chunk_rows || (done && rows > 0) {
            let schema = pending[0].schema();
            let chunk = arrow_select::concat::concat_batches(&schema, &pending)?;
            pending.clear();
            rows = 0;
            let chunk = sort_batch(layout, &chunk)?;
            if done && runs.is_empty() && chunk.num_rows() <= batch_rows {
                return Ok(futures::stream::iter([Ok(chunk)]).boxed());
            }
            let mut run = spill::RunWriter::new(&chunk.schema(), batch_rows, None);
            run.write(&chunk)?;
            runs.push((
                format!("{name} (sorted run {})", runs.len() + 1),
                run.finish()?,
            ));
        }
        if done {
            break;
        }
    }
    match runs.len() {
        0 => Ok(futures::stream::empty().boxed()),
        1 => Ok(runs.pop().expect("one run").1),
        _ => {
            // The runs merged into one, so that the file stays one input
            // (its rows' totals are read from it as one file's).
            let mut merge =
                MergeReader::merge_with_fan_in(layout.clone(), runs, spill::FAN_IN, 1).await?;
            let mut run = spill::RunWriter::new(&layout.schema, batch_rows, None);
            while let Some(batch) = merge.next_batch().await? {
                run.write(&batch)?;
            }
            if let Some((day, measure, read, merged)) = merge.unconserved() {
                return Err(Error::new(
                    ErrorKind::Internal,
                    format!(
                        "sorting {name}: on day {day}, measure `{measure}` totals {read} in \
                         the rows read but {merged} in the rows sorted"
                    ),
                ));
            }
            run.finish()
        }
    }
}

/// The columns a merge reads of `batch` (rows of input `name`), each as the
/// table types it (a dictionary read as its values): dimensions, `ts`,
/// measures. Batches of one file may differ in how they were read; these
/// do not.
fn plain(layout: &Layout, name: &str, batch: &RecordBatch) -> Result<RecordBatch> {
    let mut fields = Vec::with_capacity(batch.num_columns());
    let mut columns = Vec::with_capacity(batch.num_columns());
    let ts = ("ts".to_string(), layout.ts_type.clone());
    let wanted = layout
        .dims
        .iter()
        .chain(std::iter::once(&ts))
        .chain(&layout.measures);
    for (col, ty) in wanted {
        let array = runs::raw_column(batch, name, col)?;
        columns.push(runs::cast_column(name, col, array, ty)?);
        fields.push(Field::new(col, ty.clone(), true));
    }
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

/// `batch` (as [`plain`] reads it) sorted by key: the dimensions, then
/// `ts` (truncating `ts` to a coarser grain keeps the order). Rows of
/// equal keys keep their order.
fn sort_batch(layout: &Layout, batch: &RecordBatch) -> Result<RecordBatch> {
    let keys = &batch.columns()[..=layout.dims.len()];
    let converter = RowConverter::new(
        keys.iter()
            .map(|k| SortField::new(k.data_type().clone()))
            .collect(),
    )?;
    let rows = converter.convert_columns(keys)?.try_into_binary()?;
    let mut order: Vec<u32> = (0..batch.num_rows() as u32).collect();
    if order
        .windows(2)
        .all(|w| rows.value(w[0] as usize) <= rows.value(w[1] as usize))
    {
        return Ok(batch.clone());
    }
    order.sort_by(|&a, &b| rows.value(a as usize).cmp(rows.value(b as usize)));
    Ok(arrow_select::take::take_record_batch(
        batch,
        &UInt32Array::from(order),
    )?)
}
