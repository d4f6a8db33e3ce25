//! The columnar merge against a straightforward reference aggregation, on
//! random sorted inputs: nulls in every optional column, keys repeated
//! within and across inputs, every measure type and fold, late rows far
//! from the rest, sums past `i64`'s range, and batches of random sizes.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type, TimestampMicrosecondType};
use arrow_array::{Array, ArrayRef, RecordBatch};
use futures::StreamExt;
use proptest::prelude::*;

use super::{BatchStream, Layout, MergeReader};
use crate::rows::{DimValue, MeasureValue, Measures, RowKey};
use crate::schema::decl::{Agg, TableDecl};
use crate::schema::layout::{self, Grain};
use crate::write;

const DECL: &str = r#"
[table]
namespace = "t"
name = "m"
topic = "m"
event_time = "ts"

[[dimension]]
name = "account"
type = "long"
optional = true

[[dimension]]
name = "colo"
type = "string"
optional = true

[[dimension]]
name = "tls"
type = "boolean"
optional = true

[[measure]]
name = "requests"
agg = "count"

[[measure]]
name = "bytes"
agg = "sum"
field = "bytes"
type = "long"
optional = true

[[measure]]
name = "lat_min"
agg = "min"
field = "lat"
type = "long"
optional = true

[[measure]]
name = "lat_max"
agg = "max"
field = "lat"
type = "long"
optional = true

[[measure]]
name = "cpu"
agg = "sum"
field = "cpu"
type = "double"
optional = true

[[measure]]
name = "cpu_min"
agg = "min"
field = "cpu"
type = "double"
optional = true

[[measure]]
name = "cpu_max"
agg = "max"
field = "cpu"
type = "double"
optional = true

[policy]
minute_to_hour_after = "7d"
hour_to_day_after = "90d"
retain = "400d"
"#;

fn decl() -> TableDecl {
    TableDecl::parse(Path::new("m.toml"), DECL).unwrap()
}

fn arrow_schema(decl: &TableDecl) -> arrow_schema::SchemaRef {
    let schema = layout::initial_schema(decl).unwrap();
    Arc::new(iceberg::arrow::schema_to_arrow_schema(&schema).unwrap())
}

const MINUTE: i64 = 60_000_000;
/// 2026-03-02T00:00Z
const T0: i64 = 1_772_409_600_000_000;

fn dim() -> impl Strategy<Value = (DimValue, DimValue, DimValue)> {
    (
        prop_oneof![Just(DimValue::Null), (-2i64..3).prop_map(DimValue::Long)],
        prop_oneof![
            Just(DimValue::Null),
            prop::sample::select(vec!["", "AMS", "FRA", "東京-1"])
                .prop_map(|s| DimValue::Str(s.into()))
        ],
        prop_oneof![Just(DimValue::Null), any::<bool>().prop_map(DimValue::Bool)],
    )
}

fn long() -> impl Strategy<Value = Option<i64>> {
    prop_oneof![
        4 => (-1000i64..1000).prop_map(Some),
        1 => Just(None),
        1 => prop::sample::select(vec![i64::MAX, i64::MIN, i64::MAX / 2 + 1, -(i64::MAX / 2)]).prop_map(Some),
    ]
}

fn double() -> impl Strategy<Value = Option<f64>> {
    prop_oneof![
        4 => (-1e6f64..1e6).prop_map(Some),
        1 => Just(None),
        1 => prop::sample::select(vec![f64::MAX, -f64::MAX, 0.5, -0.0]).prop_map(Some),
    ]
}

/// One stored row: key and measures, as a minute row.
fn row() -> impl Strategy<Value = (RowKey, Measures)> {
    (
        dim(),
        // Mostly three hours of one day; one in ten a late row days away.
        prop_oneof![9 => 0i64..180, 1 => 0i64..(40 * 1440)],
        (1i64..5, long(), long(), long()),
        (double(), double(), double()),
    )
        .prop_map(
            |((a, c, t), minute, (n, b, lmin, lmax), (cpu, cmin, cmax))| {
                (
                    RowKey {
                        dims: vec![a, c, t],
                        ts_micros: T0 + minute * MINUTE,
                    },
                    Measures(vec![
                        MeasureValue::Long(Some(n)),
                        MeasureValue::Long(b),
                        MeasureValue::Long(lmin),
                        MeasureValue::Long(lmax),
                        MeasureValue::Double(cpu),
                        MeasureValue::Double(cmin),
                        MeasureValue::Double(cmax),
                    ]),
                )
            },
        )
}

/// Inputs: each a sorted list of rows, cut into batches of the given sizes.
/// An input: its sorted rows, and the sizes its batches are cut to.
type Input = (Vec<(RowKey, Measures)>, Vec<usize>);

fn inputs() -> impl Strategy<Value = Vec<Input>> {
    prop::collection::vec(
        (
            prop::collection::vec(row(), 0..120),
            prop::collection::vec(1usize..40, 1..6),
        ),
        1..6,
    )
    .prop_map(|inputs| {
        inputs
            .into_iter()
            .map(|(mut rows, sizes)| {
                rows.sort_by(|a, b| a.0.cmp(&b.0));
                (rows, sizes)
            })
            .collect()
    })
}

/// How an input's string dimension is read: as strings, as a dictionary
/// (as a Parquet reader gives one), or as a dictionary that repeats values
/// (each row its own entry: neighbours with equal strings, unequal keys).
#[derive(Debug, Clone, Copy)]
enum Strings {
    Plain,
    Dictionary,
    Repeating,
    /// Each batch one of the above in turn, so that one merge compares
    /// and gathers keys read plain with keys read as dictionaries.
    Mixed,
}

/// `batch` with its string columns as `strings` says.
fn with_strings(batch: RecordBatch, strings: Strings) -> RecordBatch {
    use arrow_array::types::Int32Type;
    use arrow_array::{DictionaryArray, Int32Array};
    use arrow_schema::{DataType, Field, Schema};
    let dict = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
    let mut fields = Vec::new();
    let mut columns = Vec::new();
    for (f, c) in batch.schema().fields().iter().zip(batch.columns()) {
        let (field, column) = match (strings, f.data_type()) {
            (Strings::Dictionary, DataType::Utf8) => (
                Field::new(f.name(), dict.clone(), true),
                arrow_cast::cast(c, &dict).unwrap(),
            ),
            (Strings::Repeating, DataType::Utf8) => {
                let keys: Int32Array = (0..c.len())
                    .map(|i| c.is_valid(i).then_some(i as i32))
                    .collect();
                let array = DictionaryArray::<Int32Type>::try_new(keys, c.clone()).unwrap();
                (
                    Field::new(f.name(), dict.clone(), true),
                    Arc::new(array) as ArrayRef,
                )
            }
            _ => (f.as_ref().clone(), c.clone()),
        };
        fields.push(field);
        columns.push(column);
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap()
}

fn streams_with(
    decl: &TableDecl,
    inputs: &[Input],
    strings: Strings,
) -> Vec<(String, BatchStream)> {
    let schema = arrow_schema(decl);
    inputs
        .iter()
        .enumerate()
        .map(|(i, (rows, sizes))| {
            let mut batches = Vec::new();
            let mut rest = &rows[..];
            let mut s = 0;
            while !rest.is_empty() {
                let take = sizes[s % sizes.len()].min(rest.len());
                s += 1;
                batches.extend(
                    write::to_batches(&schema, decl, Grain::Minute, &rest[..take]).unwrap(),
                );
                rest = &rest[take..];
            }
            let turns = [Strings::Plain, Strings::Dictionary, Strings::Repeating];
            let batches: Vec<_> = batches
                .into_iter()
                .enumerate()
                .map(|(j, b)| match strings {
                    Strings::Mixed => Ok(with_strings(b, turns[(i + j) % 3])),
                    _ => Ok(with_strings(b, strings)),
                })
                .collect();
            let stream: BatchStream = futures::stream::iter(batches).boxed();
            (format!("input-{i}"), stream)
        })
        .collect()
}

/// A key's totals, as the reference computes them: exact integers.
#[derive(Debug, Default, Clone, PartialEq)]
struct Totals {
    longs: [Option<i128>; 4],
    cpu: Option<f64>,
    cpu_min: Option<f64>,
    cpu_max: Option<f64>,
}

fn add(t: &mut Totals, m: &Measures) {
    let aggs = [Agg::Sum, Agg::Sum, Agg::Min, Agg::Max];
    for (i, agg) in aggs.iter().enumerate() {
        if let MeasureValue::Long(Some(v)) = m.0[i] {
            let v = v as i128;
            t.longs[i] = Some(match (t.longs[i], agg) {
                (None, _) => v,
                (Some(a), Agg::Min) => a.min(v),
                (Some(a), Agg::Max) => a.max(v),
                (Some(a), _) => a + v,
            });
        }
    }
    let d = |i: usize| match m.0[i] {
        MeasureValue::Double(v) => v,
        MeasureValue::Long(_) => unreachable!(),
    };
    if let Some(v) = d(4) {
        t.cpu = Some(t.cpu.map_or(v, |a| a + v));
    }
    if let Some(v) = d(5) {
        t.cpu_min = Some(t.cpu_min.map_or(v, |a: f64| a.min(v)));
    }
    if let Some(v) = d(6) {
        t.cpu_max = Some(t.cpu_max.map_or(v, |a: f64| a.max(v)));
    }
}

fn dim_at(a: &ArrayRef, row: usize) -> DimValue {
    if a.is_null(row) {
        return DimValue::Null;
    }
    match a.data_type() {
        arrow_schema::DataType::Int64 => DimValue::Long(a.as_primitive::<Int64Type>().value(row)),
        arrow_schema::DataType::Boolean => DimValue::Bool(a.as_boolean().value(row)),
        _ => DimValue::Str(a.as_string::<i32>().value(row).into()),
    }
}

/// The merged rows of a batch, read back.
fn rows_of(batch: &RecordBatch, grain: Grain) -> Vec<(RowKey, Measures)> {
    let col = |n: &str| batch.column_by_name(n).unwrap().clone();
    let (a, c, t) = (col("account"), col("colo"), col("tls"));
    let ts = col("ts");
    let ts = ts.as_primitive::<TimestampMicrosecondType>();
    let g = col("grain");
    let longs: Vec<ArrayRef> = ["requests", "bytes", "lat_min", "lat_max"]
        .iter()
        .map(|n| col(n))
        .collect();
    let doubles: Vec<ArrayRef> = ["cpu", "cpu_min", "cpu_max"]
        .iter()
        .map(|n| col(n))
        .collect();
    (0..batch.num_rows())
        .map(|r| {
            assert_eq!(g.as_string::<i32>().value(r), grain.as_str());
            let mut m: Vec<MeasureValue> = longs
                .iter()
                .map(|l| {
                    let l = l.as_primitive::<Int64Type>();
                    MeasureValue::Long(l.is_valid(r).then(|| l.value(r)))
                })
                .collect();
            m.extend(doubles.iter().map(|d| {
                let d = d.as_primitive::<Float64Type>();
                MeasureValue::Double(d.is_valid(r).then(|| d.value(r)))
            }));
            (
                RowKey {
                    dims: vec![dim_at(&a, r), dim_at(&c, r), dim_at(&t, r)],
                    ts_micros: ts.value(r),
                },
                Measures(m),
            )
        })
        .collect()
}

fn close(a: Option<f64>, b: Option<f64>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            a == b
                || (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
                || (!a.is_finite() && !b.is_finite())
        }
        _ => false,
    }
}

/// Merge `inputs` into `grain` (`fan_in` inputs at once, more through
/// merged runs) and compare with a reference aggregation.
/// Merged runs are held in memory, written to files, or held until the
/// budget runs out and then written, by the case.
fn check(inputs: Vec<Input>, grain: Grain, fan_in: usize) {
    for (parallel, strings, held) in [
        (1, Strings::Plain, 0),
        (3, Strings::Dictionary, super::spill::HELD_BYTES),
        (1, Strings::Repeating, 1 << 11),
        (2, Strings::Mixed, 1 << 13),
    ] {
        check_with(inputs.clone(), grain, fan_in, parallel, strings, held);
    }
}

fn check_with(
    inputs: Vec<Input>,
    grain: Grain,
    fan_in: usize,
    parallel: usize,
    strings: Strings,
    held: usize,
) {
    check_sorting(inputs, grain, fan_in, parallel, strings, None, held);
}

/// [`check_with`], each input first sorted `sort_chunk` rows at a time
/// when one is given (its rows may then be in any order).
fn check_sorting(
    inputs: Vec<Input>,
    grain: Grain,
    fan_in: usize,
    parallel: usize,
    strings: Strings,
    sort_chunk: Option<usize>,
    held: usize,
) {
    let decl = decl();
    let mut want: BTreeMap<RowKey, Totals> = BTreeMap::new();
    let mut rows_in = 0u64;
    for (rows, _) in &inputs {
        rows_in += rows.len() as u64;
        for (k, m) in rows {
            let key = RowKey {
                dims: k.dims.clone(),
                ts_micros: grain.truncate(k.ts_micros),
            };
            add(want.entry(key).or_default(), m);
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let (out, rows_read) = rt.block_on(async {
        let layout = Layout::new(arrow_schema(&decl), &decl, grain).unwrap();
        let mut streams = streams_with(&decl, &inputs, strings);
        if let Some(chunk) = sort_chunk {
            for (name, stream) in &mut streams {
                let read = std::mem::replace(stream, futures::stream::empty().boxed());
                *stream = super::sort::sorted(&layout, name, read, 5, chunk)
                    .await
                    .unwrap();
            }
        }
        // Merged by each input's bucket of the grain, as a merge of files is.
        let buckets: Vec<Option<(i64, i64)>> = inputs
            .iter()
            .map(|(rows, _)| {
                let ts = rows.iter().map(|(k, _)| grain.truncate(k.ts_micros));
                Some((ts.clone().min()?, ts.max()?))
            })
            .collect();
        let budget = super::spill::Budget::new(held);
        let mut merge = MergeReader::merge_by_bucket(
            layout.clone(),
            streams,
            buckets,
            fan_in,
            parallel,
            budget.clone(),
        )
        .await
        .unwrap();
        let mut out = Vec::new();
        while let Some(b) = merge.next_batch().await.unwrap() {
            assert!(b.num_rows() > 0);
            out.extend(rows_of(&b, grain));
        }
        assert_eq!(merge.unconserved(), None, "fan-in {fan_in}");
        let rows_read = merge.rows_read();
        // The totals read are given by input as given, whatever the order
        // the inputs were merged in.
        let given: Vec<_> = merge.read_by_input().iter().map(|t| t.to_json()).collect();
        drop(merge);
        if sort_chunk.is_none() {
            let streams = streams_with(&decl, &inputs, strings);
            let mut plain = MergeReader::merge_with_fan_in(layout, streams, fan_in, 1)
                .await
                .unwrap();
            while plain.next_batch().await.unwrap().is_some() {}
            let want: Vec<_> = plain.read_by_input().iter().map(|t| t.to_json()).collect();
            assert_eq!(given, want);
        }
        // Every byte a held run took is given back once it is read.
        assert_eq!(budget.left(), held);
        (out, rows_read)
    });
    // A file sorted from several runs is read as the runs merged (folded).
    match sort_chunk {
        None => assert_eq!(rows_read, rows_in),
        Some(_) => assert!(rows_read <= rows_in, "{rows_read} rows read of {rows_in}"),
    }
    // Sorted; a key in two rows only when its sums reach past the exact
    // range on the way (a fold row by row closes a row at an overflow, so
    // the rows need not be fewest; they are exact).
    // Keys whose sums may pass a type's range on the way (their values'
    // magnitudes add up past it): only these may be split, and only their
    // double sums depend on the order of addition beyond rounding.
    let mut magnitude: BTreeMap<RowKey, (i128, f64)> = BTreeMap::new();
    for (rows, _) in &inputs {
        for (k, m) in rows {
            let key = RowKey {
                dims: k.dims.clone(),
                ts_micros: grain.truncate(k.ts_micros),
            };
            let e = magnitude.entry(key).or_default();
            if let MeasureValue::Long(Some(v)) = m.0[1] {
                e.0 += (v as i128).abs();
            }
            if let MeasureValue::Double(Some(v)) = m.0[4] {
                e.1 += v.abs();
            }
        }
    }
    let splittable: std::collections::BTreeSet<&RowKey> = magnitude
        .iter()
        .filter(|(_, (l, d))| *l > i64::MAX as i128 || *d > f64::MAX / 2.0)
        .map(|(k, _)| k)
        .collect();
    for w in out.windows(2) {
        assert!(
            w[0].0 <= w[1].0,
            "out of order: {:?} then {:?}",
            w[0].0,
            w[1].0
        );
        if w[0].0 == w[1].0 {
            assert!(
                splittable.contains(&w[0].0),
                "rows of {:?} left apart though no sum came near the range's end",
                w[0].0
            );
        }
    }
    let mut got: BTreeMap<RowKey, Totals> = BTreeMap::new();
    for (k, m) in &out {
        add(got.entry(k.clone()).or_default(), m);
    }
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "keys differ"
    );
    for (k, w) in &want {
        let g = &got[k];
        assert_eq!(g.longs, w.longs, "long measures of {k:?}");
        assert!(
            splittable.contains(k) || close(g.cpu, w.cpu),
            "cpu of {k:?}: {:?} vs {:?}",
            g.cpu,
            w.cpu
        );
        assert_eq!(g.cpu_min, w.cpu_min, "cpu_min of {k:?}");
        assert_eq!(g.cpu_max, w.cpu_max, "cpu_max of {k:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn the_columnar_merge_agrees_with_a_reference_aggregation(
        inputs in inputs(),
        grain in prop::sample::select(vec![Grain::Minute, Grain::Hour, Grain::Day]),
        fan_in in prop::sample::select(vec![2, 3, super::spill::FAN_IN]),
    ) {
        check(inputs, grain, fan_in);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Inputs in any order (as another engine writes them), sorted before
    /// the merge a few rows at a time (several runs merged into one) or
    /// all at once, merge as the same rows sorted would.
    #[test]
    fn inputs_out_of_order_sorted_first_agree_with_the_reference(
        inputs in inputs().prop_flat_map(|inputs| {
            inputs
                .into_iter()
                .map(|(rows, sizes)| (Just(rows).prop_shuffle(), Just(sizes)))
                .collect::<Vec<_>>()
        }),
        grain in prop::sample::select(vec![Grain::Minute, Grain::Hour, Grain::Day]),
        chunk in prop::sample::select(vec![1usize, 4, 17, 1000]),
        strings in prop::sample::select(vec![Strings::Plain, Strings::Dictionary, Strings::Mixed]),
    ) {
        check_sorting(inputs, grain, 3, 1, strings, Some(chunk), super::spill::HELD_BYTES);
    }
}

/// The one key of the hand-made tests, at minute `m` after `T0`.
fn one_key_at(m: i64) -> RowKey {
    RowKey {
        dims: vec![DimValue::Long(1), DimValue::Null, DimValue::Bool(true)],
        ts_micros: T0 + m * MINUTE,
    }
}

/// One request of `b` bytes, every other measure null.
fn bytes(b: i64) -> Measures {
    Measures(vec![
        MeasureValue::Long(Some(1)),
        MeasureValue::Long(Some(b)),
        MeasureValue::Long(None),
        MeasureValue::Long(None),
        MeasureValue::Double(None),
        MeasureValue::Double(None),
        MeasureValue::Double(None),
    ])
}

/// Rows of one key each, at the minutes given, of one input: one batch per
/// row, or all in one batch in the order given.
fn minutes(decl: &TableDecl, at: &[i64], one_batch: bool) -> BatchStream {
    let schema = arrow_schema(decl);
    let batches: Vec<RecordBatch> = at
        .iter()
        .flat_map(|&m| {
            write::to_batches(&schema, decl, Grain::Minute, &[(one_key_at(m), bytes(m))]).unwrap()
        })
        .collect();
    let batches = match one_batch {
        true => vec![arrow_select::concat::concat_batches(&schema, &batches).unwrap()],
        false => batches,
    };
    futures::stream::iter(batches.into_iter().map(Ok)).boxed()
}

/// An input merged as sorted that is not stops the merge with an error
/// naming it, whether the row out of order is in the same batch as the one
/// before it or in the next, and whether the input is merged directly or
/// in a spilled group.
#[test]
fn an_input_out_of_order_stops_the_merge_naming_it() {
    let decl = decl();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    for one_batch in [true, false] {
        for fan_in in [2, super::spill::FAN_IN] {
            let err = rt.block_on(async {
                let layout = Layout::new(arrow_schema(&decl), &decl, Grain::Minute).unwrap();
                let inputs = vec![
                    ("sorted-a".to_string(), minutes(&decl, &[1, 2, 3], false)),
                    ("sorted-b".to_string(), minutes(&decl, &[0, 4], false)),
                    (
                        "the-unsorted-one".to_string(),
                        minutes(&decl, &[1, 5, 2], one_batch),
                    ),
                ];
                let mut merge = MergeReader::merge_with_fan_in(layout, inputs, fan_in, 1).await?;
                while merge.next_batch().await?.is_some() {}
                Ok::<_, crate::Error>(())
            });
            let err = err.expect_err("an input out of order is refused");
            assert_eq!(
                super::OutOfOrder::of(&err).map(|o| o.input.as_str()),
                Some("the-unsorted-one"),
                "{err}"
            );
            assert!(
                err.to_string()
                    .contains("the-unsorted-one is not in the table's key order"),
                "{err}"
            );
        }
    }
}

#[test]
fn a_sum_past_the_long_range_splits_and_totals_stay_exact() {
    let (key, m) = (one_key_at, bytes);
    // Sixty minutes of one key in one input, three across inputs: each
    // would overflow an hour's sum alone.
    let one: Vec<_> = (0..60).map(|i| (key(i), m(i64::MAX / 30))).collect();
    let two = vec![(key(5), m(i64::MAX)), (key(6), m(-5))];
    for fan_in in [2, super::spill::FAN_IN] {
        check(
            vec![(one.clone(), vec![7]), (two.clone(), vec![1])],
            Grain::Hour,
            fan_in,
        );
        check(vec![(one.clone(), vec![60])], Grain::Day, fan_in);
    }
}
