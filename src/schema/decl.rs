//! Table declarations: `schemas/<name>.toml`, parsed in two phases (raw serde
//! structs, then a validated [`TableDecl`]). Every error names the file, the
//! field and what is wrong.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, ErrorKind, Result};

/// Column names firn reserves for itself in every table.
pub const RESERVED_COLUMNS: [&str; 2] = ["ts", "grain"];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDecl {
    table: RawTable,
    #[serde(default)]
    dimension: Vec<RawDimension>,
    #[serde(default)]
    measure: Vec<RawMeasure>,
    policy: RawPolicy,
    #[serde(default)]
    health: HealthThresholds,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    namespace: String,
    name: String,
    topic: String,
    event_time: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDimension {
    name: String,
    #[serde(rename = "type")]
    ty: String,
    field: Option<String>,
    #[serde(default)]
    optional: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMeasure {
    name: String,
    agg: String,
    field: Option<String>,
    #[serde(rename = "type")]
    ty: Option<String>,
    #[serde(default)]
    optional: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(with = "humantime_serde")]
    minute_to_hour_after: Duration,
    #[serde(with = "humantime_serde")]
    hour_to_day_after: Duration,
    #[serde(with = "humantime_serde")]
    retain: Duration,
    #[serde(default = "default_rejects_retain", with = "humantime_serde")]
    rejects_retain: Duration,
}

/// How long a rejects table keeps a rejected record unless declared.
fn default_rejects_retain() -> Duration {
    Duration::from_secs(30 * 86_400)
}

/// When `firn status` calls a table unhealthy (and exits non-zero). Each
/// threshold is optional; an undeclared one is not checked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthThresholds {
    /// Most records any consumer group may lag behind the high watermarks.
    pub max_lag: Option<u64>,
    /// Longest time since the table's last commit.
    #[serde(default, with = "humantime_serde")]
    pub max_commit_age: Option<Duration>,
    /// Most snapshots in the metadata (expiry keeps this down).
    pub max_snapshots: Option<u64>,
    /// Most manifests in the current snapshot.
    pub max_manifests: Option<u64>,
    /// Most data files under a quarter of the target file size, in
    /// partitions of more than one file.
    pub max_small_files: Option<u64>,
    /// Most sealed partitions waiting for compaction.
    pub max_pending_compaction: Option<u64>,
    /// Most partitions waiting for rollup.
    pub max_pending_rollup: Option<u64>,
    /// Most partitions past retention still in the table.
    pub max_pending_retention: Option<u64>,
    /// Most bytes of unreferenced files under the table's location.
    pub max_orphan_bytes: Option<u64>,
}

/// Type of a dimension column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DimType {
    /// 64-bit signed integer (JSON integer).
    Long,
    /// UTF-8 string (JSON string).
    String,
    /// Boolean (JSON true/false).
    Boolean,
}

/// Type of a measure column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeasureType {
    /// 64-bit signed integer; sums are exact.
    Long,
    /// IEEE double; sums depend on order, so prefer `long` for billing data.
    Double,
}

/// How a measure aggregates events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agg {
    /// Number of events (no source field).
    Count,
    /// Sum of the field.
    Sum,
    /// Minimum of the field.
    Min,
    /// Maximum of the field.
    Max,
}

/// A dimension: a grouping key column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dimension {
    /// Column name.
    pub name: String,
    /// JSON field the value is read from.
    pub field: String,
    /// Column type.
    pub ty: DimType,
    /// Missing or null values are a null dimension instead of a reject.
    pub optional: bool,
}

/// A measure: an aggregated value column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Measure {
    /// Column name.
    pub name: String,
    /// JSON field the value is read from (`None` for `count`).
    pub field: Option<String>,
    /// Aggregation.
    pub agg: Agg,
    /// Column type (`long` for `count`).
    pub ty: MeasureType,
    /// A missing value contributes nothing instead of rejecting the event.
    pub optional: bool,
}

/// The tiering policy: when rows move to coarser grains and when they go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Minute rows older than this become hour rows.
    pub minute_to_hour_after: Duration,
    /// Hour rows older than this become day rows.
    pub hour_to_day_after: Duration,
    /// Data older than this is dropped (and rejected at ingest).
    pub retain: Duration,
    /// Rejected records older than this (by when they were rejected) are
    /// dropped from the rejects table (default 30 days).
    pub rejects_retain: Duration,
}

/// A validated table declaration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableDecl {
    /// The file it came from (for error messages).
    pub source: PathBuf,
    /// Iceberg namespace.
    pub namespace: String,
    /// Iceberg table name.
    pub name: String,
    /// Kafka topic feeding it.
    pub topic: String,
    /// JSON field holding the event time.
    pub event_time: String,
    /// Dimensions, in column order.
    pub dimensions: Vec<Dimension>,
    /// Measures, in column order.
    pub measures: Vec<Measure>,
    /// Tiering policy.
    pub policy: Policy,
    /// Health thresholds for `firn status`.
    pub health: HealthThresholds,
}

impl TableDecl {
    /// The shipped example declaration (`schemas/usage.http_requests.toml`),
    /// for tests.
    #[cfg(test)]
    pub(crate) fn example() -> Self {
        Self::parse(
            std::path::Path::new("schemas/usage.http_requests.toml"),
            include_str!("../../schemas/usage.http_requests.toml"),
        )
        .expect("the shipped declaration parses")
    }

    /// `namespace.name`.
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.namespace, self.name)
    }

    /// Name of the rejects table beside this one.
    pub fn rejects_name(&self) -> String {
        format!("{}_rejects", self.name)
    }

    /// Parse and validate a declaration from TOML text; `source` names it in errors.
    pub fn parse(source: &Path, text: &str) -> Result<Self> {
        let at = source.display();
        let raw: RawDecl = toml::from_str(text).map_err(|e| {
            Error::new(
                ErrorKind::InvalidDeclaration,
                format!("{at}: {}", e.to_string().trim_end()),
            )
        })?;
        let bad = |what: String| Error::new(ErrorKind::InvalidDeclaration, format!("{at}: {what}"));

        for (key, value) in [
            ("table.namespace", &raw.table.namespace),
            ("table.name", &raw.table.name),
        ] {
            check_identifier(value).map_err(|why| bad(format!("{key} `{value}` {why}")))?;
        }
        if raw.table.topic.trim().is_empty() {
            return Err(bad("table.topic is empty".into()));
        }
        if raw.table.event_time.trim().is_empty() {
            return Err(bad("table.event_time is empty".into()));
        }

        let mut seen = HashSet::new();
        let mut claim = |kind: &str, name: &str| -> Result<()> {
            check_identifier(name).map_err(|why| bad(format!("{kind} `{name}`: name {why}")))?;
            if RESERVED_COLUMNS.contains(&name) {
                return Err(bad(format!(
                    "{kind} `{name}`: the name is reserved (firn's own columns are {})",
                    RESERVED_COLUMNS.join(", ")
                )));
            }
            if !seen.insert(name.to_string()) {
                return Err(bad(format!("{kind} `{name}`: declared twice")));
            }
            Ok(())
        };

        let mut dimensions = Vec::new();
        for d in raw.dimension {
            claim("dimension", &d.name)?;
            let ty = match d.ty.as_str() {
                "long" => DimType::Long,
                "string" => DimType::String,
                "boolean" => DimType::Boolean,
                other => {
                    return Err(bad(format!(
                        "dimension `{}`: unknown type `{other}` (expected long, string or boolean)",
                        d.name
                    )));
                }
            };
            dimensions.push(Dimension {
                field: d.field.unwrap_or_else(|| d.name.clone()),
                name: d.name,
                ty,
                optional: d.optional,
            });
        }
        if dimensions.is_empty() {
            return Err(bad("no [[dimension]] declared".into()));
        }

        let mut measures = Vec::new();
        for m in raw.measure {
            claim("measure", &m.name)?;
            let agg = match m.agg.as_str() {
                "count" => Agg::Count,
                "sum" => Agg::Sum,
                "min" => Agg::Min,
                "max" => Agg::Max,
                other => {
                    return Err(bad(format!(
                        "measure `{}`: unknown agg `{other}` (expected count, sum, min or max)",
                        m.name
                    )));
                }
            };
            let ty = match m.ty.as_deref() {
                None | Some("long") => MeasureType::Long,
                Some("double") => MeasureType::Double,
                Some(other) => {
                    return Err(bad(format!(
                        "measure `{}`: unknown type `{other}` (expected long or double)",
                        m.name
                    )));
                }
            };
            let field = match (agg, m.field) {
                (Agg::Count, Some(f)) => {
                    return Err(bad(format!(
                        "measure `{}`: a count has no field (remove `field = \"{f}\"`)",
                        m.name
                    )));
                }
                (Agg::Count, None) => {
                    if ty != MeasureType::Long {
                        return Err(bad(format!("measure `{}`: a count is a long", m.name)));
                    }
                    None
                }
                (_, f) => Some(f.unwrap_or_else(|| m.name.clone())),
            };
            measures.push(Measure {
                name: m.name,
                field,
                agg,
                ty,
                optional: m.optional,
            });
        }
        if measures.is_empty() {
            return Err(bad("no [[measure]] declared".into()));
        }

        let p = raw.policy;
        if p.minute_to_hour_after < Duration::from_secs(3600) {
            return Err(bad("policy.minute_to_hour_after must be at least 1h".into()));
        }
        if p.hour_to_day_after <= p.minute_to_hour_after {
            return Err(bad(
                "policy.hour_to_day_after must be longer than policy.minute_to_hour_after".into(),
            ));
        }
        if p.retain <= p.hour_to_day_after {
            return Err(bad(
                "policy.retain must be longer than policy.hour_to_day_after".into(),
            ));
        }

        Ok(TableDecl {
            source: source.to_path_buf(),
            namespace: raw.table.namespace,
            name: raw.table.name,
            topic: raw.table.topic,
            event_time: raw.table.event_time,
            dimensions,
            measures,
            policy: Policy {
                minute_to_hour_after: p.minute_to_hour_after,
                hour_to_day_after: p.hour_to_day_after,
                retain: p.retain,
                rejects_retain: p.rejects_retain,
            },
            health: raw.health,
        })
    }

    /// Read and validate one declaration file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::new(ErrorKind::InvalidDeclaration, format!("{}", path.display())).with_source(e)
        })?;
        Self::parse(path, &text)
    }
}

/// Load every `*.toml` in `dir`, sorted by file name. Two declarations of the
/// same table or topic are an error naming both files.
pub fn load_dir(dir: &Path) -> Result<Vec<TableDecl>> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        Error::new(
            ErrorKind::InvalidDeclaration,
            format!("schemas directory {}", dir.display()),
        )
        .with_source(e)
    })?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    let mut decls: Vec<TableDecl> = Vec::new();
    for path in paths {
        let decl = TableDecl::load(&path)?;
        if let Some(other) = decls
            .iter()
            .find(|d| d.qualified_name() == decl.qualified_name() || d.topic == decl.topic)
        {
            return Err(Error::new(
                ErrorKind::InvalidDeclaration,
                format!(
                    "{} and {} both declare table {} or topic {}",
                    other.source.display(),
                    path.display(),
                    decl.qualified_name(),
                    decl.topic
                ),
            ));
        }
        decls.push(decl);
    }
    if decls.is_empty() {
        return Err(Error::new(
            ErrorKind::InvalidDeclaration,
            format!("no table declarations (*.toml) in {}", dir.display()),
        ));
    }
    Ok(decls)
}

fn check_identifier(name: &str) -> std::result::Result<(), &'static str> {
    let mut chars = name.chars();
    match chars.next() {
        Some(c) if c.is_ascii_lowercase() || c == '_' => {}
        _ => return Err("must start with a lowercase letter or underscore"),
    }
    if chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
        Ok(())
    } else {
        Err("may hold only lowercase letters, digits and underscores")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = include_str!("../../schemas/usage.http_requests.toml");

    fn parse(text: &str) -> Result<TableDecl> {
        TableDecl::parse(Path::new("schemas/t.toml"), text)
    }

    #[test]
    fn the_shipped_example_parses() {
        let d = parse(GOOD).unwrap();
        assert_eq!(d.qualified_name(), "usage.http_requests");
        assert_eq!(d.topic, "http-requests");
        let dims: Vec<_> = d.dimensions.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(dims, ["account_id", "zone_id", "colo", "product"]);
        let ms: Vec<_> = d
            .measures
            .iter()
            .map(|m| (m.name.as_str(), m.agg))
            .collect();
        assert_eq!(
            ms,
            [
                ("requests", Agg::Count),
                ("bytes", Agg::Sum),
                ("cpu_ms", Agg::Sum),
                ("ttfb_ms_max", Agg::Max)
            ]
        );
        assert_eq!(d.measures[3].field.as_deref(), Some("ttfb_ms"));
        assert_eq!(d.policy.retain, Duration::from_secs(400 * 86400));
    }

    #[test]
    fn errors_name_file_field_and_problem() {
        let e = parse(&GOOD.replace("agg = \"max\"", "agg = \"avg\"")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidDeclaration);
        assert_eq!(
            e.to_string(),
            "schemas/t.toml: measure `ttfb_ms_max`: unknown agg `avg` (expected count, sum, min or max)"
        );

        let e = parse(&GOOD.replace("type = \"string\"", "type = \"text\"")).unwrap_err();
        assert!(
            e.to_string()
                .contains("dimension `colo`: unknown type `text`"),
            "{e}"
        );

        let e = parse(&GOOD.replace("name = \"zone_id\"", "name = \"account_id\"")).unwrap_err();
        assert!(
            e.to_string()
                .contains("dimension `account_id`: declared twice"),
            "{e}"
        );

        let e = parse(&GOOD.replace("name = \"colo\"", "name = \"ts\"")).unwrap_err();
        assert!(
            e.to_string()
                .contains("dimension `ts`: the name is reserved"),
            "{e}"
        );

        let e = parse(&GOOD.replace("retain = \"400d\"", "retain = \"30d\"")).unwrap_err();
        assert!(
            e.to_string().contains("policy.retain must be longer"),
            "{e}"
        );

        let e = parse(&GOOD.replace("event_time = \"ts\"", "event_time = \"ts\"\ncolour = 1"))
            .unwrap_err();
        assert!(e.to_string().starts_with("schemas/t.toml:"), "{e}");
        assert!(e.to_string().contains("colour"), "{e}");

        let e = parse(&GOOD.replace("\"7d\"", "\"seven days\"")).unwrap_err();
        assert!(e.to_string().contains("minute_to_hour_after"), "{e}");

        let e =
            parse(&GOOD.replace("agg = \"count\"", "agg = \"count\"\nfield = \"n\"")).unwrap_err();
        assert!(e.to_string().contains("a count has no field"), "{e}");
    }
}
