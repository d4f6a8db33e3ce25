//! Per-measure totals of a set of rows, as each measure folds: a count or a
//! long sum exactly (in `i128`, so no set of stored rows can overflow it),
//! a double sum as a double, a min or a max by value. A compaction or a
//! rollup must leave them as they were: what it removed and what it added
//! have the same totals ([`Totals::differs`]).

mod days;

pub use days::{ChangeTotals, DayTotals, date_of, day_of, day_of_date};

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type};
use arrow_array::{Array, ArrayRef};
use arrow_schema::DataType;

use crate::rows::{MeasureValue, Measures};
use crate::schema::decl::{Agg, TableDecl};

/// One measure's total (`None`: no value yet).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Total {
    /// A long measure: its sum, or its min or max.
    Long(Option<i128>),
    /// A double measure: its sum, or its min or max.
    Double(Option<f64>),
}

impl std::fmt::Display for Total {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Total::Long(Some(v)) => write!(f, "{v}"),
            Total::Double(Some(v)) => write!(f, "{v}"),
            Total::Long(None) | Total::Double(None) => f.write_str("none"),
        }
    }
}

/// The totals of every measure of a table, in declaration order.
#[derive(Debug, Clone, PartialEq)]
pub struct Totals {
    /// Each measure's name and fold (a count's rows fold as a sum).
    measures: Vec<(String, Agg)>,
    /// The totals.
    pub values: Vec<Total>,
    /// Per measure, the sum of the magnitudes of the values a double sum
    /// added: how far its rounding can reach.
    magnitudes: Vec<f64>,
}

/// How far apart two double sums of the same values, added in another
/// order, may be, relative to the sum of the values' magnitudes (the bound
/// of a floating-point sum's rounding error, whatever the order, is a
/// small multiple of it: with cancellation the sums themselves may be far
/// smaller).
const DOUBLE_SUM_TOLERANCE: f64 = 1e-9;

impl Totals {
    /// Empty totals for `decl`'s measures.
    pub fn new(decl: &TableDecl) -> Self {
        Self {
            measures: decl
                .measures
                .iter()
                .map(|m| {
                    let agg = if m.agg == Agg::Count { Agg::Sum } else { m.agg };
                    (m.name.clone(), agg)
                })
                .collect(),
            values: decl
                .measures
                .iter()
                .map(|m| match m.ty {
                    crate::schema::decl::MeasureType::Long => Total::Long(None),
                    crate::schema::decl::MeasureType::Double => Total::Double(None),
                })
                .collect(),
            magnitudes: vec![0.0; decl.measures.len()],
        }
    }

    /// Empty totals of the same measures.
    pub fn emptied(&self) -> Self {
        Self {
            measures: self.measures.clone(),
            values: self
                .values
                .iter()
                .map(|t| match t {
                    Total::Long(_) => Total::Long(None),
                    Total::Double(_) => Total::Double(None),
                })
                .collect(),
            magnitudes: vec![0.0; self.magnitudes.len()],
        }
    }

    /// Fold one value into measure `i`.
    pub fn add_value(&mut self, i: usize, v: MeasureValue) {
        let agg = self.measures[i].1;
        match (&mut self.values[i], v) {
            (Total::Long(t), MeasureValue::Long(Some(v))) => {
                *t = Some(fold_long(agg, *t, v as i128))
            }
            (Total::Double(t), MeasureValue::Double(Some(v))) => {
                *t = Some(fold_double(agg, *t, v));
                self.magnitudes[i] += v.abs();
            }
            _ => {}
        }
    }

    /// Fold a whole column (`Int64` or `Float64`, nulls skipped) into
    /// measure `i`.
    pub fn add_array(&mut self, i: usize, array: &ArrayRef) {
        let agg = self.measures[i].1;
        match (&mut self.values[i], array.data_type()) {
            (Total::Long(t), DataType::Int64) => {
                let a = array.as_primitive::<Int64Type>();
                let folded = if a.null_count() == 0 {
                    // Over the slice, so that each fold vectorises.
                    let values = a.values();
                    match agg {
                        Agg::Count | Agg::Sum => exact_sum(values),
                        Agg::Min => values.iter().min().map(|&v| i128::from(v)),
                        Agg::Max => values.iter().max().map(|&v| i128::from(v)),
                    }
                } else {
                    fold_longs(agg, a.iter().flatten())
                };
                if let Some(v) = folded {
                    *t = Some(match *t {
                        None => v,
                        Some(t) => combine_long(agg, t, v),
                    });
                }
            }
            (Total::Double(t), DataType::Float64) => {
                for v in array.as_primitive::<Float64Type>().iter().flatten() {
                    *t = Some(fold_double(agg, *t, v));
                    self.magnitudes[i] += v.abs();
                }
            }
            _ => {}
        }
    }

    /// Each measure's name and fold (a count's rows fold as a sum).
    pub fn measures(&self) -> &[(String, Agg)] {
        &self.measures
    }

    /// Take `other`'s rows out (they were removed): sums exactly (a sum
    /// with every row taken out is 0, not none); a min or a max cannot be
    /// taken out, so the measures whose min or max is unknown from here
    /// are returned.
    pub fn remove(&mut self, other: &Totals) -> Vec<usize> {
        let mut unknown = Vec::new();
        for (i, ((agg, mine), theirs)) in self
            .measures
            .iter()
            .map(|(_, agg)| *agg)
            .zip(&mut self.values)
            .zip(&other.values)
            .enumerate()
        {
            match (agg, mine, *theirs) {
                (_, _, Total::Long(None) | Total::Double(None)) => {}
                (Agg::Min | Agg::Max, _, _) => unknown.push(i),
                (_, Total::Long(t), Total::Long(Some(v))) => *t = Some(t.unwrap_or(0) - v),
                (_, Total::Double(t), Total::Double(Some(v))) => {
                    *t = Some(t.unwrap_or(0.0) - v);
                    self.magnitudes[i] += other.magnitudes[i];
                }
                _ => {}
            }
        }
        unknown
    }

    /// Whether measure `i`'s totals in `self` and `other` agree, counting a
    /// sum of 0 as no rows (rows added and taken out again); double sums
    /// within rounding of their values' magnitudes.
    pub fn agrees(&self, other: &Totals, i: usize) -> bool {
        let zero = |t: Total| match t {
            Total::Long(None) => Total::Long(Some(0)),
            Total::Double(None) => Total::Double(Some(0.0)),
            t => t,
        };
        match (self.measures[i].1, self.values[i], other.values[i]) {
            (Agg::Sum | Agg::Count, a, b) => match (zero(a), zero(b)) {
                (Total::Double(Some(x)), Total::Double(Some(y))) => {
                    let reach = self.magnitudes[i].max(other.magnitudes[i]);
                    x == y || !reach.is_finite() || (x - y).abs() <= DOUBLE_SUM_TOLERANCE * reach
                }
                (a, b) => a == b,
            },
            (_, Total::Double(Some(x)), Total::Double(Some(y))) => {
                x == y || (x.is_nan() && y.is_nan())
            }
            (_, a, b) => a == b,
        }
    }

    /// Fold in `other`: the totals of more rows of the same measures.
    pub fn absorb(&mut self, other: &Totals) {
        for ((agg, mine), theirs) in self
            .measures
            .iter()
            .map(|(_, agg)| *agg)
            .zip(&mut self.values)
            .zip(&other.values)
        {
            match (mine, *theirs) {
                (Total::Long(t), Total::Long(Some(v))) => *t = Some(fold_long(agg, *t, v)),
                (Total::Double(t), Total::Double(Some(v))) => *t = Some(fold_double(agg, *t, v)),
                _ => {}
            }
        }
        for (mine, theirs) in self.magnitudes.iter_mut().zip(&other.magnitudes) {
            *mine += theirs;
        }
    }

    /// The first measure whose totals differ between `self` and `other`:
    /// its name and both totals. Longs, mins and maxes must be equal; double
    /// sums may differ by rounding (the values were added in another order):
    /// by [`DOUBLE_SUM_TOLERANCE`] of the values' magnitudes, and are not
    /// compared once those pass the double range (the order of additions
    /// then decides whether a sum overflows).
    pub fn differs(&self, other: &Totals) -> Option<(String, Total, Total)> {
        (0..self.values.len())
            .find(
                |&i| match (self.measures[i].1, self.values[i], other.values[i]) {
                    (Agg::Sum, Total::Double(Some(x)), Total::Double(Some(y))) => {
                        let reach = self.magnitudes[i].max(other.magnitudes[i]);
                        let same = x == y
                            || !reach.is_finite()
                            || (x - y).abs() <= DOUBLE_SUM_TOLERANCE * reach;
                        !same
                    }
                    (_, Total::Double(Some(x)), Total::Double(Some(y))) => {
                        !(x == y || (x.is_nan() && y.is_nan()))
                    }
                    (_, a, b) => a != b,
                },
            )
            .map(|i| (self.measures[i].0.clone(), self.values[i], other.values[i]))
    }

    /// The totals as JSON by measure name (exact integers as strings when
    /// they pass what a JSON number holds exactly).
    pub fn by_name(&self) -> serde_json::Map<String, serde_json::Value> {
        self.measures
            .iter()
            .zip(&self.values)
            .map(|((name, _), t)| {
                let v = match t {
                    Total::Long(Some(v)) if v.unsigned_abs() <= (1u128 << 53) => {
                        serde_json::json!(*v as i64)
                    }
                    Total::Long(Some(v)) => serde_json::json!(v.to_string()),
                    Total::Double(Some(v)) => serde_json::json!(v),
                    _ => serde_json::Value::Null,
                };
                (name.clone(), v)
            })
            .collect()
    }
}

impl Totals {
    /// Fold the measures of rows (in declaration order) in.
    pub fn add_rows<'a>(&mut self, rows: impl IntoIterator<Item = &'a Measures>) {
        for row in rows {
            for (i, v) in row.0.iter().enumerate() {
                self.add_value(i, *v);
            }
        }
    }
}

fn combine_long(agg: Agg, a: i128, b: i128) -> i128 {
    match agg {
        Agg::Min => a.min(b),
        Agg::Max => a.max(b),
        Agg::Count | Agg::Sum => a + b,
    }
}

fn fold_long(agg: Agg, t: Option<i128>, v: i128) -> i128 {
    t.map_or(v, |t| combine_long(agg, t, v))
}

/// The exact sum of `values` (`None` when empty), in two 64-bit sums of
/// the values' high and low 32 bits, which cannot overflow for fewer than
/// 2^31 values and which the compiler vectorises (an `i128` sum is not).
pub(crate) fn exact_sum(values: &[i64]) -> Option<i128> {
    if values.is_empty() {
        return None;
    }
    let mut total = 0i128;
    for chunk in values.chunks(1 << 30) {
        let (mut high, mut low) = (0i64, 0i64);
        for &v in chunk {
            high += v >> 32;
            low += v & 0xffff_ffff;
        }
        total += ((high as i128) << 32) + low as i128;
    }
    Some(total)
}

fn fold_longs(agg: Agg, values: impl Iterator<Item = i64>) -> Option<i128> {
    let mut values = values.peekable();
    values.peek()?;
    Some(match agg {
        Agg::Min => values.min().map_or(0, i128::from),
        Agg::Max => values.max().map_or(0, i128::from),
        Agg::Count | Agg::Sum => values.map(i128::from).sum(),
    })
}

fn fold_double(agg: Agg, t: Option<f64>, v: f64) -> f64 {
    match (agg, t) {
        (_, None) => v,
        (Agg::Min, Some(t)) => t.min(v),
        (Agg::Max, Some(t)) => t.max(v),
        (Agg::Count | Agg::Sum, Some(t)) => t + v,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use arrow_array::{Float64Array, Int64Array};

    use super::*;

    fn decl() -> TableDecl {
        TableDecl::example()
    }

    #[test]
    fn long_sums_are_exact_past_the_long_range_and_columns_fold_as_values_do() {
        let d = decl();
        let mut by_column = Totals::new(&d);
        let mut by_value = Totals::new(&d);
        let values = [Some(i64::MAX), None, Some(i64::MAX), Some(-3)];
        let column: ArrayRef = Arc::new(Int64Array::from(values.to_vec()));
        for i in 0..4 {
            by_column.add_array(i, &column);
            for v in values {
                by_value.add_value(i, MeasureValue::Long(v));
            }
        }
        assert_eq!(by_column, by_value);
        assert_eq!(
            by_column.values[1],
            Total::Long(Some(2 * i64::MAX as i128 - 3))
        );
        assert_eq!(by_column.values[3], Total::Long(Some(i64::MAX as i128)));
        assert_eq!(by_column.differs(&by_value), None);
        by_value.add_value(2, MeasureValue::Long(Some(1)));
        let (name, a, b) = by_column.differs(&by_value).unwrap();
        assert_eq!(name, "cpu_ms");
        assert_eq!(b, Total::Long(Some(2 * i64::MAX as i128 - 2)));
        assert_ne!(a, b);
        assert_eq!(
            by_column.by_name()["bytes"],
            serde_json::json!((2 * i64::MAX as i128 - 3).to_string())
        );
    }

    #[test]
    fn the_split_sum_is_the_exact_sum() {
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(9);
        for n in [0usize, 1, 2, 7, 1000, 4099] {
            let mut values: Vec<i64> = (0..n).map(|_| rand::Rng::random(&mut rng)).collect();
            if n > 3 {
                values[0] = i64::MIN;
                values[1] = i64::MAX;
                values[2] = -1;
            }
            let want = (n > 0).then(|| values.iter().map(|&v| v as i128).sum::<i128>());
            assert_eq!(exact_sum(&values), want, "{n} values");
        }
        assert_eq!(exact_sum(&[i64::MAX; 3]), Some(3 * i64::MAX as i128));
        assert_eq!(exact_sum(&[i64::MIN; 3]), Some(3 * i64::MIN as i128));
    }

    #[test]
    fn totals_of_parts_absorbed_equal_the_totals_of_the_whole() {
        let d = decl();
        let values = [Some(7), None, Some(i64::MAX), Some(-3), Some(i64::MIN)];
        let mut whole = Totals::new(&d);
        let (mut first, mut second, empty) = (Totals::new(&d), Totals::new(&d), Totals::new(&d));
        for i in 0..4 {
            for (k, v) in values.into_iter().enumerate() {
                whole.add_value(i, MeasureValue::Long(v));
                let part = if k < 2 { &mut first } else { &mut second };
                part.add_value(i, MeasureValue::Long(v));
            }
        }
        first.absorb(&second);
        first.absorb(&empty);
        assert_eq!(first, whole);
        let mut none = Totals::new(&d);
        none.absorb(&whole);
        assert_eq!(none, whole);
    }

    #[test]
    fn double_sums_in_another_order_agree_within_rounding() {
        let d = TableDecl::parse(
            Path::new("t.toml"),
            &include_str!("../../schemas/usage.http_requests.toml").replace(
                "field = \"cpu_ms\"\ntype = \"long\"",
                "field = \"cpu_ms\"\ntype = \"double\"",
            ),
        )
        .unwrap();
        let xs = [0.1, 0.2, 0.3, 1e6, -0.7];
        let mut a = Totals::new(&d);
        let mut b = Totals::new(&d);
        a.add_array(2, &(Arc::new(Float64Array::from(xs.to_vec())) as ArrayRef));
        for x in xs.iter().rev() {
            b.add_value(2, MeasureValue::Double(Some(*x)));
        }
        assert_eq!(a.differs(&b), None);
        b.add_value(2, MeasureValue::Double(Some(0.01)));
        assert_eq!(a.differs(&b).unwrap().0, "cpu_ms");

        // Cancellation: the sums are far apart relative to themselves, not
        // to what was added; past the double range, not compared.
        for (xs, same) in [
            (vec![1e300, 1.0, -1e300], true),
            (vec![1e308, 1e308, -1e308], true),
            (vec![1e300, 1e290, -1e300], true),
        ] {
            let (mut a, mut b) = (Totals::new(&d), Totals::new(&d));
            for x in &xs {
                a.add_value(2, MeasureValue::Double(Some(*x)));
            }
            for x in xs.iter().rev() {
                b.add_value(2, MeasureValue::Double(Some(*x)));
            }
            assert_eq!(a.differs(&b).is_none(), same, "{xs:?}");
        }
        let (mut a, mut b) = (Totals::new(&d), Totals::new(&d));
        a.add_value(2, MeasureValue::Double(Some(1e300)));
        b.add_value(2, MeasureValue::Double(Some(1e300)));
        b.add_value(2, MeasureValue::Double(Some(1e292)));
        assert!(
            a.differs(&b).is_some(),
            "a value lost is seen beside a large one"
        );
    }
}
