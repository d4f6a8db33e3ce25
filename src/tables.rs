//! `firn tables sync`: create each declared table (and its rejects table), or
//! evolve it when the declaration added columns; and [`check_matches`], the
//! one drift check every writer runs before it writes through a declaration.

use std::collections::HashMap;

use iceberg::spec::{FormatVersion, Schema, TableMetadata, TableMetadataBuilder};
use iceberg::{NamespaceIdent, TableCreation, TableIdent};

use crate::catalog::Catalog;
use crate::commit::{self, RetryPolicy};
use crate::error::{Error, ErrorKind, Result};
use crate::rejects;
use crate::schema::decl::{RESERVED_COLUMNS, TableDecl};
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
pub async fn sync(
    catalog: &dyn Catalog,
    decl: &TableDecl,
    retry: RetryPolicy,
) -> Result<SyncOutcome> {
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
    commit::update_metadata(catalog, &ident, retry, |base| {
        let current = base.metadata.current_schema();
        check_columns(decl, current, Missing::Allowed)?;
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

/// Whether a declared column the table lacks is drift ([`check_matches`]) or
/// the work `sync` is about to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Missing {
    Allowed,
    Refused,
}

/// Refuse to write through a declaration that no longer matches its table.
///
/// Ingest, compaction, rollup, retention and backfill all write rows shaped
/// by the declaration. A column the table has and the declaration lost (a
/// measure removed, a dimension renamed) would be NULL in every new row and
/// vanish from every file a rewrite replaces; a column declared with another
/// type would have its values cast (doubles truncated into longs). Neither
/// can be undone, so the writer stops, naming the table, the column and the
/// declaration file. A declared column the table does not have yet is what
/// `firn tables sync` adds; until it has run, writers refuse and say so.
///
/// Every column of the current schema other than `ts` and `grain` counts as
/// firn's: firn rewrites whole files, so a column another engine added would
/// be dropped by a compaction just the same.
pub fn check_matches(decl: &TableDecl, metadata: &TableMetadata) -> Result<()> {
    check_columns(decl, metadata.current_schema(), Missing::Refused)
}

fn check_columns(decl: &TableDecl, schema: &Schema, missing: Missing) -> Result<()> {
    let declared = layout::declared_columns(decl);
    let file = decl.source.display();
    let table = decl.qualified_name();
    let drift = |what: String| Error::new(ErrorKind::InvalidDeclaration, format!("{file}: {what}"));
    let absent: Vec<&str> = declared
        .iter()
        .filter(|(name, _)| schema.field_by_name(name).is_none())
        .map(|(name, _)| name.as_str())
        .collect();
    for field in schema.as_struct().fields() {
        if RESERVED_COLUMNS.contains(&field.name.as_str())
            || declared.iter().any(|(name, _)| *name == field.name)
        {
            continue;
        }
        let renamed = match absent.as_slice() {
            [] => String::new(),
            [one] => format!(" (renamed to `{one}`?)"),
            many => format!(" (renamed to one of `{}`?)", many.join("`, `")),
        };
        return Err(drift(format!(
            "table {table} has column `{name}` ({ty}) that the declaration no longer \
             declares{renamed}; writing on would leave `{name}` NULL in new rows and drop \
             its values from every file a compaction, rollup or backfill rewrites. Declare \
             `{name}` again as it was, or drop the column from the table first if its \
             history is meant to go",
            name = field.name,
            ty = field.field_type,
        )));
    }
    for (name, ty) in &declared {
        if let Some(existing) = schema.field_by_name(name)
            && *existing.field_type != *ty
        {
            return Err(drift(format!(
                "column `{name}` is {} in table {table} but declared {ty}; a column's type \
                 cannot change (its values would be cast on every write), declare a new \
                 column instead",
                existing.field_type
            )));
        }
    }
    if missing == Missing::Refused && !absent.is_empty() {
        return Err(drift(format!(
            "declares column(s) `{}` that table {table} does not have yet; run `firn tables \
             sync` to add them",
            absent.join("`, `")
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const GOOD: &str = include_str!("../schemas/usage.http_requests.toml");

    fn decl(text: &str) -> TableDecl {
        TableDecl::parse(Path::new("schemas/usage.http_requests.toml"), text).unwrap()
    }

    /// The metadata of a table created from `text`.
    fn table(text: &str) -> TableMetadata {
        let d = decl(text);
        let creation = TableCreation::builder()
            .name(d.name.clone())
            .location("file:///warehouse/usage/http_requests".to_string())
            .schema(layout::initial_schema(&d).unwrap())
            .format_version(FormatVersion::V2)
            .build();
        TableMetadataBuilder::from_table_creation(creation)
            .unwrap()
            .build()
            .unwrap()
            .metadata
    }

    fn refusal(text: &str, metadata: &TableMetadata) -> Error {
        let e = check_matches(&decl(text), metadata).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidDeclaration);
        assert!(!e.retryable());
        let msg = e.to_string();
        assert!(
            msg.contains("schemas/usage.http_requests.toml") && msg.contains("usage.http_requests"),
            "{msg}"
        );
        e
    }

    #[test]
    fn the_declaration_the_table_was_made_from_matches() {
        check_matches(&decl(GOOD), &table(GOOD)).unwrap();
    }

    #[test]
    fn a_removed_measure_is_refused() {
        let without_bytes = GOOD.replace(
            "[[measure]]\nname = \"bytes\"\nagg = \"sum\"\nfield = \"bytes\"\ntype = \"long\"\n",
            "",
        );
        assert_ne!(without_bytes, GOOD);
        let e = refusal(&without_bytes, &table(GOOD));
        assert!(
            e.to_string()
                .contains("has column `bytes` (long) that the declaration no longer declares;"),
            "{e}"
        );
    }

    #[test]
    fn a_renamed_dimension_is_refused_naming_both_names() {
        let renamed = GOOD.replace("name = \"colo\"", "name = \"location\"");
        let e = refusal(&renamed, &table(GOOD));
        assert!(
            e.to_string()
                .contains("column `colo` (string) that the declaration no longer declares (renamed to `location`?)"),
            "{e}"
        );
    }

    #[test]
    fn a_changed_type_is_refused() {
        let double = GOOD.replace(
            "name = \"cpu_ms\"\nagg = \"sum\"\nfield = \"cpu_ms\"\ntype = \"long\"",
            "name = \"cpu_ms\"\nagg = \"sum\"\nfield = \"cpu_ms\"\ntype = \"double\"",
        );
        assert_ne!(double, GOOD);
        // A double measure declared long: values would be truncated.
        let e = refusal(GOOD, &table(&double));
        assert!(
            e.to_string().contains(
                "column `cpu_ms` is double in table usage.http_requests but declared long"
            ),
            "{e}"
        );
        refusal(&double, &table(GOOD));
    }

    #[test]
    fn an_added_column_waits_for_sync_then_matches() {
        let with_method = GOOD.replace(
            "[[measure]]\nname = \"requests\"",
            "[[dimension]]\nname = \"method\"\ntype = \"string\"\noptional = true\n\n[[measure]]\nname = \"requests\"",
        );
        let before = table(GOOD);
        let e = refusal(&with_method, &before);
        assert!(
            e.to_string().contains(
                "declares column(s) `method` that table usage.http_requests does not have yet; run `firn tables sync`"
            ),
            "{e}"
        );
        // What sync does: evolve the schema; then the declaration matches.
        check_columns(
            &decl(&with_method),
            before.current_schema(),
            Missing::Allowed,
        )
        .unwrap();
        let evolved = layout::evolved_schema(before.current_schema(), &decl(&with_method))
            .unwrap()
            .unwrap();
        let after = before
            .clone()
            .into_builder(None)
            .add_current_schema(evolved)
            .unwrap()
            .build()
            .unwrap()
            .metadata;
        check_matches(&decl(&with_method), &after).unwrap();
        // The old declaration no longer matches the evolved table.
        refusal(GOOD, &after);
    }
}
