//! The row model shared by ingest, compaction and rollup: a key (dimension
//! values and a bucket start) and mergeable measure accumulators.
//!
//! Rows are additive: two rows with the same key may coexist in a table, and
//! [`Measures::merge`] collapses them without changing any total.

use std::collections::{BTreeMap, HashMap};

use crate::schema::decl::{Agg, MeasureType, TableDecl};

/// One dimension value. `Null` sorts first, as the table's sort order says.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DimValue {
    /// Missing optional dimension.
    Null,
    /// Boolean dimension.
    Bool(bool),
    /// Integer dimension.
    Long(i64),
    /// String dimension.
    Str(Box<str>),
}

/// The grouping key of a row: dimension values in declaration order, then
/// the bucket start in microseconds since the epoch (UTC).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RowKey {
    /// Dimension values.
    pub dims: Vec<DimValue>,
    /// Bucket start, microseconds since the epoch.
    pub ts_micros: i64,
}

/// One measure's running value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MeasureValue {
    /// Integer value (`None`: no contribution yet, for min/max).
    Long(Option<i64>),
    /// Double value.
    Double(Option<f64>),
}

/// Accumulators for all measures of one row, in declaration order.
#[derive(Debug, Clone, PartialEq)]
pub struct Measures(pub Vec<MeasureValue>);

impl Measures {
    /// The values by `decl`'s measure names, as JSON (what reports print).
    pub fn by_name(&self, decl: &TableDecl) -> BTreeMap<String, serde_json::Value> {
        decl.measures
            .iter()
            .zip(&self.0)
            .map(|(m, v)| {
                let v = match v {
                    MeasureValue::Long(v) => serde_json::json!(v),
                    MeasureValue::Double(v) => serde_json::json!(v),
                };
                (m.name.clone(), v)
            })
            .collect()
    }
}

/// What each measure does, extracted once from the declaration.
#[derive(Debug, Clone)]
pub struct MeasureSpec {
    aggs: Vec<(Agg, MeasureType)>,
}

impl MeasureSpec {
    /// The measure layout of `decl`.
    pub fn new(decl: &TableDecl) -> Self {
        Self {
            aggs: decl.measures.iter().map(|m| (m.agg, m.ty)).collect(),
        }
    }

    /// Number of measures.
    pub fn len(&self) -> usize {
        self.aggs.len()
    }

    /// Whether there are no measures.
    pub fn is_empty(&self) -> bool {
        self.aggs.is_empty()
    }

    /// The identity row: counts and sums at zero, min/max empty.
    pub fn empty(&self) -> Measures {
        Measures(
            self.aggs
                .iter()
                .map(|(agg, ty)| {
                    let zero = matches!(agg, Agg::Count | Agg::Sum);
                    match ty {
                        MeasureType::Long => MeasureValue::Long(zero.then_some(0)),
                        MeasureType::Double => MeasureValue::Double(zero.then_some(0.0)),
                    }
                })
                .collect(),
        )
    }

    /// Fold one event's values into `acc`. `values[i]` is `None` when an
    /// optional field was missing; counts ignore values.
    pub fn add_event(&self, acc: &mut Measures, values: &[Option<MeasureValue>]) {
        for (i, (agg, _)) in self.aggs.iter().enumerate() {
            let slot = &mut acc.0[i];
            match agg {
                Agg::Count => {
                    if let MeasureValue::Long(Some(n)) = slot {
                        *n += 1;
                    }
                }
                _ => {
                    if let Some(v) = values[i] {
                        combine(*agg, slot, v);
                    }
                }
            }
        }
    }

    /// Merge another row's accumulators into `acc` (same key).
    pub fn merge(&self, acc: &mut Measures, other: &Measures) {
        for (i, (agg, _)) in self.aggs.iter().enumerate() {
            let agg = if *agg == Agg::Count { Agg::Sum } else { *agg };
            combine(agg, &mut acc.0[i], other.0[i]);
        }
    }
}

fn combine(agg: Agg, slot: &mut MeasureValue, v: MeasureValue) {
    match (slot, v) {
        (MeasureValue::Long(a), MeasureValue::Long(Some(b))) => {
            *a = Some(match (agg, *a) {
                (_, None) => b,
                (Agg::Sum | Agg::Count, Some(a)) => a.wrapping_add(b),
                (Agg::Min, Some(a)) => a.min(b),
                (Agg::Max, Some(a)) => a.max(b),
            })
        }
        (MeasureValue::Double(a), MeasureValue::Double(Some(b))) => {
            *a = Some(match (agg, *a) {
                (_, None) => b,
                (Agg::Sum | Agg::Count, Some(a)) => a + b,
                (Agg::Min, Some(a)) => a.min(b),
                (Agg::Max, Some(a)) => a.max(b),
            })
        }
        _ => {}
    }
}

/// An in-memory aggregation of rows by key: what a flush or a merge holds.
#[derive(Debug, Default)]
pub struct RowMap {
    rows: HashMap<RowKey, Measures>,
}

impl RowMap {
    /// Number of distinct keys.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Add one event to the row for `key`.
    pub fn add_event(&mut self, spec: &MeasureSpec, key: RowKey, values: &[Option<MeasureValue>]) {
        let acc = self.rows.entry(key).or_insert_with(|| spec.empty());
        spec.add_event(acc, values);
    }

    /// Merge a whole row.
    pub fn add_row(&mut self, spec: &MeasureSpec, key: RowKey, measures: &Measures) {
        match self.rows.get_mut(&key) {
            Some(acc) => spec.merge(acc, measures),
            None => {
                self.rows.insert(key, measures.clone());
            }
        }
    }

    /// The keys, in no particular order.
    pub fn keys(&self) -> impl Iterator<Item = &RowKey> {
        self.rows.keys()
    }

    /// Merge all of `other` into this map.
    pub fn absorb(&mut self, spec: &MeasureSpec, other: RowMap) {
        for (key, measures) in other.rows {
            self.add_row(spec, key, &measures);
        }
    }

    /// The rows sorted as the table's sort order says: dimensions, then `ts`.
    pub fn into_sorted(self) -> Vec<(RowKey, Measures)> {
        let mut rows: Vec<_> = self.rows.into_iter().collect();
        rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        rows
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn spec() -> MeasureSpec {
        let d = TableDecl::parse(
            Path::new("t.toml"),
            include_str!("../schemas/usage.http_requests.toml"),
        )
        .unwrap();
        MeasureSpec::new(&d)
    }

    #[test]
    fn events_and_merges_keep_totals() {
        let s = spec();
        let key = |t| RowKey {
            dims: vec![DimValue::Long(1), DimValue::Null],
            ts_micros: t,
        };
        let ev = |b, c, t| {
            [
                None,
                Some(MeasureValue::Long(Some(b))),
                Some(MeasureValue::Long(Some(c))),
                t,
            ]
        };
        let mut m = RowMap::default();
        m.add_event(&s, key(0), &ev(10, 1, Some(MeasureValue::Long(Some(5)))));
        m.add_event(&s, key(0), &ev(20, 2, None));
        m.add_event(&s, key(60), &ev(1, 1, Some(MeasureValue::Long(Some(9)))));
        let rows = m.into_sorted();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].0.ts_micros, 0);
        assert_eq!(
            rows[0].1,
            Measures(vec![
                MeasureValue::Long(Some(2)),
                MeasureValue::Long(Some(30)),
                MeasureValue::Long(Some(3)),
                MeasureValue::Long(Some(5)),
            ])
        );
        let mut merged = rows[0].1.clone();
        s.merge(&mut merged, &rows[1].1);
        assert_eq!(
            merged,
            Measures(vec![
                MeasureValue::Long(Some(3)),
                MeasureValue::Long(Some(31)),
                MeasureValue::Long(Some(4)),
                MeasureValue::Long(Some(9)),
            ])
        );
    }

    #[test]
    fn null_dimensions_sort_first() {
        assert!(DimValue::Null < DimValue::Long(i64::MIN));
        assert!(DimValue::Null < DimValue::Str("".into()));
    }
}
