//! `firn tables sync`: create each declared table (and its rejects table), or
//! evolve it when the declaration added columns.

use std::collections::HashMap;

use iceberg::spec::{FormatVersion, TableMetadataBuilder};
use iceberg::{NamespaceIdent, TableCreation, TableIdent};

use crate::catalog::Catalog;
use crate::commit::{self, RetryPolicy};
use crate::error::{Error, Result};
use crate::rejects;
use crate::schema::decl::TableDecl;
use crate::schema::layout::{self, Grain};

/// What `sync` did to one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncOutcome {
    /// Created.
    Created,
    /// Columns added.
    Evolved(Vec<String>),
    /// Already as declared.
    Unchanged,
}

/// The table identifier of a declaration.
pub fn ident(decl: &TableDecl) -> Result<TableIdent> {
    Ok(TableIdent::new(namespace(decl)?, decl.name.clone()))
}

/// The rejects table identifier of a declaration.
pub fn rejects_ident(decl: &TableDecl) -> Result<TableIdent> {
    Ok(TableIdent::new(namespace(decl)?, decl.rejects_name()))
}

fn namespace(decl: &TableDecl) -> Result<NamespaceIdent> {
    NamespaceIdent::from_strs(decl.namespace.split('.'))
        .map_err(|e| Error::iceberg(format!("namespace of {}", decl.source.display()), e))
}

fn properties(decl: &TableDecl) -> HashMap<String, String> {
    HashMap::from([
        ("write.format.default".into(), "parquet".into()),
        ("write.parquet.compression-codec".into(), "zstd".into()),
        ("firn.topic".into(), decl.topic.clone()),
        ("firn.declaration".into(), decl.source.display().to_string()),
    ])
}

/// Create or evolve the table and rejects table of `decl`.
pub async fn sync(catalog: &dyn Catalog, decl: &TableDecl) -> Result<SyncOutcome> {
    let ident = ident(decl)?;
    let rejects = rejects_ident(decl)?;
    if !catalog.exists(&rejects).await? {
        let creation = TableCreation::builder()
            .name(rejects.name().to_string())
            .location(catalog.default_location(&rejects))
            .schema(rejects::schema()?)
            .properties(HashMap::from([(
                "firn.rejects-of".to_string(),
                decl.qualified_name(),
            )]))
            .format_version(FormatVersion::V2)
            .build();
        let metadata = TableMetadataBuilder::from_table_creation(creation)
            .and_then(|b| b.build())
            .map_err(|e| Error::iceberg(format!("metadata for {rejects}"), e))?
            .metadata;
        catalog.create(&rejects, metadata).await?;
    }

    if !catalog.exists(&ident).await? {
        let schema = layout::initial_schema(decl)?;
        let sort = layout::sort_order(&schema, decl, 1)?;
        let creation = TableCreation::builder()
            .name(ident.name().to_string())
            .location(catalog.default_location(&ident))
            .schema(schema)
            .partition_spec(layout::partition_spec(Grain::Minute)?)
            .sort_order(sort)
            .properties(properties(decl))
            .format_version(FormatVersion::V2)
            .build();
        let ice = |e| Error::iceberg(format!("metadata for {ident}"), e);
        let mut builder = TableMetadataBuilder::from_table_creation(creation).map_err(ice)?;
        for grain in [Grain::Hour, Grain::Day] {
            builder = builder
                .add_partition_spec(layout::partition_spec(grain)?)
                .map_err(ice)?;
        }
        let metadata = builder.build().map_err(ice)?.metadata;
        for grain in Grain::ALL {
            debug_assert!(metadata.partition_spec_by_id(grain.spec_id()).is_some());
        }
        catalog.create(&ident, metadata).await?;
        return Ok(SyncOutcome::Created);
    }

    let added = std::sync::Mutex::new(Vec::new());
    commit::update_metadata(catalog, &ident, RetryPolicy::default(), |base| {
        let current = base.metadata.current_schema();
        let Some(schema) = layout::evolved_schema(current, decl)? else {
            return Ok(None);
        };
        *added.lock().unwrap_or_else(|p| p.into_inner()) = schema
            .as_struct()
            .fields()
            .iter()
            .filter(|f| current.field_by_id(f.id).is_none())
            .map(|f| f.name.clone())
            .collect();
        let order_id = base.metadata.default_sort_order_id() + 1;
        let sort = layout::sort_order(&schema, decl, order_id)?;
        let ice = |e| Error::iceberg(format!("evolving {ident}"), e);
        let builder = (*base.metadata)
            .clone()
            .into_builder(Some(base.metadata_location.clone()))
            .add_current_schema(schema)
            .map_err(ice)?
            .add_sort_order(sort)
            .map_err(ice)?
            .set_default_sort_order(-1)
            .map_err(ice)?;
        Ok(Some(builder))
    })
    .await?;
    let added = added.into_inner().unwrap_or_else(|p| p.into_inner());
    Ok(if added.is_empty() {
        SyncOutcome::Unchanged
    } else {
        SyncOutcome::Evolved(added)
    })
}
