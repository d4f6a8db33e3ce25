//! The per-day totals of data files, read from their rows (`ts` and the
//! measures only): what a retention drop or a backfill's replace removes,
//! and what `firn audit` accounts a commit's files with. Files are read a
//! few at a time, through the merge's reader (small files whole, by field
//! id; others through iceberg's reader, which fills columns an older file
//! lacks).

use arrow_array::cast::AsArray;
use arrow_array::types::TimestampMicrosecondType;
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::DataType;
use futures::{StreamExt, TryStreamExt};

use super::merge;
use super::state::LiveFile;
use crate::catalog::TableHandle;
use crate::error::{Error, ErrorKind, Result};
use crate::schema::decl::TableDecl;
use crate::totals::{DayTotals, Totals};

/// Rows per batch read.
const BATCH_ROWS: usize = 8192;

/// Per file of `files` (in order), the totals of its rows by day, reading
/// up to `parallel` files at once.
pub async fn tally(
    table: &TableHandle,
    decl: &TableDecl,
    files: &[LiveFile],
    parallel: usize,
) -> Result<Vec<DayTotals>> {
    let names: Vec<&str> = std::iter::once("ts")
        .chain(decl.measures.iter().map(|m| m.name.as_str()))
        .collect();
    let field_ids = merge::field_ids(table, names.iter().copied())?;
    let names: Vec<String> = names.into_iter().map(String::from).collect();
    let empty = Totals::new(decl);
    // Each read owns what it uses (a merge task runs this on the runtime).
    let reads: Vec<_> = files
        .iter()
        .map(|file| {
            let (table, file) = (table.clone(), file.clone());
            let (field_ids, names, empty) = (field_ids.clone(), names.clone(), empty.clone());
            async move {
                let mut stream = merge::read_columns(&table, &file, field_ids, BATCH_ROWS)?;
                let mut days = DayTotals::new(&empty);
                while let Some(batch) = stream.try_next().await? {
                    add_batch(&mut days, &batch, &names, &file.path)?;
                }
                Ok::<_, Error>(days)
            }
        })
        .collect();
    futures::stream::iter(reads)
        .buffered(parallel.max(1))
        .try_collect()
        .await
}

/// Fold `batch` (columns `names`: `ts`, then the measures) of file `path`
/// into `days`.
fn add_batch(
    days: &mut DayTotals,
    batch: &RecordBatch,
    names: &[String],
    path: &str,
) -> Result<()> {
    let column = |name: &str| -> Result<&ArrayRef> {
        batch.column_by_name(name).ok_or_else(|| {
            Error::new(
                ErrorKind::Iceberg,
                format!("data file {path} has no column `{name}`"),
            )
        })
    };
    let ts = column(&names[0])?;
    let ts = ts
        .as_primitive_opt::<TimestampMicrosecondType>()
        .ok_or_else(|| {
            Error::new(
                ErrorKind::Iceberg,
                format!(
                    "data file {path}: column `ts` is {}, not a timestamp in microseconds",
                    ts.data_type()
                ),
            )
        })?;
    if ts.null_count() > 0 {
        return Err(Error::new(
            ErrorKind::Iceberg,
            format!("data file {path}: column `ts` holds nulls"),
        ));
    }
    // As the totals fold them (a file another engine wrote may hold a
    // narrower type the table's was promoted from).
    let measures = names[1..]
        .iter()
        .zip(days.kinds())
        .map(|(m, long)| {
            let array = column(m)?;
            let to = if long {
                DataType::Int64
            } else {
                DataType::Float64
            };
            arrow_cast::cast(array, &to).map_err(|e| {
                Error::new(
                    ErrorKind::Iceberg,
                    format!(
                        "data file {path}: measure `{m}` of type {} cannot be read as {to}: {e}",
                        array.data_type()
                    ),
                )
            })
        })
        .collect::<Result<Vec<_>>>()?;
    days.add_batch(ts.values(), &measures);
    Ok(())
}
