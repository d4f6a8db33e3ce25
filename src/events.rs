//! The event core ingest and backfill share: one JSON record (a Kafka
//! message, or a line of a backfill input) becomes a [`DecodedEvent`] (key
//! and measure values) or a [`RejectReason`]. Never panics on input.

use std::fmt;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::rows::{DimValue, MeasureValue, RowKey};
use crate::schema::decl::{Agg, DimType, MeasureType, TableDecl};

/// Why a record was rejected. The label (`as_label`) is a bounded metric label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RejectReason {
    /// Not a JSON object.
    NotJson(String),
    /// A required field is absent or null.
    MissingField(String),
    /// A field has the wrong JSON type.
    WrongType {
        /// Field name.
        field: String,
        /// What the declaration expects.
        expected: &'static str,
    },
    /// The event time cannot be parsed.
    BadTime(String),
    /// The event is older than the table's retention.
    TooOld(String),
    /// The event is further in the future than the allowed skew.
    TooFarInFuture(String),
    /// A `backfill --replace` event outside the range being replaced.
    OutsideReplacedRange,
}

impl RejectReason {
    /// Short, bounded label for metrics.
    pub fn as_label(&self) -> &'static str {
        match self {
            RejectReason::NotJson(_) => "not_json",
            RejectReason::MissingField(_) => "missing_field",
            RejectReason::WrongType { .. } => "wrong_type",
            RejectReason::BadTime(_) => "bad_time",
            RejectReason::TooOld(_) => "too_old",
            RejectReason::TooFarInFuture(_) => "too_far_in_future",
            RejectReason::OutsideReplacedRange => "outside_range",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RejectReason::NotJson(e) => write!(f, "not a JSON object: {e}"),
            RejectReason::MissingField(field) => write!(f, "missing required field `{field}`"),
            RejectReason::WrongType { field, expected } => {
                write!(f, "field `{field}` is not {expected}")
            }
            RejectReason::BadTime(e) => write!(f, "bad event time: {e}"),
            RejectReason::TooOld(e) => write!(f, "event time older than retention: {e}"),
            RejectReason::TooFarInFuture(e) => {
                write!(f, "event time too far in the future: {e}")
            }
            RejectReason::OutsideReplacedRange => {
                write!(f, "event time outside the --from/--to range being replaced")
            }
        }
    }
}

/// Where a record was read: a Kafka position, or a line of a backfill input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin<'a> {
    /// A Kafka record.
    Kafka {
        /// Topic.
        topic: &'a str,
        /// Partition.
        partition: i32,
        /// Offset.
        offset: i64,
    },
    /// A line of an input file.
    Line {
        /// The file (a path or a URL).
        file: &'a str,
        /// 1-based line number.
        line: i64,
    },
}

/// A decoded event: its minute-bucket key and one value per measure.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedEvent {
    /// Dimensions and minute bucket.
    pub key: RowKey,
    /// Per-measure values (`None`: missing optional field, or a count).
    pub values: Vec<Option<MeasureValue>>,
}

/// How far in the future an event may be, unless configured otherwise.
pub const DEFAULT_FUTURE_SKEW: std::time::Duration = std::time::Duration::from_secs(3600);

/// The accepted event-time window, computed once per batch from the clock.
#[derive(Debug, Clone, Copy)]
pub struct TimeWindow {
    /// Oldest accepted event time, ms since epoch (now - retention).
    pub min_ms: i64,
    /// Newest accepted event time, ms since epoch (now + skew).
    pub max_ms: i64,
}

impl TimeWindow {
    /// Window for `now` under `decl`'s retention and a future `skew`.
    pub fn new(now: DateTime<Utc>, decl: &TableDecl, skew: std::time::Duration) -> Self {
        let now_ms = now.timestamp_millis();
        Self {
            min_ms: now_ms - decl.policy.retain.as_millis() as i64,
            max_ms: now_ms + skew.as_millis() as i64,
        }
    }
}

/// Decodes events for one table.
#[derive(Debug, Clone)]
pub struct Decoder {
    decl: TableDecl,
}

const MINUTE_MS: i64 = 60_000;

impl Decoder {
    /// A decoder for `decl`.
    pub fn new(decl: TableDecl) -> Self {
        Self { decl }
    }

    /// The declaration.
    pub fn decl(&self) -> &TableDecl {
        &self.decl
    }

    /// Decode one record payload.
    pub fn decode(&self, payload: &[u8], window: TimeWindow) -> Result<DecodedEvent, RejectReason> {
        let value: Value =
            serde_json::from_slice(payload).map_err(|e| RejectReason::NotJson(e.to_string()))?;
        let Value::Object(obj) = value else {
            return Err(RejectReason::NotJson("top level is not an object".into()));
        };
        let get = |field: &str| obj.get(field).filter(|v| !v.is_null());

        let ts_field = &self.decl.event_time;
        let ts_ms = match get(ts_field) {
            None => return Err(RejectReason::MissingField(ts_field.clone())),
            Some(v) => parse_time(ts_field, v)?,
        };
        if ts_ms < window.min_ms {
            return Err(RejectReason::TooOld(format_ms(ts_ms)));
        }
        if ts_ms > window.max_ms {
            return Err(RejectReason::TooFarInFuture(format_ms(ts_ms)));
        }

        let mut dims = Vec::with_capacity(self.decl.dimensions.len());
        for d in &self.decl.dimensions {
            let dv = match get(&d.field) {
                None if d.optional => DimValue::Null,
                None => return Err(RejectReason::MissingField(d.field.clone())),
                Some(v) => match (d.ty, v) {
                    (DimType::Long, Value::Number(n)) if n.is_i64() => {
                        DimValue::Long(n.as_i64().unwrap_or_default())
                    }
                    (DimType::String, Value::String(s)) => DimValue::Str(s.as_str().into()),
                    (DimType::Boolean, Value::Bool(b)) => DimValue::Bool(*b),
                    (ty, _) => {
                        return Err(RejectReason::WrongType {
                            field: d.field.clone(),
                            expected: match ty {
                                DimType::Long => "an integer",
                                DimType::String => "a string",
                                DimType::Boolean => "a boolean",
                            },
                        });
                    }
                },
            };
            dims.push(dv);
        }

        let mut values = Vec::with_capacity(self.decl.measures.len());
        for m in &self.decl.measures {
            let Some(field) = m.field.as_deref().filter(|_| m.agg != Agg::Count) else {
                values.push(None);
                continue;
            };
            let mv = match get(field) {
                None if m.optional => None,
                None => return Err(RejectReason::MissingField(field.to_string())),
                Some(v) => Some(match (m.ty, v) {
                    (MeasureType::Long, Value::Number(n)) if n.is_i64() => {
                        MeasureValue::Long(n.as_i64())
                    }
                    (MeasureType::Double, Value::Number(n)) => MeasureValue::Double(n.as_f64()),
                    (ty, _) => {
                        return Err(RejectReason::WrongType {
                            field: field.to_string(),
                            expected: match ty {
                                MeasureType::Long => "an integer",
                                MeasureType::Double => "a number",
                            },
                        });
                    }
                }),
            };
            values.push(mv);
        }

        let minute_ms = ts_ms.div_euclid(MINUTE_MS) * MINUTE_MS;
        Ok(DecodedEvent {
            key: RowKey {
                dims,
                ts_micros: minute_ms * 1000,
            },
            values,
        })
    }
}

/// Event time: epoch milliseconds (integer) or an RFC 3339 string.
fn parse_time(field: &str, v: &Value) -> Result<i64, RejectReason> {
    match v {
        Value::Number(n) => n.as_i64().ok_or_else(|| {
            RejectReason::BadTime(format!("`{field}` = {n} is not integer milliseconds"))
        }),
        Value::String(s) => DateTime::parse_from_rfc3339(s)
            .map(|t| t.timestamp_millis())
            .map_err(|e| RejectReason::BadTime(format!("`{field}` = {s:?}: {e}"))),
        other => Err(RejectReason::BadTime(format!(
            "`{field}` is {}, expected epoch milliseconds or an RFC 3339 string",
            json_type(other)
        ))),
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn format_ms(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339())
        .unwrap_or_else(|| format!("{ms} ms"))
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::*;

    fn decoder() -> Decoder {
        Decoder::new(
            TableDecl::parse(
                Path::new("t.toml"),
                include_str!("../schemas/usage.http_requests.toml"),
            )
            .unwrap(),
        )
    }

    fn window() -> TimeWindow {
        let now = DateTime::parse_from_rfc3339("2026-11-27T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        TimeWindow::new(now, decoder().decl(), Duration::from_secs(3600))
    }

    #[test]
    fn decodes_both_time_forms_to_the_same_minute() {
        let d = decoder();
        let a = d
            .decode(br#"{"ts":1795771230123,"account_id":1,"zone_id":2,"colo":"AMS","product":"cdn","bytes":10,"cpu_ms":3,"ttfb_ms":7,"extra":true}"#, window())
            .unwrap();
        let b = d
            .decode(br#"{"ts":"2026-11-27T09:20:30.123Z","account_id":1,"zone_id":2,"colo":"AMS","product":"cdn","bytes":10,"cpu_ms":3,"ttfb_ms":7}"#, window())
            .unwrap();
        assert_eq!(a, b);
        assert_eq!(a.key.ts_micros, 1_795_771_200_000_000);
        assert_eq!(a.values[1], Some(MeasureValue::Long(Some(10))));
        assert_eq!(a.values[0], None);
    }

    #[test]
    fn rejects_say_why() {
        let d = decoder();
        let w = window();
        let r = |p: &str| d.decode(p.as_bytes(), w).unwrap_err();
        assert_eq!(r("nope").as_label(), "not_json");
        assert_eq!(r("[1]").as_label(), "not_json");
        assert_eq!(
            r(r#"{"account_id":1}"#),
            RejectReason::MissingField("ts".into())
        );
        assert_eq!(
            r(r#"{"ts":1795771230123,"account_id":"x","zone_id":2,"colo":"a","product":"p","bytes":1,"cpu_ms":1,"ttfb_ms":1}"#).to_string(),
            "field `account_id` is not an integer"
        );
        assert_eq!(
            r(
                r#"{"ts":1795771230123,"account_id":1,"zone_id":2,"colo":"a","product":"p","cpu_ms":1,"ttfb_ms":1}"#
            ),
            RejectReason::MissingField("bytes".into())
        );
        assert_eq!(r(r#"{"ts":true}"#).as_label(), "bad_time");
        assert_eq!(r(r#"{"ts":"yesterday"}"#).as_label(), "bad_time");
        assert_eq!(r(r#"{"ts":1000}"#).as_label(), "too_old");
        assert_eq!(
            r(r#"{"ts":"2026-11-27T13:00:01Z"}"#).as_label(),
            "too_far_in_future"
        );
    }

    #[test]
    fn any_utf8_string_is_a_dimension() {
        let d = decoder();
        let e = d
            .decode(r#"{"ts":1795771230123,"account_id":1,"zone_id":2,"colo":"Zürich 🏔","product":"","bytes":1,"cpu_ms":1,"ttfb_ms":1}"#.as_bytes(), window())
            .unwrap();
        assert_eq!(e.key.dims[2], DimValue::Str("Zürich 🏔".into()));
    }
}
