//! Injected time. Everything that asks "what time is it" takes a [`Clock`],
//! so tests can move time instead of waiting for it.

use std::fmt::Debug;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A source of the current time.
pub trait Clock: Debug + Send + Sync {
    /// Now, in UTC.
    fn now(&self) -> DateTime<Utc>;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that only moves when told to (tests).
#[derive(Debug)]
pub struct ManualClock(Mutex<DateTime<Utc>>);

impl ManualClock {
    /// A clock stopped at `at`.
    pub fn new(at: DateTime<Utc>) -> Self {
        Self(Mutex::new(at))
    }

    /// Move the clock.
    pub fn set(&self, at: DateTime<Utc>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = at;
    }

    /// Move the clock forward.
    pub fn advance(&self, by: chrono::Duration) {
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *t += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Parse a point in time as the command line and job files give it:
/// RFC 3339, or a date (`YYYY-MM-DD`, midnight UTC).
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .map(|d| d.and_time(chrono::NaiveTime::MIN).and_utc())
        .map_err(|_| format!("`{s}` is neither RFC 3339 nor YYYY-MM-DD"))
}

/// A length of time written as people write it (`90s`, `1h`, `5d`): parsed
/// and shown that way on the command line, in job files and in `--help`'s
/// defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Span(#[serde(with = "humantime_serde")] pub std::time::Duration);

impl Span {
    /// `secs` seconds.
    pub const fn from_secs(secs: u64) -> Self {
        Self(std::time::Duration::from_secs(secs))
    }

    /// The same length as a chrono duration (saturating).
    pub fn chrono(self) -> chrono::Duration {
        chrono::Duration::from_std(self.0).unwrap_or(chrono::Duration::MAX)
    }
}

impl std::ops::Deref for Span {
    type Target = std::time::Duration;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl From<std::time::Duration> for Span {
    fn from(d: std::time::Duration) -> Self {
        Self(d)
    }
}

impl std::fmt::Display for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl std::str::FromStr for Span {
    type Err = humantime::DurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(s).map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_read_and_print_as_people_write_them() {
        let s: Span = "5d".parse().unwrap();
        assert_eq!(s, Span::from_secs(5 * 86_400));
        assert_eq!(s.to_string(), "5days");
        assert_eq!(s.to_string().parse::<Span>().unwrap(), s);
        let j: Span = toml::from_str::<toml::Value>("x = \"90s\"").unwrap()["x"]
            .clone()
            .try_into()
            .unwrap();
        assert_eq!(j, Span::from_secs(90));
        assert!("soon".parse::<Span>().is_err());
    }

    #[test]
    fn times_read_as_rfc3339_or_dates() {
        assert_eq!(
            parse_time("2026-03-01").unwrap(),
            parse_time("2026-03-01T00:00:00Z").unwrap()
        );
        assert!(parse_time("March").unwrap_err().contains("March"));
    }
}
