//! Manifest clustering: rewrite many small manifests into few, each holding
//! whole partitions (one spec per manifest), packed up to a target size.
//! Used by `firn rewrite-manifests` (Iceberg's `RewriteManifests`) and by
//! every commit once small manifests pile up (Iceberg's merge-append), so
//! scan planning stays flat between maintenance runs.

use std::collections::{BTreeMap, BTreeSet};

use iceberg::spec::{DataFile, Literal, ManifestEntry, ManifestFile, PrimitiveLiteral};

use crate::catalog::TableHandle;
use crate::error::Result;

/// Table property: target size of a merged manifest.
pub const TARGET_SIZE_PROP: &str = "commit.manifest.target-size-bytes";
/// Table property: how many small manifests trigger a merge on commit.
pub const MIN_COUNT_PROP: &str = "commit.manifest.min-count-to-merge";
/// Table property: whether commits merge small manifests.
pub const MERGE_ENABLED_PROP: &str = "commit.manifest-merge.enabled";
/// Default target manifest size (8 MiB), as Iceberg's.
pub const DEFAULT_TARGET_SIZE: u64 = 8 << 20;
/// Default count of small manifests that triggers a merge, as Iceberg's.
pub const DEFAULT_MIN_COUNT: usize = 100;

/// The partition ordinal (hours, days or months) of a data file of a firn
/// table, if its partition is a single integer field.
pub fn partition_ordinal(file: &DataFile) -> Option<i32> {
    match file.partition().fields().first() {
        Some(Some(Literal::Primitive(PrimitiveLiteral::Int(v)))) => Some(*v),
        _ => None,
    }
}

/// Merge settings of a table, from its properties.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MergePolicy {
    /// Target manifest size.
    pub target_size: u64,
    /// Small manifests that trigger a merge on commit.
    pub min_count: usize,
    /// Whether commits merge at all.
    pub enabled: bool,
}

impl MergePolicy {
    /// Read from table properties (Iceberg's names and defaults).
    pub fn of(table: &TableHandle) -> Self {
        let props = table.metadata.properties();
        Self {
            target_size: props
                .get(TARGET_SIZE_PROP)
                .and_then(|v| v.parse().ok())
                .unwrap_or(DEFAULT_TARGET_SIZE),
            min_count: props
                .get(MIN_COUNT_PROP)
                .and_then(|v| v.parse().ok())
                .unwrap_or(DEFAULT_MIN_COUNT),
            enabled: props.get(MERGE_ENABLED_PROP).is_none_or(|v| v != "false"),
        }
    }

    /// Whether these carried-forward manifests are due for a merge.
    pub fn due(&self, manifests: &[ManifestFile]) -> bool {
        self.enabled
            && manifests
                .iter()
                .filter(|m| (m.manifest_length as u64) < self.target_size)
                .count()
                >= self.min_count
    }
}

/// One planned manifest: its spec id and the `(spec, partition)` keys it holds.
pub type PackedManifest = (i32, Vec<(i32, i32)>);

/// Live entries of some manifests, grouped by spec and partition.
#[derive(Debug, Default)]
pub struct Clustered {
    /// `(spec id, partition ordinal)` → live entries.
    pub partitions: BTreeMap<(i32, i32), Vec<ManifestEntry>>,
    /// Which input manifests hold each partition.
    pub holders: BTreeMap<(i32, i32), BTreeSet<String>>,
    /// Input manifests per spec.
    pub manifests_per_spec: BTreeMap<i32, usize>,
    /// Bytes of the input manifests.
    pub bytes: u64,
    /// Entries of the input manifests.
    pub entries: u64,
}

impl Clustered {
    /// Read the live entries of `manifests`.
    pub async fn load(table: &TableHandle, manifests: &[ManifestFile]) -> Result<Self> {
        let mut c = Clustered::default();
        for mf in manifests {
            let manifest = crate::commit::avro_read::load(mf, &table.file_io).await?;
            *c.manifests_per_spec
                .entry(mf.partition_spec_id)
                .or_default() += 1;
            c.bytes += mf.manifest_length.max(0) as u64;
            for e in manifest.entries().iter().filter(|e| e.is_alive()) {
                c.entries += 1;
                let p = partition_ordinal(e.data_file()).unwrap_or(i32::MIN);
                let key = (mf.partition_spec_id, p);
                c.partitions
                    .entry(key)
                    .or_default()
                    .push(e.as_ref().clone());
                c.holders
                    .entry(key)
                    .or_default()
                    .insert(mf.manifest_path.clone());
            }
        }
        Ok(c)
    }

    /// Partitions in packing order per spec, grouped into output manifests of
    /// about `target` bytes; a partition is never split.
    pub fn pack(&self, target: u64) -> Vec<PackedManifest> {
        let per_entry = self.bytes.checked_div(self.entries).unwrap_or(1).max(1);
        let mut out: Vec<PackedManifest> = Vec::new();
        let mut current: Option<(PackedManifest, u64)> = None;
        for (key, entries) in &self.partitions {
            let size = entries.len() as u64 * per_entry;
            match &mut current {
                Some(((spec, parts), bytes)) if *spec == key.0 && *bytes + size <= target => {
                    parts.push(*key);
                    *bytes += size;
                }
                _ => {
                    if let Some((packed, _)) = current.take() {
                        out.push(packed);
                    }
                    current = Some(((key.0, vec![*key]), size));
                }
            }
        }
        if let Some((packed, _)) = current {
            out.push(packed);
        }
        out
    }

    /// Whether a rewrite would change the layout: a partition spread over
    /// several manifests, or more manifests in a spec than packing needs.
    pub fn needs_rewrite(&self, target: u64) -> bool {
        if self.holders.values().any(|h| h.len() > 1) {
            return true;
        }
        let mut planned: BTreeMap<i32, usize> = BTreeMap::new();
        for (spec, _) in self.pack(target) {
            *planned.entry(spec).or_default() += 1;
        }
        self.manifests_per_spec
            .iter()
            .any(|(spec, n)| *n > planned.get(spec).copied().unwrap_or(0))
    }
}
