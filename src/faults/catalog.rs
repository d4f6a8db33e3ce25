//! [`FaultCatalog`]: a catalog whose loads, swaps and creates meet a plan's
//! faults. A `lost_reply` swap applies and then fails (the outcome the
//! caller sees is unknown); a `stale` load returns what an earlier load of
//! the table saw.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use iceberg::TableIdent;
use iceberg::io::FileIO;
use iceberg::spec::TableMetadata;

use super::{Decision, Fault, Faults, Op, Step};
use crate::catalog::{Catalog, StagedMetadata, TableHandle};
use crate::error::{Error, ErrorKind, Result};
use crate::storage::ObjectStoreStorage;

/// A catalog failing as `faults` says.
#[derive(Debug)]
pub struct FaultCatalog {
    inner: Arc<dyn Catalog>,
    faults: Arc<Faults>,
    /// The first handle each table was loaded as: what a stale load returns.
    seen: Mutex<HashMap<String, TableHandle>>,
}

impl FaultCatalog {
    /// Wrap `inner`.
    pub fn new(inner: Arc<dyn Catalog>, faults: Arc<Faults>) -> Self {
        Self {
            inner,
            faults,
            seen: Mutex::default(),
        }
    }

    async fn before(&self, op: Op, ident: &TableIdent) -> Result<Decision> {
        let name = ident.to_string();
        self.faults
            .before(op, Step::Catalog, &name)
            .await
            .map_err(fail)
    }

    fn after<T>(&self, d: Decision, op: Op, ident: &TableIdent, r: Result<T>) -> Result<T> {
        let name = ident.to_string();
        match self.faults.after(d, op, Step::Catalog, &name, r.is_ok()) {
            Some(lost) => Err(fail(lost)),
            None => r,
        }
    }
}

fn fail(message: String) -> Error {
    Error::new(ErrorKind::Catalog, message)
}

#[async_trait]
impl Catalog for FaultCatalog {
    fn file_io(&self) -> &FileIO {
        self.inner.file_io()
    }

    fn storage(&self) -> &ObjectStoreStorage {
        self.inner.storage()
    }

    fn default_location(&self, ident: &TableIdent) -> String {
        self.inner.default_location(ident)
    }

    async fn load(&self, ident: &TableIdent) -> Result<TableHandle> {
        let d = self.before(Op::Load, ident).await?;
        let r = self.inner.load(ident).await;
        let key = ident.to_string();
        if let Ok(fresh) = &r {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            let first = seen.entry(key.clone()).or_insert_with(|| fresh.clone());
            if matches!(d, Decision::Inject(Fault::Stale, _))
                && first.metadata_location != fresh.metadata_location
            {
                return Ok(first.clone());
            }
        }
        self.after(d, Op::Load, ident, r)
    }

    async fn exists(&self, ident: &TableIdent) -> Result<bool> {
        self.inner.exists(ident).await
    }

    async fn create(&self, ident: &TableIdent, metadata: TableMetadata) -> Result<TableHandle> {
        let d = self.before(Op::Create, ident).await?;
        let r = self.inner.create(ident, metadata).await;
        self.after(d, Op::Create, ident, r)
    }

    async fn swap(&self, base: &TableHandle, staged: StagedMetadata) -> Result<TableHandle> {
        let d = self.before(Op::Swap, &base.ident).await?;
        let r = self.inner.swap(base, staged).await;
        self.after(d, Op::Swap, &base.ident, r)
    }
}
