//! The table state maintenance plans from: every live data file of the
//! current snapshot with its grain, partition and size. Read from manifests
//! only.
//!
//! Other engines write to the same tables (DESIGN.md, "A shared lake"): a
//! file's partition is read through *its own* spec, whoever created it. A
//! spec partitioning `ts` by hour, day or month holds minute, hour or day
//! rows as firn's own specs do, whatever its id; files of any other spec,
//! and delete files (position or equality deletes firn does not apply), are
//! recorded so that maintenance refuses the table with a clear error instead
//! of planning around rows it cannot see.

use futures::StreamExt;
use iceberg::spec::{Literal, ManifestContentType, PartitionSpec, PrimitiveLiteral, Schema};

use crate::catalog::TableHandle;
use crate::commit::RemovedFile;
use crate::error::{Error, ErrorKind, Result};
use crate::schema::layout::Grain;

/// One live data file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveFile {
    /// Path.
    pub path: String,
    /// Grain of its rows (from its partition spec).
    pub grain: Grain,
    /// The partition spec it was written with (firn's grain spec, or an
    /// equivalent one another engine added).
    pub spec_id: i32,
    /// Partition ordinal in its grain's spec.
    pub partition: i32,
    /// Rows.
    pub records: u64,
    /// Bytes.
    pub bytes: u64,
    /// The sort order its rows are in, as its manifest entry records it
    /// (`None`: unsorted).
    pub sort_order: Option<i32>,
    /// The least and greatest `ts` of its rows, in microseconds, as its
    /// manifest entry records them (`None`: it records none).
    pub ts_bounds: Option<(i64, i64)>,
}

impl LiveFile {
    /// `[start, end)` of its partition, in microseconds.
    pub fn partition_bounds(&self) -> (i64, i64) {
        self.grain.partition_bounds(self.partition)
    }

    /// How a commit names it for removal.
    pub fn removed(&self) -> RemovedFile {
        RemovedFile {
            path: self.path.clone(),
            spec_id: self.spec_id,
            partition: self.partition,
        }
    }
}

/// Live files of a table at one snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableState {
    /// The snapshot read (`None`: empty table).
    pub snapshot_id: Option<i64>,
    /// Live data files, sorted by grain, partition and path.
    pub files: Vec<LiveFile>,
    /// Live data files whose partition spec firn cannot map to a grain
    /// (`(path, spec id)`).
    pub unplannable: Vec<(String, i32)>,
    /// Live delete files (position or equality deletes).
    pub delete_files: Vec<String>,
}

impl TableState {
    /// Refuse to plan a rewrite of a table whose rows firn cannot all see:
    /// delete files it would have to apply, or files of a partition spec it
    /// cannot place in time. Ingest appends are unaffected.
    pub fn check_plannable(&self, table: &str) -> Result<()> {
        if let Some(first) = self.delete_files.first() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "table {table} holds {} delete file(s) (row-level deletes another engine \
                     wrote, e.g. {first}); firn's compaction, rollup, retention and backfill \
                     --replace do not apply deletes, so they refuse the table rather than \
                     resurrect deleted rows. Rewrite the deletes into the data files with the \
                     engine that wrote them (Spark's rewrite_data_files with \
                     delete-file-threshold=1, or a copy-on-write overwrite), then run again",
                    self.delete_files.len()
                ),
            ));
        }
        if let Some((path, spec)) = self.unplannable.first() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "table {table} holds {} data file(s) written with partition spec {spec}, \
                     which does not partition `ts` by hour, day or month (e.g. {path}); firn \
                     cannot place their rows in time, so it refuses to plan maintenance. \
                     Rewrite them with one of the table's time partition specs",
                    self.unplannable.len()
                ),
            ));
        }
        Ok(())
    }
}

/// The grain whose rows a spec holds: firn's own specs by id, and any spec
/// whose only field is `hour`, `day` or `month` of `ts`.
pub fn grain_of_spec(spec: &PartitionSpec, schema: &Schema) -> Option<Grain> {
    let [field] = spec.fields() else {
        return None;
    };
    let ts = schema.field_by_name("ts")?;
    if field.source_id != ts.id {
        return None;
    }
    Grain::ALL
        .into_iter()
        .find(|g| g.partition_transform() == field.transform)
}

/// The `ts` bounds data file `f`'s manifest entry records for field
/// `ts_id`, in microseconds.
pub fn ts_bounds(f: &iceberg::spec::DataFile, ts_id: Option<i32>) -> Option<(i64, i64)> {
    let id = ts_id?;
    let bound = |bounds: &std::collections::HashMap<i32, iceberg::spec::Datum>| match bounds
        .get(&id)?
        .literal()
    {
        PrimitiveLiteral::Long(v) => Some(*v),
        _ => None,
    };
    Some((bound(f.lower_bounds())?, bound(f.upper_bounds())?))
}

/// Read the live files of `table`'s current snapshot.
pub async fn load(table: &TableHandle) -> Result<TableState> {
    let meta = &table.metadata;
    let Some(snapshot) = meta.current_snapshot() else {
        return Ok(TableState::default());
    };
    let schema = meta.current_schema();
    let ts_id = schema.field_by_name("ts").map(|f| f.id);
    let list = table.manifest_list(snapshot).await?;
    let mut state = TableState {
        snapshot_id: Some(snapshot.snapshot_id()),
        ..TableState::default()
    };
    // Manifests are read several at once, each on a task of its own (on
    // object storage each is a GET), and taken in the list's order.
    let loads = list
        .entries()
        .iter()
        .filter(|mf| mf.has_added_files() || mf.has_existing_files())
        .cloned()
        .map(|mf| {
            let table = table.clone();
            let what = format!("reading manifest {}", mf.manifest_path);
            crate::error::on_task(what, async move { Ok((table.manifest(&mf).await?, mf)) })
        });
    let mut loads = futures::stream::iter(loads).buffered(crate::commit::MANIFESTS_AT_ONCE);
    while let Some(loaded) = loads.next().await {
        let (manifest, mf) = loaded?;
        let live = manifest.entries().iter().filter(|e| e.is_alive());
        if mf.content == ManifestContentType::Deletes {
            state
                .delete_files
                .extend(live.map(|e| e.file_path().to_string()));
            continue;
        }
        let spec_id = mf.partition_spec_id;
        let spec = meta
            .partition_spec_by_id(spec_id)
            .map(|s| s.as_ref().clone())
            .unwrap_or_else(|| manifest.metadata().partition_spec().clone());
        let Some(grain) = grain_of_spec(&spec, schema) else {
            state
                .unplannable
                .extend(live.map(|e| (e.file_path().to_string(), spec_id)));
            continue;
        };
        for e in live {
            let f = e.data_file();
            let partition = match f.partition().fields().first() {
                Some(Some(Literal::Primitive(PrimitiveLiteral::Int(v)))) => *v,
                _ => {
                    return Err(Error::new(
                        ErrorKind::Iceberg,
                        format!(
                            "data file {} of {} has no {} partition value",
                            f.file_path(),
                            table.ident,
                            grain.partition_field_name()
                        ),
                    ));
                }
            };
            state.files.push(LiveFile {
                path: f.file_path().to_string(),
                grain,
                spec_id,
                partition,
                records: f.record_count(),
                bytes: f.file_size_in_bytes(),
                sort_order: f.sort_order_id(),
                ts_bounds: ts_bounds(f, ts_id),
            });
        }
    }
    state
        .files
        .sort_by(|a, b| (a.grain, a.partition, &a.path).cmp(&(b.grain, b.partition, &b.path)));
    Ok(state)
}

/// [`load`], refused (see [`TableState::check_plannable`]) when the table
/// holds rows firn's rewrites cannot see.
pub async fn load_plannable(table: &TableHandle) -> Result<TableState> {
    let state = load(table).await?;
    state.check_plannable(&table.ident.to_string())?;
    Ok(state)
}
