//! Data manifests read straight from Avro. iceberg's reader decodes every
//! entry into an Avro value tree, resolves it against its own schema and
//! then deserialises it: some 150,000 instructions per entry, which a
//! maintenance run pays for every live file when it plans. A v2 data
//! manifest whose Avro schema is exactly the one firn (and iceberg's own
//! writer) writes for its table schema and partition spec, with
//! uncompressed blocks, is decoded here field by field in that schema's
//! order; any other manifest (another engine's, v1 or v3, deletes, deflated,
//! encrypted) is read by iceberg's reader as before.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use iceberg::io::FileIO;
use iceberg::spec::{
    DataContentType, DataFile, DataFileBuilder, DataFileFormat, Datum, FormatVersion, Literal,
    Manifest, ManifestContentType, ManifestEntry, ManifestFile, ManifestMetadata, ManifestStatus,
    PrimitiveLiteral, PrimitiveType, Struct,
};

use super::avro::{Container, header, partition_types, read_bytes, read_long};
use crate::error::{Error, ErrorKind, Result};

/// Manifest `mf`, its entries inheriting what the manifest list says of it
/// (as iceberg's `ManifestFile::load_manifest` gives it).
pub async fn load(mf: &ManifestFile, file_io: &FileIO) -> Result<Manifest> {
    let path = &mf.manifest_path;
    let read_error = |e| Error::iceberg(format!("reading manifest {path}"), e);
    if mf.key_metadata.is_some() {
        return mf.load_manifest(file_io).await.map_err(read_error);
    }
    let bytes = file_io
        .new_input(path)
        .map_err(read_error)?
        .read()
        .await
        .map_err(read_error)?;
    let (metadata, mut entries) = match decode(&bytes).await {
        Some(decoded) => decoded
            .map_err(|e| Error::new(ErrorKind::Iceberg, format!("reading manifest {path}: {e}")))?,
        None => {
            let (entries, metadata) = Manifest::parse_avro(&bytes)
                .map_err(read_error)?
                .into_parts();
            let entries = entries.into_iter().map(Arc::unwrap_or_clone).collect();
            (metadata, entries)
        }
    };
    for e in &mut entries {
        inherit(e, mf);
    }
    Ok(Manifest::new(metadata, entries))
}

/// What iceberg's `ManifestEntry::inherit_data` does: an entry without a
/// snapshot id or sequence numbers takes the manifest's.
fn inherit(e: &mut ManifestEntry, mf: &ManifestFile) {
    if e.snapshot_id.is_none() {
        e.snapshot_id = Some(mf.added_snapshot_id);
    }
    // The table's first sequence number, which v1 manifests carry.
    let initial = mf.sequence_number == 0;
    if e.sequence_number.is_none() && (e.status == ManifestStatus::Added || initial) {
        e.sequence_number = Some(mf.sequence_number);
    }
    if e.file_sequence_number.is_none() && (e.status == ManifestStatus::Added || initial) {
        e.file_sequence_number = Some(mf.sequence_number);
    }
}

/// The manifest in `bytes` decoded here, or `None` when it is not one
/// this reader decodes (iceberg's reader then reads it).
pub(super) async fn decode(
    bytes: &[u8],
) -> Option<std::result::Result<(ManifestMetadata, Vec<ManifestEntry>), String>> {
    let Container {
        metadata: map,
        sync,
        body,
    } = Container::parse(bytes)?;
    if map.get("avro.codec").is_some_and(|c| c != b"null") {
        return None;
    }
    let metadata = ManifestMetadata::parse(&map).ok()?;
    if metadata.format_version != FormatVersion::V2 || metadata.content != ManifestContentType::Data
    {
        return None;
    }
    let types = partition_types(&metadata.schema, &metadata.partition_spec).ok()??;
    if expected_schema(&map, &metadata).await?.as_slice() != map.get("avro.schema")?.as_slice() {
        return None;
    }
    Some(entries(body, &sync, &metadata, &types).map(|entries| (metadata, entries)))
}

/// Distinct table schemas and specs whose Avro schema is kept, at most.
const SCHEMAS_KEPT: usize = 256;

/// The Avro schema firn writes for manifests of the table schema and
/// partition spec a manifest's header `map` holds (parsed: `metadata`),
/// made once per distinct pair: a table's manifests share a few, and
/// making one writes an empty manifest through iceberg's writer.
async fn expected_schema(
    map: &HashMap<String, Vec<u8>>,
    metadata: &ManifestMetadata,
) -> Option<Arc<Vec<u8>>> {
    type Kept = Mutex<HashMap<[Vec<u8>; 3], Arc<Vec<u8>>>>;
    static KEPT: OnceLock<Kept> = OnceLock::new();
    let field = |k: &str| map.get(k).cloned().unwrap_or_default();
    let key = [
        field("schema"),
        field("partition-spec"),
        field("partition-spec-id"),
    ];
    let kept = KEPT.get_or_init(Kept::default);
    if let Some(schema) = kept.lock().ok()?.get(&key) {
        return Some(schema.clone());
    }
    let (ours, _) = header(&metadata.schema, &metadata.partition_spec)
        .await
        .ok()??;
    let schema = Arc::new(Container::parse(&ours)?.metadata.remove("avro.schema")?);
    let mut kept = kept.lock().ok()?;
    if kept.len() >= SCHEMAS_KEPT {
        kept.clear();
    }
    kept.insert(key, schema.clone());
    Some(schema)
}

/// Every entry of the blocks in `body`.
fn entries(
    mut body: &[u8],
    sync: &[u8; 16],
    metadata: &ManifestMetadata,
    types: &[PrimitiveType],
) -> std::result::Result<Vec<ManifestEntry>, String> {
    let mut out = Vec::new();
    while !body.is_empty() {
        let count = read_long(&mut body).ok_or("a block's entry count is cut short")?;
        let size = read_long(&mut body).ok_or("a block's size is cut short")?;
        let size = usize::try_from(size).map_err(|_| "a block's size is negative")?;
        let block = body.get(..size).ok_or("a block is cut short")?;
        body = &body[size..];
        let (marker, rest) = body
            .split_at_checked(16)
            .ok_or("a block's sync marker is cut short")?;
        if marker != sync {
            return Err("a block's sync marker is not the file's".into());
        }
        body = rest;
        let mut at = block;
        for _ in 0..count.max(0) {
            out.push(entry(&mut at, metadata, types)?);
        }
        if !at.is_empty() {
            return Err("a block holds more bytes than its entries".into());
        }
    }
    Ok(out)
}

const SHORT: &str = "an entry is cut short";

fn long(at: &mut &[u8]) -> std::result::Result<i64, String> {
    read_long(at).ok_or_else(|| SHORT.to_string())
}

fn int(at: &mut &[u8]) -> std::result::Result<i32, String> {
    i32::try_from(long(at)?).map_err(|_| "an int is out of range".to_string())
}

fn bytes<'a>(at: &mut &'a [u8]) -> std::result::Result<&'a [u8], String> {
    read_bytes(at).ok_or_else(|| SHORT.to_string())
}

fn string(at: &mut &[u8]) -> std::result::Result<String, String> {
    String::from_utf8(bytes(at)?.to_vec()).map_err(|_| "a string is not UTF-8".to_string())
}

/// The branch of a `["null", T]` union: whether `T` follows.
fn some(at: &mut &[u8]) -> std::result::Result<bool, String> {
    match long(at)? {
        0 => Ok(false),
        1 => Ok(true),
        other => Err(format!("a union branch {other} of a two-branch union")),
    }
}

fn optional_long(at: &mut &[u8]) -> std::result::Result<Option<i64>, String> {
    Ok(match some(at)? {
        true => Some(long(at)?),
        false => None,
    })
}

/// The items of an optional array, each read by `item`.
fn optional_array<T>(
    at: &mut &[u8],
    mut item: impl FnMut(&mut &[u8]) -> std::result::Result<T, String>,
) -> std::result::Result<Option<Vec<T>>, String> {
    if !some(at)? {
        return Ok(None);
    }
    let mut out = Vec::new();
    loop {
        let count = long(at)?;
        if count == 0 {
            return Ok(Some(out));
        }
        if count < 0 {
            long(at)?; // the block's size in bytes
        }
        for _ in 0..count.unsigned_abs() {
            out.push(item(at)?);
        }
    }
}

/// A map of counts (a negative count is dropped, as iceberg's reader
/// drops it).
fn counts(at: &mut &[u8]) -> std::result::Result<HashMap<i32, u64>, String> {
    let pairs = optional_array(at, |at| Ok((int(at)?, long(at)?)))?.unwrap_or_default();
    Ok(pairs
        .into_iter()
        .filter_map(|(k, v)| u64::try_from(v).ok().map(|v| (k, v)))
        .collect())
}

/// A map of bounds, each read as its column's type (a column the schema no
/// longer has is dropped, as iceberg's reader drops it).
fn bounds(
    at: &mut &[u8],
    metadata: &ManifestMetadata,
) -> std::result::Result<HashMap<i32, Datum>, String> {
    let pairs = optional_array(at, |at| Ok((int(at)?, bytes(at)?.to_vec())))?.unwrap_or_default();
    let mut out = HashMap::with_capacity(pairs.len());
    for (k, v) in pairs {
        let field = metadata
            .schema
            .field_by_id(k)
            .or_else(|| iceberg::metadata_columns::get_metadata_field(k).ok());
        let Some(field) = field else { continue };
        let ty = field
            .field_type
            .as_primitive_type()
            .ok_or_else(|| format!("a bound of field {}, which is not a primitive", field.name))?;
        let datum = Datum::try_from_bytes(&v, ty.clone())
            .map_err(|e| format!("a bound of field {}: {e}", field.name))?;
        out.insert(k, datum);
    }
    Ok(out)
}

fn partition_value(
    at: &mut &[u8],
    ty: &PrimitiveType,
) -> std::result::Result<Option<Literal>, String> {
    use PrimitiveType as T;
    if !some(at)? {
        return Ok(None);
    }
    let value = match ty {
        T::Boolean => {
            let (&b, rest) = at.split_first().ok_or(SHORT)?;
            *at = rest;
            PrimitiveLiteral::Boolean(b != 0)
        }
        T::Int | T::Date => PrimitiveLiteral::Int(int(at)?),
        T::Long | T::Time | T::Timestamp | T::Timestamptz | T::TimestampNs | T::TimestamptzNs => {
            PrimitiveLiteral::Long(long(at)?)
        }
        T::String => PrimitiveLiteral::String(string(at)?),
        T::Binary => PrimitiveLiteral::Binary(bytes(at)?.to_vec()),
        other => return Err(format!("a partition field of type {other}")),
    };
    Ok(Some(Literal::Primitive(value)))
}

fn entry(
    at: &mut &[u8],
    metadata: &ManifestMetadata,
    types: &[PrimitiveType],
) -> std::result::Result<ManifestEntry, String> {
    let status = match long(at)? {
        0 => ManifestStatus::Existing,
        1 => ManifestStatus::Added,
        2 => ManifestStatus::Deleted,
        other => return Err(format!("an entry status {other}")),
    };
    let snapshot_id = optional_long(at)?;
    let sequence_number = optional_long(at)?;
    let file_sequence_number = optional_long(at)?;
    let content = match long(at)? {
        0 => DataContentType::Data,
        1 => DataContentType::PositionDeletes,
        2 => DataContentType::EqualityDeletes,
        other => return Err(format!("a data file content {other}")),
    };
    let file_path = string(at)?;
    let file_format: DataFileFormat = string(at)?.parse().map_err(|e| format!("{e}"))?;
    let partition = types
        .iter()
        .map(|ty| partition_value(at, ty))
        .collect::<std::result::Result<Struct, String>>()?;
    let record_count = long(at)?;
    let file_size = long(at)?;
    let column_sizes = counts(at)?;
    let value_counts = counts(at)?;
    let null_value_counts = counts(at)?;
    let nan_value_counts = counts(at)?;
    let lower_bounds = bounds(at, metadata)?;
    let upper_bounds = bounds(at, metadata)?;
    let key_metadata = match some(at)? {
        true => Some(bytes(at)?.to_vec()),
        false => None,
    };
    let split_offsets = optional_array(at, long)?;
    let equality_ids = optional_array(at, int)?;
    let sort_order_id = optional_long(at)?
        .map(|v| i32::try_from(v).map_err(|_| "a sort order id is out of range"))
        .transpose()?;
    let first_row_id = optional_long(at)?;
    let referenced_data_file = match some(at)? {
        true => Some(string(at)?),
        false => None,
    };
    let content_offset = optional_long(at)?;
    let content_size_in_bytes = optional_long(at)?;
    let count = |v: i64, what: &str| {
        u64::try_from(v).map_err(|_| format!("data file {file_path} has a negative {what}"))
    };
    let mut b = DataFileBuilder::default();
    b.content(content)
        .file_format(file_format)
        .partition(partition)
        .record_count(count(record_count, "record count")?)
        .file_size_in_bytes(count(file_size, "size")?)
        .column_sizes(column_sizes)
        .value_counts(value_counts)
        .null_value_counts(null_value_counts)
        .nan_value_counts(nan_value_counts)
        .lower_bounds(lower_bounds)
        .upper_bounds(upper_bounds)
        .key_metadata(key_metadata)
        .split_offsets(split_offsets)
        .equality_ids(equality_ids)
        .first_row_id(first_row_id)
        .partition_spec_id(metadata.partition_spec.spec_id())
        .referenced_data_file(referenced_data_file)
        .content_offset(content_offset)
        .content_size_in_bytes(content_size_in_bytes)
        .file_path(file_path);
    if let Some(id) = sort_order_id {
        b.sort_order_id(id);
    }
    let data_file: DataFile = b.build().map_err(|e| e.to_string())?;
    Ok(ManifestEntry {
        status,
        snapshot_id,
        sequence_number,
        file_sequence_number,
        data_file,
    })
}
