//! The event core ingest and backfill share: one JSON record (a Kafka
//! message, or a line of a backfill input) becomes a [`DecodedEvent`] (key
//! and measure values) or a [`RejectReason`]. Never panics on input.

use std::fmt;

use std::borrow::Cow;

use chrono::{DateTime, Utc};

use smallvec::SmallVec;

use crate::rows::{DimRef, MeasureValue, RowKey};
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
    /// A field appears twice in the event (which one counts is ambiguous).
    DuplicateField(String),
    /// An integer field holds a number outside the long range (or not
    /// integral, for a long measure given as `1.5e3`).
    OutOfRange {
        /// Field name.
        field: String,
        /// The number as sent.
        value: String,
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
            RejectReason::DuplicateField(_) => "duplicate_field",
            RejectReason::OutOfRange { .. } => "out_of_range",
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
            RejectReason::DuplicateField(field) => write!(f, "field `{field}` appears twice"),
            RejectReason::OutOfRange { field, value } => {
                write!(f, "field `{field}` = {value} is not a 64-bit integer")
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

/// A decoded event whose strings borrow from its payload: what ingest and
/// backfill aggregate (see [`crate::rows::RowMap::add_event_ref`]).
#[derive(Debug, Clone, PartialEq)]
pub struct EventRef<'p> {
    /// Dimension values, in declaration order.
    pub dims: SmallVec<[DimRef<'p>; 8]>,
    /// The minute bucket, microseconds since the epoch.
    pub ts_micros: i64,
    /// Per-measure values (`None`: missing optional field, or a count).
    pub values: SmallVec<[Option<MeasureValue>; 8]>,
}

impl EventRef<'_> {
    /// The event, owning its values.
    pub fn to_owned_event(&self) -> DecodedEvent {
        DecodedEvent {
            key: RowKey {
                dims: self.dims.iter().map(DimRef::to_owned_value).collect(),
                ts_micros: self.ts_micros,
            },
            values: self.values.to_vec(),
        }
    }
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
    /// The JSON fields the declaration reads, each once (the event time
    /// first); the other fields of an event are validated and skipped.
    fields: Vec<Box<str>>,
    /// Per dimension, then per measure with a field, its index in `fields`.
    dim_slots: Vec<usize>,
    measure_slots: Vec<Option<usize>>,
}

const MINUTE_MS: i64 = 60_000;

impl Decoder {
    /// A decoder for `decl`.
    pub fn new(decl: TableDecl) -> Self {
        let mut fields: Vec<Box<str>> = vec![decl.event_time.as_str().into()];
        let mut slot = |name: &str| match fields.iter().position(|f| &**f == name) {
            Some(i) => i,
            None => {
                fields.push(name.into());
                fields.len() - 1
            }
        };
        let dim_slots = decl.dimensions.iter().map(|d| slot(&d.field)).collect();
        let measure_slots = decl
            .measures
            .iter()
            .map(|m| {
                m.field
                    .as_deref()
                    .filter(|_| m.agg != Agg::Count)
                    .map(&mut slot)
            })
            .collect();
        Self {
            decl,
            fields,
            dim_slots,
            measure_slots,
        }
    }

    /// The declaration.
    pub fn decl(&self) -> &TableDecl {
        &self.decl
    }

    /// Decode one record payload.
    pub fn decode(&self, payload: &[u8], window: TimeWindow) -> Result<DecodedEvent, RejectReason> {
        self.decode_ref(payload, window).map(|e| e.to_owned_event())
    }

    /// Decode one record payload, borrowing its strings.
    pub fn decode_ref<'p>(
        &self,
        payload: &'p [u8],
        window: TimeWindow,
    ) -> Result<EventRef<'p>, RejectReason> {
        let values = self.fields(payload)?;
        let get = |slot: usize| values[slot].as_ref().filter(|v| !matches!(v, Scalar::Null));

        let ts_field = &self.decl.event_time;
        let ts_ms = match get(0) {
            None => return Err(RejectReason::MissingField(ts_field.clone())),
            Some(v) => parse_time(ts_field, v)?,
        };
        if ts_ms < window.min_ms {
            return Err(RejectReason::TooOld(format_ms(ts_ms)));
        }
        if ts_ms > window.max_ms {
            return Err(RejectReason::TooFarInFuture(format_ms(ts_ms)));
        }

        let mut dims = SmallVec::with_capacity(self.decl.dimensions.len());
        for (d, &slot) in self.decl.dimensions.iter().zip(&self.dim_slots) {
            let dv = match get(slot) {
                None if d.optional => DimRef::Null,
                None => return Err(RejectReason::MissingField(d.field.clone())),
                Some(v) => match (d.ty, v) {
                    (DimType::Long, Scalar::Number(n)) => DimRef::Long(long(&d.field, n)?),
                    (DimType::String, Scalar::Str(s)) => DimRef::Str(s.clone()),
                    (DimType::Boolean, Scalar::Bool(b)) => DimRef::Bool(*b),
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

        let mut out = SmallVec::with_capacity(self.decl.measures.len());
        for (m, slot) in self.decl.measures.iter().zip(&self.measure_slots) {
            let Some(slot) = *slot else {
                out.push(None);
                continue;
            };
            let field = &*self.fields[slot];
            let mv = match get(slot) {
                None if m.optional => None,
                None => return Err(RejectReason::MissingField(field.to_string())),
                Some(v) => Some(match (m.ty, v) {
                    (MeasureType::Long, Scalar::Number(n)) => {
                        MeasureValue::Long(Some(long(field, n)?))
                    }
                    (MeasureType::Double, Scalar::Number(n)) => MeasureValue::Double(n.as_f64()),
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
            out.push(mv);
        }

        let minute_ms = ts_ms.div_euclid(MINUTE_MS) * MINUTE_MS;
        Ok(EventRef {
            dims,
            ts_micros: minute_ms * 1000,
            values: out,
        })
    }

    /// The declared fields of the payload's top-level object, by slot,
    /// refusing a field given twice (JSON parsers differ on which one
    /// counts, so no choice would be exact). Every other field is parsed as
    /// strictly (nesting depth, number range, UTF-8) but not kept: what is
    /// accepted and rejected is exactly what a full parse accepts.
    fn fields<'p>(&self, payload: &'p [u8]) -> Result<Slots<'p>, RejectReason> {
        let seed = ObjectSeed { decoder: self };
        let mut de = serde_json::Deserializer::from_slice(payload);
        let parsed = serde::de::DeserializeSeed::deserialize(seed, &mut de)
            .and_then(|fields| de.end().map(|()| fields))
            .map_err(|e| RejectReason::NotJson(e.to_string()))?;
        match parsed {
            Object {
                duplicate: Some(k), ..
            } => Err(RejectReason::DuplicateField(k)),
            Object { fields, .. } => Ok(fields),
        }
    }
}

/// A declared field's value, borrowed from the payload where it can be.
#[derive(Debug)]
enum Scalar<'p> {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    Str(Cow<'p, str>),
    Array,
    Object,
}

/// The declared fields' values, by slot.
type Slots<'p> = SmallVec<[Option<Scalar<'p>>; 16]>;

/// The top-level object: the declared fields' values, and the first field
/// given twice.
struct Object<'p> {
    fields: Slots<'p>,
    duplicate: Option<String>,
}

struct ObjectSeed<'a> {
    decoder: &'a Decoder,
}

impl<'de> serde::de::DeserializeSeed<'de> for ObjectSeed<'_> {
    type Value = Object<'de>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for ObjectSeed<'_> {
    type Value = Object<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Object<'de>, A::Error> {
        let fields = &self.decoder.fields;
        let mut values: Slots<'de> = (0..fields.len()).map(|_| None).collect();
        // Keys seen: a few are searched in a list, many in a set (an event
        // of a million keys must not take a million squared comparisons).
        let mut seen: SmallVec<[Cow<'de, str>; 16]> = SmallVec::new();
        let mut many: Option<std::collections::HashSet<Cow<'de, str>>> = None;
        let mut duplicate = None;
        while let Some(Key(key)) = map.next_key()? {
            match fields.iter().position(|f| **f == *key) {
                Some(slot) => values[slot] = Some(map.next_value()?),
                None => {
                    map.next_value::<Skip>()?;
                }
            }
            if duplicate.is_none() {
                let repeated = match &mut many {
                    Some(set) => !set.insert(key.clone()),
                    None if seen.contains(&key) => true,
                    None => {
                        seen.push(key.clone());
                        if seen.len() > 32 {
                            many = Some(seen.drain(..).collect());
                        }
                        false
                    }
                };
                if repeated {
                    duplicate = Some(key.into_owned());
                }
            }
        }
        Ok(Object {
            fields: values,
            duplicate,
        })
    }
}

/// An object key, borrowed from the payload unless it holds escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> serde::Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Scalar<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_unit<E>(self) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Null)
            }
            fn visit_none<E>(self) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Null)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Number(v.into()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Number(v.into()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Scalar<'de>, E> {
                // As serde_json's own values hold it (it never parses a
                // number that is not finite).
                Ok(serde_json::Number::from_f64(v).map_or(Scalar::Null, Scalar::Number))
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Str(Cow::Owned(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Str(Cow::Owned(v)))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                a: A,
            ) -> Result<Scalar<'de>, A::Error> {
                Skip::seq(a).map(|_| Scalar::Array)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                a: A,
            ) -> Result<Scalar<'de>, A::Error> {
                Skip::map(a).map(|_| Scalar::Object)
            }
        }
        d.deserialize_any(V)
    }
}

/// Any JSON value, parsed as a full parse would (so the same values are
/// refused) and dropped. Unlike serde's `IgnoredAny`, which serde_json
/// skips without a depth limit or a number range check.
struct Skip;

impl Skip {
    fn seq<'de, A: serde::de::SeqAccess<'de>>(mut a: A) -> Result<Skip, A::Error> {
        while a.next_element::<Skip>()?.is_some() {}
        Ok(Skip)
    }

    fn map<'de, A: serde::de::MapAccess<'de>>(mut a: A) -> Result<Skip, A::Error> {
        while a.next_entry::<Skip, Skip>()?.is_some() {}
        Ok(Skip)
    }
}

impl<'de> serde::Deserialize<'de> for Skip {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Skip;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_unit<E>(self) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_none<E>(self) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_str<E>(self, _: &str) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, a: A) -> Result<Skip, A::Error> {
                Skip::seq(a)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, a: A) -> Result<Skip, A::Error> {
                Skip::map(a)
            }
        }
        d.deserialize_any(V)
    }
}

/// A JSON number as a long, exactly: `12`, `-0`, and integral forms such as
/// `1.2e3` up to 2^53 (where every integer is a double); a larger number is
/// out of range, a fraction is not an integer.
fn long(field: &str, n: &serde_json::Number) -> Result<i64, RejectReason> {
    const EXACT: f64 = 9_007_199_254_740_992.0;
    if let Some(v) = n.as_i64() {
        return Ok(v);
    }
    match n.as_f64() {
        Some(f) if !n.is_u64() && f.fract() == 0.0 && f.abs() <= EXACT => Ok(f as i64),
        Some(f) if !n.is_u64() && f.fract() != 0.0 => Err(RejectReason::WrongType {
            field: field.to_string(),
            expected: "an integer",
        }),
        _ => Err(RejectReason::OutOfRange {
            field: field.to_string(),
            value: n.to_string(),
        }),
    }
}

fn parse_time(field: &str, v: &Scalar<'_>) -> Result<i64, RejectReason> {
    match v {
        Scalar::Number(n) => n.as_i64().ok_or_else(|| {
            RejectReason::BadTime(format!("`{field}` = {n} is not integer milliseconds"))
        }),
        Scalar::Str(s) => DateTime::parse_from_rfc3339(s)
            .map(|t| t.timestamp_millis())
            .map_err(|e| RejectReason::BadTime(format!("`{field}` = {s:?}: {e}"))),
        other => Err(RejectReason::BadTime(format!(
            "`{field}` is {}, expected epoch milliseconds or an RFC 3339 string",
            json_type(other)
        ))),
    }
}

fn json_type(v: &Scalar<'_>) -> &'static str {
    match v {
        Scalar::Null => "null",
        Scalar::Bool(_) => "a boolean",
        Scalar::Number(_) => "a number",
        Scalar::Str(_) => "a string",
        Scalar::Array => "an array",
        Scalar::Object => "an object",
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

    use proptest::prelude::*;
    use serde_json::Value;

    use super::*;
    use crate::rows::DimValue;

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
    fn numbers_and_fields_at_the_edges_are_exact_or_rejected() {
        let d = decoder();
        let w = window();
        let with = |field: &str, raw: &str| {
            let base = r#"{"ts":1795771230123,"account_id":1,"zone_id":2,"colo":"a","product":"p","bytes":1,"cpu_ms":1,"ttfb_ms":1}"#;
            let mut v: serde_json::Map<String, Value> = serde_json::from_str(base).unwrap();
            v.remove(field);
            let body = serde_json::to_string(&v).unwrap();
            format!("{{\"{field}\":{raw},{}", &body[1..])
        };
        let bytes = |raw: &str| d.decode(with("bytes", raw).as_bytes(), w);
        let value = |e: DecodedEvent| e.values[1];
        assert_eq!(
            value(bytes("-0").unwrap()),
            Some(MeasureValue::Long(Some(0)))
        );
        assert_eq!(
            value(bytes("1.2e3").unwrap()),
            Some(MeasureValue::Long(Some(1200)))
        );
        assert_eq!(
            value(bytes("9223372036854775807").unwrap()),
            Some(MeasureValue::Long(Some(i64::MAX)))
        );
        assert_eq!(
            value(bytes("-9223372036854775808").unwrap()),
            Some(MeasureValue::Long(Some(i64::MIN)))
        );
        for raw in [
            "9223372036854775808",
            "-9223372036854775809",
            "1e19",
            "1e300",
        ] {
            assert_eq!(bytes(raw).unwrap_err().as_label(), "out_of_range", "{raw}");
        }
        assert_eq!(bytes("1.5").unwrap_err().as_label(), "wrong_type");
        assert_eq!(bytes("1e400").unwrap_err().as_label(), "not_json");
        assert_eq!(
            d.decode(
                format!("{},\"bytes\":2}}", with("bytes", "1").trim_end_matches('}')).as_bytes(),
                w
            )
            .unwrap_err(),
            RejectReason::DuplicateField("bytes".into())
        );
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(bytes(&deep).unwrap_err().as_label(), "not_json");
        assert_eq!(
            d.decode(b"\xff\xfe{", w).unwrap_err().as_label(),
            "not_json"
        );
        let ts = |raw: &str| d.decode(with("ts", raw).as_bytes(), w);
        for raw in ["9223372036854775807", "-9223372036854775808"] {
            assert!(
                matches!(
                    ts(raw).unwrap_err().as_label(),
                    "too_old" | "too_far_in_future"
                ),
                "{raw}"
            );
        }
        assert_eq!(
            ts("9223372036854775808").unwrap_err().as_label(),
            "bad_time"
        );
        // Odd but valid offsets name the same instant.
        let east = ts(r#""2026-11-27T23:20:30.123+14:00""#).unwrap();
        let west = ts(r#""2026-11-26T09:21:30.123-23:59""#).unwrap();
        assert_eq!(east.key, west.key);
        let big = "x".repeat(10 << 20);
        let e = d
            .decode(with("colo", &format!("\"{big}\"")).as_bytes(), w)
            .unwrap();
        assert_eq!(e.key.dims[2], DimValue::Str(big.into()));
    }

    /// Many keys: each checked against the others in a set past a few, as
    /// a full parse into a map would find the first repeated one.
    #[test]
    fn a_key_given_twice_among_many_is_found() {
        let d = decoder();
        let base = r#""ts":1795771230123,"account_id":1,"zone_id":2,"colo":"a","product":"p","bytes":1,"cpu_ms":1,"ttfb_ms":1"#;
        for n in [10, 40, 100_000] {
            let extra: Vec<String> = (0..n).map(|i| format!("\"k{i}\":{i}")).collect();
            let ok = format!("{{{base},{}}}", extra.join(","));
            assert!(d.decode(ok.as_bytes(), window()).is_ok(), "{n} keys");
            for again in ["k3", "bytes"] {
                let twice = format!("{{{base},{},\"{again}\":1,\"k0\":2}}", extra.join(","));
                let p = twice.as_bytes();
                assert_eq!(
                    d.decode(p, window()),
                    Err(RejectReason::DuplicateField(again.into())),
                    "{n} keys"
                );
                assert_eq!(
                    d.decode(p, window()),
                    reference::decode(d.decl(), p, window())
                );
            }
        }
    }

    #[test]
    fn any_utf8_string_is_a_dimension() {
        let d = decoder();
        let e = d
            .decode(r#"{"ts":1795771230123,"account_id":1,"zone_id":2,"colo":"Zürich 🏔","product":"","bytes":1,"cpu_ms":1,"ttfb_ms":1}"#.as_bytes(), window())
            .unwrap();
        assert_eq!(e.key.dims[2], DimValue::Str("Zürich 🏔".into()));
    }

    /// The decoder as it was, over a full parse into `serde_json::Value`:
    /// the reference the field-by-field decoder must agree with exactly.
    mod reference {
        use serde_json::Value;

        use super::super::*;
        use crate::rows::DimValue;

        pub fn decode(
            decl: &TableDecl,
            payload: &[u8],
            window: TimeWindow,
        ) -> Result<DecodedEvent, RejectReason> {
            let obj = object(payload)?;
            let get = |field: &str| obj.get(field).filter(|v| !v.is_null());
            let ts_field = &decl.event_time;
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
            let mut dims = Vec::new();
            for d in &decl.dimensions {
                dims.push(match get(&d.field) {
                    None if d.optional => DimValue::Null,
                    None => return Err(RejectReason::MissingField(d.field.clone())),
                    Some(v) => match (d.ty, v) {
                        (DimType::Long, Value::Number(n)) => DimValue::Long(long(&d.field, n)?),
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
                });
            }
            let mut values = Vec::new();
            for m in &decl.measures {
                let Some(field) = m.field.as_deref().filter(|_| m.agg != Agg::Count) else {
                    values.push(None);
                    continue;
                };
                values.push(match get(field) {
                    None if m.optional => None,
                    None => return Err(RejectReason::MissingField(field.to_string())),
                    Some(v) => Some(match (m.ty, v) {
                        (MeasureType::Long, Value::Number(n)) => {
                            MeasureValue::Long(Some(long(field, n)?))
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
                });
            }
            Ok(DecodedEvent {
                key: RowKey {
                    dims,
                    ts_micros: ts_ms.div_euclid(MINUTE_MS) * MINUTE_MS * 1000,
                },
                values,
            })
        }

        fn object(payload: &[u8]) -> Result<serde_json::Map<String, Value>, RejectReason> {
            struct Fields(Vec<(String, Value)>);
            impl<'de> serde::Deserialize<'de> for Fields {
                fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                    struct Visit;
                    impl<'de> serde::de::Visitor<'de> for Visit {
                        type Value = Fields;
                        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                            f.write_str("a JSON object")
                        }
                        fn visit_map<A: serde::de::MapAccess<'de>>(
                            self,
                            mut map: A,
                        ) -> Result<Fields, A::Error> {
                            let mut fields = Vec::new();
                            while let Some(entry) = map.next_entry()? {
                                fields.push(entry);
                            }
                            Ok(Fields(fields))
                        }
                    }
                    d.deserialize_map(Visit)
                }
            }
            let Fields(fields) = serde_json::from_slice(payload)
                .map_err(|e| RejectReason::NotJson(e.to_string()))?;
            let mut obj = serde_json::Map::new();
            for (k, v) in fields {
                if obj.contains_key(&k) {
                    return Err(RejectReason::DuplicateField(k));
                }
                obj.insert(k, v);
            }
            Ok(obj)
        }

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
                    match other {
                        Value::Null => "null",
                        Value::Bool(_) => "a boolean",
                        Value::Number(_) => "a number",
                        Value::String(_) => "a string",
                        Value::Array(_) => "an array",
                        Value::Object(_) => "an object",
                    }
                ))),
            }
        }
    }

    /// JSON-ish payloads: objects of declared and other fields (repeated
    /// now and then) holding any kind of value (nested past serde_json's
    /// depth limit, numbers past every range, strings with escapes and
    /// bytes that are not UTF-8), cut short or left whole.
    fn payload() -> impl Strategy<Value = Vec<u8>> {
        let key = prop::sample::select(vec![
            "ts",
            "account_id",
            "zone_id",
            "colo",
            "product",
            "bytes",
            "cpu_ms",
            "ttfb_ms",
            "extra",
            "col\\u006f",
            "b\\\"y",
        ]);
        let leaf = prop::sample::select(vec![
            "null",
            "true",
            "false",
            "0",
            "-0",
            "1",
            "-1",
            "7",
            "1795771230123",
            "\"2026-11-27T09:20:30.123Z\"",
            "\"2026-11-27T12:59:00+00:00\"",
            "\"AMS\"",
            "\"Z\\u00fcrich\"",
            "\"a\\\"b\"",
            "\"\\ud800\"",
            "1.5",
            "1.2e3",
            "1e19",
            "1e300",
            "1e400",
            "-1e400",
            "9223372036854775807",
            "9223372036854775808",
            "-9223372036854775809",
            "18446744073709551616",
            "1795771230123.0",
            "\"\"",
            "\"@ff\"",
            "[]",
            "{}",
            "[1,{\"a\":[2]}]",
            "{\"ts\":1,\"ts\":2}",
            "nul",
            "01",
            "+1",
        ]);
        let value = (leaf, 0usize..3, 0usize..200).prop_map(|(leaf, wrap, depth)| match wrap {
            0 => leaf.as_bytes().to_vec(),
            1 => format!("{}{leaf}{}", "[".repeat(depth), "]".repeat(depth)).into_bytes(),
            _ => format!("{}{leaf}{}", "{\"k\":".repeat(depth), "}".repeat(depth)).into_bytes(),
        });
        (
            prop::collection::vec((key, value), 0..12),
            prop::option::of(any::<prop::sample::Index>()),
            prop::sample::select(vec!["", " ", "x", "}", ",", "\n"]),
        )
            .prop_map(|(fields, cut, tail)| {
                let mut p = b"{".to_vec();
                for (i, (k, v)) in fields.iter().enumerate() {
                    if i > 0 {
                        p.push(b',');
                    }
                    p.extend_from_slice(format!("\"{k}\":").as_bytes());
                    p.extend_from_slice(v);
                }
                p.push(b'}');
                p.extend_from_slice(tail.as_bytes());
                // Bytes that are not UTF-8, inside a string.
                while let Some(at) = p.windows(3).position(|w| w == b"@ff") {
                    p.splice(at..at + 3, [0xff]);
                }
                if let Some(cut) = cut {
                    p.truncate(cut.index(p.len() + 1));
                }
                p
            })
    }

    /// A valid event with a few of its fields replaced, added or given
    /// twice: mostly accepted, or rejected for one reason.
    fn near_valid() -> impl Strategy<Value = Vec<u8>> {
        let base = [
            ("ts", "1795771230123"),
            ("account_id", "1"),
            ("zone_id", "2"),
            ("colo", "\"AMS\""),
            ("product", "\"cdn\""),
            ("bytes", "10"),
            ("cpu_ms", "3"),
            ("ttfb_ms", "7"),
        ];
        prop::collection::vec((0usize..10, payload()), 0..3).prop_map(move |edits| {
            let mut fields: Vec<(String, Vec<u8>)> = base
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect();
            for (at, other) in edits {
                // The first field of a generated object stands in for one.
                let text = String::from_utf8_lossy(&other).into_owned();
                let value = text
                    .strip_prefix('{')
                    .and_then(|t| t.split_once(':'))
                    .map(|(_, v)| v.split(',').next().unwrap_or("").to_string())
                    .unwrap_or(text);
                match fields.get_mut(at) {
                    Some(f) if at % 3 != 0 => f.1 = value.into_bytes(),
                    Some(f) => {
                        let k = f.0.clone();
                        fields.push((k, value.into_bytes()));
                    }
                    None => fields.push(("extra".into(), value.into_bytes())),
                }
            }
            let mut p = b"{".to_vec();
            for (i, (k, v)) in fields.iter().enumerate() {
                if i > 0 {
                    p.push(b',');
                }
                p.extend_from_slice(format!("\"{k}\":").as_bytes());
                p.extend_from_slice(v);
            }
            p.push(b'}');
            p
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// The decoder accepts and rejects exactly as a full parse did,
        /// with the same values and the same reasons.
        #[test]
        fn decoding_field_by_field_agrees_with_a_full_parse(
            p in prop_oneof![
                payload(),
                near_valid(),
                prop::collection::vec(any::<u8>(), 0..64),
            ],
        ) {
            let d = decoder();
            let w = window();
            proptest::prop_assert_eq!(d.decode(&p, w), reference::decode(d.decl(), &p, w));
        }
    }
}
