//! The table state maintenance plans from: every live data file of the
//! current snapshot with its grain, partition and size. Read from manifests
//! only.

use iceberg::spec::{Literal, PrimitiveLiteral};

use crate::catalog::TableHandle;
use crate::commit::RemovedFile;
use crate::error::{Error, Result};
use crate::schema::layout::Grain;

/// One live data file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveFile {
    /// Path.
    pub path: String,
    /// Grain of its rows (from its partition spec).
    pub grain: Grain,
    /// Partition ordinal in its grain's spec.
    pub partition: i32,
    /// Rows.
    pub records: u64,
    /// Bytes.
    pub bytes: u64,
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
            spec_id: self.grain.spec_id(),
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
}

/// Read the live files of `table`'s current snapshot.
pub async fn load(table: &TableHandle) -> Result<TableState> {
    let meta = &table.metadata;
    let Some(snapshot) = meta.current_snapshot() else {
        return Ok(TableState::default());
    };
    let list = table.manifest_list(snapshot).await?;
    let mut files = Vec::new();
    for mf in list.entries() {
        let manifest = mf
            .load_manifest(&table.file_io)
            .await
            .map_err(|e| Error::iceberg(format!("reading manifest {}", mf.manifest_path), e))?;
        let spec_id = manifest.metadata().partition_spec().spec_id();
        let Some(grain) = Grain::from_spec_id(spec_id) else {
            continue;
        };
        for e in manifest.entries().iter().filter(|e| e.is_alive()) {
            let f = e.data_file();
            let partition = match f.partition().fields().first() {
                Some(Some(Literal::Primitive(PrimitiveLiteral::Int(v)))) => *v,
                _ => {
                    return Err(Error::new(
                        crate::ErrorKind::Iceberg,
                        format!(
                            "data file {} of {} has no {} partition value",
                            f.file_path(),
                            table.ident,
                            grain.partition_field_name()
                        ),
                    ));
                }
            };
            files.push(LiveFile {
                path: f.file_path().to_string(),
                grain,
                partition,
                records: f.record_count(),
                bytes: f.file_size_in_bytes(),
            });
        }
    }
    files.sort_by(|a, b| (a.grain, a.partition, &a.path).cmp(&(b.grain, b.partition, &b.path)));
    Ok(TableState {
        snapshot_id: Some(snapshot.snapshot_id()),
        files,
    })
}
