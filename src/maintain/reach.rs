//! What a set of snapshots reaches: manifest lists, manifests and data files.
//! Expiry deletes what only expired snapshots reached; orphan removal deletes
//! what nothing reaches.

use std::collections::{BTreeMap, BTreeSet};

use iceberg::spec::TableMetadata;

use crate::catalog::TableHandle;
use crate::error::Result;

/// Files reachable from some snapshots, by location as the metadata writes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reach {
    /// Manifest lists.
    pub manifest_lists: BTreeSet<String>,
    /// Manifests, with their sizes.
    pub manifests: BTreeMap<String, u64>,
    /// Data files (any entry status), with their sizes.
    pub data_files: BTreeMap<String, u64>,
}

impl Reach {
    /// Every location, with its size where known (manifest lists: 0).
    pub fn all(&self) -> impl Iterator<Item = (&String, u64)> {
        self.manifest_lists
            .iter()
            .map(|l| (l, 0))
            .chain(self.manifests.iter().map(|(l, s)| (l, *s)))
            .chain(self.data_files.iter().map(|(l, s)| (l, *s)))
    }

    /// Files in `self` that `other` does not reach.
    pub fn minus(&self, other: &Reach) -> Reach {
        Reach {
            manifest_lists: self
                .manifest_lists
                .difference(&other.manifest_lists)
                .cloned()
                .collect(),
            manifests: self
                .manifests
                .iter()
                .filter(|(k, _)| !other.manifests.contains_key(*k))
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
            data_files: self
                .data_files
                .iter()
                .filter(|(k, _)| !other.data_files.contains_key(*k))
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
        }
    }
}

/// What the snapshots `ids` of `metadata` reach (`None`: all snapshots).
pub async fn reach(
    table: &TableHandle,
    metadata: &TableMetadata,
    ids: Option<&BTreeSet<i64>>,
) -> Result<Reach> {
    let mut out = Reach::default();
    for snapshot in metadata.snapshots() {
        if ids.is_some_and(|ids| !ids.contains(&snapshot.snapshot_id())) {
            continue;
        }
        out.manifest_lists
            .insert(snapshot.manifest_list().to_string());
        let list = table.manifest_list(snapshot).await?;
        for mf in list.entries() {
            if out.manifests.contains_key(&mf.manifest_path) {
                continue;
            }
            out.manifests
                .insert(mf.manifest_path.clone(), mf.manifest_length.max(0) as u64);
            let manifest = crate::commit::avro_read::load(mf, &table.file_io).await?;
            for e in manifest.entries() {
                out.data_files.insert(
                    e.file_path().to_string(),
                    e.data_file().file_size_in_bytes(),
                );
            }
        }
    }
    Ok(out)
}

/// The version number in a metadata file name (`00042-<uuid>.metadata.json`).
pub fn metadata_version(location: &str) -> Option<u64> {
    let name = location.rsplit('/').next()?;
    if !name.ends_with(".metadata.json") && !name.ends_with(".metadata.json.gz") {
        return None;
    }
    name.split('-').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_versions_parse() {
        assert_eq!(
            metadata_version("file:///w/t/metadata/00042-0193c.metadata.json"),
            Some(42)
        );
        assert_eq!(metadata_version("s3://b/t/metadata/snap-1-2-u.avro"), None);
    }
}
