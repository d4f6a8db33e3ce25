//! What an overwrite checks on the base each commit attempt loads, as
//! Iceberg's `OverwriteFiles` does with a conflict-detection filter: the
//! files it adds lie in the range it overwrites
//! (`validateAddedFilesMatchOverwriteFilter`), and no snapshot since the one
//! it was planned on added data to that range (`validateFromSnapshot` with
//! `validateNoConflictingData`). Such data — an ingest flush of late events,
//! another engine's append — would otherwise survive the overwrite unseen,
//! or, re-planned, be removed though the overwrite's input never held it.

use iceberg::spec::{
    DataFile, ManifestContentType, ManifestStatus, Operation, PrimitiveLiteral, Snapshot,
};

use super::NewFile;
use crate::catalog::TableHandle;
use crate::error::{Error, ErrorKind, Result};

/// The range an overwrite replaces, and the snapshot it was planned on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoConflictingData {
    /// The snapshot the overwrite read (`None`: the table had none).
    pub from_snapshot: Option<i64>,
    /// `[start, end)` of the `ts` column, microseconds.
    pub range: (i64, i64),
}

fn show(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| micros.to_string())
}

/// `[min, max]` of the `ts` column (`field`) in `file`, from its column bounds.
fn ts_bounds(file: &DataFile, field: i32) -> Option<(i64, i64)> {
    let lo = file.lower_bounds().get(&field)?;
    let hi = file.upper_bounds().get(&field)?;
    match (lo.literal(), hi.literal()) {
        (PrimitiveLiteral::Long(lo), PrimitiveLiteral::Long(hi)) => Some((*lo, *hi)),
        _ => None,
    }
}

impl NoConflictingData {
    fn describe(&self) -> String {
        format!("[{}, {})", show(self.range.0), show(self.range.1))
    }

    /// Whether `file` may hold rows in the range (a file without `ts`
    /// bounds may).
    fn touches(&self, file: &DataFile, field: i32) -> bool {
        ts_bounds(file, field).is_none_or(|(lo, hi)| lo < self.range.1 && hi >= self.range.0)
    }

    /// Check `added` (the overwrite's own files) and every snapshot `base`
    /// holds since the planned one.
    pub(super) async fn check(&self, base: &TableHandle, added: &[NewFile]) -> Result<()> {
        let meta = &base.metadata;
        let ident = &base.ident;
        let field = meta
            .current_schema()
            .field_by_name("ts")
            .map(|f| f.id)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidInput,
                    format!("{ident} has no `ts` column to overwrite a range of"),
                )
            })?;
        for f in added {
            let inside = ts_bounds(&f.file, field)
                .is_some_and(|(lo, hi)| lo >= self.range.0 && hi < self.range.1);
            if !inside {
                return Err(Error::new(
                    ErrorKind::Internal,
                    format!(
                        "the overwrite of {} in {ident} adds {}, whose rows are not all in that range",
                        self.describe(),
                        f.file.file_path()
                    ),
                ));
            }
        }
        for s in self.snapshots_since(base)?.into_iter().rev() {
            if !matches!(
                s.summary().operation,
                Operation::Append | Operation::Overwrite
            ) {
                // A replace (compaction) changes no data; a delete adds none.
                continue;
            }
            let (count, example) = self.added_in_range(base, s, field).await?;
            if let Some(path) = example {
                let props = &s.summary().additional_properties;
                let by = props
                    .get(super::summary::OPERATION)
                    .map(|op| format!("firn {op}"))
                    .or_else(|| props.get("engine-name").cloned())
                    .unwrap_or_else(|| "another engine".to_string());
                return Err(Error::new(
                    ErrorKind::Superseded,
                    format!(
                        "the overwrite of {range} in {ident} was not committed: snapshot {id} \
                         ({op} by {by}) added {count} data file(s) to that range after snapshot \
                         {planned} the overwrite was planned on (e.g. {path}); they would have \
                         survived it. Run it again once nothing writes to the range any more",
                        range = self.describe(),
                        id = s.snapshot_id(),
                        op = s.summary().operation.as_str(),
                        planned = self
                            .from_snapshot
                            .map_or("none (an empty table)".to_string(), |p| p.to_string()),
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Snapshots of main's ancestry after the planned one, newest first.
    fn snapshots_since<'a>(&self, base: &'a TableHandle) -> Result<Vec<&'a Snapshot>> {
        let meta = &base.metadata;
        let mut out = Vec::new();
        let mut cursor = meta.current_snapshot();
        loop {
            match cursor {
                Some(s) if Some(s.snapshot_id()) == self.from_snapshot => return Ok(out),
                Some(s) => {
                    out.push(s.as_ref());
                    cursor = s.parent_snapshot_id().and_then(|p| meta.snapshot_by_id(p));
                }
                None if self.from_snapshot.is_none() => return Ok(out),
                None => {
                    return Err(Error::new(
                        ErrorKind::Superseded,
                        format!(
                            "the overwrite of {} in {} was not committed: snapshot {} it was \
                             planned on is no longer in main's ancestry (rolled back or \
                             expired), so what was added since cannot be told; run it again",
                            self.describe(),
                            base.ident,
                            self.from_snapshot.unwrap_or_default()
                        ),
                    ));
                }
            }
        }
    }

    /// Data files `snapshot` added that may hold rows in the range: how
    /// many, and one of them.
    async fn added_in_range(
        &self,
        base: &TableHandle,
        snapshot: &Snapshot,
        field: i32,
    ) -> Result<(usize, Option<String>)> {
        let id = snapshot.snapshot_id();
        let list = base.manifest_list(snapshot).await?;
        let mut count = 0;
        let mut example = None;
        for mf in list.entries() {
            if mf.added_snapshot_id != id
                || mf.content != ManifestContentType::Data
                || !mf.has_added_files()
            {
                continue;
            }
            let manifest = base.manifest(mf).await?;
            for e in manifest.entries() {
                if e.status() == ManifestStatus::Added
                    && e.snapshot_id() == Some(id)
                    && self.touches(e.data_file(), field)
                {
                    count += 1;
                    example.get_or_insert_with(|| e.file_path().to_string());
                }
            }
        }
        Ok((count, example))
    }
}
