//! The event core ingest and backfill share: one JSON record (a Kafka
//! message, or a line of a backfill input) becomes a [`DecodedEvent`] (key
//! and measure values) or a [`RejectReason`]. Never panics on input.

mod flat;
mod object;
#[cfg(test)]
pub(crate) mod tests;
mod time;

use std::fmt;

use chrono::{DateTime, Utc};
use smallvec::SmallVec;

use self::object::{ObjectSeed, Scalar, Slots};
use self::time::parse_time;
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

/// What [`Decoder::decode_into`] decodes into: the declared fields' values
/// as read, and the event made of them.
#[derive(Debug, Default)]
pub struct Scratch<'p> {
    slots: Slots<'p>,
    event: EventRef<'p>,
}

/// A decoded event whose strings borrow from its payload: what ingest and
/// backfill aggregate (see [`crate::rows::RowMap::add_event_ref`]).
#[derive(Debug, Clone, PartialEq, Default)]
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
    fields: flat::Fields,
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
            fields: flat::Fields::new(fields),
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
        let mut scratch = Scratch::default();
        self.decode_into(payload, window, &mut scratch)?;
        Ok(scratch.event)
    }

    /// Decode one record payload, borrowing its strings, into `scratch`
    /// (kept between the records of one buffer: an event is then built
    /// where it is read, not moved out of the decoder).
    pub fn decode_into<'s, 'p>(
        &self,
        payload: &'p [u8],
        window: TimeWindow,
        scratch: &'s mut Scratch<'p>,
    ) -> Result<&'s EventRef<'p>, RejectReason> {
        let Scratch {
            slots: values,
            event,
        } = scratch;
        // Every slot empty: the readers fill only the fields they find.
        if values.len() == self.fields.len() {
            values.iter_mut().for_each(|v| *v = None);
        } else {
            values.clear();
            values.resize_with(self.fields.len(), || None);
        }
        self.fields(payload, values)?;
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

        let dims = &mut event.dims;
        dims.clear();
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

        let out = &mut event.values;
        out.clear();
        for (m, slot) in self.decl.measures.iter().zip(&self.measure_slots) {
            let Some(slot) = *slot else {
                out.push(None);
                continue;
            };
            let field = self.fields.name(slot);
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
        event.ts_micros = minute_ms * 1000;
        Ok(event)
    }

    /// The declared fields of the payload's top-level object, by slot,
    /// refusing a field given twice (JSON parsers differ on which one
    /// counts, so no choice would be exact). Every other field is parsed as
    /// strictly (nesting depth, number range, UTF-8) but not kept: what is
    /// accepted and rejected is exactly what a full parse accepts.
    fn fields<'p>(&self, payload: &'p [u8], values: &mut Slots<'p>) -> Result<(), RejectReason> {
        let duplicate = match flat::fields(payload, &self.fields, values) {
            Some(duplicate) => duplicate,
            None => self.parse_fields(payload, values)?,
        };
        match duplicate {
            Some(k) => Err(RejectReason::DuplicateField(k)),
            None => Ok(()),
        }
    }

    /// [`Self::fields`] by serde_json, for any payload: its first key given
    /// twice, or why it is not a JSON object.
    fn parse_fields<'p>(
        &self,
        payload: &'p [u8],
        values: &mut Slots<'p>,
    ) -> Result<Option<String>, RejectReason> {
        let seed = ObjectSeed {
            decoder: self,
            values,
        };
        let mut de = serde_json::Deserializer::from_slice(payload);
        serde::de::DeserializeSeed::deserialize(seed, &mut de)
            .and_then(|duplicate| de.end().map(|()| duplicate))
            .map_err(|e| RejectReason::NotJson(e.to_string()))
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
