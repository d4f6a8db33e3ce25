//! Event times: epoch milliseconds, or RFC 3339 text. The common form of
//! the text (`2026-11-30T12:34:56.789Z`) is read by hand; anything else
//! goes to chrono's parser, so what is accepted, its value and the reason
//! a time is refused are chrono's.

use chrono::{DateTime, NaiveDate};

use super::RejectReason;
use super::object::Scalar;

/// The event time of `field` in milliseconds since the epoch.
pub(super) fn parse_time(field: &str, v: &Scalar<'_>) -> Result<i64, RejectReason> {
    match v {
        Scalar::Number(n) => n.as_i64().ok_or_else(|| {
            RejectReason::BadTime(format!("`{field}` = {n} is not integer milliseconds"))
        }),
        Scalar::Str(s) => match utc_millis(s.as_bytes()) {
            Some(ms) => Ok(ms),
            None => DateTime::parse_from_rfc3339(s)
                .map(|t| t.timestamp_millis())
                .map_err(|e| RejectReason::BadTime(format!("`{field}` = {s:?}: {e}"))),
        },
        other => Err(RejectReason::BadTime(format!(
            "`{field}` is {}, expected epoch milliseconds or an RFC 3339 string",
            super::json_type(other)
        ))),
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.f…]Z` (one to nine fraction digits) as
/// milliseconds, or `None` for any other text, a date that does not exist
/// or a leap second: chrono decides those.
pub(super) fn utc_millis(s: &[u8]) -> Option<i64> {
    if s.len() < 20 || s.len() > 30 || *s.last()? != b'Z' {
        return None;
    }
    let digits = |range: std::ops::Range<usize>| -> Option<u32> {
        s[range].iter().try_fold(0u32, |acc, &b| {
            b.is_ascii_digit().then(|| acc * 10 + u32::from(b - b'0'))
        })
    };
    let punctuated =
        s[4] == b'-' && s[7] == b'-' && s[10] == b'T' && s[13] == b':' && s[16] == b':';
    if !punctuated {
        return None;
    }
    let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let (hour, minute, second) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let millis = match &s[19..s.len() - 1] {
        [] => 0,
        [b'.', fraction @ ..] if !fraction.is_empty() && fraction.len() <= 9 => {
            let mut ms = 0;
            for (i, &b) in fraction.iter().enumerate() {
                if !b.is_ascii_digit() {
                    return None;
                }
                if i < 3 {
                    ms = ms * 10 + i64::from(b - b'0');
                }
            }
            ms * 10i64.pow(3u32.saturating_sub(fraction.len() as u32))
        }
        _ => return None,
    };
    let date = NaiveDate::from_ymd_opt(year as i32, month, day)?;
    let seconds = date
        .and_hms_opt(hour, minute, second)?
        .and_utc()
        .timestamp();
    Some(seconds * 1000 + millis)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn chrono_millis(s: &str) -> Option<i64> {
        DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.timestamp_millis())
    }

    #[test]
    fn the_common_form_is_read_by_hand() {
        assert_eq!(
            utc_millis(b"2026-11-30T12:34:56.789Z"),
            chrono_millis("2026-11-30T12:34:56.789Z")
        );
        assert_eq!(utc_millis(b"1969-12-31T23:59:59.999Z"), Some(-1));
        assert_eq!(
            utc_millis(b"2024-02-29T00:00:00Z"),
            chrono_millis("2024-02-29T00:00:00Z")
        );
        assert_eq!(
            utc_millis(b"2026-11-30T12:34:56.7Z"),
            Some(chrono_millis("2026-11-30T12:34:56.7Z").unwrap())
        );
        // Left to chrono: offsets, other separators, leap seconds, dates
        // that do not exist.
        for other in [
            "2026-11-30T12:34:56+00:00",
            "2026-11-30t12:34:56z",
            "2026-11-30 12:34:56Z",
            "2016-12-31T23:59:60Z",
            "2025-02-29T00:00:00Z",
            "2026-11-30T12:34:56.Z",
            "2026-11-30T12:34:56.1234567890Z",
            "+2026-11-30T12:34:56Z",
        ] {
            assert_eq!(utc_millis(other.as_bytes()), None, "{other}");
        }
    }

    /// Text near the common form: its pieces varied one character at a time.
    fn near_rfc3339() -> impl Strategy<Value = String> {
        let piece = |choices: Vec<&'static str>| prop::sample::select(choices);
        (
            piece(vec![
                "2026", "1969", "0000", "9999", "2024", "2025", "20x6", "202",
            ]),
            piece(vec!["-", "/", ""]),
            piece(vec!["01", "02", "12", "13", "00", "1"]),
            piece(vec!["-"]),
            piece(vec!["01", "28", "29", "30", "31", "32", "00"]),
            piece(vec!["T", "t", " ", "X"]),
            piece(vec!["00", "23", "24", "9"]),
            piece(vec![":00", ":59", ":60", ":5"]),
            piece(vec![":00", ":59", ":60", ":61", ""]),
            piece(vec![
                "",
                ".",
                ".1",
                ".12",
                ".123",
                ".1234",
                ".999999999",
                ".1234567890",
                ".a",
            ]),
            piece(vec![
                "Z", "z", "+00:00", "-01:30", "+23:59", "+24:00", "", "ZZ",
            ]),
        )
            .prop_map(|(y, s1, m, s2, d, t, h, mi, sec, f, z)| {
                format!("{y}{s1}{m}{s2}{d}{t}{h}{mi}{sec}{f}{z}")
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(5000))]

        /// What the hand-read form accepts, chrono accepts with the same
        /// value; what it leaves, chrono decides.
        #[test]
        fn the_hand_read_form_agrees_with_chrono(s in prop_oneof![near_rfc3339(), "\\PC{0,32}"]) {
            if let Some(ms) = utc_millis(s.as_bytes()) {
                prop_assert_eq!(Some(ms), chrono_millis(&s), "{}", s);
            }
        }
    }
}
