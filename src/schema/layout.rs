//! How a declaration becomes an Iceberg table: the columns, the three per-grain
//! partition specs over `ts`, and the sort order (dimensions, then `ts`).

use iceberg::spec::{
    NestedField, NullOrder, PrimitiveType, Schema, SortDirection, SortField, SortOrder,
    TableMetadata, Transform, Type, UnboundPartitionSpec,
};

use super::decl::{DimType, MeasureType, TableDecl};
use crate::error::{Error, ErrorKind, Result};

/// The time grain of a row: the width of its `ts` bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Grain {
    /// One-minute buckets, in `hour(ts)` partitions (what ingest writes).
    Minute,
    /// One-hour buckets, in `day(ts)` partitions.
    Hour,
    /// One-day buckets, in `month(ts)` partitions.
    Day,
}

impl Grain {
    /// All grains, finest first.
    pub const ALL: [Grain; 3] = [Grain::Minute, Grain::Hour, Grain::Day];

    /// The value stored in the `grain` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Grain::Minute => "minute",
            Grain::Hour => "hour",
            Grain::Day => "day",
        }
    }

    /// Partition spec id that holds rows of this grain.
    pub fn spec_id(self) -> i32 {
        match self {
            Grain::Minute => 0,
            Grain::Hour => 1,
            Grain::Day => 2,
        }
    }

    /// The grain whose rows are written with `spec_id`.
    pub fn from_spec_id(spec_id: i32) -> Option<Grain> {
        Grain::ALL.into_iter().find(|g| g.spec_id() == spec_id)
    }

    /// The transform partitioning rows of this grain.
    pub fn partition_transform(self) -> Transform {
        match self {
            Grain::Minute => Transform::Hour,
            Grain::Hour => Transform::Day,
            Grain::Day => Transform::Month,
        }
    }

    /// Start of the bucket holding `ts_micros` (the row's `ts` at this grain).
    pub fn truncate(self, ts_micros: i64) -> i64 {
        match self {
            Grain::Minute => ts_micros - ts_micros.rem_euclid(MINUTE_MICROS),
            Grain::Hour => ts_micros - ts_micros.rem_euclid(HOUR_MICROS),
            Grain::Day => ts_micros - ts_micros.rem_euclid(DAY_MICROS),
        }
    }

    /// The partition ordinal of a bucket starting at `ts_micros` in this
    /// grain's spec: hours, days or months since the epoch, as Iceberg's
    /// transforms say.
    pub fn partition_ordinal(self, ts_micros: i64) -> i32 {
        use chrono::Datelike;
        match self {
            Grain::Minute => ts_micros.div_euclid(HOUR_MICROS) as i32,
            Grain::Hour => ts_micros.div_euclid(DAY_MICROS) as i32,
            Grain::Day => {
                let date = chrono::DateTime::from_timestamp_micros(ts_micros)
                    .unwrap_or_default()
                    .date_naive();
                (date.year() - 1970) * 12 + date.month0() as i32
            }
        }
    }

    /// `[start, end)` of a partition of this grain's spec, in microseconds.
    pub fn partition_bounds(self, ordinal: i32) -> (i64, i64) {
        let o = ordinal as i64;
        match self {
            Grain::Minute => (o * HOUR_MICROS, (o + 1) * HOUR_MICROS),
            Grain::Hour => (o * DAY_MICROS, (o + 1) * DAY_MICROS),
            Grain::Day => (month_start(ordinal), month_start(ordinal + 1)),
        }
    }

    /// The next coarser grain.
    pub fn coarser(self) -> Option<Grain> {
        match self {
            Grain::Minute => Some(Grain::Hour),
            Grain::Hour => Some(Grain::Day),
            Grain::Day => None,
        }
    }

    /// Name of the partition field.
    pub fn partition_field_name(self) -> &'static str {
        match self {
            Grain::Minute => "ts_hour",
            Grain::Hour => "ts_day",
            Grain::Day => "ts_month",
        }
    }
}

const MINUTE_MICROS: i64 = 60_000_000;
const HOUR_MICROS: i64 = 60 * MINUTE_MICROS;
const DAY_MICROS: i64 = 24 * HOUR_MICROS;

fn month_start(months_since_epoch: i32) -> i64 {
    let year = 1970 + months_since_epoch.div_euclid(12);
    let month = months_since_epoch.rem_euclid(12) as u32 + 1;
    chrono::NaiveDate::from_ymd_opt(year, month, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc().timestamp_micros())
        .unwrap_or(i64::MAX)
}

/// Field id of `ts` in every firn table.
pub const TS_FIELD_ID: i32 = 1;
/// Field id of `grain` in every firn table.
pub const GRAIN_FIELD_ID: i32 = 2;

fn dim_type(ty: DimType) -> Type {
    Type::Primitive(match ty {
        DimType::Long => PrimitiveType::Long,
        DimType::String => PrimitiveType::String,
        DimType::Boolean => PrimitiveType::Boolean,
    })
}

fn measure_type(ty: MeasureType) -> Type {
    Type::Primitive(match ty {
        MeasureType::Long => PrimitiveType::Long,
        MeasureType::Double => PrimitiveType::Double,
    })
}

/// The declared columns after `ts` and `grain`, in order, with their types.
/// Dimension and measure columns are optional in Iceberg so that columns added
/// later can be null in old files; required-ness is enforced when decoding.
pub fn declared_columns(decl: &TableDecl) -> Vec<(String, Type)> {
    let dims = decl
        .dimensions
        .iter()
        .map(|d| (d.name.clone(), dim_type(d.ty)));
    let measures = decl
        .measures
        .iter()
        .map(|m| (m.name.clone(), measure_type(m.ty)));
    dims.chain(measures).collect()
}

/// The Iceberg schema of a new table for `decl`.
pub fn initial_schema(decl: &TableDecl) -> Result<Schema> {
    let mut fields = vec![
        NestedField::required(
            TS_FIELD_ID,
            "ts",
            Type::Primitive(PrimitiveType::Timestamptz),
        )
        .into(),
        NestedField::required(
            GRAIN_FIELD_ID,
            "grain",
            Type::Primitive(PrimitiveType::String),
        )
        .into(),
    ];
    for (i, (name, ty)) in declared_columns(decl).into_iter().enumerate() {
        fields.push(NestedField::optional(3 + i as i32, name, ty).into());
    }
    Schema::builder()
        .with_schema_id(0)
        .with_fields(fields)
        .build()
        .map_err(|e| Error::iceberg(format!("schema for {}", decl.qualified_name()), e))
}

/// The schema evolved to hold columns the declaration added, or `None` if the
/// table already has them. A declared column whose type differs from the
/// table's is an error: Iceberg cannot change it in place.
pub fn evolved_schema(current: &Schema, decl: &TableDecl) -> Result<Option<Schema>> {
    let mut next_id = current.highest_field_id() + 1;
    let mut added = Vec::new();
    for (name, ty) in declared_columns(decl) {
        match current.field_by_name(&name) {
            Some(existing) if *existing.field_type == ty => {}
            Some(existing) => {
                return Err(Error::new(
                    ErrorKind::InvalidDeclaration,
                    format!(
                        "{}: column `{name}` is {} in table {} but declared {}; \
                         a column's type cannot change, declare a new column instead",
                        decl.source.display(),
                        existing.field_type,
                        decl.qualified_name(),
                        ty
                    ),
                ));
            }
            None => {
                added.push(NestedField::optional(next_id, name, ty).into());
                next_id += 1;
            }
        }
    }
    if added.is_empty() {
        return Ok(None);
    }
    let mut fields: Vec<_> = current.as_struct().fields().to_vec();
    fields.extend(added);
    Schema::builder()
        .with_schema_id(current.schema_id() + 1)
        .with_fields(fields)
        .build()
        .map(Some)
        .map_err(|e| Error::iceberg(format!("evolving {}", decl.qualified_name()), e))
}

/// The partition spec for one grain.
pub fn partition_spec(grain: Grain) -> Result<UnboundPartitionSpec> {
    UnboundPartitionSpec::builder()
        .with_spec_id(grain.spec_id())
        .add_partition_field(
            TS_FIELD_ID,
            grain.partition_field_name(),
            grain.partition_transform(),
        )
        .map(|b| b.build())
        .map_err(|e| Error::iceberg("partition spec", e))
}

/// The ids of `meta`'s sort orders that are firn's key order for `decl`
/// over the table's current schema (see [`sort_order`]): a data file whose
/// manifest entry names one of them is merged as it stands.
pub fn key_orders(meta: &TableMetadata, decl: &TableDecl) -> Vec<i64> {
    let Ok(want) = sort_order(meta.current_schema(), decl, 1) else {
        return Vec::new();
    };
    meta.sort_orders_iter()
        .filter(|o| o.fields == want.fields)
        .map(|o| o.order_id)
        .collect()
}

/// The sort order firn records on the data files it writes for `decl`
/// (rows in key order): the table's default order when that is firn's key
/// order, else the newest of its orders that is; none when the table has
/// none (the files are then sorted again before they are merged).
pub fn key_order_id(meta: &TableMetadata, decl: &TableDecl) -> Option<i32> {
    let ids = key_orders(meta, decl);
    let id = match ids.contains(&meta.default_sort_order_id()) {
        true => meta.default_sort_order_id(),
        false => ids.into_iter().max()?,
    };
    i32::try_from(id).ok()
}

/// Sort order: every dimension ascending (nulls first), then `ts`.
pub fn sort_order(schema: &Schema, decl: &TableDecl, order_id: i64) -> Result<SortOrder> {
    let mut builder = SortOrder::builder();
    builder.with_order_id(order_id);
    for name in decl
        .dimensions
        .iter()
        .map(|d| d.name.as_str())
        .chain(["ts"])
    {
        let field = schema.field_by_name(name).ok_or_else(|| {
            Error::new(
                ErrorKind::Internal,
                format!("sort column `{name}` missing from schema"),
            )
        })?;
        builder.with_sort_field(
            SortField::builder()
                .source_id(field.id)
                .transform(Transform::Identity)
                .direction(SortDirection::Ascending)
                .null_order(NullOrder::First)
                .build(),
        );
    }
    builder
        .build(schema)
        .map_err(|e| Error::iceberg("sort order", e))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn decl(text: &str) -> TableDecl {
        TableDecl::parse(Path::new("schemas/t.toml"), text).unwrap()
    }

    const GOOD: &str = include_str!("../../schemas/usage.http_requests.toml");

    #[test]
    fn schema_columns_in_order() {
        let s = initial_schema(&decl(GOOD)).unwrap();
        let names: Vec<_> = s
            .as_struct()
            .fields()
            .iter()
            .map(|f| f.name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "ts",
                "grain",
                "account_id",
                "zone_id",
                "colo",
                "product",
                "requests",
                "bytes",
                "cpu_ms",
                "ttfb_ms_max"
            ]
        );
    }

    #[test]
    fn evolution_adds_only_new_columns() {
        let d = decl(GOOD);
        let s = initial_schema(&d).unwrap();
        assert!(evolved_schema(&s, &d).unwrap().is_none());
        let d2 = decl(&GOOD.replace(
            "[[measure]]\nname = \"requests\"",
            "[[dimension]]\nname = \"method\"\ntype = \"string\"\noptional = true\n\n[[measure]]\nname = \"requests\"",
        ));
        let s2 = evolved_schema(&s, &d2).unwrap().unwrap();
        let f = s2.field_by_name("method").unwrap();
        assert_eq!(f.id, 11);
        assert!(!f.required);
        assert_eq!(s2.schema_id(), 1);

        let d3 = decl(&GOOD.replace(
            "name = \"colo\"\ntype = \"string\"",
            "name = \"colo\"\ntype = \"long\"",
        ));
        let e = evolved_schema(&s, &d3).unwrap_err();
        assert!(e.to_string().contains("column `colo` is string"), "{e}");
    }

    #[test]
    fn partitions_bound_their_buckets() {
        for ts in [0i64, -1, 1_795_771_230_123_000, 951_868_800_000_000] {
            for g in Grain::ALL {
                let (lo, hi) = g.partition_bounds(g.partition_ordinal(ts));
                assert!(lo <= ts && ts < hi, "{g:?} {ts} not in [{lo}, {hi})");
                let t = g.truncate(ts);
                assert!(t <= ts && g.partition_ordinal(t) == g.partition_ordinal(ts));
            }
        }
        // 2000-02 is month 361 and has 29 days.
        let (lo, hi) = Grain::Day.partition_bounds(361);
        assert_eq!((hi - lo) / DAY_MICROS, 29);
    }

    #[test]
    fn grains_map_to_specs() {
        for g in Grain::ALL {
            assert_eq!(Grain::from_spec_id(g.spec_id()), Some(g));
            let spec = partition_spec(g).unwrap();
            assert_eq!(spec.fields()[0].transform, g.partition_transform());
        }
    }
}
