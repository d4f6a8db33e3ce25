//! The SQL catalog (SQLite as the embedded default, PostgreSQL): the
//! `iceberg_tables` schema that `iceberg-catalog-sql`, PyIceberg and Iceberg's
//! JDBC catalog share. Namespaces and registration go through
//! `iceberg-catalog-sql`; the commit is firn's own compare-and-set:
//! write the metadata file, then
//! `UPDATE iceberg_tables SET metadata_location = new WHERE metadata_location = old`.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use iceberg::io::FileIO;
use iceberg::spec::TableMetadata;
use iceberg::{Catalog as _, CatalogBuilder, MetadataLocation, NamespaceIdent, TableIdent};
use iceberg_catalog_sql::{SqlBindStyle, SqlCatalogBuilder};
use sqlx::AnyPool;
use sqlx::Row;
use sqlx::any::AnyPoolOptions;

use super::{Catalog, StagedMetadata, TableHandle};
use crate::error::{Error, ErrorKind, Result};
use crate::storage::{ObjectStoreFactory, ObjectStoreStorage, file_io};

/// A SQL catalog over one database.
#[derive(Debug)]
pub struct SqlCatalog {
    name: String,
    warehouse: String,
    inner: iceberg_catalog_sql::SqlCatalog,
    pool: AnyPool,
    postgres: bool,
    file_io: FileIO,
    storage: ObjectStoreStorage,
}

impl SqlCatalog {
    /// Connect to `uri` (`sqlite://path?mode=rwc` or `postgres://…`), creating
    /// the catalog tables if missing. `warehouse` is a URL or absolute path.
    pub async fn connect(
        name: &str,
        uri: &str,
        warehouse: &str,
        storage: ObjectStoreStorage,
    ) -> Result<Self> {
        let postgres = uri.starts_with("postgres");
        let bind = if postgres {
            SqlBindStyle::DollarNumeric
        } else {
            SqlBindStyle::QMark
        };
        let inner = SqlCatalogBuilder::default()
            .uri(uri)
            .warehouse_location(warehouse)
            .sql_bind_style(bind)
            .with_storage_factory(Arc::new(ObjectStoreFactory::new(storage.clone())))
            .load(name, HashMap::new())
            .await
            .map_err(|e| {
                Error::new(ErrorKind::Catalog, format!("opening SQL catalog {uri}")).with_source(e)
            })?;
        let pool = AnyPoolOptions::new()
            .max_connections(4)
            .connect(uri)
            .await
            .map_err(|e| {
                Error::new(ErrorKind::Catalog, format!("connecting to {uri}")).with_source(e)
            })?;
        Ok(Self {
            name: name.to_string(),
            warehouse: warehouse.trim_end_matches('/').to_string(),
            inner,
            pool,
            postgres,
            file_io: file_io(&storage),
            storage,
        })
    }

    fn sql(&self, query: &str) -> String {
        if !self.postgres {
            return query.to_string();
        }
        let mut n = 0;
        query
            .chars()
            .map(|c| {
                if c == '?' {
                    n += 1;
                    format!("${n}")
                } else {
                    c.to_string()
                }
            })
            .collect()
    }

    async fn current_location(&self, ident: &TableIdent) -> Result<Option<String>> {
        let q = self.sql(
            "SELECT metadata_location FROM iceberg_tables \
             WHERE catalog_name = ? AND table_namespace = ? AND table_name = ?",
        );
        let row = sqlx::query(&q)
            .bind(&self.name)
            .bind(ident.namespace().join("."))
            .bind(ident.name())
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| {
                Error::new(ErrorKind::Catalog, format!("loading table {ident}")).with_source(e)
            })?;
        Ok(row.and_then(|r| r.try_get::<Option<String>, _>(0).ok().flatten()))
    }
}

#[async_trait]
impl Catalog for SqlCatalog {
    fn file_io(&self) -> &FileIO {
        &self.file_io
    }

    fn storage(&self) -> &ObjectStoreStorage {
        &self.storage
    }

    fn default_location(&self, ident: &TableIdent) -> String {
        super::table_location(&self.warehouse, ident)
    }

    async fn load(&self, ident: &TableIdent) -> Result<TableHandle> {
        let location = self.current_location(ident).await?.ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!("table {ident} does not exist in catalog `{}`", self.name),
            )
        })?;
        let metadata = TableMetadata::read_from(&self.file_io, &location)
            .await
            .map_err(|e| Error::iceberg(format!("reading metadata of {ident} at {location}"), e))?;
        Ok(TableHandle {
            ident: ident.clone(),
            metadata: Arc::new(metadata),
            metadata_location: location,
            file_io: self.file_io.clone(),
        })
    }

    async fn exists(&self, ident: &TableIdent) -> Result<bool> {
        Ok(self.current_location(ident).await?.is_some())
    }

    async fn create(&self, ident: &TableIdent, metadata: TableMetadata) -> Result<TableHandle> {
        let ns: &NamespaceIdent = ident.namespace();
        let exists = self
            .inner
            .namespace_exists(ns)
            .await
            .map_err(|e| Error::iceberg(format!("checking namespace {}", ns.join(".")), e))?;
        if !exists {
            self.inner
                .create_namespace(ns, HashMap::new())
                .await
                .map_err(|e| Error::iceberg(format!("creating namespace {}", ns.join(".")), e))?;
        }
        let location = MetadataLocation::new_with_metadata(metadata.location(), &metadata);
        metadata
            .write_to(&self.file_io, &location)
            .await
            .map_err(|e| Error::iceberg(format!("writing metadata of {ident}"), e))?;
        self.inner
            .register_table(ident, location.to_string())
            .await
            .map_err(|e| Error::iceberg(format!("registering table {ident}"), e))?;
        self.load(ident).await
    }

    async fn swap(&self, base: &TableHandle, staged: StagedMetadata) -> Result<TableHandle> {
        let ident = &base.ident;
        let next = MetadataLocation::from_str(&base.metadata_location)
            .map_err(|e| Error::iceberg(format!("metadata location of {ident}"), e))?
            .with_next_version()
            .with_new_metadata(&staged.metadata);
        staged
            .metadata
            .write_to(&self.file_io, &next)
            .await
            .map_err(|e| Error::iceberg(format!("writing metadata of {ident}"), e))?;
        let next = next.to_string();
        let q = self.sql(
            "UPDATE iceberg_tables SET metadata_location = ?, previous_metadata_location = ? \
             WHERE catalog_name = ? AND table_namespace = ? AND table_name = ? \
             AND metadata_location = ?",
        );
        let done = sqlx::query(&q)
            .bind(&next)
            .bind(&base.metadata_location)
            .bind(&self.name)
            .bind(ident.namespace().join("."))
            .bind(ident.name())
            .bind(&base.metadata_location)
            .execute(&self.pool)
            .await
            .map_err(|e| {
                Error::new(ErrorKind::Catalog, format!("committing {ident}")).with_source(e)
            })?;
        if done.rows_affected() == 0 {
            // The metadata file we wrote is now an orphan; orphan removal collects it.
            return Err(Error::new(
                ErrorKind::CommitConflict,
                format!(
                    "table {ident} changed since {} was read",
                    base.metadata_location
                ),
            ));
        }
        Ok(TableHandle {
            ident: ident.clone(),
            metadata: Arc::new(staged.metadata),
            metadata_location: next,
            file_io: self.file_io.clone(),
        })
    }
}
