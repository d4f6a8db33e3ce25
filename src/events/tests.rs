use std::time::Duration;

use proptest::prelude::*;
use serde_json::Value;

use super::*;
use crate::rows::DimValue;

/// The JSON fields the example declaration reads.
pub(crate) const EXAMPLE_FIELDS: [&str; 8] = [
    "ts",
    "account_id",
    "zone_id",
    "colo",
    "product",
    "bytes",
    "cpu_ms",
    "ttfb_ms",
];

fn decoder() -> Decoder {
    Decoder::new(TableDecl::example())
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
        let Fields(fields) =
            serde_json::from_slice(payload).map_err(|e| RejectReason::NotJson(e.to_string()))?;
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
    let key = prop::sample::select(
        [
            EXAMPLE_FIELDS.as_slice(),
            &["extra", "col\\u006f", "b\\\"y"],
        ]
        .concat(),
    );
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

/// Flat objects as producers write them, spaced every way JSON allows,
/// and (`noisy`) their near misses: number tokens that are not numbers,
/// strings and keys with escapes and control characters, nested and
/// misspelt values, a trailing comma, bytes after the object. Keys
/// declared, undeclared and repeated.
fn flat_object(noisy: bool) -> impl Strategy<Value = Vec<u8>> {
    let space = prop::sample::select(vec!["", "", " ", "\n", "\t ", "\r\n  "]);
    let clean_key =
        prop::sample::select([EXAMPLE_FIELDS.as_slice(), &["extra", "x", "Zürich"]].concat());
    let clean_value = prop_oneof![
        2 => "-?(0|[1-9][0-9]{0,21})(\\.[0-9]{1,5})?([eE][+-]?[0-9]{1,3})?",
        2 => "\"[a-zA-Z0-9 üé€:.-]{0,12}\"",
        1 => prop::sample::select(vec![
            "true",
            "false",
            "null",
            "1795771230123",
            "\"2026-11-27T09:20:30.123Z\"",
            "18446744073709551615",
            "18446744073709551616",
            "99999999999999999999",
            "-9223372036854775808",
            "-9223372036854775809",
            "-18446744073709551615",
            "-0",
        ])
        .prop_map(str::to_string),
    ];
    let (key, value, tail, trailing_comma) = if noisy {
        (
            prop_oneof![
                4 => clean_key,
                1 => prop::sample::select(vec!["a\\u0062", "tab\there"]),
            ]
            .boxed(),
            prop_oneof![
                4 => clean_value,
                1 => "-?[0-9]{1,22}(\\.[0-9]{0,5})?([eE][+-]?[0-9]{0,3})?",
                1 => "[0-9.eE+-]{1,6}",
                1 => "\"[a-z]{0,3}(\\\\[nu\"]|\t)[a-z]{0,3}\"",
                1 => prop::sample::select(vec!["tru", "nulll", "[]", "{}", "\""])
                    .prop_map(str::to_string),
            ]
            .boxed(),
            prop::sample::select(vec!["", " \n", "x", ",", "}", "{"]).boxed(),
            prop::bool::weighted(0.2).boxed(),
        )
    } else {
        (
            clean_key.boxed(),
            clean_value.boxed(),
            prop::sample::select(vec!["", " \n"]).boxed(),
            Just(false).boxed(),
        )
    };
    (
        prop::collection::vec((key, value, space.clone(), space.clone()), 0..12),
        space,
        tail,
        trailing_comma,
    )
        .prop_map(|(fields, end, tail, trailing_comma)| {
            let mut p = String::from("{");
            for (i, (k, v, before, after)) in fields.iter().enumerate() {
                if i > 0 {
                    p.push(',');
                }
                p.push_str(&format!("{before}\"{k}\"{after}:{before}{v}{after}"));
            }
            if trailing_comma {
                p.push(',');
            }
            p.push_str(&format!("{end}}}{tail}"));
            p.into_bytes()
        })
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4000))]

    /// Where the one-pass reader reads a payload, it reads the values and
    /// the repeated key serde_json reads; where it does not, it leaves the
    /// slots empty for serde_json to fill. Either way the decoder accepts
    /// and rejects as a full parse does.
    #[test]
    fn the_one_pass_reader_agrees_with_serde_json(
        p in prop_oneof![flat_object(false), flat_object(true)],
    ) {
        let d = decoder();
        let empty = || -> Slots { (0..d.fields.len()).map(|_| None).collect() };
        let (mut fast, mut slow) = (empty(), empty());
        match flat::fields(&p, &d.fields, &mut fast) {
            Some(duplicate) => {
                proptest::prop_assert_eq!(Ok(duplicate), d.parse_fields(&p, &mut slow));
                proptest::prop_assert_eq!(format!("{fast:?}"), format!("{slow:?}"));
            }
            None => proptest::prop_assert!(fast.iter().all(Option::is_none)),
        }
        let w = window();
        proptest::prop_assert_eq!(d.decode(&p, w), reference::decode(d.decl(), &p, w));
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(500))]

    /// Records decoded one after another into one scratch (as a shard
    /// decodes a chunk) decode as each does alone: nothing of a record,
    /// accepted or rejected, is left for the next.
    #[test]
    fn a_scratch_kept_between_records_leaves_nothing_behind(
        ps in prop::collection::vec(
            prop_oneof![
                flat_object(false),
                flat_object(true),
                payload(),
                near_valid(),
                prop::collection::vec(any::<u8>(), 0..64),
            ],
            1..12,
        ),
    ) {
        let (d, w) = (decoder(), window());
        let mut scratch = Scratch::default();
        for p in &ps {
            let kept = d.decode_into(p, w, &mut scratch).cloned();
            proptest::prop_assert_eq!(kept, d.decode_ref(p, w));
        }
    }
}

/// An event as producers write it is read by the one pass, not by the
/// serde_json fallback.
#[test]
fn common_events_take_the_one_pass() {
    let d = decoder();
    let mut read: Vec<&str> = (0..d.fields.len()).map(|i| d.fields.name(i)).collect();
    read.sort_unstable();
    let mut listed = EXAMPLE_FIELDS;
    listed.sort_unstable();
    assert_eq!(read, listed, "the example declaration reads other fields");
    let mut values: Slots = (0..d.fields.len()).map(|_| None).collect();
    let p = br#"{ "ts": 1795771230123, "account_id": 1, "zone_id": -2, "colo": "AMS", "product": "cdn", "bytes": 10.5, "cpu_ms": 3e2, "ttfb_ms": null, "extra": true }"#;
    assert_eq!(flat::fields(p, &d.fields, &mut values), Some(None));
    assert_eq!(
        format!("{:?}", values[0]),
        "Some(Number(Number(1795771230123)))"
    );
    let p = br#"{"ts":1,"colo":"a","colo":"b"}"#;
    let mut values: Slots = (0..d.fields.len()).map(|_| None).collect();
    assert_eq!(
        flat::fields(p, &d.fields, &mut values),
        Some(Some("colo".to_string()))
    );
    let p = br#"{"ts":1,"colo":"a\"b"}"#;
    let mut values: Slots = (0..d.fields.len()).map(|_| None).collect();
    assert_eq!(flat::fields(p, &d.fields, &mut values), None);
}

/// Every declared name is found at its own slot, however many there are
/// and however their buckets collide; no other key is found.
#[test]
fn field_names_are_found_by_slot() {
    let names: Vec<Box<str>> = (0..300)
        .map(|i| format!("f{i}").into())
        .chain(["", "ts", "t", "zone_id", "Zürich"].map(Box::from))
        .collect();
    let fields = flat::Fields::new(names.clone());
    for (slot, name) in names.iter().enumerate() {
        assert_eq!(fields.slot(name), Some(slot), "{name:?}");
    }
    for other in ["f300", "f", "s", "zone_ie", "tz", "Zurich", "f1 "] {
        assert_eq!(fields.slot(other), None, "{other:?}");
    }
}
