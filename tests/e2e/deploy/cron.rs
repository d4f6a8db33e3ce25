//! The job files' cron schedules as systemd OnCalendar= expressions: the
//! conversion, and a cron reading to hold `systemd-analyze calendar` to.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use chrono::{DateTime, Datelike, TimeZone, Timelike, Utc};

use super::{run_ok, system_tool};

/// A cron field's values within `lo..=hi` (`*`, numbers, lists, ranges, steps).
fn cron_values(field: &str, lo: u32, hi: u32) -> BTreeSet<u32> {
    let mut out = BTreeSet::new();
    for part in field.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (r, s.parse().unwrap()),
            None => (part, 1),
        };
        let (a, b) = match range.split_once('-') {
            _ if range == "*" => (lo, hi),
            Some((a, b)) => (a.parse().unwrap(), b.parse().unwrap()),
            None if step > 1 => (range.parse().unwrap(), hi),
            None => (range.parse().unwrap(), range.parse().unwrap()),
        };
        out.extend((a..=b).step_by(step));
    }
    out
}

/// The next `n` times after `base` a 5-field cron schedule fires (UTC).
fn cron_next(cron: &str, base: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
    let f: Vec<&str> = cron.split_whitespace().collect();
    let (min, hour) = (cron_values(f[0], 0, 59), cron_values(f[1], 0, 23));
    let (dom, mon) = (cron_values(f[2], 1, 31), cron_values(f[3], 1, 12));
    let dow: BTreeSet<u32> = cron_values(f[4], 0, 7).iter().map(|d| d % 7).collect();
    let mut t = base.with_second(0).unwrap().with_nanosecond(0).unwrap();
    let mut out = Vec::new();
    while out.len() < n {
        t += chrono::Duration::minutes(1);
        let day_matches = match (f[2] == "*", f[4] == "*") {
            // cron: with both restricted, either one matches.
            (false, false) => {
                dom.contains(&t.day()) || dow.contains(&t.weekday().num_days_from_sunday())
            }
            _ => dom.contains(&t.day()) && dow.contains(&t.weekday().num_days_from_sunday()),
        };
        if min.contains(&t.minute())
            && hour.contains(&t.hour())
            && mon.contains(&t.month())
            && day_matches
        {
            out.push(t);
        }
    }
    out
}

/// The systemd OnCalendar= expression (UTC) of a 5-field cron schedule.
pub(super) fn cron_to_oncalendar(cron: &str) -> String {
    let f: Vec<&str> = cron.split_whitespace().collect();
    assert_eq!(f.len(), 5, "`{cron}` is not a 5-field cron expression");
    assert!(
        f[2] == "*" || f[4] == "*",
        "`{cron}`: cron ORs day of month and day of week, OnCalendar ANDs them"
    );
    let num = |s: &str| {
        s.parse::<u32>()
            .unwrap_or_else(|_| panic!("`{cron}`: `{s}`"))
    };
    let field = |s: &str, first: u32| -> String {
        let parts: Vec<String> = s
            .split(',')
            .map(|p| match (p, p.strip_prefix("*/"), p.split_once('-')) {
                ("*", _, _) => "*".to_string(),
                (_, Some(step), _) => format!("{first:02}/{}", num(step)),
                (_, _, Some((a, b))) => format!("{:02}..{:02}", num(a), num(b)),
                _ => format!("{:02}", num(p)),
            })
            .collect();
        parts.join(",")
    };
    const DAYS: [&str; 8] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    let weekdays = match f[4] {
        "*" => String::new(),
        dow => {
            let parts: Vec<String> = dow
                .split(',')
                .map(|p| match p.split_once('-') {
                    Some((a, b)) => format!("{}..{}", DAYS[num(a) as usize], DAYS[num(b) as usize]),
                    None => DAYS[num(p) as usize].to_string(),
                })
                .collect();
            format!("{} ", parts.join(","))
        }
    };
    format!(
        "{weekdays}*-{}-{} {}:{}:00 UTC",
        field(f[3], 1),
        field(f[2], 1),
        field(f[1], 0),
        field(f[0], 0)
    )
}

/// Where `systemd-analyze calendar` says `expr` elapses next after `base`.
fn systemd_next(analyze: &Path, expr: &str, base: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
    let out = run_ok(
        Command::new(analyze)
            .arg("calendar")
            .arg(format!("--iterations={n}"))
            .arg(format!(
                "--base-time={}",
                base.format("%Y-%m-%d %H:%M:%S UTC")
            ))
            .arg(expr)
            .env("TZ", "UTC"),
    );
    out.lines()
        .filter(|l| l.contains("Next elapse:") || l.contains("Iter. #"))
        .map(|l| {
            let when = l.split_once(": ").unwrap().1.trim();
            let naive = chrono::NaiveDateTime::parse_from_str(when, "%a %Y-%m-%d %H:%M:%S UTC")
                .unwrap_or_else(|e| panic!("`{when}`: {e}"));
            Utc.from_utc_datetime(&naive)
        })
        .collect()
}

/// The next `n` times after `base` agree between the cron schedule and the
/// OnCalendar= expression, as `systemd-analyze calendar` reads it.
pub(super) fn assert_fires_alike(
    analyze: &Path,
    cron: &str,
    calendar: &str,
    base: DateTime<Utc>,
    n: usize,
) {
    assert_eq!(
        systemd_next(analyze, calendar, base, n),
        cron_next(cron, base, n),
        "{cron} / {calendar}"
    );
}

#[test]
fn cron_schedules_convert_to_oncalendar() {
    for (cron, cal) in [
        ("15 * * * *", "*-*-* *:15:00 UTC"),
        ("30 3 * * *", "*-*-* 03:30:00 UTC"),
        ("*/15 * * * *", "*-*-* *:00/15:00 UTC"),
        ("5,35 */2 * * *", "*-*-* 00/2:05,35:00 UTC"),
        ("0 0 1 * *", "*-*-01 00:00:00 UTC"),
        ("0 6 * * 1-5", "Mon..Fri *-*-* 06:00:00 UTC"),
        ("45 23 * 1,7 0", "Sun *-01,07-* 23:45:00 UTC"),
    ] {
        assert_eq!(cron_to_oncalendar(cron), cal, "{cron}");
        let Some(analyze) = system_tool("systemd-analyze") else {
            continue;
        };
        let base = Utc.with_ymd_and_hms(2025, 3, 30, 0, 0, 30).unwrap();
        assert_fires_alike(&analyze, cron, cal, base, 5);
    }
}
