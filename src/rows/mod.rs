//! The row model shared by ingest, compaction and rollup: a key (dimension
//! values and a bucket start) and mergeable measure accumulators.
//!
//! Rows are additive: two rows with the same key may coexist in a table, and
//! [`MeasureSpec::merge`] collapses them without changing any total — unless
//! a sum would leave its type's exact range, when they stay apart: no row
//! ever stores a wrapped value.

use std::borrow::Cow;
use std::collections::BTreeMap;

use crate::schema::decl::{Agg, MeasureType, TableDecl};

pub(crate) use self::map::RowCopies;
pub use self::map::{RowMap, SortedRow, SortedRows};

pub(crate) mod key;
mod map;

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

/// A dimension value borrowed from an event's payload (a string without
/// escapes is not copied): what an event is aggregated by before its key is
/// known to be new.
#[derive(Debug, Clone, PartialEq)]
pub enum DimRef<'p> {
    /// Missing optional dimension.
    Null,
    /// Boolean dimension.
    Bool(bool),
    /// Integer dimension.
    Long(i64),
    /// String dimension.
    Str(Cow<'p, str>),
}

impl DimRef<'_> {
    /// The value, owned.
    pub fn to_owned_value(&self) -> DimValue {
        match self {
            DimRef::Null => DimValue::Null,
            DimRef::Bool(b) => DimValue::Bool(*b),
            DimRef::Long(v) => DimValue::Long(*v),
            DimRef::Str(s) => DimValue::Str(s.as_ref().into()),
        }
    }
}

impl<'a> From<&'a DimValue> for DimRef<'a> {
    fn from(v: &'a DimValue) -> Self {
        match v {
            DimValue::Null => DimRef::Null,
            DimValue::Bool(b) => DimRef::Bool(*b),
            DimValue::Long(v) => DimRef::Long(*v),
            DimValue::Str(s) => DimRef::Str(Cow::Borrowed(s)),
        }
    }
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
        let mut out = Vec::with_capacity(self.aggs.len());
        self.push_empty(&mut out);
        Measures(out)
    }

    /// Fold one event's values into `acc`. `values[i]` is `None` when an
    /// optional field was missing; counts ignore values. Returns `false`, and
    /// leaves `acc` as it was, when a sum or count would leave its type's
    /// exact range (`i64`, or a finite `f64`): a row never stores a wrapped
    /// or infinite value; the caller starts another row instead.
    #[must_use]
    pub fn add_event(&self, acc: &mut Measures, values: &[Option<MeasureValue>]) -> bool {
        self.add_event_values(&mut acc.0, values)
    }

    /// [`MeasureSpec::add_event`] over a slice of values in declaration
    /// order (what a [`RowMap`] holds).
    #[must_use]
    pub fn add_event_values(
        &self,
        acc: &mut [MeasureValue],
        values: &[Option<MeasureValue>],
    ) -> bool {
        self.apply(acc, |i, agg| event_value(values, i, agg), Fold::Exact)
    }

    /// Append the identity row's values (see [`MeasureSpec::empty`]).
    pub fn push_empty(&self, out: &mut Vec<MeasureValue>) {
        out.extend(self.aggs.iter().map(|(agg, ty)| {
            let zero = matches!(agg, Agg::Count | Agg::Sum);
            match ty {
                MeasureType::Long => MeasureValue::Long(zero.then_some(0)),
                MeasureType::Double => MeasureValue::Double(zero.then_some(0.0)),
            }
        }));
    }

    /// Merge another row's accumulators into `acc` (same key). Returns
    /// `false`, and leaves `acc` as it was, when a sum or count would leave
    /// its type's exact range: the two rows then stay apart.
    #[must_use]
    pub fn merge(&self, acc: &mut Measures, other: &Measures) -> bool {
        self.merge_values(&mut acc.0, &other.0)
    }

    /// [`MeasureSpec::merge`] over slices of values in declaration order
    /// (what the columnar merge holds).
    #[must_use]
    pub fn merge_values(&self, acc: &mut [MeasureValue], other: &[MeasureValue]) -> bool {
        self.apply(acc, |i, agg| Some((merged(agg), other[i])), Fold::Exact)
    }

    /// Fold one event into running totals for a report (see
    /// [`MeasureSpec::merge_saturating`]).
    pub fn add_event_saturating(&self, acc: &mut Measures, values: &[Option<MeasureValue>]) {
        let _ = self.apply(
            &mut acc.0,
            |i, agg| event_value(values, i, agg),
            Fold::Saturating,
        );
    }

    /// Merge `other` into running totals for a report, where a total past
    /// the type's range stays at its bound (stored rows never do: see
    /// [`MeasureSpec::merge`]).
    pub fn merge_saturating(&self, acc: &mut Measures, other: &Measures) {
        let _ = self.apply(
            &mut acc.0,
            |i, agg| Some((merged(agg), other.0[i])),
            Fold::Saturating,
        );
    }

    /// Fold `each(i, agg)` into every measure, all or nothing.
    fn apply(
        &self,
        acc: &mut [MeasureValue],
        each: impl Fn(usize, Agg) -> Option<(Agg, MeasureValue)>,
        fold: Fold,
    ) -> bool {
        if fold == Fold::Exact {
            let fits = self.aggs.iter().enumerate().all(|(i, (agg, _))| {
                each(i, *agg).is_none_or(|(agg, v)| combine(agg, acc[i], v, fold).is_some())
            });
            if !fits {
                return false;
            }
        }
        for (i, (agg, _)) in self.aggs.iter().enumerate() {
            if let Some((agg, v)) = each(i, *agg)
                && let Some(out) = combine(agg, acc[i], v, fold)
            {
                acc[i] = out;
            }
        }
        true
    }
}

/// What an event adds to measure `i`: one to a count, its value otherwise.
fn event_value(values: &[Option<MeasureValue>], i: usize, agg: Agg) -> Option<(Agg, MeasureValue)> {
    match agg {
        Agg::Count => Some((Agg::Sum, MeasureValue::Long(Some(1)))),
        _ => values[i].map(|v| (agg, v)),
    }
}

/// How a merged row combines a measure: counts add up like sums.
fn merged(agg: Agg) -> Agg {
    if agg == Agg::Count { Agg::Sum } else { agg }
}

/// Whether a fold refuses to leave the exact range or stays at its bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fold {
    Exact,
    Saturating,
}

/// `slot` with `v` folded in; `None` when an exact sum would overflow.
fn combine(agg: Agg, slot: MeasureValue, v: MeasureValue, fold: Fold) -> Option<MeasureValue> {
    Some(match (slot, v) {
        (MeasureValue::Long(a), MeasureValue::Long(Some(b))) => {
            MeasureValue::Long(Some(match (agg, a) {
                (_, None) => b,
                (Agg::Sum | Agg::Count, Some(a)) => match fold {
                    Fold::Exact => a.checked_add(b)?,
                    Fold::Saturating => a.saturating_add(b),
                },
                (Agg::Min, Some(a)) => a.min(b),
                (Agg::Max, Some(a)) => a.max(b),
            }))
        }
        (MeasureValue::Double(a), MeasureValue::Double(Some(b))) => {
            MeasureValue::Double(Some(match (agg, a) {
                (_, None) => b,
                (Agg::Sum | Agg::Count, Some(a)) => {
                    let sum = a + b;
                    match fold {
                        Fold::Exact if !sum.is_finite() => return None,
                        Fold::Saturating if !sum.is_finite() => sum.clamp(f64::MIN, f64::MAX),
                        _ => sum,
                    }
                }
                (Agg::Min, Some(a)) => a.min(b),
                (Agg::Max, Some(a)) => a.max(b),
            }))
        }
        (slot, _) => slot,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_dimensions_sort_first() {
        assert!(DimValue::Null < DimValue::Long(i64::MIN));
        assert!(DimValue::Null < DimValue::Str("".into()));
    }
}
