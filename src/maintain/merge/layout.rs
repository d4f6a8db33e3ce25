//! The columns a merge reads and writes: the declaration's dimensions,
//! `ts` and measures, as the table's current schema types them.

use arrow_schema::{DataType, SchemaRef, TimeUnit};

use crate::error::{Error, ErrorKind, Result};
use crate::rows::MeasureSpec;
use crate::schema::decl::{Agg, TableDecl};
use crate::schema::layout::Grain;
use crate::totals::Totals;

/// Where a column of the output comes from.
#[derive(Debug, Clone, Copy)]
pub(super) enum Source {
    /// A key column (dimensions in declaration order, then `ts`).
    Key(usize),
    /// A measure, in declaration order.
    Measure(usize),
    /// The `grain` column: the output grain.
    Grain,
    /// A column the table has and the declaration does not list.
    Null,
}

/// The columns a merge reads and writes.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The output schema: the table's current schema, in arrow.
    pub(super) schema: SchemaRef,
    pub(super) dims: Vec<(String, DataType)>,
    pub(super) ts_type: DataType,
    pub(super) measures: Vec<(String, DataType)>,
    /// Each measure's fold (a count's rows fold as a sum).
    pub(super) aggs: Vec<Agg>,
    pub(super) spec: MeasureSpec,
    pub(super) sources: Vec<Source>,
    pub(super) grain: Grain,
    /// Empty totals of the measures.
    pub(super) totals: Totals,
}

impl Layout {
    /// The columns of `decl`'s table (its current schema, `schema`) when
    /// merged into rows of `grain`.
    pub fn new(schema: SchemaRef, decl: &TableDecl, grain: Grain) -> Result<Self> {
        let ty = |name: &str| -> Result<DataType> {
            schema
                .field_with_name(name)
                .map(|f| f.data_type().clone())
                .map_err(|_| {
                    Error::new(
                        ErrorKind::Iceberg,
                        format!("the table has no column `{name}`; run `firn tables sync`"),
                    )
                })
        };
        let dims = decl
            .dimensions
            .iter()
            .map(|d| Ok((d.name.clone(), ty(&d.name)?)))
            .collect::<Result<Vec<_>>>()?;
        let measures = decl
            .measures
            .iter()
            .map(|m| Ok((m.name.clone(), ty(&m.name)?)))
            .collect::<Result<Vec<_>>>()?;
        for (name, t) in &measures {
            if !matches!(t, DataType::Int64 | DataType::Float64) {
                return Err(Error::new(
                    ErrorKind::Iceberg,
                    format!("measure column `{name}` is {t}, not a long or a double"),
                ));
            }
        }
        let ts_type = ty("ts")?;
        if !matches!(ts_type, DataType::Timestamp(TimeUnit::Microsecond, _)) {
            return Err(Error::new(
                ErrorKind::Iceberg,
                format!("column `ts` is {ts_type}, not a timestamp in microseconds"),
            ));
        }
        let sources = schema
            .fields()
            .iter()
            .map(|f| {
                let name = f.name().as_str();
                if name == "ts" {
                    Source::Key(dims.len())
                } else if name == "grain" {
                    Source::Grain
                } else if let Some(i) = dims.iter().position(|(d, _)| d == name) {
                    Source::Key(i)
                } else if let Some(i) = measures.iter().position(|(m, _)| m == name) {
                    Source::Measure(i)
                } else {
                    Source::Null
                }
            })
            .collect();
        Ok(Self {
            ts_type,
            dims,
            measures,
            aggs: decl
                .measures
                .iter()
                .map(|m| if m.agg == Agg::Count { Agg::Sum } else { m.agg })
                .collect(),
            spec: MeasureSpec::new(decl),
            totals: Totals::new(decl),
            sources,
            grain,
            schema,
        })
    }

    /// The type of key column `k` (dimensions, then `ts`) in the output.
    pub(super) fn key_type(&self, k: usize) -> &DataType {
        self.dims.get(k).map_or(&self.ts_type, |(_, t)| t)
    }

    /// The columns an input is read with: dimensions, `ts`, measures.
    pub(super) fn read_columns(&self) -> impl Iterator<Item = &str> {
        self.dims
            .iter()
            .map(|(d, _)| d.as_str())
            .chain(["ts"])
            .chain(self.measures.iter().map(|(m, _)| m.as_str()))
    }
}
