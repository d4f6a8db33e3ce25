//! Building one snapshot on a base: manifests for the added files (one per
//! partition spec), a manifest list over the base's manifests plus those, the
//! summary, and the new metadata from iceberg's public `TableMetadataBuilder`.
//!
//! Mirrors iceberg-java's `MergingSnapshotProducer` for the cases firn needs.

use std::collections::{BTreeMap, HashMap};

use iceberg::spec::{
    DataFile, FormatVersion, MAIN_BRANCH, ManifestContentType, ManifestFile, ManifestListWriter,
    ManifestWriterBuilder, Snapshot, SnapshotSummaryCollector, Summary, TableMetadata,
};
use uuid::Uuid;

use super::manifests::{Clustered, MergePolicy};
use super::summary::{self, TOTALS};
use super::{Change, RemovedFile};
use crate::catalog::{StagedMetadata, TableHandle};
use crate::error::{Error, ErrorKind, Result};
use crate::{ledger, offsets};

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

/// Rewrite `inputs` into manifests holding whole partitions, about
/// `target` bytes each, every live entry carried as EXISTING.
async fn recluster(
    base: &TableHandle,
    inputs: &[ManifestFile],
    snapshot_id: i64,
    commit_uuid: &str,
    target: u64,
) -> Result<Vec<ManifestFile>> {
    let clustered = Clustered::load(base, inputs).await?;
    let schema = base.metadata.current_schema().clone();
    let mut out = Vec::new();
    for (n, (spec_id, parts)) in clustered.pack(target).into_iter().enumerate() {
        let spec = base.metadata.partition_spec_by_id(spec_id).ok_or_else(|| {
            Error::new(
                ErrorKind::Internal,
                format!("table {} has no partition spec {spec_id}", base.ident),
            )
        })?;
        let mut writer = manifest_writer(
            base,
            &format!("{commit_uuid}-c{n}"),
            snapshot_id,
            schema.clone(),
            spec.as_ref().clone(),
        )?;
        for key in parts {
            for e in &clustered.partitions[&key] {
                let seq = e.sequence_number.unwrap_or(0);
                writer
                    .add_existing_file(
                        e.data_file.clone(),
                        e.snapshot_id.unwrap_or(snapshot_id),
                        seq,
                        e.file_sequence_number.or(Some(seq)),
                    )
                    .map_err(|err| Error::iceberg("carrying a data file forward", err))?;
            }
        }
        out.push(
            writer.write_manifest_file().await.map_err(|err| {
                Error::iceberg(format!("writing manifest for {}", base.ident), err)
            })?,
        );
    }
    Ok(out)
}

/// A v2 data-manifest writer at `<table>/metadata/<name>.avro`.
fn manifest_writer(
    base: &TableHandle,
    name: &str,
    snapshot_id: i64,
    schema: iceberg::spec::SchemaRef,
    spec: iceberg::spec::PartitionSpec,
) -> Result<iceberg::spec::ManifestWriter> {
    let path = format!(
        "{}/metadata/{name}.avro",
        base.metadata.location().trim_end_matches('/')
    );
    let output = base
        .file_io
        .new_output(&path)
        .map_err(|e| Error::iceberg(format!("creating manifest {path}"), e))?;
    Ok(ManifestWriterBuilder::new(output, Some(snapshot_id), schema, spec).build_v2_data())
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

/// Build the staged metadata for `change` on `base`. Writes manifests and the
/// manifest list; nothing is visible until the catalog swap succeeds.
pub async fn build(
    base: &TableHandle,
    change: &Change,
    attempt: u32,
) -> Result<(StagedMetadata, BuiltSnapshot)> {
    let meta = base.metadata.as_ref();
    let ident = &base.ident;
    let ice = |what: &str| {
        let what = format!("{what} for {ident}");
        move |e: iceberg::Error| Error::iceberg(what, e)
    };
    if meta.format_version() != FormatVersion::V2 {
        return Err(Error::new(
            ErrorKind::Iceberg,
            format!("table {ident} is not format v2; firn writes v2 tables"),
        ));
    }

    let snapshot_id = unique_snapshot_id(meta);
    let sequence_number = meta.next_sequence_number();
    let commit_uuid = Uuid::now_v7();
    let schema = meta.current_schema().clone();

    let mut collector = SnapshotSummaryCollector::default();
    collector.set_partition_summary_limit(0);

    // Existing manifests carry forward unchanged, except those holding a file
    // the change removes: those are rewritten with the file marked deleted.
    let removed: HashMap<&str, &RemovedFile> = change
        .removed
        .iter()
        .map(|r| (r.path.as_str(), r))
        .collect();
    let mut found = 0usize;
    let mut removed_records = 0u64;
    let mut manifests: Vec<ManifestFile> = Vec::new();
    let mut carried: Vec<ManifestFile> = Vec::new();
    let mut deletes: Vec<ManifestFile> = Vec::new();
    if let Some(current) = meta.current_snapshot() {
        let list = base.manifest_list(current).await?;
        for (n, mf) in list.entries().to_vec().into_iter().enumerate() {
            // A manifest left holding only entries deleted by an earlier
            // snapshot has nothing live: drop it, as Iceberg's producers do.
            if !mf.has_added_files() && !mf.has_existing_files() {
                continue;
            }
            // Delete manifests (row-level deletes another engine wrote) are
            // carried exactly as they are: firn never rewrites or merges them.
            if mf.content == ManifestContentType::Deletes {
                deletes.push(mf);
                continue;
            }
            if removed.is_empty() || !may_hold(&mf, &change.removed) {
                carried.push(mf);
                continue;
            }
            let manifest = mf
                .load_manifest(&base.file_io)
                .await
                .map_err(ice("reading manifest"))?;
            let hits = manifest
                .entries()
                .iter()
                .filter(|e| e.is_alive() && removed.contains_key(e.file_path()))
                .count();
            if hits == 0 {
                carried.push(mf);
                continue;
            }
            let mmeta = manifest.metadata();
            let spec = meta
                .partition_spec_by_id(mmeta.partition_spec().spec_id())
                .cloned()
                .unwrap_or_else(|| std::sync::Arc::new(mmeta.partition_spec().clone()));
            let mut writer = manifest_writer(
                base,
                &format!("{commit_uuid}-r{n}"),
                snapshot_id,
                mmeta.schema.clone(),
                mmeta.partition_spec().clone(),
            )?;
            for e in manifest.entries().iter().filter(|e| e.is_alive()) {
                let seq = e.sequence_number.unwrap_or(0);
                let file_seq = e.file_sequence_number.or(Some(seq));
                if removed.contains_key(e.file_path()) {
                    found += 1;
                    removed_records += e.record_count();
                    collector.remove_file(&e.data_file, schema.clone(), spec.clone());
                    writer
                        .add_delete_file(e.data_file.clone(), seq, file_seq)
                        .map_err(ice("marking a data file deleted"))?;
                } else {
                    writer
                        .add_existing_file(
                            e.data_file.clone(),
                            e.snapshot_id.unwrap_or(snapshot_id),
                            seq,
                            file_seq,
                        )
                        .map_err(ice("carrying a data file forward"))?;
                }
            }
            manifests.push(
                writer
                    .write_manifest_file()
                    .await
                    .map_err(ice("writing manifest"))?,
            );
        }
    }
    if found != removed.len() {
        return Err(Error::new(
            ErrorKind::Superseded,
            format!(
                "superseded: {} of the {} files this {} replaces are no longer live in {ident}; \
                 another job replaced them first",
                removed.len() - found,
                removed.len(),
                change.firn_operation
            ),
        ));
    }

    // Carried-forward manifests are clustered by partition when asked, or
    // merged once small ones pile up (Iceberg's merge-append).
    let merge = MergePolicy::of(base);
    if change.rewrite_manifests.is_some() || merge.due(&carried) {
        let before = carried.len();
        let target = change.rewrite_manifests.unwrap_or(merge.target_size);
        carried = recluster(
            base,
            &carried,
            snapshot_id,
            &commit_uuid.to_string(),
            target,
        )
        .await?;
        tracing::debug!(table = %ident, before, after = carried.len(), "manifests clustered");
    }
    manifests.extend(carried);
    manifests.extend(deletes);

    // One new manifest per partition spec among the added files.
    let mut by_spec: BTreeMap<i32, Vec<&DataFile>> = BTreeMap::new();
    for f in &change.added {
        by_spec.entry(f.spec_id).or_default().push(&f.file);
    }
    let mut added_records = 0;
    for (n, (spec_id, files)) in by_spec.into_iter().enumerate() {
        let spec = meta.partition_spec_by_id(spec_id).ok_or_else(|| {
            Error::new(
                ErrorKind::Internal,
                format!("table {ident} has no partition spec {spec_id}"),
            )
        })?;
        let mut writer = manifest_writer(
            base,
            &format!("{commit_uuid}-m{n}"),
            snapshot_id,
            schema.clone(),
            spec.as_ref().clone(),
        )?;
        for f in files {
            collector.add_file(f, schema.clone(), spec.clone());
            added_records += f.record_count();
            // A negative sequence number inherits the snapshot's (v2 inheritance).
            writer
                .add_file((*f).clone(), -1)
                .map_err(ice("adding data file to manifest"))?;
        }
        manifests.push(
            writer
                .write_manifest_file()
                .await
                .map_err(ice("writing manifest"))?,
        );
    }

    let list_path = format!(
        "{}/metadata/snap-{snapshot_id}-{attempt}-{commit_uuid}.avro",
        meta.location().trim_end_matches('/')
    );
    let list_out = base
        .file_io
        .new_output(&list_path)
        .map_err(ice("creating manifest list"))?;
    let mut list_writer = ManifestListWriter::v2(
        list_out
            .writer()
            .await
            .map_err(ice("opening manifest list"))?,
        snapshot_id,
        meta.current_snapshot_id(),
        sequence_number,
    );
    list_writer
        .add_manifests(manifests.into_iter())
        .map_err(ice("writing manifest list"))?;
    list_writer
        .close()
        .await
        .map_err(ice("closing manifest list"))?;

    let summary = summary(meta, change, collector)?;
    let mirror = ledger::mirror_updates(meta, &summary.additional_properties, snapshot_id);
    let timestamp_ms = chrono::Utc::now()
        .timestamp_millis()
        .max(meta.last_updated_ms() + 1);
    let snapshot = Snapshot::builder()
        .with_snapshot_id(snapshot_id)
        .with_parent_snapshot_id(meta.current_snapshot_id())
        .with_sequence_number(sequence_number)
        .with_timestamp_ms(timestamp_ms)
        .with_manifest_list(list_path)
        .with_schema_id(meta.current_schema_id())
        .with_summary(summary)
        .build();

    let result = meta
        .clone()
        .into_builder(Some(base.metadata_location.clone()))
        .set_branch_snapshot(snapshot, MAIN_BRANCH)
        .map_err(ice("adding snapshot"))?
        .set_properties(mirror)
        .map_err(ice("mirroring the ledger in table properties"))?
        .build()
        .map_err(ice("building metadata"))?;
    Ok((
        StagedMetadata {
            metadata: result.metadata,
            changes: result.changes,
        },
        BuiltSnapshot {
            snapshot_id,
            added_files: change.added.len(),
            added_records,
            removed_files: found,
            removed_records,
        },
    ))
}

fn summary(
    base: &TableMetadata,
    change: &Change,
    collector: SnapshotSummaryCollector,
) -> Result<Summary> {
    let mut props: HashMap<String, String> = change.properties.clone();
    props.extend(collector.build());
    props.insert(
        summary::OPERATION.into(),
        change.firn_operation.as_str().into(),
    );

    // Offsets: the batch's advance on top of what the base holds; every other
    // group's offsets are carried forward as they are.
    if let Some(advance) = &change.offsets {
        let held = offsets::read(base, &advance.group)?;
        props.insert(
            summary::offsets_key(&advance.group),
            offsets::encode(&advance.apply(held)),
        );
    }
    if let Some(claim) = &change.claim {
        props.insert(claim.key.clone(), claim.set.clone());
    }
    offsets::carry_forward(base, &mut props);

    let previous = base.current_snapshot().map(|s| s.summary());
    for (total, added, removed) in TOTALS {
        let prev: u64 = previous
            .and_then(|s| s.additional_properties.get(total))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let get = |k: &str| -> u64 { props.get(k).and_then(|v| v.parse().ok()).unwrap_or(0) };
        let value = (prev + get(added)).saturating_sub(get(removed));
        props.insert(total.to_string(), value.to_string());
    }
    Ok(Summary {
        operation: change.operation.clone(),
        additional_properties: props,
    })
}
