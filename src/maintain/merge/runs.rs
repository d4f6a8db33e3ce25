//! One input batch collapsed into runs. Inputs are sorted by key (dimensions,
//! then `ts`), and truncating `ts` to a coarser grain keeps that order, so
//! the rows a rollup folds into one output row sit next to each other in
//! each input: a minute file's sixty rows of one key and hour are one run.
//! Run boundaries are found column by column (adjacent values compared with
//! arrow's kernels), each run's measures fold over a slice, and only the
//! run heads' keys are encoded for the merge across inputs. A run whose sum
//! would leave its type's exact range is folded row by row instead, and
//! split as [`MeasureSpec::merge`] splits rows.

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type, TimestampMicrosecondType};
use arrow_array::{
    Array, ArrayRef, BinaryArray, Float64Array, Int64Array, RecordBatch, UInt32Array,
};
use arrow_buffer::BooleanBuffer;
use arrow_row::{RowConverter, Rows, SortField};
use arrow_schema::DataType;

use super::Layout;
use crate::error::{Error, ErrorKind, Result};
use crate::rows::{MeasureSpec, MeasureValue};
use crate::schema::decl::Agg;
use crate::totals::DayTotals;

/// A measure column of a batch.
#[derive(Debug)]
pub(super) enum Values {
    /// A `long` measure.
    Long(Int64Array),
    /// A `double` measure.
    Double(Float64Array),
}

impl Values {
    pub(super) fn of(array: &ArrayRef) -> Self {
        match array.data_type() {
            DataType::Float64 => Self::Double(array.as_primitive::<Float64Type>().clone()),
            _ => Self::Long(array.as_primitive::<Int64Type>().clone()),
        }
    }

    /// The value at `row`.
    pub(super) fn get(&self, row: usize) -> MeasureValue {
        match self {
            Self::Long(a) => MeasureValue::Long(a.is_valid(row).then(|| a.value(row))),
            Self::Double(a) => MeasureValue::Double(a.is_valid(row).then(|| a.value(row))),
        }
    }

    /// Rows `start..end` folded by `agg` (`Count` folds as `Sum`: the rows
    /// hold counts), or `None` when the exact fold would leave the type's
    /// range (see [`fold_longs`] and [`fold_doubles`]).
    fn fold(&self, start: usize, end: usize, agg: Agg) -> Option<MeasureValue> {
        match self {
            Self::Long(a) => {
                let values = &a.values()[start..end];
                if a.null_count() == 0 && matches!(agg, Agg::Count | Agg::Sum) {
                    // A run is short: a plain `i128` sum beats the split sum
                    // `Totals` uses over whole batches.
                    let sum = values.iter().map(|&v| v as i128).sum::<i128>();
                    return Some(MeasureValue::Long(Some(i64::try_from(sum).ok()?)));
                }
                let it = (start..end).map(|i| a.is_valid(i).then(|| a.value(i)));
                fold_longs(it, agg).map(MeasureValue::Long)
            }
            Self::Double(a) => {
                let it = (start..end).map(|i| a.is_valid(i).then(|| a.value(i)));
                fold_doubles(it, end - start, agg).map(MeasureValue::Double)
            }
        }
    }
}

/// `values` folded by `agg` (`Count` as `Sum`), nulls skipped (all null:
/// null), or `None` when a sum's total leaves `i64`'s range: the sum is
/// exact whatever its partial sums, so a fold never splits on an
/// intermediate overflow.
pub(super) fn fold_longs(
    values: impl Iterator<Item = Option<i64>>,
    agg: Agg,
) -> Option<Option<i64>> {
    let mut values = values.flatten();
    Some(match agg {
        Agg::Count | Agg::Sum => {
            let first = values.next();
            match first {
                None => None,
                Some(first) => {
                    let sum = values.fold(first as i128, |s, v| s + v as i128);
                    Some(i64::try_from(sum).ok()?)
                }
            }
        }
        Agg::Min => values.min(),
        Agg::Max => values.max(),
    })
}

/// `values` (`rows` of them) folded by `agg` (`Count` as `Sum`) in order
/// from the first non-null value, as the row-by-row fold adds (the same sum,
/// bit for bit), nulls skipped; `None` when a sum of several rows is not
/// finite (the row-by-row fold then keeps the rows apart).
pub(super) fn fold_doubles(
    values: impl Iterator<Item = Option<f64>>,
    rows: usize,
    agg: Agg,
) -> Option<Option<f64>> {
    let mut values = values.flatten();
    let Some(first) = values.next() else {
        return Some(None);
    };
    Some(Some(match agg {
        Agg::Count | Agg::Sum => {
            let sum = values.fold(first, |s, v| s + v);
            if !sum.is_finite() && rows > 1 {
                return None;
            }
            sum
        }
        Agg::Min => values.fold(first, f64::min),
        Agg::Max => values.fold(first, f64::max),
    }))
}

/// An input batch as runs: one row per run (more for a run split to keep a
/// sum exact), its key columns, their encoding for comparison, and the
/// folded measures.
#[derive(Debug)]
pub(super) struct RunBatch {
    /// Dimension columns then the truncated `ts`, one row per run.
    pub keys: Vec<ArrayRef>,
    /// `keys` encoded in arrow's row format (byte order is key order), one
    /// value per row.
    pub rows: BinaryArray,
    /// Per row but the last, the next row's code against it (see
    /// [`super::tree::successors`]).
    pub next: Vec<u64>,
    /// Folded measures in declaration order.
    pub measures: Vec<Values>,
}

impl RunBatch {
    /// Number of rows.
    pub(super) fn len(&self) -> usize {
        self.rows.len()
    }
}

/// Row converters by the types of the key columns they encode: a
/// dictionary column is encoded from its values (the bytes are those of
/// the values themselves, so rows of any two converters compare).
#[derive(Debug, Default)]
pub(super) struct Converters(Vec<(Vec<DataType>, RowConverter)>);

impl Converters {
    /// `keys` encoded: byte order is key order.
    fn convert(&mut self, keys: &[ArrayRef]) -> Result<Rows> {
        let at = match self
            .0
            .iter()
            .position(|(types, _)| types.iter().eq(keys.iter().map(|k| k.data_type())))
        {
            Some(at) => at,
            None => {
                let types: Vec<DataType> = keys.iter().map(|k| k.data_type().clone()).collect();
                let fields = types.iter().map(|t| SortField::new(t.clone())).collect();
                self.0.push((types, RowConverter::new(fields)?));
                self.0.len() - 1
            }
        };
        Ok(self.0[at].1.convert_columns(keys)?)
    }
}

/// Collapse `batch` (rows of one input, read from `name`) into runs.
/// `read` gains the batch's totals, row by row as stored.
pub(super) fn collapse(
    batch: &RecordBatch,
    layout: &Layout,
    converters: &mut Converters,
    name: &str,
    read: &mut DayTotals,
) -> Result<RunBatch> {
    let cast = |col: &str, array: &ArrayRef, ty: &DataType| cast_column(name, col, array, ty);
    let raw = |col: &str| raw_column(batch, name, col);
    let column = |col: &str, ty: &DataType| -> Result<ArrayRef> { cast(col, raw(col)?, ty) };
    // A dimension read as a dictionary of its type stays one until the
    // runs are found: only the run heads' strings are copied out.
    let mut keys = Vec::with_capacity(layout.dims.len() + 1);
    for (dim, ty) in &layout.dims {
        let array = raw(dim)?;
        keys.push(match array.data_type() {
            DataType::Dictionary(_, values) if values.as_ref() == ty => array.clone(),
            _ => cast(dim, array, ty)?,
        });
    }
    let ts = column("ts", &layout.ts_type)?;
    let ts = ts.as_primitive::<TimestampMicrosecondType>();
    let grain = layout.grain;
    keys.push(Arc::new(
        ts.unary::<_, TimestampMicrosecondType>(|t| grain.truncate(t))
            .with_timezone_opt(ts.timezone().map(Arc::<str>::from)),
    ));
    let mut measures: Vec<Values> = layout
        .measures
        .iter()
        .map(|(m, ty)| column(m, ty).map(|a| Values::of(&a)))
        .collect::<Result<_>>()?;
    let arrays: Vec<ArrayRef> = measures.iter().map(Values::array).collect();
    read.add_batch(ts.values(), &arrays);

    let n = batch.num_rows();
    let starts = run_starts(&keys, n)?;
    let keys = if starts.len() == n {
        keys
    } else {
        let (heads, folded) = fold_runs(&starts, n, &measures, &layout.aggs, &layout.spec);
        measures = folded;
        let heads = UInt32Array::from(heads);
        keys.iter()
            .map(|k| arrow_select::take::take(k.as_ref(), &heads, None))
            .collect::<std::result::Result<Vec<_>, _>>()?
    };
    // Dictionaries stay dictionaries: their values are encoded once, and
    // only the rows a merge keeps are hydrated (see `MergeReader::build`).
    let rows = converters.convert(&keys)?.try_into_binary()?;
    let next = super::tree::successors(&rows);
    Ok(RunBatch {
        keys,
        rows,
        next,
        measures,
    })
}

/// Column `col` of `batch` (rows of input `name`).
pub(super) fn raw_column<'a>(
    batch: &'a RecordBatch,
    name: &str,
    col: &str,
) -> Result<&'a ArrayRef> {
    batch.column_by_name(col).ok_or_else(|| {
        Error::new(
            ErrorKind::Iceberg,
            format!("data file {name} has no column `{col}`"),
        )
    })
}

/// `array`, column `col` of input `name`, as `ty`.
pub(super) fn cast_column(
    name: &str,
    col: &str,
    array: &ArrayRef,
    ty: &DataType,
) -> Result<ArrayRef> {
    arrow_cast::cast(array, ty).map_err(|e| {
        Error::new(
            ErrorKind::Iceberg,
            format!(
                "data file {name}: column `{col}` of type {} cannot be read as {ty}: {e}",
                array.data_type()
            ),
        )
    })
}

/// The first row of each run of equal keys among `n` rows.
fn run_starts(keys: &[ArrayRef], n: usize) -> Result<Vec<u32>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let mut changed: Option<BooleanBuffer> = None;
    for k in keys {
        // A dictionary's neighbours are compared by key: equal keys are
        // equal values, and a run split where a dictionary repeats a value
        // is folded again by the merge (rows of one key always fold).
        let k = match k.as_any_dictionary_opt() {
            Some(dict) => dict.keys().slice(0, n),
            None => k.clone(),
        };
        let d = arrow_ord::cmp::distinct(&k.slice(0, n - 1), &k.slice(1, n - 1))?;
        changed = Some(match changed {
            None => d.values().clone(),
            Some(c) => &c | d.values(),
        });
    }
    let mut starts = Vec::with_capacity(n);
    starts.push(0);
    if let Some(c) = changed {
        starts.extend(c.set_indices().map(|i| (i + 1) as u32));
    }
    Ok(starts)
}

/// Fold each run's measures: by slice, or row by row (splitting it) when a
/// slice's total would leave the exact range. Returns each output row's
/// source row (for its key) and the folded columns.
pub(super) fn fold_runs(
    starts: &[u32],
    n: usize,
    measures: &[Values],
    aggs: &[Agg],
    spec: &MeasureSpec,
) -> (Vec<u32>, Vec<Values>) {
    let mut heads = Vec::with_capacity(starts.len());
    let mut out: Vec<Vec<MeasureValue>> = vec![Vec::with_capacity(starts.len()); measures.len()];
    let mut folded = Vec::with_capacity(measures.len());
    for (r, &start) in starts.iter().enumerate() {
        let (start, end) = (start as usize, starts.get(r + 1).map_or(n, |&e| e as usize));
        folded.clear();
        folded.extend(
            measures
                .iter()
                .zip(aggs)
                .map_while(|(m, &agg)| m.fold(start, end, agg)),
        );
        if folded.len() == measures.len() {
            heads.push(start as u32);
            for (o, v) in out.iter_mut().zip(&folded) {
                o.push(*v);
            }
            continue;
        }
        // Row by row, closing the row whenever a fold would overflow.
        let row = |i: usize| measures.iter().map(|m| m.get(i)).collect::<Vec<_>>();
        let mut acc = row(start);
        for i in start + 1..end {
            let next = row(i);
            if !spec.merge_values(&mut acc, &next) {
                heads.push(start as u32);
                for (o, v) in out.iter_mut().zip(&acc) {
                    o.push(*v);
                }
                acc = next;
            }
        }
        heads.push(start as u32);
        for (o, v) in out.iter_mut().zip(&acc) {
            o.push(*v);
        }
    }
    let columns = out
        .into_iter()
        .zip(measures)
        .map(|(values, m)| values_array(m, values))
        .collect();
    (heads, columns)
}

/// Measure `j` of each key's rows folded straight from the run batches the
/// rows were read from (`picks`, in merge order: (batch, row); key `k`'s
/// rows start at `starts[k]`), without gathering them first; `None` when a
/// fold would leave the exact range (then the rows are gathered and folded
/// row by row, see [`fold_runs`]).
pub(super) fn fold_picks(
    batches: &[Arc<RunBatch>],
    j: usize,
    picks: &[(usize, usize)],
    starts: &[u32],
    agg: Agg,
) -> Option<Values> {
    let runs = starts.iter().enumerate().map(|(k, &start)| {
        let end = starts.get(k + 1).map_or(picks.len(), |&e| e as usize);
        &picks[start as usize..end]
    });
    match &batches.first()?.measures[j] {
        Values::Long(_) => {
            let columns: Vec<&Int64Array> = batches
                .iter()
                .map(|b| b.measures[j].as_long())
                .collect::<Option<_>>()?;
            let folded = if columns.iter().all(|a| a.null_count() == 0) {
                // No nulls: the values alone, folded into a plain vector
                // (every run holds a row, so every fold has a value).
                let values: Vec<&[i64]> = columns.iter().map(|a| a.values().as_ref()).collect();
                let mut out = Vec::with_capacity(starts.len());
                for run in runs {
                    let run = run.iter().map(|&(b, r)| values[b][r]);
                    out.push(match agg {
                        Agg::Count | Agg::Sum => {
                            i64::try_from(run.map(i128::from).sum::<i128>()).ok()?
                        }
                        Agg::Min => run.min()?,
                        Agg::Max => run.max()?,
                    });
                }
                Some(Int64Array::from(out))
            } else {
                let value = |&(b, r): &(usize, usize)| {
                    let a = columns[b];
                    a.is_valid(r).then(|| a.value(r))
                };
                runs.map(|run| fold_longs(run.iter().map(value), agg))
                    .collect::<Option<Int64Array>>()
            };
            folded.map(Values::Long)
        }
        Values::Double(_) => {
            let columns: Vec<&Float64Array> = batches
                .iter()
                .map(|b| b.measures[j].as_double())
                .collect::<Option<_>>()?;
            let value = |&(b, r): &(usize, usize)| {
                let a = columns[b];
                a.is_valid(r).then(|| a.value(r))
            };
            runs.map(|run| fold_doubles(run.iter().map(value), run.len(), agg))
                .collect::<Option<Float64Array>>()
                .map(Values::Double)
        }
    }
}

/// A measure column from folded values, of `like`'s type.
fn values_array(like: &Values, values: impl IntoIterator<Item = MeasureValue>) -> Values {
    match like {
        Values::Long(_) => Values::Long(
            values
                .into_iter()
                .map(|v| match v {
                    MeasureValue::Long(v) => v,
                    MeasureValue::Double(v) => v.map(|v| v as i64),
                })
                .collect(),
        ),
        Values::Double(_) => Values::Double(
            values
                .into_iter()
                .map(|v| match v {
                    MeasureValue::Double(v) => v,
                    MeasureValue::Long(v) => v.map(|v| v as f64),
                })
                .collect(),
        ),
    }
}

impl Values {
    /// As an arrow array.
    pub(super) fn array(&self) -> ArrayRef {
        match self {
            Self::Long(a) => Arc::new(a.clone()),
            Self::Double(a) => Arc::new(a.clone()),
        }
    }

    /// The `long` column, if it is one.
    fn as_long(&self) -> Option<&Int64Array> {
        match self {
            Self::Long(a) => Some(a),
            Self::Double(_) => None,
        }
    }

    /// The `double` column, if it is one.
    fn as_double(&self) -> Option<&Float64Array> {
        match self {
            Self::Double(a) => Some(a),
            Self::Long(_) => None,
        }
    }

    /// Borrowed as an arrow array.
    pub(super) fn as_array(&self) -> &dyn Array {
        match self {
            Self::Long(a) => a,
            Self::Double(a) => a,
        }
    }
}
