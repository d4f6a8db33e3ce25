//! RowMap and SortedRows against what rows mean: totals per key, order.

use std::borrow::Cow;
use std::collections::BTreeMap;

use super::*;
use crate::rows::DimValue;
use crate::schema::decl::TableDecl;

fn spec() -> MeasureSpec {
    MeasureSpec::new(&TableDecl::example())
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

/// `parts` maps of `events` events each, appended into one: event `i` of
/// part `n` has the account and bucket start `key(n, i)`, colo `cdn`, and
/// `i` bytes.
fn appended(
    s: &MeasureSpec,
    parts: i64,
    events: i64,
    key: impl Fn(i64, i64) -> (i64, i64),
) -> RowMap {
    let mut map = RowMap::default();
    for n in 0..parts {
        let mut part = RowMap::default();
        for i in 0..events {
            let (account, ts_micros) = key(n, i);
            let key = RowKey {
                dims: vec![DimValue::Long(account), DimValue::Str("cdn".into())],
                ts_micros,
            };
            part.add_event(
                s,
                key,
                &[None, Some(MeasureValue::Long(Some(i))), None, None],
            );
        }
        map.append(part);
    }
    map
}

/// Sorted rows taken in the order they are held are the sorted rows, each
/// once: rows folded into another by the sort are left out.
#[test]
fn sorted_rows_taken_unordered_are_the_sorted_rows() {
    let s = spec();
    let map = appended(&s, 3, 50, |n, i| ((i * 7 + n) % 11, (i % 4) * 60_000_000));
    let held = map.len();
    let sorted = map.sorted(&s);
    assert!(
        sorted.len() < held,
        "the sort folded appended rows together"
    );
    let row = |r: SortedRow<'_>| (r.key.to_vec(), r.measures.to_vec());
    let mut unordered: Vec<_> = sorted.each_unordered().map(row).collect();
    let in_order: Vec<_> = sorted.iter().map(row).collect();
    assert_ne!(unordered, in_order, "held in another order than sorted");
    unordered.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(unordered, in_order);
}

/// Sorted rows grouped by their bucket start's hour are, group by group,
/// the sorted rows of that hour, in order.
#[test]
fn sorted_rows_grouped_are_the_sorted_rows_of_each_group() {
    let s = spec();
    let map = appended(&s, 2, 200, |n, i| {
        ((i * 13 + n) % 17, (i % 7) * 1_800_000_000)
    });
    let sorted = map.sorted(&s);
    let hour = |ts: i64| ts.div_euclid(3_600_000_000);
    let row = |r: &SortedRow<'_>| (r.key.to_vec(), r.measures.to_vec());
    let grouped = sorted.grouped_by(hour);
    assert_eq!(grouped.len(), 4, "hours 0 to 3");
    for (h, rows) in &grouped {
        let want: Vec<_> = sorted
            .iter()
            .filter(|r| hour(r.ts_micros()) == *h)
            .map(|r| row(&r))
            .collect();
        let got: Vec<_> = rows.iter().map(row).collect();
        assert_eq!(got, want, "hour {h}");
    }
    assert_eq!(grouped.values().map(Vec::len).sum::<usize>(), sorted.len());
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

mod arbitrary {
    use proptest::prelude::*;

    use super::*;

    fn dim_long() -> impl Strategy<Value = DimValue> {
        prop_oneof![Just(DimValue::Null), (-1i64..3).prop_map(DimValue::Long)]
    }

    fn dim_str() -> impl Strategy<Value = DimValue> {
        prop_oneof![
            Just(DimValue::Null),
            // Long strings that differ only past the bytes held beside a
            // key for sorting, or not at all, so the sort reads the keys.
            prop::sample::select(vec![
                "".to_string(),
                "a".into(),
                "a\0".into(),
                "\0".into(),
                "b\u{e9}".into(),
                "x".repeat(40),
                format!("{}a", "x".repeat(40)),
                format!("{}\0b", "x".repeat(40)),
            ])
            .prop_map(|s| DimValue::Str(s.into())),
        ]
    }

    /// A key and one event's bytes, cpu and ttfb values (huge ones so that
    /// some rows must stay apart).
    fn event() -> impl Strategy<Value = (RowKey, i64, i64, Option<i64>)> {
        let big = prop_oneof![Just(i64::MAX / 2), Just(i64::MIN / 2), Just(i64::MAX)];
        (
            (
                dim_long(),
                dim_str(),
                prop::sample::select(vec![-60i64, 0, 60]),
            ),
            prop_oneof![4 => -5i64..100, 1 => big],
            -5i64..5,
            proptest::option::of(-100i64..100),
        )
            .prop_map(|((a, b, t), bytes, cpu, ttfb)| {
                (
                    RowKey {
                        dims: vec![a, b],
                        ts_micros: t * 1_000_000,
                    },
                    bytes,
                    cpu,
                    ttfb,
                )
            })
    }

    proptest! {
        /// Events spread over maps that are appended or absorbed sort to
        /// rows in key order whose exact totals per key are the events':
        /// one row per key unless a sum would have overflowed.
        #[test]
        fn maps_keep_every_keys_totals_in_key_order(
            parts in proptest::collection::vec(proptest::collection::vec(event(), 0..60), 1..4),
            absorb in proptest::collection::vec(any::<bool>(), 4),
        ) {
            let s = spec();
            let mut want: BTreeMap<RowKey, (i128, i128, i128, Option<i64>, bool)> = BTreeMap::new();
            let mut whole = RowMap::default();
            for (n, part) in parts.iter().enumerate() {
                let mut map = RowMap::default();
                for (key, bytes, cpu, ttfb) in part {
                    let values = [
                        None,
                        Some(MeasureValue::Long(Some(*bytes))),
                        Some(MeasureValue::Long(Some(*cpu))),
                        ttfb.map(|v| MeasureValue::Long(Some(v))),
                    ];
                    let dims: Vec<DimRef<'_>> = key.dims.iter().map(DimRef::from).collect();
                    map.add_event_ref(&s, &dims, key.ts_micros, &values);
                    let w = want.entry(key.clone()).or_insert((0, 0, 0, None, false));
                    w.0 += 1;
                    w.1 += i128::from(*bytes);
                    w.2 += i128::from(*cpu);
                    w.3 = w.3.max(*ttfb).or(*ttfb);
                    w.4 |= bytes.unsigned_abs() > 1 << 40;
                }
                if absorb[n] {
                    whole.absorb(&s, map);
                } else {
                    whole.append(map);
                }
            }
            let sorted = whole.sorted(&s);
            let rows = sorted.to_rows();
            prop_assert_eq!(rows.len(), sorted.len());
            prop_assert!(rows.windows(2).all(|w| w[0].0 <= w[1].0), "in key order");
            let mut got: BTreeMap<RowKey, (i128, i128, i128, Option<i64>, usize)> = BTreeMap::new();
            for ((key, m), row) in rows.iter().zip(sorted.iter()) {
                prop_assert_eq!(row.ts_micros(), key.ts_micros);
                let long = |v: MeasureValue| match v {
                    MeasureValue::Long(v) => v,
                    MeasureValue::Double(_) => None,
                };
                let g = got.entry(key.clone()).or_insert((0, 0, 0, None, 0));
                g.0 += i128::from(long(m.0[0]).unwrap_or(0));
                g.1 += i128::from(long(m.0[1]).unwrap_or(0));
                g.2 += i128::from(long(m.0[2]).unwrap_or(0));
                g.3 = g.3.max(long(m.0[3])).or(long(m.0[3]));
                g.4 += 1;
            }
            prop_assert_eq!(got.len(), want.len());
            for (key, w) in &want {
                let g = &got[key];
                prop_assert_eq!((g.0, g.1, g.2, g.3), (w.0, w.1, w.2, w.3), "totals of {:?}", key);
                if !w.4 {
                    prop_assert_eq!(g.4, 1, "one row for {:?}", key);
                }
            }
        }
    }
}
