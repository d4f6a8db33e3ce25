//! Configuration in two phases: a raw `firn.toml` (serde, unknown keys
//! refused, humantime durations), overridden by flags and `FIRN_*` variables,
//! then validated into [`Config`]. With no file at all, the embedded default:
//! a SQLite catalog and a local warehouse under `firn-data/`, Kafka on
//! 127.0.0.1:9092.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::catalog::Catalog;
use crate::catalog::rest::{RestCatalog, RestConfig, Secret};
use crate::catalog::sql::SqlCatalog;
use crate::error::{Error, ErrorKind, Result};
use crate::faults::catalog::FaultCatalog;
use crate::faults::{FaultPlan, Faults};
use crate::ingest::IngestOptions;
use crate::redact;
use crate::retry::RetryPolicy;
use crate::storage::{ObjectStoreStorage, StoreOptions};

/// Default catalog database.
pub const DEFAULT_CATALOG_URI: &str = "sqlite://firn-data/catalog.db?mode=rwc";
/// Default warehouse.
pub const DEFAULT_WAREHOUSE: &str = "firn-data/warehouse";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    schemas: Option<PathBuf>,
    #[serde(default)]
    catalog: RawCatalog,
    #[serde(default)]
    storage: BTreeMap<String, String>,
    #[serde(default)]
    kafka: RawKafka,
    #[serde(default)]
    ingest: RawIngest,
    #[serde(default)]
    retry: RawRetry,
    #[serde(default)]
    faults: Option<FaultPlan>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalog {
    #[serde(rename = "type")]
    kind: Option<String>,
    name: Option<String>,
    uri: Option<String>,
    warehouse: Option<String>,
    credential: Option<String>,
    token: Option<String>,
    scope: Option<String>,
    prefix: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKafka {
    brokers: Option<String>,
    group: Option<String>,
    #[serde(default)]
    properties: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIngest {
    #[serde(default, with = "humantime_serde")]
    commit_interval: Option<Duration>,
    max_buffered_rows: Option<usize>,
    max_buffered_bytes: Option<u64>,
    #[serde(default, with = "humantime_serde")]
    future_skew: Option<Duration>,
    target_file_size: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    max_attempts: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    min_delay: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    max_delay: Option<Duration>,
}

/// Values from flags and `FIRN_*` variables; they win over the file.
/// `Debug` masks the catalog URI's password and shows no credential or
/// property value.
#[derive(Default, Clone)]
pub struct Overrides {
    /// Table declarations directory.
    pub schemas: Option<PathBuf>,
    /// Catalog name (the `catalog_name` column of a SQL catalog).
    pub catalog_name: Option<String>,
    /// Catalog database URI (SQL) or base URI (REST).
    pub catalog_uri: Option<String>,
    /// `sql` or `rest`.
    pub catalog_type: Option<String>,
    /// REST catalog credential `id:secret` (over `FIRN_CATALOG_CREDENTIAL`).
    pub catalog_credential: Option<String>,
    /// Object store options, over the file's `[storage]`.
    pub storage: BTreeMap<String, String>,
    /// Warehouse URL or path.
    pub warehouse: Option<String>,
    /// Kafka bootstrap servers.
    pub brokers: Option<String>,
    /// Consumer group.
    pub group: Option<String>,
    /// librdkafka properties, over the file's `[kafka.properties]` (see
    /// [`kafka_properties_from_env`]).
    pub kafka_properties: BTreeMap<String, String>,
}

impl fmt::Debug for Overrides {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Overrides")
            .field("schemas", &self.schemas)
            .field("catalog_name", &self.catalog_name)
            .field(
                "catalog_uri",
                &self.catalog_uri.as_deref().map(redact::credentials),
            )
            .field("catalog_type", &self.catalog_type)
            .field(
                "catalog_credential",
                &self.catalog_credential.as_ref().map(|_| redact::MASK),
            )
            .field("storage", &self.storage)
            .field("warehouse", &self.warehouse)
            .field("brokers", &self.brokers)
            .field("group", &self.group)
            .field("kafka_properties", &self.kafka_properties.keys())
            .finish()
    }
}

/// librdkafka properties from `FIRN_KAFKA_<NAME>` variables, the name
/// lower-cased with `_` read as `.`: `FIRN_KAFKA_SASL_PASSWORD` sets
/// `sasl.password`, so secrets need not sit in `firn.toml`.
pub fn kafka_properties_from_env(
    vars: impl IntoIterator<Item = (String, String)>,
) -> BTreeMap<String, String> {
    vars.into_iter()
        .filter_map(|(k, v)| {
            let name = k.strip_prefix("FIRN_KAFKA_")?;
            (!name.is_empty()).then(|| (name.to_ascii_lowercase().replace('_', "."), v))
        })
        .collect()
}

/// The catalog to use. `Debug` masks the URI's password.
#[derive(Clone)]
pub struct CatalogConfig {
    /// A REST catalog, or `None` for the SQL catalog.
    pub rest: Option<RestConfig>,
    /// Catalog name (the `catalog_name` column of a SQL catalog).
    pub name: String,
    /// Database URI.
    pub uri: String,
    /// Warehouse URL (`file:///…`, `s3://bucket/prefix`).
    pub warehouse: String,
}

impl fmt::Debug for CatalogConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CatalogConfig")
            .field("rest", &self.rest)
            .field("name", &self.name)
            .field("uri", &redact::credentials(&self.uri))
            .field("warehouse", &self.warehouse)
            .finish()
    }
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the table declarations are.
    pub schemas: PathBuf,
    /// Catalog.
    pub catalog: CatalogConfig,
    /// Object store options.
    pub storage: StoreOptions,
    /// Ingest settings (brokers, group, buffering; its `retry` is [`Self::retry`]).
    pub ingest: IngestOptions,
    /// How commits and catalog reads are retried, by ingest, maintenance and
    /// backfill alike.
    pub retry: RetryPolicy,
    /// Injected faults (the gauntlet only): the file `FIRN_FAULTS` names, else
    /// a `[faults]` section; `None` (the default) injects nothing.
    pub faults: Option<Arc<Faults>>,
}

impl Config {
    /// Commits per minute per table a batch run may make: `asked` (a flag's,
    /// then a job file's), else the catalog's default (10 on a REST catalog,
    /// as R2 Data Catalog allows about 20; no limit, 0, on SQL catalogs).
    pub fn commits_per_minute(&self, asked: Option<u32>) -> u32 {
        asked.unwrap_or_else(|| {
            crate::budget::default_commits_per_minute(self.catalog.rest.is_some())
        })
    }

    /// Load `path` (if given; `firn.toml` in the working directory if present)
    /// and apply `overrides`.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Self> {
        let (raw, source) = match path {
            Some(p) => (read(p)?, p.display().to_string()),
            None if Path::new("firn.toml").exists() => {
                (read(Path::new("firn.toml"))?, "firn.toml".to_string())
            }
            None => (RawConfig::default(), "defaults".to_string()),
        };
        Self::from_raw(raw, overrides, &source)
    }

    /// The embedded default with `overrides` applied; no file is read.
    pub fn with_overrides(overrides: &Overrides) -> Result<Self> {
        Self::from_raw(RawConfig::default(), overrides, "defaults")
    }

    fn from_raw(raw: RawConfig, o: &Overrides, source: &str) -> Result<Self> {
        let kind = o
            .catalog_type
            .clone()
            .or(raw.catalog.kind.clone())
            .unwrap_or_else(|| "sql".to_string());
        let rest = match kind.as_str() {
            "sql" => None,
            "rest" => Some(RestConfig {
                uri: o
                    .catalog_uri
                    .clone()
                    .or(raw.catalog.uri.clone())
                    .ok_or_else(|| {
                        Error::new(
                            ErrorKind::InvalidConfig,
                            format!("{source}: catalog.uri is required for a REST catalog"),
                        )
                    })?,
                warehouse: o.warehouse.clone().or(raw.catalog.warehouse.clone()),
                credential: o
                    .catalog_credential
                    .clone()
                    .or_else(|| std::env::var("FIRN_CATALOG_CREDENTIAL").ok())
                    .or(raw.catalog.credential.clone())
                    .map(Secret),
                token: std::env::var("FIRN_CATALOG_TOKEN")
                    .ok()
                    .or(raw.catalog.token.clone())
                    .map(Secret),
                scope: raw.catalog.scope.clone(),
                prefix: raw.catalog.prefix.clone(),
                headers: raw.catalog.headers.clone(),
            }),
            other => {
                return Err(Error::new(
                    ErrorKind::InvalidConfig,
                    format!("{source}: catalog.type `{other}` is not known (expected sql or rest)"),
                ));
            }
        };
        let uri = o
            .catalog_uri
            .clone()
            .or(raw.catalog.uri)
            .unwrap_or_else(|| DEFAULT_CATALOG_URI.to_string());
        let warehouse = match &rest {
            Some(r) => r.warehouse.clone().unwrap_or_default(),
            None => warehouse_url(
                &o.warehouse
                    .clone()
                    .or(raw.catalog.warehouse)
                    .unwrap_or_else(|| DEFAULT_WAREHOUSE.to_string()),
            )?,
        };
        let retry = retry_policy(raw.retry, source)?;
        let defaults = IngestOptions::default();
        let ing = raw.ingest;
        let ingest = IngestOptions {
            brokers: o
                .brokers
                .clone()
                .or(raw.kafka.brokers)
                .unwrap_or(defaults.brokers),
            group: o
                .group
                .clone()
                .or(raw.kafka.group)
                .unwrap_or(defaults.group),
            kafka: {
                let mut p = raw.kafka.properties;
                p.extend(o.kafka_properties.clone());
                p
            },
            commit_interval: ing.commit_interval.unwrap_or(defaults.commit_interval),
            max_buffered_rows: ing.max_buffered_rows.unwrap_or(defaults.max_buffered_rows),
            max_buffered_bytes: ing
                .max_buffered_bytes
                .unwrap_or(defaults.max_buffered_bytes),
            future_skew: ing.future_skew.unwrap_or(defaults.future_skew),
            target_file_size: ing.target_file_size.unwrap_or(defaults.target_file_size),
            retry,
            ..defaults
        };
        if ingest.commit_interval.is_zero() {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!("{source}: ingest.commit_interval must be positive"),
            ));
        }
        let faults = match FaultPlan::from_env()? {
            Some(plan) => Some(plan),
            None => {
                if let Some(plan) = &raw.faults {
                    plan.validate(source)?;
                }
                raw.faults
            }
        };
        let faults = faults.map(Faults::new).transpose()?.map(Arc::new);
        Ok(Config {
            faults,
            schemas: o
                .schemas
                .clone()
                .or(raw.schemas)
                .unwrap_or_else(|| PathBuf::from("schemas")),
            catalog: CatalogConfig {
                rest,
                name: o
                    .catalog_name
                    .clone()
                    .or(raw.catalog.name)
                    .unwrap_or_else(|| "firn".to_string()),
                uri,
                warehouse,
            },
            storage: StoreOptions({
                let mut s = raw.storage;
                s.extend(o.storage.clone());
                s
            }),
            ingest,
            retry,
        })
    }

    /// Open the configured catalog (creating a local SQLite file's folder).
    pub async fn open_catalog(&self) -> Result<Arc<dyn Catalog>> {
        let storage =
            ObjectStoreStorage::new(self.storage.clone()).with_faults(self.faults.clone());
        let catalog: Arc<dyn Catalog> = match &self.catalog.rest {
            Some(rest) => Arc::new(RestCatalog::connect(rest.clone(), storage).await?),
            None => Arc::new(self.open_sql_catalog(storage).await?),
        };
        Ok(match &self.faults {
            Some(faults) => Arc::new(FaultCatalog::new(catalog, faults.clone())),
            None => catalog,
        })
    }

    async fn open_sql_catalog(&self, storage: ObjectStoreStorage) -> Result<SqlCatalog> {
        if let Some(path) = self.catalog.uri.strip_prefix("sqlite://") {
            let file = path.split('?').next().unwrap_or(path);
            if let Some(dir) = Path::new(file)
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
            {
                std::fs::create_dir_all(dir).map_err(|e| {
                    Error::new(ErrorKind::Io, format!("creating {}", dir.display())).with_source(e)
                })?;
            }
        }
        SqlCatalog::connect(
            &self.catalog.name,
            &self.catalog.uri,
            &self.catalog.warehouse,
            storage,
        )
        .await
    }
}

fn retry_policy(raw: RawRetry, source: &str) -> Result<RetryPolicy> {
    let defaults = RetryPolicy::default();
    let policy = RetryPolicy {
        max_attempts: raw.max_attempts.unwrap_or(defaults.max_attempts),
        min_delay: raw.min_delay.unwrap_or(defaults.min_delay),
        max_delay: raw.max_delay.unwrap_or(defaults.max_delay),
    };
    let invalid = |what: &str| {
        Err(Error::new(
            ErrorKind::InvalidConfig,
            format!("{source}: retry.{what}"),
        ))
    };
    if policy.max_attempts == 0 {
        return invalid("max_attempts must be at least 1 (the first attempt counts)");
    }
    if policy.min_delay > policy.max_delay {
        return invalid("min_delay must not be longer than retry.max_delay");
    }
    Ok(policy)
}

fn read(path: &Path) -> Result<RawConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::new(
            ErrorKind::InvalidConfig,
            format!("reading {}", path.display()),
        )
        .with_source(e)
    })?;
    toml::from_str(&text).map_err(|e| {
        Error::new(
            ErrorKind::InvalidConfig,
            format!("{}: {}", path.display(), e.to_string().trim_end()),
        )
    })
}

/// A warehouse as a URL: URLs pass through; a local path becomes `file://`
/// with an absolute path (created if missing).
pub fn warehouse_url(value: &str) -> Result<String> {
    if value.contains("://") {
        return Ok(value.trim_end_matches('/').to_string());
    }
    std::fs::create_dir_all(value).map_err(|e| {
        Error::new(ErrorKind::Io, format!("creating warehouse {value}")).with_source(e)
    })?;
    let abs = std::fs::canonicalize(value).map_err(|e| {
        Error::new(ErrorKind::Io, format!("resolving warehouse {value}")).with_source(e)
    })?;
    Ok(format!("file://{}", abs.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_overrides() {
        let raw: RawConfig = toml::from_str(
            r#"
            [catalog]
            uri = "sqlite://a.db"
            warehouse = "s3://bucket/wh/"
            [kafka]
            brokers = "k:9092"
            [kafka.properties]
            "session.timeout.ms" = "6000"
            [ingest]
            commit_interval = "5s"
            "#,
        )
        .unwrap();
        let o = Overrides {
            brokers: Some("x:1".into()),
            ..Default::default()
        };
        let c = Config::from_raw(raw, &o, "firn.toml").unwrap();
        assert_eq!(c.catalog.uri, "sqlite://a.db");
        assert_eq!(c.catalog.warehouse, "s3://bucket/wh");
        assert_eq!(c.ingest.brokers, "x:1");
        assert_eq!(c.ingest.commit_interval, Duration::from_secs(5));
        assert_eq!(c.ingest.kafka["session.timeout.ms"], "6000");
        assert_eq!(c.ingest.group, "firn-ingest");
        assert_eq!(c.retry, RetryPolicy::default());
    }

    #[test]
    fn the_retry_policy_is_configured_once_for_every_operation() {
        let raw: RawConfig = toml::from_str(
            "[retry]\nmax_attempts = 5\nmin_delay = \"50ms\"\nmax_delay = \"10s\"\n",
        )
        .unwrap();
        let c = Config::from_raw(raw, &Overrides::default(), "firn.toml").unwrap();
        let want = RetryPolicy {
            max_attempts: 5,
            min_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(10),
        };
        assert_eq!(c.retry, want);
        assert_eq!(c.ingest.retry, want);
        for bad in ["max_attempts = 0", "min_delay = \"3s\"\nmax_delay = \"1s\""] {
            let raw: RawConfig = toml::from_str(&format!("[retry]\n{bad}\n")).unwrap();
            let e = Config::from_raw(raw, &Overrides::default(), "firn.toml").unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidConfig);
            assert!(e.to_string().contains("firn.toml: retry."), "{e}");
        }
    }

    #[test]
    fn kafka_properties_come_from_firn_kafka_variables() {
        let env = [
            ("FIRN_KAFKA_SASL_PASSWORD", "s3cret"),
            ("FIRN_KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
            ("FIRN_BROKERS", "x:1"),
            ("FIRN_KAFKA_", "ignored"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let props = kafka_properties_from_env(env);
        assert_eq!(
            props,
            BTreeMap::from([
                ("sasl.password".to_string(), "s3cret".to_string()),
                ("security.protocol".to_string(), "SASL_SSL".to_string()),
            ])
        );
        let raw: RawConfig =
            toml::from_str("[kafka.properties]\n\"security.protocol\" = \"SSL\"\n").unwrap();
        let o = Overrides {
            kafka_properties: props,
            ..Default::default()
        };
        let c = Config::from_raw(raw, &o, "firn.toml").unwrap();
        assert_eq!(c.ingest.kafka["security.protocol"], "SASL_SSL");
        assert_eq!(c.ingest.kafka["sasl.password"], "s3cret");
    }

    #[test]
    fn unknown_keys_are_refused_with_the_file_name() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("firn.toml");
        std::fs::write(&p, "[ingest]\ncommit_intervall = \"5s\"\n").unwrap();
        let e = Config::load(Some(&p), &Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("firn.toml"), "{e}");
        assert!(e.to_string().contains("commit_intervall"), "{e}");
    }
}
