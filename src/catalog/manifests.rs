//! Manifests read once. An Iceberg manifest is never rewritten in place
//! (every writer names each one anew), so a parsed manifest is kept by its
//! path: a maintenance run reads the table's manifests when it plans, and
//! its commit rewrites the same manifests moments later without reading
//! them from the object store again. The cache is bounded by the entries it
//! holds, and forgets what is not read for a few minutes.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use iceberg::spec::{Manifest, ManifestFile};
use moka::future::Cache;

use super::TableHandle;
use crate::error::Result;

/// Manifest entries kept, at most (each a data file with its column
/// statistics: about a kilobyte or two).
const CACHED_ENTRIES: u64 = 20_000;

/// A manifest not read for this long is forgotten.
const IDLE: Duration = Duration::from_secs(300);

fn cache() -> &'static Cache<String, Arc<Manifest>> {
    static CACHE: OnceLock<Cache<String, Arc<Manifest>>> = OnceLock::new();
    CACHE.get_or_init(|| {
        Cache::builder()
            .weigher(|_, m: &Arc<Manifest>| {
                u32::try_from(m.entries().len().max(1)).unwrap_or(u32::MAX)
            })
            .max_capacity(CACHED_ENTRIES)
            .time_to_idle(IDLE)
            .build()
    })
}

impl TableHandle {
    /// Manifest `mf` of this table, parsed (read from the object store the
    /// first time only).
    pub async fn manifest(&self, mf: &ManifestFile) -> Result<Arc<Manifest>> {
        let path = &mf.manifest_path;
        if let Some(manifest) = cache().get(path).await {
            return Ok(manifest);
        }
        let manifest = Arc::new(crate::commit::avro_read::load(mf, &self.file_io).await?);
        cache().insert(path.clone(), manifest.clone()).await;
        Ok(manifest)
    }
}
