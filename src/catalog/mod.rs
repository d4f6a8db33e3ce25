//! Catalogs: where a table's current metadata location lives, and the
//! compare-and-set that swaps it. firn's commit layer builds the new metadata
//! itself; a catalog only loads, creates and swaps.

mod manifests;
pub mod rest;
pub mod sql;

use std::fmt::Debug;

use async_trait::async_trait;
use iceberg::io::FileIO;
use iceberg::spec::{ManifestList, Snapshot, TableMetadata, TableMetadataRef};
use iceberg::table::Table;
use iceberg::{TableIdent, TableUpdate};

use crate::error::{Error, Result};
use crate::storage::ObjectStoreStorage;

/// A table as one catalog read saw it: its metadata and where that lives.
#[derive(Debug, Clone)]
pub struct TableHandle {
    /// Table identifier.
    pub ident: TableIdent,
    /// The metadata at `metadata_location`.
    pub metadata: TableMetadataRef,
    /// The metadata file the catalog points at.
    pub metadata_location: String,
    /// IO for the table's files.
    pub file_io: FileIO,
}

impl TableHandle {
    /// An iceberg [`Table`] for scans (read-only use).
    pub fn table(&self) -> Result<Table> {
        Table::builder()
            .identifier(self.ident.clone())
            .metadata(self.metadata.clone())
            .metadata_location(self.metadata_location.clone())
            .file_io(self.file_io.clone())
            .runtime(iceberg::Runtime::current())
            .readonly(true)
            .build()
            .map_err(|e| Error::iceberg(format!("opening table {}", self.ident), e))
    }

    /// The manifest list of `snapshot`.
    pub async fn manifest_list(&self, snapshot: &Snapshot) -> Result<ManifestList> {
        let path = snapshot.manifest_list();
        let bytes = self
            .file_io
            .new_input(path)
            .map_err(|e| Error::iceberg(format!("opening manifest list {path}"), e))?
            .read()
            .await
            .map_err(|e| Error::iceberg(format!("reading manifest list {path}"), e))?;
        ManifestList::parse_with_version(&bytes, self.metadata.format_version())
            .map_err(|e| Error::iceberg(format!("parsing manifest list {path}"), e))
    }

    /// The live data files of the current snapshot (not delete files),
    /// each with the partition spec it was written with.
    pub async fn live_data_files(&self) -> Result<Vec<(i32, iceberg::spec::DataFile)>> {
        let Some(snapshot) = self.metadata.current_snapshot() else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for mf in self.manifest_list(snapshot).await?.entries() {
            if mf.content != iceberg::spec::ManifestContentType::Data {
                continue;
            }
            let manifest = crate::commit::avro_read::load(mf, &self.file_io).await?;
            out.extend(
                manifest
                    .entries()
                    .iter()
                    .filter(|e| e.is_alive())
                    .map(|e| (mf.partition_spec_id, e.data_file().clone())),
            );
        }
        Ok(out)
    }

    /// The head of branch `name` (`None`: no such branch); an error when
    /// `name` is a tag.
    pub fn branch_head(&self, name: &str) -> Result<Option<i64>> {
        match crate::maintain::refs::refs(&self.metadata)?.get(name) {
            None => Ok(None),
            Some(r) if r.is_branch() => Ok(Some(r.snapshot_id)),
            Some(_) => Err(Error::new(
                crate::error::ErrorKind::InvalidInput,
                format!("{name} in {} is a tag, not a branch", self.ident),
            )),
        }
    }

    /// The table as branch `name` sees it: the same metadata with main's
    /// current snapshot moved to the branch's head, so that everything
    /// that reads "the current snapshot" reads the branch. A branch that
    /// does not exist yet is main as it is (its first commit starts it
    /// there). A view is for reading and building on, never swapped in.
    pub fn on_branch(&self, name: &str) -> Result<TableHandle> {
        match self.branch_head(name)? {
            Some(head) => self.at_snapshot(head),
            None => Ok(self.clone()),
        }
    }

    /// The table as of snapshot `head` (a view, as [`TableHandle::on_branch`]).
    pub fn at_snapshot(&self, head: i64) -> Result<TableHandle> {
        let ice = |e| Error::iceberg(format!("reading snapshot {head} of {}", self.ident), e);
        let view = (*self.metadata)
            .clone()
            .into_builder(None)
            .set_ref(
                iceberg::spec::MAIN_BRANCH,
                iceberg::spec::SnapshotReference::new(
                    head,
                    iceberg::spec::SnapshotRetention::branch(None, None, None),
                ),
            )
            .map_err(ice)?
            .build()
            .map_err(ice)?;
        Ok(TableHandle {
            metadata: std::sync::Arc::new(view.metadata),
            ..self.clone()
        })
    }
}

/// New metadata to swap in, with the updates that produced it (what a REST
/// catalog receives).
#[derive(Debug)]
pub struct StagedMetadata {
    /// The new metadata.
    pub metadata: TableMetadata,
    /// The updates from the base metadata to `metadata`.
    pub changes: Vec<TableUpdate>,
    /// The branch a snapshot is committed to, other than main, and the head
    /// it must still have (`None`: it must not exist yet). A REST catalog
    /// asserts it instead of main's snapshot.
    pub branch: Option<(String, Option<i64>)>,
}

/// The catalog operations firn needs. Every backend passes the same
/// conformance tests.
#[async_trait]
pub trait Catalog: Debug + Send + Sync {
    /// IO for metadata and data files.
    fn file_io(&self) -> &FileIO;

    /// The storage behind `file_io` (listing, batched deletes).
    fn storage(&self) -> &ObjectStoreStorage;

    /// Where a new table's files go: `<warehouse>/<namespace>/<name>`.
    fn default_location(&self, ident: &TableIdent) -> String;

    /// Load the current metadata of a table. `NotFound` if absent.
    async fn load(&self, ident: &TableIdent) -> Result<TableHandle>;

    /// Whether the table exists.
    async fn exists(&self, ident: &TableIdent) -> Result<bool>;

    /// Create a table whose first metadata is `metadata` (creating the
    /// namespace if needed).
    async fn create(&self, ident: &TableIdent, metadata: TableMetadata) -> Result<TableHandle>;

    /// Swap `base` for `staged` if the catalog still points at `base`;
    /// otherwise fail with `CommitConflict` and change nothing.
    async fn swap(&self, base: &TableHandle, staged: StagedMetadata) -> Result<TableHandle>;
}

/// Where a new table's files go in `warehouse`: `<warehouse>/<namespace>/<name>`.
pub fn table_location(warehouse: &str, ident: &TableIdent) -> String {
    format!(
        "{}/{}/{}",
        warehouse,
        ident.namespace().join("/"),
        ident.name()
    )
}
