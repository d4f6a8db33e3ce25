//! Reading tables back: per-day and whole-table measure totals (what every
//! invariant check compares), and the rejects.

use std::collections::BTreeMap;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int32Type, Int64Type, TimestampMicrosecondType};
use arrow_array::{Array, RecordBatch};
use chrono::NaiveDate;
use futures::TryStreamExt;

use crate::catalog::TableHandle;
use crate::error::{Error, ErrorKind, Result};
use crate::rejects::RejectRecord;
use crate::rows::{MeasureSpec, MeasureValue, Measures};
use crate::schema::decl::{MeasureType, TableDecl};

/// Measure totals of a table: over all rows and per UTC day of `ts`.
#[derive(Debug, Clone, PartialEq)]
pub struct Totals {
    /// Rows read.
    pub rows: u64,
    /// Whole-table totals, in declaration order.
    pub all: Measures,
    /// Per-day totals.
    pub per_day: BTreeMap<NaiveDate, Measures>,
}

impl Totals {
    /// A measure's whole-table value as an integer (0 if empty).
    pub fn long(&self, decl: &TableDecl, measure: &str) -> i64 {
        let i = decl
            .measures
            .iter()
            .position(|m| m.name == measure)
            .unwrap_or_else(|| panic!("no measure {measure}"));
        match self.all.0[i] {
            MeasureValue::Long(v) => v.unwrap_or(0),
            MeasureValue::Double(v) => v.unwrap_or(0.0) as i64,
        }
    }
}

async fn scan(table: &TableHandle, snapshot_id: Option<i64>) -> Result<Vec<RecordBatch>> {
    if table.metadata.current_snapshot().is_none() {
        return Ok(Vec::new());
    }
    let iceberg_table = table.table()?;
    let mut builder = iceberg_table.scan().select_all();
    if let Some(id) = snapshot_id {
        builder = builder.snapshot_id(id);
    }
    let ice = |what: &'static str| {
        let ident = table.ident.clone();
        move |e: iceberg::Error| Error::iceberg(format!("{what} {ident}"), e)
    };
    builder
        .build()
        .map_err(ice("planning scan of"))?
        .to_arrow()
        .await
        .map_err(ice("scanning"))?
        .try_collect()
        .await
        .map_err(ice("reading"))
}

/// Sum every measure of `table` (whatever the grain of its rows).
pub async fn totals(table: &TableHandle, decl: &TableDecl) -> Result<Totals> {
    totals_at(table, decl, None).await
}

/// Totals as of a snapshot (time travel); `None` for the current one.
pub async fn totals_at(
    table: &TableHandle,
    decl: &TableDecl,
    snapshot_id: Option<i64>,
) -> Result<Totals> {
    let spec = MeasureSpec::new(decl);
    let mut out = Totals {
        rows: 0,
        all: spec.empty(),
        per_day: BTreeMap::new(),
    };
    for batch in scan(table, snapshot_id).await? {
        let column = |name: &str| {
            batch.column_by_name(name).ok_or_else(|| {
                Error::new(
                    ErrorKind::Iceberg,
                    format!("table {} has no column `{name}`", table.ident),
                )
            })
        };
        let ts = column("ts")?
            .as_primitive::<TimestampMicrosecondType>()
            .clone();
        let mut cols = Vec::new();
        for m in &decl.measures {
            cols.push((m.ty, column(&m.name)?.clone()));
        }
        for row in 0..batch.num_rows() {
            let values = Measures(
                cols.iter()
                    .map(|(ty, col)| match ty {
                        MeasureType::Long => MeasureValue::Long(
                            (!col.is_null(row)).then(|| col.as_primitive::<Int64Type>().value(row)),
                        ),
                        MeasureType::Double => MeasureValue::Double(
                            (!col.is_null(row))
                                .then(|| col.as_primitive::<Float64Type>().value(row)),
                        ),
                    })
                    .collect(),
            );
            let day = chrono::DateTime::from_timestamp_micros(ts.value(row))
                .unwrap_or_default()
                .date_naive();
            spec.merge_saturating(&mut out.all, &values);
            let d = out.per_day.entry(day).or_insert_with(|| spec.empty());
            spec.merge_saturating(d, &values);
        }
        out.rows += batch.num_rows() as u64;
    }
    Ok(out)
}

/// Every record in a rejects table.
pub async fn rejects(table: &TableHandle) -> Result<Vec<RejectRecord>> {
    let mut out = Vec::new();
    for batch in scan(table, None).await? {
        let s = |i: usize| batch.column(i).as_string::<i32>().clone();
        let (topic, code, reason) = (s(0), s(4), s(5));
        let partition = batch.column(1).as_primitive::<Int32Type>().clone();
        let offset = batch.column(2).as_primitive::<Int64Type>().clone();
        let at = batch
            .column(3)
            .as_primitive::<TimestampMicrosecondType>()
            .clone();
        let payload = batch.column(6).as_binary::<i64>().clone();
        for i in 0..batch.num_rows() {
            out.push(RejectRecord {
                topic: topic.value(i).to_string(),
                partition: partition.value(i),
                offset: offset.value(i),
                rejected_at_micros: at.value(i),
                reason_code: code.value(i).to_string(),
                reason: reason.value(i).to_string(),
                payload: payload.value(i).to_vec(),
            });
        }
    }
    out.sort_by_key(|r| (r.partition, r.offset));
    Ok(out)
}
