//! Building one snapshot on a base, in the steps iceberg-java's
//! `MergingSnapshotProducer` takes for the cases firn needs:
//!
//! 1. carry the base's manifests forward, rewriting those that hold a file
//!    the change removes with that file marked deleted
//!    ([`SnapshotWriter::carry_base`]); every removed file must be found
//!    live, or the change is superseded;
//! 2. cluster the carried manifests by partition when asked, or merge them
//!    once small ones pile up ([`SnapshotWriter::merge_carried`]);
//! 3. write one manifest per partition spec for the added files
//!    ([`SnapshotWriter::write_added`]);
//! 4. write the manifest list over all of them;
//! 5. the summary ([`super::summary`]) and the new metadata from iceberg's
//!    public `TableMetadataBuilder`, with the ledger mirrored in the table
//!    properties ([`SnapshotWriter::stage`]).
//!
//! Nothing is visible until the catalog swap succeeds; a failed swap leaves
//! the files written here to orphan removal.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use futures::StreamExt;

use iceberg::spec::{
    DataFile, FormatVersion, MAIN_BRANCH, ManifestContentType, ManifestEntry, ManifestFile,
    ManifestListWriter, PartitionSpec, SchemaRef, Snapshot, SnapshotSummaryCollector, Summary,
    TableMetadata,
};
use uuid::Uuid;

use super::avro::Manifest;
use super::manifests::{Clustered, MergePolicy};
use super::{Change, NewFile, RemovedFile, summary};
use crate::catalog::{StagedMetadata, TableHandle};
use crate::clock::{Clock, SystemClock};
use crate::error::{Error, ErrorKind, Result};
use crate::ledger;

/// What a built snapshot is, for logging and metrics.
#[derive(Debug, Clone)]
pub struct BuiltSnapshot {
    /// Its id.
    pub snapshot_id: i64,
    /// Files it adds.
    pub added_files: usize,
    /// Records it adds.
    pub added_records: u64,
    /// Files it removes.
    pub removed_files: usize,
    /// Records it removes.
    pub removed_records: u64,
}

/// Build the staged metadata for `change` on `base` (the table as `real`
/// holds it, or, for a change to a branch, as that branch sees it): the
/// steps the module docs list, in order.
pub async fn build(
    base: &TableHandle,
    real: &TableHandle,
    change: &Change,
    attempt: u32,
) -> Result<(StagedMetadata, BuiltSnapshot)> {
    let writer = SnapshotWriter::new(base, attempt)?;
    let mut collector = SnapshotSummaryCollector::default();
    collector.set_partition_summary_limit(0);

    let carried = writer.carry_base(&change.removed, &mut collector).await?;
    check_all_removed(base, change, carried.found)?;
    let mut manifests = carried.rewritten;
    manifests.extend(
        writer
            .merge_carried(carried.unchanged, change.rewrite_manifests)
            .await?,
    );
    manifests.extend(carried.deletes);
    let (added, added_records) = writer.write_added(&change.added, &mut collector).await?;
    manifests.extend(added);
    let manifest_list = writer.write_manifest_list(manifests).await?;

    let summary = summary::build(&base.metadata, change, collector)?;
    let staged = writer.stage(manifest_list, summary, real, change)?;
    Ok((
        staged,
        BuiltSnapshot {
            snapshot_id: writer.snapshot_id,
            added_files: change.added.len(),
            added_records,
            removed_files: carried.found,
            removed_records: carried.removed_records,
        },
    ))
}

/// Every file `change` removes must have been found live in the base:
/// otherwise another job replaced some first, and this one is superseded.
fn check_all_removed(base: &TableHandle, change: &Change, found: usize) -> Result<()> {
    let removed = change.removed.len();
    if found == removed {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::Superseded,
        format!(
            "superseded: {} of the {removed} files this {} replaces are no longer live in {}; \
             another job replaced them first",
            removed - found,
            change.firn_operation,
            base.ident
        ),
    ))
}

/// The base's manifests as the new snapshot carries them.
#[derive(Debug, Default)]
struct Carried {
    /// Manifests rewritten with the removed files marked deleted.
    rewritten: Vec<ManifestFile>,
    /// Data manifests carried as they are (candidates for a merge).
    unchanged: Vec<ManifestFile>,
    /// Delete manifests (row-level deletes another engine wrote), carried
    /// exactly as they are: firn never rewrites or merges them.
    deletes: Vec<ManifestFile>,
    /// Removed files found live.
    found: usize,
    /// Records in them.
    removed_records: u64,
}

/// What [`SnapshotWriter::rewrite_removing`] made of one base manifest.
#[derive(Debug)]
enum Rewrite {
    /// It holds no removed file: carried as it is.
    Unchanged(ManifestFile),
    /// Rewritten with `removed` (its entries found live) marked deleted.
    Removing {
        manifest: ManifestFile,
        spec: Arc<PartitionSpec>,
        removed: Vec<DataFile>,
    },
}

/// One snapshot being written on a base: its ids, and where its files go.
/// Cheap to clone (the base's metadata and IO are shared), so manifests are
/// rewritten on tasks of their own.
#[derive(Debug, Clone)]
struct SnapshotWriter {
    base: TableHandle,
    snapshot_id: i64,
    sequence_number: i64,
    /// Names this attempt's manifests and manifest list.
    commit_uuid: String,
    attempt: u32,
}

impl SnapshotWriter {
    fn new(base: &TableHandle, attempt: u32) -> Result<Self> {
        let meta = base.metadata.as_ref();
        if meta.format_version() != FormatVersion::V2 {
            return Err(Error::new(
                ErrorKind::Iceberg,
                format!(
                    "table {} is not format v2; firn writes v2 tables",
                    base.ident
                ),
            ));
        }
        Ok(Self {
            base: base.clone(),
            snapshot_id: unique_snapshot_id(meta),
            sequence_number: meta.next_sequence_number(),
            commit_uuid: Uuid::now_v7().to_string(),
            attempt,
        })
    }

    fn meta(&self) -> &TableMetadata {
        &self.base.metadata
    }

    /// An iceberg error, saying what was being done to which table (the
    /// message is made only on an error: this is called per manifest entry).
    fn ice(&self, what: &'static str) -> impl FnOnce(iceberg::Error) -> Error + '_ {
        move |e| Error::iceberg(format!("{what} for {}", self.base.ident), e)
    }

    fn spec(&self, spec_id: i32) -> Result<Arc<PartitionSpec>> {
        self.meta()
            .partition_spec_by_id(spec_id)
            .cloned()
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Internal,
                    format!("table {} has no partition spec {spec_id}", self.base.ident),
                )
            })
    }

    /// A v2 data-manifest writer at `<table>/metadata/<commit uuid>-<suffix>.avro`.
    async fn manifest_writer(
        &self,
        suffix: &str,
        schema: SchemaRef,
        spec: PartitionSpec,
    ) -> Result<Manifest> {
        let path = format!(
            "{}/metadata/{}-{suffix}.avro",
            self.meta().location().trim_end_matches('/'),
            self.commit_uuid
        );
        let output = self
            .base
            .file_io
            .new_output(&path)
            .map_err(|e| Error::iceberg(format!("creating manifest {path}"), e))?;
        Manifest::new(output, path, self.snapshot_id, schema, spec).await
    }

    /// Carry a live entry of a base manifest into `writer` as EXISTING, with
    /// the snapshot and sequence numbers it was added with.
    fn carry_entry(&self, writer: &mut Manifest, e: &ManifestEntry) -> Result<()> {
        let seq = e.sequence_number.unwrap_or(0);
        writer.existing(
            &e.data_file,
            e.snapshot_id.unwrap_or(self.snapshot_id),
            seq,
            e.file_sequence_number.or(Some(seq)),
        )
    }

    /// Step 1: sort the base's live manifests into delete manifests, data
    /// manifests carried as they are, and those holding a file in `removed`,
    /// rewritten (a manifest left holding only entries deleted by an earlier
    /// snapshot has nothing live and is dropped, as Iceberg's producers do).
    /// The manifests that may hold a removed file are read and rewritten
    /// [`super::MANIFESTS_AT_ONCE`] at a time, each on a task of its own; what they
    /// find is recorded in the base's manifest order.
    async fn carry_base(
        &self,
        removed: &[RemovedFile],
        collector: &mut SnapshotSummaryCollector,
    ) -> Result<Carried> {
        let mut carried = Carried::default();
        let Some(current) = self.meta().current_snapshot() else {
            return Ok(carried);
        };
        let by_path: Arc<HashMap<String, RemovedFile>> = Arc::new(
            removed
                .iter()
                .map(|r| (r.path.clone(), r.clone()))
                .collect(),
        );
        let list = self.base.manifest_list(current).await?;
        let mut rewrites = Vec::new();
        for (n, mf) in list.entries().iter().cloned().enumerate() {
            if !mf.has_added_files() && !mf.has_existing_files() {
                continue;
            }
            if mf.content == ManifestContentType::Deletes {
                carried.deletes.push(mf);
            } else if by_path.is_empty() || !may_hold(&mf, removed) {
                carried.unchanged.push(mf);
            } else {
                let (writer, removed) = (self.clone(), by_path.clone());
                let what = format!("rewriting manifest {}", mf.manifest_path);
                rewrites.push(crate::error::on_task(what, async move {
                    writer.rewrite_removing(n, mf, &removed).await
                }));
            }
        }
        let mut rewrites = futures::stream::iter(rewrites).buffered(super::MANIFESTS_AT_ONCE);
        let schema = self.meta().current_schema().clone();
        while let Some(rewrite) = rewrites.next().await {
            match rewrite? {
                Rewrite::Unchanged(mf) => carried.unchanged.push(mf),
                Rewrite::Removing {
                    manifest,
                    spec,
                    removed,
                } => {
                    carried.found += removed.len();
                    for file in &removed {
                        carried.removed_records += file.record_count();
                        collector.remove_file(file, schema.clone(), spec.clone());
                    }
                    carried.rewritten.push(manifest);
                }
            }
        }
        Ok(carried)
    }

    /// Rewrite manifest `mf` (the `n`th of the base) with the entries in
    /// `removed` marked deleted and every other live entry carried as
    /// EXISTING; a manifest holding none of them is carried as it is.
    async fn rewrite_removing(
        &self,
        n: usize,
        mf: ManifestFile,
        removed: &HashMap<String, RemovedFile>,
    ) -> Result<Rewrite> {
        let manifest = self.base.manifest(&mf).await?;
        let live = || manifest.entries().iter().filter(|e| e.is_alive());
        if !live().any(|e| removed.contains_key(e.file_path())) {
            return Ok(Rewrite::Unchanged(mf));
        }
        let mmeta = manifest.metadata();
        let spec = self
            .meta()
            .partition_spec_by_id(mmeta.partition_spec().spec_id())
            .cloned()
            .unwrap_or_else(|| Arc::new(mmeta.partition_spec().clone()));
        let mut writer = self
            .manifest_writer(
                &format!("r{n}"),
                mmeta.schema.clone(),
                mmeta.partition_spec().clone(),
            )
            .await?;
        let mut found = Vec::new();
        for e in live() {
            if !removed.contains_key(e.file_path()) {
                self.carry_entry(&mut writer, e)?;
                continue;
            }
            found.push(e.data_file.clone());
            let seq = e.sequence_number.unwrap_or(0);
            writer.deleted(&e.data_file, seq, e.file_sequence_number.or(Some(seq)))?;
        }
        Ok(Rewrite::Removing {
            manifest: writer.finish().await?,
            spec,
            removed: found,
        })
    }

    /// Step 2: the carried data manifests, clustered by partition into
    /// manifests of about `rewrite` bytes when a manifest rewrite asks, or of
    /// the table's target size once small ones pile up (Iceberg's
    /// merge-append); otherwise as they are.
    async fn merge_carried(
        &self,
        carried: Vec<ManifestFile>,
        rewrite: Option<u64>,
    ) -> Result<Vec<ManifestFile>> {
        let merge = MergePolicy::of(&self.base);
        if rewrite.is_none() && !merge.due(&carried) {
            return Ok(carried);
        }
        let target = rewrite.unwrap_or(merge.target_size);
        let clustered = self.recluster(&carried, target).await?;
        tracing::debug!(
            table = %self.base.ident,
            before = carried.len(),
            after = clustered.len(),
            "manifests clustered"
        );
        Ok(clustered)
    }

    /// Rewrite `inputs` into manifests holding whole partitions, about
    /// `target` bytes each, every live entry carried as EXISTING.
    async fn recluster(&self, inputs: &[ManifestFile], target: u64) -> Result<Vec<ManifestFile>> {
        let clustered = Clustered::load(&self.base, inputs).await?;
        let schema = self.meta().current_schema().clone();
        let mut out = Vec::new();
        for (n, (spec_id, parts)) in clustered.pack(target).into_iter().enumerate() {
            let spec = self.spec(spec_id)?;
            let mut writer = self
                .manifest_writer(&format!("c{n}"), schema.clone(), spec.as_ref().clone())
                .await?;
            for key in parts {
                for e in &clustered.partitions[&key] {
                    self.carry_entry(&mut writer, e)?;
                }
            }
            out.push(writer.finish().await?);
        }
        Ok(out)
    }

    /// Step 3: one new manifest per partition spec among `added`; the
    /// manifests and the records they add.
    async fn write_added(
        &self,
        added: &[NewFile],
        collector: &mut SnapshotSummaryCollector,
    ) -> Result<(Vec<ManifestFile>, u64)> {
        let mut by_spec: BTreeMap<i32, Vec<&DataFile>> = BTreeMap::new();
        for f in added {
            by_spec.entry(f.spec_id).or_default().push(&f.file);
        }
        let schema = self.meta().current_schema().clone();
        let mut manifests = Vec::new();
        let mut records = 0;
        for (n, (spec_id, files)) in by_spec.into_iter().enumerate() {
            let spec = self.spec(spec_id)?;
            let mut writer = self
                .manifest_writer(&format!("m{n}"), schema.clone(), spec.as_ref().clone())
                .await?;
            for f in files {
                collector.add_file(f, schema.clone(), spec.clone());
                records += f.record_count();
                // Its sequence numbers are the snapshot's (v2 inheritance).
                writer.add(f)?;
            }
            manifests.push(writer.finish().await?);
        }
        Ok((manifests, records))
    }

    /// Step 4: the manifest list over `manifests`; its path.
    async fn write_manifest_list(&self, manifests: Vec<ManifestFile>) -> Result<String> {
        let path = format!(
            "{}/metadata/snap-{}-{}-{}.avro",
            self.meta().location().trim_end_matches('/'),
            self.snapshot_id,
            self.attempt,
            self.commit_uuid
        );
        let output = self
            .base
            .file_io
            .new_output(&path)
            .map_err(self.ice("creating manifest list"))?;
        let mut writer = ManifestListWriter::v2(
            output
                .writer()
                .await
                .map_err(self.ice("opening manifest list"))?,
            self.snapshot_id,
            self.meta().current_snapshot_id(),
            self.sequence_number,
        );
        writer
            .add_manifests(manifests.into_iter())
            .map_err(self.ice("writing manifest list"))?;
        writer
            .close()
            .await
            .map_err(self.ice("closing manifest list"))?;
        Ok(path)
    }

    /// Step 5: the new metadata (from `real`'s): the snapshot on main, and
    /// the ledger its summary holds mirrored in the table properties; or,
    /// for a change to a branch, the snapshot on that branch (main's ledger
    /// mirror left as it is).
    fn stage(
        &self,
        manifest_list: String,
        summary: Summary,
        real: &TableHandle,
        change: &Change,
    ) -> Result<StagedMetadata> {
        let meta = self.meta();
        let mirror = match &change.branch {
            None => ledger::mirror_updates(meta, &summary.additional_properties, self.snapshot_id),
            Some(_) => HashMap::new(),
        };
        // A snapshot's time is the table's own clock, not a plan's: iceberg's
        // metadata builder stamps `last-updated-ms` from the system clock, and
        // a snapshot may not be older than the metadata it lands in.
        let timestamp_ms = SystemClock
            .now()
            .timestamp_millis()
            .max(meta.last_updated_ms() + 1);
        let snapshot = Snapshot::builder()
            .with_snapshot_id(self.snapshot_id)
            .with_parent_snapshot_id(meta.current_snapshot_id())
            .with_sequence_number(self.sequence_number)
            .with_timestamp_ms(timestamp_ms)
            .with_manifest_list(manifest_list)
            .with_schema_id(meta.current_schema_id())
            .with_summary(summary)
            .build();
        let branch = change.branch.as_deref().unwrap_or(MAIN_BRANCH);
        let mut builder = (*real.metadata)
            .clone()
            .into_builder(Some(real.metadata_location.clone()))
            .set_branch_snapshot(snapshot, branch)
            .map_err(self.ice("adding snapshot"))?;
        if !mirror.is_empty() {
            builder = builder
                .set_properties(mirror)
                .map_err(self.ice("mirroring the ledger in table properties"))?;
        }
        if let Some(dropped) = &change.drop_branch {
            builder = builder.remove_ref(dropped);
        }
        let result = builder.build().map_err(self.ice("building metadata"))?;
        Ok(StagedMetadata {
            metadata: result.metadata,
            changes: result.changes,
            branch: match &change.branch {
                Some(b) => Some((b.clone(), real.branch_head(b)?)),
                None => None,
            },
        })
    }
}

/// Whether a manifest may hold one of `removed`: same spec, and the
/// partition summary's bounds do not exclude the file's partition.
fn may_hold(mf: &ManifestFile, removed: &[RemovedFile]) -> bool {
    let bounds = mf
        .partitions
        .as_ref()
        .and_then(|p| p.first())
        .and_then(|s| {
            let lo = s.lower_bound.as_ref()?;
            let hi = s.upper_bound.as_ref()?;
            let int = |b: &[u8]| <[u8; 4]>::try_from(b).ok().map(i32::from_le_bytes);
            Some((int(lo)?, int(hi)?))
        });
    removed.iter().any(|r| {
        r.spec_id == mf.partition_spec_id
            && bounds.is_none_or(|(lo, hi)| lo <= r.partition && r.partition <= hi)
    })
}

fn unique_snapshot_id(metadata: &TableMetadata) -> i64 {
    loop {
        let (hi, lo) = Uuid::new_v4().as_u64_pair();
        let id = ((hi ^ lo) & (i64::MAX as u64)) as i64;
        if id != 0 && metadata.snapshot_by_id(id).is_none() {
            return id;
        }
    }
}
