//! The manifests encoded here read back, through iceberg's own reader,
//! exactly as the same entries written by iceberg's writer do.

use std::collections::HashMap;
use std::sync::Arc;

use iceberg::io::FileIO;
use iceberg::spec::{
    DataContentType, DataFile, DataFileBuilder, DataFileFormat, Datum, Literal, Manifest,
    ManifestFile, ManifestWriterBuilder, NestedField, PartitionSpec, PrimitiveType, Schema,
    SchemaRef, Struct, Transform, Type,
};
use proptest::prelude::*;

use super::super::avro_read::{decode, load};
use super::{Manifest as Ours, parse_header};

fn schema() -> SchemaRef {
    let f = |id, name: &str, t| Arc::new(NestedField::optional(id, name, Type::Primitive(t)));
    Arc::new(
        Schema::builder()
            .with_fields(vec![
                f(1, "ts", PrimitiveType::Timestamptz),
                f(2, "s", PrimitiveType::String),
                f(3, "n", PrimitiveType::Long),
                f(4, "b", PrimitiveType::Boolean),
                f(5, "d", PrimitiveType::Date),
                f(6, "bin", PrimitiveType::Binary),
                f(7, "x", PrimitiveType::Double),
                f(8, "u", PrimitiveType::Uuid),
            ])
            .build()
            .unwrap(),
    )
}

/// A spec with a partition field of every type the encoder writes.
fn wide_spec() -> PartitionSpec {
    PartitionSpec::builder(schema())
        .with_spec_id(3)
        .add_partition_field("ts", "ts_hour", Transform::Hour)
        .unwrap()
        .add_partition_field("s", "s", Transform::Identity)
        .unwrap()
        .add_partition_field("n", "n", Transform::Identity)
        .unwrap()
        .add_partition_field("b", "b", Transform::Identity)
        .unwrap()
        .add_partition_field("d", "d", Transform::Identity)
        .unwrap()
        .add_partition_field("bin", "bin", Transform::Identity)
        .unwrap()
        .add_partition_field("ts", "ts", Transform::Identity)
        .unwrap()
        .build()
        .unwrap()
}

/// What a manifest does with a file.
#[derive(Debug, Clone)]
enum Op {
    Added,
    Existing(i64, i64, Option<i64>),
    Deleted(i64, Option<i64>),
}

#[derive(Debug, Clone)]
struct Part {
    hour: Option<i32>,
    s: Option<String>,
    n: Option<i64>,
    b: Option<bool>,
    d: Option<i32>,
    bin: Option<Vec<u8>>,
    ts: Option<i64>,
}

fn part() -> impl Strategy<Value = Part> {
    (
        proptest::option::of(-1000..500_000i32),
        proptest::option::of("[a-zé]{0,12}"),
        proptest::option::of(any::<i64>()),
        proptest::option::of(any::<bool>()),
        proptest::option::of(-30_000..30_000i32),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..6)),
        proptest::option::of(any::<i64>()),
    )
        .prop_map(|(hour, s, n, b, d, bin, ts)| Part {
            hour,
            s,
            n,
            b,
            d,
            bin,
            ts,
        })
}

impl Part {
    fn literals(&self) -> Struct {
        Struct::from_iter([
            self.hour.map(Literal::int),
            self.s.clone().map(Literal::string),
            self.n.map(Literal::long),
            self.b.map(Literal::bool),
            self.d.map(Literal::date),
            self.bin.clone().map(Literal::binary),
            self.ts.map(Literal::timestamptz),
        ])
    }
}

type Stats = (
    Vec<(i32, u64)>,
    Vec<(i32, u64)>,
    Vec<(i32, i64)>,
    Option<Vec<u8>>,
    Option<Vec<i64>>,
    Option<i32>,
);

fn stats() -> impl Strategy<Value = Stats> {
    let counts = || proptest::collection::vec((1..9i32, 0..u64::from(u32::MAX) * 4), 0..8);
    (
        counts(),
        counts(),
        proptest::collection::vec((1..4i32, any::<i64>()), 0..4),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..5)),
        proptest::option::of(proptest::collection::vec(any::<i64>(), 0..4)),
        proptest::option::of(0..5i32),
    )
}

fn data_file(i: usize, spec_id: i32, partition: Struct, rows: u64, s: &Stats) -> DataFile {
    let (sizes, counts, bounds, key, splits, order) = s.clone();
    let mut b = DataFileBuilder::default();
    b.content(DataContentType::Data)
        .file_path(format!("s3://bucket/t/data/part-{i}-é.parquet"))
        .file_format(DataFileFormat::Parquet)
        .partition(partition)
        .partition_spec_id(spec_id)
        .record_count(rows)
        .file_size_in_bytes(rows * 31 + 7)
        .column_sizes(sizes.into_iter().collect())
        .value_counts(counts.iter().cloned().collect())
        .null_value_counts(counts.iter().map(|(k, v)| (*k, v / 3)).collect())
        .nan_value_counts(HashMap::from([(7, 0)]))
        .lower_bounds(bounds.iter().map(|(k, v)| (*k, bound(*k, *v))).collect())
        .upper_bounds(
            bounds
                .iter()
                .map(|(k, v)| (*k, bound(*k, v / 2 + 1)))
                .collect(),
        )
        .key_metadata(key)
        .split_offsets(splits)
        .sort_order_id(order.unwrap_or(0))
        .first_row_id(order.map(i64::from));
    b.build().unwrap()
}

/// A bound of column `k` of [`schema`].
fn bound(k: i32, v: i64) -> Datum {
    match k {
        1 => Datum::timestamptz_micros(v),
        2 => Datum::string(v.to_string()),
        _ => Datum::long(v),
    }
}

/// Write `files` into a manifest both ways; what each records and reads
/// back as, and whether ours was encoded here.
async fn both(spec: PartitionSpec, files: &[(Op, DataFile)]) -> [(ManifestFile, Manifest); 2] {
    let io = FileIO::new_with_memory();
    let mut ours = Ours::new(
        io.new_output("memory://t/ours.avro").unwrap(),
        "memory://t/ours.avro".into(),
        42,
        schema(),
        spec.clone(),
    )
    .await
    .unwrap();
    let mut theirs = ManifestWriterBuilder::new(
        io.new_output("memory://t/theirs.avro").unwrap(),
        Some(42),
        schema(),
        spec,
    )
    .build_v2_data();
    for (op, f) in files {
        match op {
            Op::Added => {
                ours.add(f).unwrap();
                theirs.add_file(f.clone(), -1).unwrap();
            }
            Op::Existing(snap, seq, fseq) => {
                ours.existing(f, *snap, *seq, *fseq).unwrap();
                theirs
                    .add_existing_file(f.clone(), *snap, *seq, *fseq)
                    .unwrap();
            }
            Op::Deleted(seq, fseq) => {
                ours.deleted(f, *seq, *fseq).unwrap();
                theirs.add_delete_file(f.clone(), *seq, *fseq).unwrap();
            }
        }
    }
    let written = [
        ours.finish().await.unwrap(),
        theirs.write_manifest_file().await.unwrap(),
    ];
    let mut out = Vec::new();
    for (mf, path) in written
        .into_iter()
        .zip(["memory://t/ours.avro", "memory://t/theirs.avro"])
    {
        let bytes = io.new_input(path).unwrap().read().await.unwrap();
        assert_eq!(mf.manifest_length as usize, bytes.len());
        let parsed = Manifest::parse_avro(&bytes).unwrap();
        // Firn's reader takes both files, and reads what iceberg's does.
        let (metadata, entries) = decode(&bytes).await.expect("decoded here").unwrap();
        assert_eq!(Manifest::new(metadata, entries), parsed, "{path}");
        out.push((mf, parsed));
    }
    out.try_into().unwrap()
}

/// Equal but for the path and the length.
fn assert_same(ours: &(ManifestFile, Manifest), theirs: &(ManifestFile, Manifest)) {
    let mut a = ours.0.clone();
    a.manifest_path = theirs.0.manifest_path.clone();
    a.manifest_length = theirs.0.manifest_length;
    assert_eq!(a, theirs.0);
    assert_eq!(ours.1, theirs.1);
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        Just(Op::Added),
        (0..1i64 << 50, 0..1000i64, 0..1000i64).prop_map(|(a, b, c)| Op::Existing(a, b, Some(c))),
        (0..1000i64, 0..1000i64).prop_map(|(a, b)| Op::Deleted(a, Some(b))),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn entries_read_back_as_icebergs_own(
        files in proptest::collection::vec((op(), part(), 0..1u64 << 40, stats()), 0..40),
    ) {
        let spec = wide_spec();
        let files: Vec<(Op, DataFile)> = files
            .iter()
            .enumerate()
            .map(|(i, (op, p, rows, s))| (op.clone(), data_file(i, 3, p.literals(), *rows, s)))
            .collect();
        let [ours, theirs] = rt().block_on(both(spec, &files));
        assert_same(&ours, &theirs);
        prop_assert_eq!(ours.1.entries().len(), files.len());
    }
}

#[test]
fn many_entries_span_blocks() {
    // Enough entries for several 64 KiB blocks, on an unpartitioned spec.
    let spec = PartitionSpec::builder(schema())
        .with_spec_id(0)
        .build()
        .unwrap();
    let s: Stats = (
        (1..9).map(|k| (k, 1000)).collect(),
        (1..9).map(|k| (k, 10)).collect(),
        vec![(1, 5), (3, 9)],
        None,
        Some(vec![4]),
        Some(1),
    );
    let files: Vec<(Op, DataFile)> = (0..2000)
        .map(|i| {
            (
                Op::Deleted(i as i64, Some(i as i64)),
                data_file(i, 0, Struct::empty(), 10, &s),
            )
        })
        .collect();
    let [ours, theirs] = rt().block_on(both(spec, &files));
    assert!(ours.0.manifest_length > 3 * (64 << 10));
    assert_same(&ours, &theirs);
    assert_eq!(ours.0.deleted_files_count, Some(2000));
}

#[test]
fn a_partition_type_it_does_not_encode_goes_to_icebergs_writer() {
    for (column, transform) in [("x", Transform::Identity), ("u", Transform::Identity)] {
        let spec = PartitionSpec::builder(schema())
            .with_spec_id(1)
            .add_partition_field(column, column, transform)
            .unwrap()
            .build()
            .unwrap();
        let written = rt().block_on(async {
            let io = FileIO::new_with_memory();
            let out = io.new_output("memory://t/m.avro").unwrap();
            Ours::new(out, "memory://t/m.avro".into(), 1, schema(), spec.clone())
                .await
                .unwrap()
        });
        assert!(!written.is_own(), "{column}");
    }
    let own = rt().block_on(async {
        let io = FileIO::new_with_memory();
        let out = io.new_output("memory://t/m.avro").unwrap();
        Ours::new(out, "memory://t/m.avro".into(), 1, schema(), wide_spec())
            .await
            .unwrap()
    });
    assert!(own.is_own());
}

#[test]
fn a_value_of_the_wrong_type_is_an_error_naming_the_file() {
    let s: Stats = (vec![], vec![], vec![], None, None, None);
    let wrong = Struct::from_iter([
        Some(Literal::string("not an hour")),
        None,
        None,
        None,
        None,
        None,
        None,
    ]);
    let short = Struct::from_iter([Some(Literal::int(1))]);
    rt().block_on(async {
        let io = FileIO::new_with_memory();
        let out = io.new_output("memory://t/m.avro").unwrap();
        let mut m = Ours::new(out, "memory://t/m.avro".into(), 1, schema(), wide_spec())
            .await
            .unwrap();
        let e = m
            .add(&data_file(5, 3, wrong, 1, &s))
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"not an hour\"") && e.contains("int"), "{e}");
        let e = m
            .add(&data_file(6, 3, short, 1, &s))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("part-6-é.parquet") && e.contains("1 partition values"),
            "{e}"
        );
    });
}

#[test]
fn an_existing_or_deleted_entry_needs_its_file_sequence_number() {
    let s: Stats = (vec![], vec![], vec![], None, None, None);
    rt().block_on(async {
        let io = FileIO::new_with_memory();
        let out = io.new_output("memory://t/m.avro").unwrap();
        let spec = PartitionSpec::builder(schema())
            .with_spec_id(0)
            .build()
            .unwrap();
        let mut m = Ours::new(out, "memory://t/m.avro".into(), 1, schema(), spec)
            .await
            .unwrap();
        let f = data_file(1, 0, Struct::empty(), 1, &s);
        let e = m.existing(&f, 1, 1, None).unwrap_err().to_string();
        assert!(
            e.contains("part-1-é.parquet") && e.contains("file sequence number"),
            "{e}"
        );
        let e = m.deleted(&f, 1, None).unwrap_err().to_string();
        assert!(e.contains("file sequence number"), "{e}");
    });
}

#[test]
fn only_a_whole_header_of_uncompressed_blocks_is_taken() {
    fn header(codec: &[u8], tail: usize) -> Vec<u8> {
        let mut b = b"Obj\x01".to_vec();
        super::long(&mut b, 2);
        super::string(&mut b, b"avro.schema");
        super::string(&mut b, b"\"long\"");
        super::string(&mut b, b"avro.codec");
        super::string(&mut b, codec);
        super::long(&mut b, 0);
        b.extend(std::iter::repeat_n(7u8, tail));
        b
    }
    assert_eq!(parse_header(&header(b"null", 16)), Some([7; 16]));
    assert_eq!(parse_header(&header(b"deflate", 16)), None);
    assert_eq!(parse_header(&header(b"null", 17)), None);
    assert_eq!(parse_header(&header(b"null", 15)), None);
    assert_eq!(parse_header(b"PAR1"), None);
}

/// A manifest written with a schema other than firn's (here the same
/// schema spelled with a space more) is read by iceberg's reader, and
/// entries take what the manifest list says of them.
#[test]
fn another_writers_manifest_is_read_by_iceberg_and_inherits() {
    let s: Stats = (vec![(1, 5)], vec![(1, 2)], vec![(3, 4)], None, None, None);
    let files = [
        (Op::Added, data_file(0, 0, Struct::empty(), 10, &s)),
        (
            Op::Existing(7, 3, Some(2)),
            data_file(1, 0, Struct::empty(), 20, &s),
        ),
    ];
    let spec = PartitionSpec::builder(schema())
        .with_spec_id(0)
        .build()
        .unwrap();
    rt().block_on(async {
        let [_, (_, theirs)] = both(spec, &files).await;
        // `both` wrote to a memory store of its own: write the file again.
        let io = FileIO::new_with_memory();
        let mut w = ManifestWriterBuilder::new(
            io.new_output("memory://t/m.avro").unwrap(),
            Some(42),
            schema(),
            PartitionSpec::builder(schema())
                .with_spec_id(0)
                .build()
                .unwrap(),
        )
        .build_v2_data();
        w.add_file(files[0].1.clone(), -1).unwrap();
        w.add_existing_file(files[1].1.clone(), 7, 3, Some(2))
            .unwrap();
        let mut mf = w.write_manifest_file().await.unwrap();
        let bytes = io
            .new_input("memory://t/m.avro")
            .unwrap()
            .read()
            .await
            .unwrap();
        let respelled = respell(&bytes);
        assert!(
            decode(&respelled).await.is_none(),
            "a schema spelled otherwise is iceberg's to read"
        );
        assert!(decode(&bytes).await.is_some());
        let out = io.new_output("memory://t/other.avro").unwrap();
        out.write(respelled.into()).await.unwrap();
        mf.manifest_path = "memory://t/other.avro".into();
        mf.sequence_number = 9;
        let read = load(&mf, &io).await.unwrap();
        assert_eq!(read.entries().len(), 2);
        let added = &read.entries()[0];
        assert_eq!(
            (
                added.snapshot_id,
                added.sequence_number,
                added.file_sequence_number
            ),
            (Some(42), Some(9), Some(9))
        );
        let existing = &read.entries()[1];
        assert_eq!(
            (
                existing.snapshot_id,
                existing.sequence_number,
                existing.file_sequence_number
            ),
            (Some(7), Some(3), Some(2))
        );
        assert_eq!(added.data_file, theirs.entries()[0].data_file);
        // The same file read here inherits the same way.
        mf.manifest_path = "memory://t/m.avro".into();
        assert_eq!(load(&mf, &io).await.unwrap(), read);
    });
}

/// `bytes` (an Avro container) with a space after the first `{` of its
/// Avro schema.
fn respell(bytes: &[u8]) -> Vec<u8> {
    let super::Container {
        metadata: map,
        sync,
        body,
    } = super::Container::parse(bytes).unwrap();
    let mut out = b"Obj\x01".to_vec();
    super::long(&mut out, map.len() as i64);
    for (k, v) in &map {
        super::string(&mut out, k.as_bytes());
        match k.as_str() {
            "avro.schema" => {
                let text = String::from_utf8(v.clone()).unwrap().replacen('{', "{ ", 1);
                super::string(&mut out, text.as_bytes());
            }
            _ => super::string(&mut out, v),
        }
    }
    super::long(&mut out, 0);
    out.extend_from_slice(&sync);
    out.extend_from_slice(body);
    out
}
