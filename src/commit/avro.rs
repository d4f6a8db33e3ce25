//! Data manifests encoded straight to Avro. iceberg's `ManifestWriter`
//! turns every entry into an Avro value tree, resolves the tree against the
//! schema and then encodes it: some 400,000 instructions per entry, a tenth
//! of a compaction of 1,440 minute files (whose commit marks each of them
//! deleted). Here the file's header (its Avro schema, the table schema, the
//! partition spec and the sync marker) is iceberg's own, taken from an
//! empty manifest it writes in memory, and each entry is encoded field by
//! field in that schema's order: the same bytes iceberg would write, but
//! for the order of map entries (by field id here) and the sync marker. A
//! spec with a partition field of a type encoded otherwise (decimal, uuid,
//! fixed, float, double), or a header that is not the one this encoder
//! expects, is written by iceberg's writer as before.

use bytes::Bytes;
use iceberg::io::FileIO;
use iceberg::io::OutputFile;
use iceberg::spec::{
    DataContentType, DataFile, Datum, FieldSummary, Literal, ManifestContentType, ManifestFile,
    ManifestStatus, ManifestWriter, ManifestWriterBuilder, PartitionSpec, PrimitiveLiteral,
    PrimitiveType, SchemaRef, UNASSIGNED_SEQUENCE_NUMBER,
};

use crate::error::{Error, ErrorKind, Result};

/// Bytes of entries per Avro block (iceberg's writer flushes at 16 KB; a
/// reader holds one block at a time).
const BLOCK_BYTES: usize = 64 << 10;

/// A v2 data manifest being written.
pub(super) struct Manifest {
    path: String,
    inner: Inner,
}

enum Inner {
    Own(Box<Encoder>),
    Iceberg(Box<ManifestWriter>),
}

impl Manifest {
    /// A manifest of `snapshot_id`'s at `output` (`path`), of files of
    /// `spec` over `schema`.
    pub(super) async fn new(
        output: OutputFile,
        path: String,
        snapshot_id: i64,
        schema: SchemaRef,
        spec: PartitionSpec,
    ) -> Result<Self> {
        let types = partition_types(&schema, &spec)?;
        let header = match types {
            Some(_) => header(&schema, &spec).await?,
            None => None,
        };
        let inner = match (types, header) {
            (Some(types), Some((header, sync))) => Inner::Own(Box::new(Encoder {
                output,
                snapshot_id,
                spec_id: spec.spec_id(),
                header,
                sync,
                out: Vec::new(),
                block: Vec::with_capacity(BLOCK_BYTES + 4096),
                in_block: 0,
                stats: types.into_iter().map(FieldStats::new).collect(),
                counts: Counts::default(),
            })),
            _ => Inner::Iceberg(Box::new(
                ManifestWriterBuilder::new(output, Some(snapshot_id), schema, spec).build_v2_data(),
            )),
        };
        Ok(Self { path, inner })
    }

    /// Add `file`, new in this snapshot (its sequence numbers are the
    /// snapshot's, inherited).
    pub(super) fn add(&mut self, file: &DataFile) -> Result<()> {
        let path = &self.path;
        match &mut self.inner {
            Inner::Own(e) => {
                let snapshot = Some(e.snapshot_id);
                e.entry(ManifestStatus::Added, snapshot, None, None, file)
            }
            Inner::Iceberg(w) => w.add_file(file.clone(), -1).map_err(|e| written(path, e)),
        }
    }

    /// Carry `file` forward as EXISTING, with the snapshot and sequence
    /// numbers it was added with.
    pub(super) fn existing(
        &mut self,
        file: &DataFile,
        snapshot_id: i64,
        sequence_number: i64,
        file_sequence_number: Option<i64>,
    ) -> Result<()> {
        let path = &self.path;
        match &mut self.inner {
            Inner::Own(e) => e.entry(
                ManifestStatus::Existing,
                Some(snapshot_id),
                Some(sequence_number),
                file_sequence_number,
                file,
            ),
            Inner::Iceberg(w) => w
                .add_existing_file(
                    file.clone(),
                    snapshot_id,
                    sequence_number,
                    file_sequence_number,
                )
                .map_err(|e| written(path, e)),
        }
    }

    /// Mark `file` deleted in this snapshot, keeping its sequence numbers.
    pub(super) fn deleted(
        &mut self,
        file: &DataFile,
        sequence_number: i64,
        file_sequence_number: Option<i64>,
    ) -> Result<()> {
        let path = &self.path;
        match &mut self.inner {
            Inner::Own(e) => {
                let snapshot = Some(e.snapshot_id);
                e.entry(
                    ManifestStatus::Deleted,
                    snapshot,
                    Some(sequence_number),
                    file_sequence_number,
                    file,
                )
            }
            Inner::Iceberg(w) => w
                .add_delete_file(file.clone(), sequence_number, file_sequence_number)
                .map_err(|e| written(path, e)),
        }
    }

    /// Write the manifest out; what the manifest list records of it.
    pub(super) async fn finish(self) -> Result<ManifestFile> {
        match self.inner {
            Inner::Own(e) => e.finish(self.path).await,
            Inner::Iceberg(w) => {
                let path = self.path;
                w.write_manifest_file().await.map_err(|e| written(&path, e))
            }
        }
    }

    /// Whether this manifest is encoded here (not by iceberg's writer).
    #[cfg(test)]
    pub(super) fn is_own(&self) -> bool {
        matches!(self.inner, Inner::Own(_))
    }
}

/// An error of iceberg's in making a manifest's header or statistics.
fn iceberg_error(e: iceberg::Error) -> Error {
    Error::iceberg("encoding a manifest", e)
}

fn written(path: &str, e: iceberg::Error) -> Error {
    Error::iceberg(format!("writing manifest {path}"), e)
}

/// The types of `spec`'s partition fields over `schema`, if this encoder
/// writes every one of them.
pub(super) fn partition_types(
    schema: &SchemaRef,
    spec: &PartitionSpec,
) -> Result<Option<Vec<PrimitiveType>>> {
    let partition = spec
        .partition_type(schema)
        .map_err(|e| Error::iceberg(format!("partition type of spec {}", spec.spec_id()), e))?;
    let mut types = Vec::with_capacity(partition.fields().len());
    for field in partition.fields() {
        match field.field_type.as_primitive_type() {
            Some(
                t @ (PrimitiveType::Boolean
                | PrimitiveType::Int
                | PrimitiveType::Long
                | PrimitiveType::Date
                | PrimitiveType::Time
                | PrimitiveType::Timestamp
                | PrimitiveType::Timestamptz
                | PrimitiveType::TimestampNs
                | PrimitiveType::TimestamptzNs
                | PrimitiveType::String
                | PrimitiveType::Binary),
            ) => types.push(t.clone()),
            _ => return Ok(None),
        }
    }
    Ok(Some(types))
}

/// The header iceberg's writer gives a manifest of `spec` over `schema`,
/// and its sync marker: the whole of an empty manifest it writes in
/// memory (no snapshot's id is in a header). `None` when that is not a
/// header of uncompressed blocks.
pub(super) async fn header(
    schema: &SchemaRef,
    spec: &PartitionSpec,
) -> Result<Option<(Bytes, [u8; 16])>> {
    let io = FileIO::new_with_memory();
    let path = "memory://firn/header.avro";
    let output = io.new_output(path).map_err(iceberg_error)?;
    ManifestWriterBuilder::new(output, None, schema.clone(), spec.clone())
        .build_v2_data()
        .write_manifest_file()
        .await
        .map_err(iceberg_error)?;
    let bytes = io
        .new_input(path)
        .map_err(iceberg_error)?
        .read()
        .await
        .map_err(iceberg_error)?;
    Ok(parse_header(&bytes).map(|sync| (bytes, sync)))
}

/// The sync marker of `bytes` if they are exactly an Avro container
/// header whose codec is `null`.
fn parse_header(bytes: &[u8]) -> Option<[u8; 16]> {
    let c = Container::parse(bytes)?;
    let uncompressed = c.metadata.get("avro.codec").is_none_or(|c| c == b"null");
    (uncompressed && c.body.is_empty()).then_some(c.sync)
}

/// An Avro container file, its header parsed.
pub(super) struct Container<'a> {
    /// The header's metadata (`avro.schema`, `avro.codec`, the writer's).
    pub(super) metadata: std::collections::HashMap<String, Vec<u8>>,
    pub(super) sync: [u8; 16],
    /// The bytes after the header: the blocks.
    pub(super) body: &'a [u8],
}

impl<'a> Container<'a> {
    /// The container in `bytes`, if they start with a whole header.
    pub(super) fn parse(bytes: &'a [u8]) -> Option<Self> {
        let mut at = bytes.strip_prefix(b"Obj\x01")?;
        let mut map = std::collections::HashMap::new();
        loop {
            let count = read_long(&mut at)?;
            if count == 0 {
                break;
            }
            if count < 0 {
                read_long(&mut at)?; // the block's size in bytes
            }
            for _ in 0..count.unsigned_abs() {
                let key = std::str::from_utf8(read_bytes(&mut at)?).ok()?.to_string();
                let value = read_bytes(&mut at)?.to_vec();
                map.insert(key, value);
            }
        }
        let (sync, body) = at.split_first_chunk::<16>()?;
        Some(Self {
            metadata: map,
            sync: *sync,
            body,
        })
    }
}

pub(super) fn read_long(at: &mut &[u8]) -> Option<i64> {
    let mut value: u64 = 0;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = at.split_first()?;
        *at = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some((value >> 1) as i64 ^ -((value & 1) as i64));
        }
    }
    None
}

pub(super) fn read_bytes<'a>(at: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = usize::try_from(read_long(at)?).ok()?;
    let (bytes, rest) = (at.get(..len)?, at.get(len..)?);
    *at = rest;
    Some(bytes)
}

/// Files and rows a manifest adds, carries and deletes.
#[derive(Debug, Default)]
struct Counts {
    added: (u32, u64),
    existing: (u32, u64),
    deleted: (u32, u64),
    min_sequence: Option<i64>,
}

/// What a manifest's partition summary says of one partition field.
struct FieldStats {
    ty: PrimitiveType,
    contains_null: bool,
    lower: Option<Datum>,
    upper: Option<Datum>,
}

impl FieldStats {
    fn new(ty: PrimitiveType) -> Self {
        Self {
            ty,
            contains_null: false,
            lower: None,
            upper: None,
        }
    }

    fn update(&mut self, value: Option<&PrimitiveLiteral>) -> Result<()> {
        let Some(value) = value else {
            self.contains_null = true;
            return Ok(());
        };
        let datum = datum(&self.ty, value)?;
        if self.lower.as_ref().is_none_or(|l| datum < *l) {
            self.lower = Some(datum.clone());
        }
        if self.upper.as_ref().is_none_or(|u| datum > *u) {
            self.upper = Some(datum);
        }
        Ok(())
    }

    fn finish(self) -> Result<FieldSummary> {
        let bytes = |d: Option<Datum>| d.map(|d| d.to_bytes().map_err(iceberg_error)).transpose();
        Ok(FieldSummary {
            contains_null: self.contains_null,
            // None of the types summarised here has a NaN.
            contains_nan: Some(false),
            lower_bound: bytes(self.lower)?,
            upper_bound: bytes(self.upper)?,
        })
    }
}

/// `value` as a datum of `ty`, or the error of a partition value of
/// another type.
fn datum(ty: &PrimitiveType, value: &PrimitiveLiteral) -> Result<Datum> {
    use PrimitiveLiteral as L;
    use PrimitiveType as T;
    Ok(match (ty, value) {
        (T::Boolean, L::Boolean(b)) => Datum::bool(*b),
        (T::Int, L::Int(v)) => Datum::int(*v),
        (T::Date, L::Int(v)) => Datum::date(*v),
        (T::Long, L::Long(v)) => Datum::long(*v),
        (T::Time, L::Long(v)) => Datum::time_micros(*v).map_err(iceberg_error)?,
        (T::Timestamp, L::Long(v)) => Datum::timestamp_micros(*v),
        (T::Timestamptz, L::Long(v)) => Datum::timestamptz_micros(*v),
        (T::TimestampNs, L::Long(v)) => Datum::timestamp_nanos(*v),
        (T::TimestamptzNs, L::Long(v)) => Datum::timestamptz_nanos(*v),
        (T::String, L::String(s)) => Datum::string(s),
        (T::Binary, L::Binary(b)) => Datum::binary(b.iter().copied()),
        _ => return Err(mismatch(ty, value)),
    })
}

fn mismatch(ty: &PrimitiveType, value: &PrimitiveLiteral) -> Error {
    Error::new(
        ErrorKind::Internal,
        format!("a partition value {value:?} is not of its field's type {ty}"),
    )
}

/// The entries of one manifest, encoded.
struct Encoder {
    output: OutputFile,
    snapshot_id: i64,
    spec_id: i32,
    header: Bytes,
    sync: [u8; 16],
    /// Blocks written so far (after the header).
    out: Vec<u8>,
    /// The entries of the current block, and how many.
    block: Vec<u8>,
    in_block: i64,
    stats: Vec<FieldStats>,
    counts: Counts,
}

impl Encoder {
    fn entry(
        &mut self,
        status: ManifestStatus,
        snapshot_id: Option<i64>,
        sequence_number: Option<i64>,
        file_sequence_number: Option<i64>,
        file: &DataFile,
    ) -> Result<()> {
        if file.content_type() != DataContentType::Data {
            return Err(Error::new(
                ErrorKind::Internal,
                format!(
                    "data file {} is {:?}, not data, and cannot be listed in a data manifest",
                    file.file_path(),
                    file.content_type()
                ),
            ));
        }
        let partition = file.partition();
        if partition.fields().len() != self.stats.len() {
            return Err(Error::new(
                ErrorKind::Internal,
                format!(
                    "data file {} has {} partition values; its spec {} has {} fields",
                    file.file_path(),
                    partition.fields().len(),
                    self.spec_id,
                    self.stats.len()
                ),
            ));
        }
        if status != ManifestStatus::Added && file_sequence_number.is_none() {
            return Err(Error::new(
                ErrorKind::Internal,
                format!(
                    "data file {} is carried or deleted without its file sequence number",
                    file.file_path()
                ),
            ));
        }
        let rows = file.record_count();
        let counter = match status {
            ManifestStatus::Added => &mut self.counts.added,
            ManifestStatus::Existing => &mut self.counts.existing,
            ManifestStatus::Deleted => &mut self.counts.deleted,
        };
        counter.0 += 1;
        counter.1 += rows;
        if status != ManifestStatus::Deleted
            && let Some(seq) = sequence_number
        {
            self.counts.min_sequence = Some(self.counts.min_sequence.map_or(seq, |m| m.min(seq)));
        }
        let b = &mut self.block;
        long(b, status as i64);
        optional_long(b, snapshot_id);
        optional_long(b, sequence_number);
        optional_long(b, file_sequence_number);
        // data_file
        long(b, file.content_type() as i64);
        string(b, file.file_path().as_bytes());
        string(
            b,
            file.file_format()
                .to_string()
                .to_ascii_uppercase()
                .as_bytes(),
        );
        for (value, stats) in partition.iter().zip(&mut self.stats) {
            let value = match value {
                None => None,
                Some(Literal::Primitive(p)) => Some(p),
                Some(other) => {
                    return Err(Error::new(
                        ErrorKind::Internal,
                        format!(
                            "data file {} has a partition value {other:?} that is not a \
                             primitive",
                            file.file_path()
                        ),
                    ));
                }
            };
            stats.update(value)?;
            match value {
                None => long(b, 0),
                Some(v) => {
                    long(b, 1);
                    partition_value(b, &stats.ty, v)?;
                }
            }
        }
        long(
            b,
            i64::try_from(rows).map_err(|_| too_large(file, "record count"))?,
        );
        long(
            b,
            i64::try_from(file.file_size_in_bytes()).map_err(|_| too_large(file, "size"))?,
        );
        for counts in [
            file.column_sizes(),
            file.value_counts(),
            file.null_value_counts(),
            file.nan_value_counts(),
        ] {
            let mut sorted: Vec<(i32, u64)> = counts.iter().map(|(k, v)| (*k, *v)).collect();
            sorted.sort_unstable();
            long(b, 1);
            array_len(b, sorted.len());
            for (k, v) in sorted {
                long(b, i64::from(k));
                long(
                    b,
                    i64::try_from(v).map_err(|_| too_large(file, "column statistic"))?,
                );
            }
            array_end(b);
        }
        for bounds in [file.lower_bounds(), file.upper_bounds()] {
            let mut sorted: Vec<(i32, &Datum)> = bounds.iter().map(|(k, v)| (*k, v)).collect();
            sorted.sort_unstable_by_key(|(k, _)| *k);
            long(b, 1);
            array_len(b, sorted.len());
            for (k, v) in sorted {
                long(b, i64::from(k));
                string(b, &v.to_bytes().map_err(iceberg_error)?);
            }
            array_end(b);
        }
        match file.key_metadata() {
            None => long(b, 0),
            Some(k) => {
                long(b, 1);
                string(b, k);
            }
        }
        match file.split_offsets() {
            None => long(b, 0),
            Some(offsets) => {
                long(b, 1);
                array_len(b, offsets.len());
                for &o in offsets {
                    long(b, o);
                }
                array_end(b);
            }
        }
        match file.equality_ids() {
            None => long(b, 0),
            Some(ids) => {
                long(b, 1);
                array_len(b, ids.len());
                for id in &ids {
                    long(b, i64::from(*id));
                }
                array_end(b);
            }
        }
        optional_long(b, file.sort_order_id().map(i64::from));
        optional_long(b, file.first_row_id());
        match file.referenced_data_file() {
            None => long(b, 0),
            Some(path) => {
                long(b, 1);
                string(b, path.as_bytes());
            }
        }
        optional_long(b, file.content_offset());
        optional_long(b, file.content_size_in_bytes());
        self.in_block += 1;
        if self.block.len() >= BLOCK_BYTES {
            self.flush();
        }
        Ok(())
    }

    /// End the current block.
    fn flush(&mut self) {
        if self.in_block == 0 {
            return;
        }
        long(&mut self.out, self.in_block);
        long(&mut self.out, self.block.len() as i64);
        self.out.extend_from_slice(&self.block);
        self.out.extend_from_slice(&self.sync);
        self.block.clear();
        self.in_block = 0;
    }

    /// Write the manifest out at `path` (its output's).
    async fn finish(mut self, path: String) -> Result<ManifestFile> {
        self.flush();
        let mut bytes = Vec::with_capacity(self.header.len() + self.out.len());
        bytes.extend_from_slice(&self.header);
        bytes.extend_from_slice(&self.out);
        let length = bytes.len();
        let partitions = self
            .stats
            .into_iter()
            .map(FieldStats::finish)
            .collect::<Result<Vec<_>>>()?;
        self.output
            .write(Bytes::from(bytes))
            .await
            .map_err(|e| written(&path, e))?;
        let c = self.counts;
        Ok(ManifestFile {
            manifest_path: path,
            manifest_length: length as i64,
            partition_spec_id: self.spec_id,
            content: ManifestContentType::Data,
            // The manifest list writer puts in the snapshot's.
            sequence_number: UNASSIGNED_SEQUENCE_NUMBER,
            min_sequence_number: c.min_sequence.unwrap_or(UNASSIGNED_SEQUENCE_NUMBER),
            added_snapshot_id: self.snapshot_id,
            added_files_count: Some(c.added.0),
            existing_files_count: Some(c.existing.0),
            deleted_files_count: Some(c.deleted.0),
            added_rows_count: Some(c.added.1),
            existing_rows_count: Some(c.existing.1),
            deleted_rows_count: Some(c.deleted.1),
            partitions: Some(partitions),
            key_metadata: None,
            first_row_id: None,
        })
    }
}

fn too_large(file: &DataFile, what: &str) -> Error {
    Error::new(
        ErrorKind::Internal,
        format!(
            "the {what} of data file {} is too large for a manifest",
            file.file_path()
        ),
    )
}

/// A partition value of type `ty`, in Avro.
fn partition_value(b: &mut Vec<u8>, ty: &PrimitiveType, value: &PrimitiveLiteral) -> Result<()> {
    use PrimitiveLiteral as L;
    use PrimitiveType as T;
    match (ty, value) {
        (T::Boolean, L::Boolean(v)) => b.push(u8::from(*v)),
        (T::Int | T::Date, L::Int(v)) => long(b, i64::from(*v)),
        (
            T::Long | T::Time | T::Timestamp | T::Timestamptz | T::TimestampNs | T::TimestamptzNs,
            L::Long(v),
        ) => long(b, *v),
        (T::String, L::String(s)) => string(b, s.as_bytes()),
        (T::Binary, L::Binary(v)) => string(b, v),
        _ => return Err(mismatch(ty, value)),
    }
    Ok(())
}

/// An Avro `int` or `long`: zig-zag, then 7 bits a byte.
fn long(b: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        b.push((z as u8) | 0x80);
        z >>= 7;
    }
    b.push(z as u8);
}

/// An optional `long` (the union `["null", "long"]`).
fn optional_long(b: &mut Vec<u8>, v: Option<i64>) {
    match v {
        None => long(b, 0),
        Some(v) => {
            long(b, 1);
            long(b, v);
        }
    }
}

/// Avro `bytes` or `string`: the length, then the bytes.
fn string(b: &mut Vec<u8>, s: &[u8]) {
    long(b, s.len() as i64);
    b.extend_from_slice(s);
}

/// The start of an array of `n` items: one block of them (none: nothing).
fn array_len(b: &mut Vec<u8>, n: usize) {
    if n > 0 {
        long(b, n as i64);
    }
}

/// The end of an array: an empty block.
fn array_end(b: &mut Vec<u8>) {
    long(b, 0);
}

#[cfg(test)]
#[path = "avro_tests.rs"]
mod tests;
