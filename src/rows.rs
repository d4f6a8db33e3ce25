//! The row model shared by ingest, compaction and rollup: a key (dimension
//! values and a bucket start) and mergeable measure accumulators.
//!
//! Rows are additive: two rows with the same key may coexist in a table, and
//! [`MeasureSpec::merge`] collapses them without changing any total — unless
//! a sum would leave its type's exact range, when they stay apart: no row
//! ever stores a wrapped value.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hash, Hasher};

use hashbrown::HashTable;
use hashbrown::hash_table::Entry;

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

    /// The same value, borrowing from `self`.
    fn reborrow(&self) -> DimRef<'_> {
        match self {
            DimRef::Str(s) => DimRef::Str(Cow::Borrowed(s.as_ref())),
            DimRef::Null => DimRef::Null,
            DimRef::Bool(b) => DimRef::Bool(*b),
            DimRef::Long(v) => DimRef::Long(*v),
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

impl Hash for DimRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        match self {
            DimRef::Null => state.write_u8(0),
            DimRef::Bool(b) => {
                state.write_u8(1);
                state.write_u8(*b as u8);
            }
            DimRef::Long(v) => {
                state.write_u8(2);
                state.write_i64(*v);
            }
            DimRef::Str(s) => {
                state.write_u8(3);
                state.write(s.as_bytes());
                state.write_u8(0xff);
            }
        }
    }
}

impl DimValue {
    /// Whether `r` is this value.
    fn is(&self, r: &DimRef<'_>) -> bool {
        match (self, r) {
            (DimValue::Null, DimRef::Null) => true,
            (DimValue::Bool(a), DimRef::Bool(b)) => a == b,
            (DimValue::Long(a), DimRef::Long(b)) => a == b,
            (DimValue::Str(a), DimRef::Str(b)) => **a == **b,
            _ => false,
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
    /// optional field was missing; counts ignore values. Returns `false`, and
    /// leaves `acc` as it was, when a sum or count would leave its type's
    /// exact range (`i64`, or a finite `f64`): a row never stores a wrapped
    /// or infinite value; the caller starts another row instead.
    #[must_use]
    pub fn add_event(&self, acc: &mut Measures, values: &[Option<MeasureValue>]) -> bool {
        self.apply(
            &mut acc.0,
            |i, agg| event_value(values, i, agg),
            Fold::Exact,
        )
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

/// An in-memory aggregation of rows by key: what a flush or a merge holds.
/// Events are looked up by their borrowed key ([`RowMap::add_event_ref`]):
/// only a key not seen before is copied.
#[derive(Debug, Default)]
pub struct RowMap {
    /// Rows by key, each with its key's hash (a table that grows does not
    /// hash its keys again).
    rows: HashTable<(u64, RowKey, Measures)>,
    hasher: hashbrown::DefaultHashBuilder,
    /// Rows not looked up by key: those closed because adding to them would
    /// have overflowed a sum (a new row with the same key took their
    /// place), and those appended from other maps ([`RowMap::append`]).
    full: Vec<(RowKey, Measures)>,
}

/// The hash of a key, whether borrowed or owned.
fn key_hash<'a>(
    hasher: &impl BuildHasher,
    dims: impl Iterator<Item = DimRef<'a>>,
    ts_micros: i64,
) -> u64 {
    let mut h = hasher.build_hasher();
    for d in dims {
        d.hash(&mut h);
    }
    h.write_i64(ts_micros);
    h.finish()
}

fn owned_hash(hasher: &impl BuildHasher, key: &RowKey) -> u64 {
    key_hash(hasher, key.dims.iter().map(DimRef::from), key.ts_micros)
}

impl RowMap {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.rows.len() + self.full.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty() && self.full.is_empty()
    }

    /// Add one event to the row for `key` (to a new row of that key when a
    /// sum of the current one would overflow).
    pub fn add_event(&mut self, spec: &MeasureSpec, key: RowKey, values: &[Option<MeasureValue>]) {
        let dims: Vec<DimRef<'_>> = key.dims.iter().map(DimRef::from).collect();
        self.add_event_ref(spec, &dims, key.ts_micros, values);
    }

    /// Add one event, keyed by `dims` (borrowed) and `ts_micros`, to its
    /// row: the common case, an existing row with room, neither copies nor
    /// allocates.
    pub fn add_event_ref(
        &mut self,
        spec: &MeasureSpec,
        dims: &[DimRef<'_>],
        ts_micros: i64,
        values: &[Option<MeasureValue>],
    ) {
        let fresh = || {
            let mut row = spec.empty();
            // A single event fits an empty row: its values are in range.
            let _ = spec.add_event(&mut row, values);
            row
        };
        let hash = key_hash(&self.hasher, dims.iter().map(DimRef::reborrow), ts_micros);
        let same = |(_, k, _): &(u64, RowKey, Measures)| {
            k.ts_micros == ts_micros && k.dims.iter().zip(dims).all(|(a, b)| a.is(b))
        };
        match self.rows.entry(hash, same, |(h, _, _)| *h) {
            Entry::Occupied(mut o) => {
                let (_, key, acc) = o.get_mut();
                if !spec.add_event(acc, values) {
                    let closed = std::mem::replace(acc, fresh());
                    self.full.push((key.clone(), closed));
                }
            }
            Entry::Vacant(v) => {
                let key = RowKey {
                    dims: dims.iter().map(DimRef::to_owned_value).collect(),
                    ts_micros,
                };
                v.insert((hash, key, fresh()));
            }
        }
    }

    /// Merge a whole row (kept apart when a sum would overflow).
    pub fn add_row(&mut self, spec: &MeasureSpec, key: RowKey, measures: &Measures) {
        let hash = owned_hash(&self.hasher, &key);
        match self.rows.entry(hash, |(_, k, _)| *k == key, |(h, _, _)| *h) {
            Entry::Occupied(mut o) => {
                if !spec.merge(&mut o.get_mut().2, measures) {
                    self.full.push((key, measures.clone()));
                }
            }
            Entry::Vacant(v) => {
                v.insert((hash, key, measures.clone()));
            }
        }
    }

    /// The keys, in no particular order (a key twice when its row was split).
    pub fn keys(&self) -> impl Iterator<Item = &RowKey> {
        self.rows
            .iter()
            .map(|(_, k, _)| k)
            .chain(self.full.iter().map(|(k, _)| k))
    }

    /// Merge all of `other` into this map.
    pub fn absorb(&mut self, spec: &MeasureSpec, other: RowMap) {
        for (key, measures) in other.into_rows() {
            self.add_row(spec, key, &measures);
        }
    }

    /// Take all of `other`'s rows without looking them up: rows of the
    /// same key are merged when the map is sorted ([`RowMap::into_sorted`]),
    /// and until then count twice in [`RowMap::len`]. For a map taken whole
    /// to be written, as a flush takes the shards' maps.
    pub fn append(&mut self, other: RowMap) {
        if self.is_empty() {
            *self = other;
            return;
        }
        self.full.reserve(other.len());
        self.full.extend(other.into_rows());
    }

    /// Every row, in no particular order.
    fn into_rows(self) -> impl Iterator<Item = (RowKey, Measures)> {
        let indexed = self.rows.into_iter().map(|(_, k, m)| (k, m));
        indexed.chain(self.full)
    }

    /// The rows sorted as the table's sort order says: dimensions, then
    /// `ts`; rows of one key merged, unless a sum would overflow.
    pub fn into_sorted(self, spec: &MeasureSpec) -> Vec<(RowKey, Measures)> {
        let mut rows: Vec<_> = Vec::with_capacity(self.len());
        rows.extend(self.into_rows());
        rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut out: Vec<(RowKey, Measures)> = Vec::with_capacity(rows.len());
        for (key, measures) in rows {
            if let Some((k, acc)) = out.last_mut()
                && *k == key
                && spec.merge_values(&mut acc.0, &measures.0)
            {
                continue;
            }
            out.push((key, measures));
        }
        out
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
    fn a_sum_that_would_overflow_starts_another_row_and_merges_keep_them_apart() {
        let s = spec();
        let key = RowKey {
            dims: vec![DimValue::Long(1)],
            ts_micros: 0,
        };
        let ev = |b: i64| {
            [
                None,
                Some(MeasureValue::Long(Some(b))),
                Some(MeasureValue::Long(Some(-5))),
                Some(MeasureValue::Long(Some(b))),
            ]
        };
        let mut map = RowMap::default();
        for _ in 0..3 {
            map.add_event(&s, key.clone(), &ev(1 << 62));
        }
        let rows = map.into_sorted(&s);
        assert_eq!(rows.len(), 3);
        for (_, m) in &rows {
            assert_eq!(m.0[0], MeasureValue::Long(Some(1)));
            assert_eq!(m.0[1], MeasureValue::Long(Some(1 << 62)));
            assert_eq!(
                m.0[2],
                MeasureValue::Long(Some(-5)),
                "negative values add up"
            );
        }
        // Two rows that fit: merged. A third that would overflow: refused,
        // the accumulator unchanged.
        let mut acc = s.empty();
        assert!(s.add_event(&mut acc, &ev(1 << 61)));
        let mut other = s.empty();
        assert!(s.add_event(&mut other, &ev(1 << 61)));
        assert!(s.merge(&mut acc, &other));
        assert_eq!(acc.0[1], MeasureValue::Long(Some(1 << 62)));
        let before = acc.clone();
        assert!(!s.merge(&mut acc, &rows[2].1));
        assert_eq!(acc, before);
        // Report totals stay at the bound rather than wrap.
        s.merge_saturating(&mut acc, &rows[2].1);
        assert_eq!(acc.0[1], MeasureValue::Long(Some(i64::MAX)));
        // The low end too.
        let mut low = s.empty();
        assert!(s.add_event(&mut low, &ev(i64::MIN)));
        assert!(!s.add_event(&mut low, &ev(-1)));
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
        let rows = m.into_sorted(&s);
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
        assert!(s.merge(&mut merged, &rows[1].1));
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

    /// Maps appended without lookups sort to the same rows as maps merged
    /// key by key: rows of one key merged, a sum that would overflow kept
    /// apart, every total the same.
    #[test]
    fn appended_maps_sort_to_the_rows_of_merged_maps() {
        let s = spec();
        let key = |account, t| RowKey {
            dims: vec![DimValue::Long(account), DimValue::Str("cdn".into())],
            ts_micros: t,
        };
        let ev = |b: i64| [None, Some(MeasureValue::Long(Some(b))), None, None];
        let parts = |n: i64| {
            let mut m = RowMap::default();
            for i in 0..40 {
                m.add_event(&s, key(i % 7, (i % 3) * 60), &ev(n * 100 + i));
            }
            m.add_event(&s, key(99, 0), &ev(i64::MAX / 2 + n));
            m
        };
        let mut appended = RowMap::default();
        let mut merged = RowMap::default();
        for n in 0..3 {
            appended.append(parts(n));
            merged.absorb(&s, parts(n));
        }
        assert_eq!(appended.len(), 3 * 22, "appended rows count until sorted");
        let (a, m) = (appended.into_sorted(&s), merged.into_sorted(&s));
        assert!(a.windows(2).all(|w| w[0].0 <= w[1].0), "sorted by key");
        // Per key: the rows and the exact sums of every measure.
        let by_key = |rows: &[(RowKey, Measures)]| {
            let mut out: BTreeMap<RowKey, (usize, Vec<i128>)> = BTreeMap::new();
            for (k, m) in rows {
                let e = out.entry(k.clone()).or_insert((0, vec![0; m.0.len()]));
                e.0 += 1;
                for (i, v) in m.0.iter().enumerate() {
                    if let MeasureValue::Long(Some(v)) = v {
                        e.1[i] += i128::from(*v);
                    }
                }
            }
            out
        };
        let (a, m) = (by_key(&a), by_key(&m));
        assert_eq!(a.len(), 7 * 3 + 1);
        for (k, (rows, sums)) in &a {
            assert_eq!(sums, &m[k].1, "the totals of {k:?}");
            if k.dims[0] == DimValue::Long(99) {
                // Three sums of which no three fit: two or three rows.
                assert!((2..=3).contains(rows), "{rows}");
            } else {
                assert_eq!(*rows, 1, "one row for {k:?}");
            }
        }
    }

    /// Borrowed and owned keys of the same values find the same row; keys
    /// that differ only in a value's type or in null against empty do not.
    #[test]
    fn borrowed_keys_find_the_rows_of_their_values() {
        let s = spec();
        let ev = [None, Some(MeasureValue::Long(Some(2))), None, None];
        let mut m = RowMap::default();
        let owned = String::from("AMS");
        let keys: [Vec<DimRef<'_>>; 6] = [
            vec![DimRef::Long(1), DimRef::Str(Cow::Borrowed("AMS"))],
            vec![DimRef::Long(1), DimRef::Str(Cow::Owned(owned.clone()))],
            vec![DimRef::Bool(true), DimRef::Str(Cow::Borrowed("AMS"))],
            vec![DimRef::Long(1), DimRef::Str(Cow::Borrowed(""))],
            vec![DimRef::Long(1), DimRef::Null],
            vec![DimRef::Long(1), DimRef::Str(Cow::Borrowed("AMS\0"))],
        ];
        for k in &keys {
            m.add_event_ref(&s, k, 60, &ev);
        }
        m.add_event(
            &s,
            RowKey {
                dims: vec![DimValue::Long(1), DimValue::Str(owned.into())],
                ts_micros: 60,
            },
            &ev,
        );
        m.add_event_ref(&s, &keys[0], 120, &ev);
        let rows = m.into_sorted(&s);
        let counts: Vec<_> = rows
            .iter()
            .map(|(k, m)| (k.dims.clone(), k.ts_micros, m.0[0]))
            .collect();
        assert_eq!(counts.len(), 6, "{counts:?}");
        let ams = counts
            .iter()
            .find(|(d, t, _)| {
                *t == 60 && d[1] == DimValue::Str("AMS".into()) && d[0] == DimValue::Long(1)
            })
            .unwrap();
        assert_eq!(
            ams.2,
            MeasureValue::Long(Some(3)),
            "three events of one key"
        );
    }

    #[test]
    fn null_dimensions_sort_first() {
        assert!(DimValue::Null < DimValue::Long(i64::MIN));
        assert!(DimValue::Null < DimValue::Str("".into()));
    }
}
