//! What the audit walks: main's retained snapshots, oldest first, each with
//! the data files it added and removed (its own manifest entries), and the
//! live files before the first of them and at the last. Manifests are read
//! once each, however many snapshots list them.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use iceberg::spec::{ManifestContentType, ManifestStatus, Snapshot};

use super::super::state::{LiveFile, grain_of_spec};
use crate::catalog::TableHandle;
use crate::error::Result;
use crate::schema::layout::Grain;

/// One manifest entry, as the audit needs it.
#[derive(Debug, Clone)]
struct Entry {
    file: LiveFile,
    status: ManifestStatus,
    snapshot_id: Option<i64>,
    deletes: bool,
}

/// One retained snapshot of main's history.
#[derive(Debug, Clone)]
pub struct Step {
    /// The snapshot.
    pub snapshot_id: i64,
    /// When it was committed (milliseconds since the epoch).
    pub timestamp_ms: i64,
    /// Iceberg's operation (`append`, `replace`, `overwrite`, `delete`).
    pub operation: String,
    /// Its summary's properties.
    pub summary: HashMap<String, String>,
    /// Data files it added.
    pub added: Vec<LiveFile>,
    /// Data files it removed.
    pub removed: Vec<LiveFile>,
    /// Delete files it added or removed.
    pub delete_files: Vec<String>,
}

/// Main's retained history.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// The snapshots, oldest first.
    pub steps: Vec<Step>,
    /// The snapshot before the first step, when the table holds it no more
    /// (expired): its live files, derived from the first step's.
    pub baseline: Option<(i64, Vec<LiveFile>)>,
    /// Live data files of the current snapshot.
    pub current: Vec<LiveFile>,
    /// Live delete files of the current snapshot.
    pub current_deletes: Vec<String>,
}

/// Read main's retained history of `table`.
pub async fn load(table: &TableHandle) -> Result<History> {
    let meta = &table.metadata;
    let Some(head) = meta.current_snapshot() else {
        return Ok(History::default());
    };
    let mut chain = vec![head.clone()];
    while let Some(parent) = chain
        .last()
        .and_then(|s| s.parent_snapshot_id())
        .and_then(|p| meta.snapshot_by_id(p))
    {
        chain.push(parent.clone());
    }
    chain.reverse();
    let mut manifests = Manifests::default();
    let mut steps = Vec::with_capacity(chain.len());
    for snapshot in &chain {
        let id = snapshot.snapshot_id();
        let (mut added, mut removed, mut delete_files) = (Vec::new(), Vec::new(), Vec::new());
        for e in manifests.entries(table, snapshot, Some(id)).await? {
            if e.snapshot_id != Some(id) || e.status == ManifestStatus::Existing {
                continue;
            }
            if e.deletes {
                delete_files.push(e.file.path.clone());
            } else if e.status == ManifestStatus::Added {
                added.push(e.file.clone());
            } else {
                removed.push(e.file.clone());
            }
        }
        let summary = snapshot.summary();
        steps.push(Step {
            snapshot_id: id,
            timestamp_ms: snapshot.timestamp_ms(),
            operation: summary.operation.as_str().to_string(),
            summary: summary.additional_properties.clone(),
            added,
            removed,
            delete_files,
        });
    }
    let live = |entries: &[Entry], deletes: bool| -> Vec<LiveFile> {
        entries
            .iter()
            .filter(|e| e.deletes == deletes && e.status != ManifestStatus::Deleted)
            .map(|e| e.file.clone())
            .collect()
    };
    let current_entries = manifests.entries(table, head, None).await?;
    let current = live(&current_entries, false);
    let current_deletes = live(&current_entries, true)
        .into_iter()
        .map(|f| f.path)
        .collect();
    let first = &chain[0];
    let baseline = match first.parent_snapshot_id() {
        None => None,
        Some(parent) => {
            // Before the first retained snapshot: its live files, less
            // what it added, plus what it removed.
            let step = &steps[0];
            let entries = manifests.entries(table, first, None).await?;
            let mut files: BTreeMap<String, LiveFile> = live(&entries, false)
                .into_iter()
                .map(|f| (f.path.clone(), f))
                .collect();
            for f in &step.added {
                files.remove(&f.path);
            }
            for f in &step.removed {
                files.insert(f.path.clone(), f.clone());
            }
            Some((parent, files.into_values().collect()))
        }
    };
    Ok(History {
        steps,
        baseline,
        current,
        current_deletes,
    })
}

/// Consecutive snapshots as one change: the files they added and did not
/// remove, the files they removed that were there before them, named as
/// the last one; its operation lists theirs (`delete+append`).
pub fn join(run: &[&Step]) -> Step {
    let last = run.last().expect("a run of snapshots");
    let mut added: BTreeMap<&str, &LiveFile> = BTreeMap::new();
    let mut removed: BTreeMap<&str, &LiveFile> = BTreeMap::new();
    for step in run {
        for f in &step.removed {
            if added.remove(f.path.as_str()).is_none() {
                removed.insert(&f.path, f);
            }
        }
        for f in &step.added {
            added.insert(&f.path, f);
        }
    }
    let mut operations: Vec<&str> = Vec::new();
    for step in run {
        if operations.last() != Some(&step.operation.as_str()) {
            operations.push(&step.operation);
        }
    }
    Step {
        snapshot_id: last.snapshot_id,
        timestamp_ms: last.timestamp_ms,
        operation: operations.join("+"),
        summary: last.summary.clone(),
        added: added.into_values().cloned().collect(),
        removed: removed.into_values().cloned().collect(),
        delete_files: run.iter().flat_map(|s| s.delete_files.clone()).collect(),
    }
}

/// Manifests read so far, by path.
#[derive(Default)]
struct Manifests {
    read: HashMap<String, Arc<Vec<Entry>>>,
}

impl Manifests {
    /// The entries of `snapshot`'s manifests (only those it wrote, when
    /// `only_added_by` names it).
    async fn entries(
        &mut self,
        table: &TableHandle,
        snapshot: &Snapshot,
        only_added_by: Option<i64>,
    ) -> Result<Vec<Entry>> {
        let meta = &table.metadata;
        let schema = meta.current_schema();
        let list = table.manifest_list(snapshot).await?;
        let mut out = Vec::new();
        for mf in list.entries() {
            if only_added_by.is_some_and(|id| mf.added_snapshot_id != id) {
                continue;
            }
            if let Some(entries) = self.read.get(&mf.manifest_path) {
                out.extend(entries.iter().cloned());
                continue;
            }
            let manifest = crate::commit::avro_read::load(mf, &table.file_io).await?;
            let spec = meta
                .partition_spec_by_id(mf.partition_spec_id)
                .map(|s| s.as_ref().clone())
                .unwrap_or_else(|| manifest.metadata().partition_spec().clone());
            // Another spec's files are still counted; their grain only
            // labels the totals.
            let grain = grain_of_spec(&spec, schema).unwrap_or(Grain::Minute);
            let deletes = mf.content == ManifestContentType::Deletes;
            let entries: Vec<Entry> = manifest
                .entries()
                .iter()
                .map(|e| {
                    let f = e.data_file();
                    Entry {
                        file: LiveFile {
                            path: f.file_path().to_string(),
                            grain,
                            spec_id: mf.partition_spec_id,
                            partition: 0,
                            records: f.record_count(),
                            bytes: f.file_size_in_bytes(),
                            sort_order: f.sort_order_id(),
                            ts_bounds: None,
                        },
                        status: e.status(),
                        snapshot_id: e.snapshot_id(),
                        deletes,
                    }
                })
                .collect();
            out.extend(entries.iter().cloned());
            self.read
                .insert(mf.manifest_path.clone(), Arc::new(entries));
        }
        Ok(out)
    }
}
