//! Totals by UTC day of `ts`, and what one commit added or removed by grain
//! and day. A day is the unit the invariant is checked in (every grain firn
//! writes is at most a day, so a day's totals survive every rollup), the
//! unit a conservation refusal and an audit finding name, and the unit a
//! staged backfill's difference is shown in.

use std::collections::BTreeMap;

use arrow_array::{ArrayRef, UInt32Array};
use chrono::NaiveDate;

use super::{Total, Totals};
use crate::rows::MeasureValue;
use crate::schema::layout::Grain;

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// The day (since the Unix epoch, UTC) of a timestamp in microseconds.
pub fn day_of(ts_micros: i64) -> i32 {
    ts_micros.div_euclid(MICROS_PER_DAY) as i32
}

/// A day as a date, for people and for JSON keys.
pub fn date_of(day: i32) -> NaiveDate {
    NaiveDate::from_ymd_opt(1970, 1, 1).expect("the epoch") + chrono::TimeDelta::days(day as i64)
}

/// The day a date names (the inverse of [`date_of`]).
pub fn day_of_date(date: NaiveDate) -> i32 {
    (date - NaiveDate::from_ymd_opt(1970, 1, 1).expect("the epoch")).num_days() as i32
}

/// Totals per day.
#[derive(Debug, Clone, PartialEq)]
pub struct DayTotals {
    /// Empty totals of the measures.
    empty: Totals,
    /// Per day with rows, its totals.
    pub days: BTreeMap<i32, Totals>,
}

impl DayTotals {
    /// No rows yet, of the measures `empty` has.
    pub fn new(empty: &Totals) -> Self {
        Self {
            empty: empty.emptied(),
            days: BTreeMap::new(),
        }
    }

    /// Empty totals of one day, of the same measures.
    pub fn empty(&self) -> &Totals {
        &self.empty
    }

    /// Empty totals of the same measures.
    pub fn emptied(&self) -> Self {
        Self::new(&self.empty)
    }

    /// Whether no rows were counted.
    pub fn is_empty(&self) -> bool {
        self.days.is_empty()
    }

    /// Per measure, whether it is a long (else a double).
    pub fn kinds(&self) -> Vec<bool> {
        self.empty
            .values
            .iter()
            .map(|t| matches!(t, Total::Long(_)))
            .collect()
    }

    fn day(&mut self, day: i32) -> &mut Totals {
        self.days.entry(day).or_insert_with(|| self.empty.clone())
    }

    /// Fold one row (a bucket at `ts_micros`) in.
    pub fn add_row(&mut self, ts_micros: i64, measures: &[MeasureValue]) {
        let totals = self.day(day_of(ts_micros));
        for (i, v) in measures.iter().enumerate() {
            totals.add_value(i, *v);
        }
    }

    /// Fold `totals` of rows of `day` in.
    pub fn add(&mut self, day: i32, totals: &Totals) {
        self.day(day).absorb(totals);
    }

    /// Fold all of `other` in.
    pub fn absorb(&mut self, other: &DayTotals) {
        for (day, totals) in &other.days {
            self.add(*day, totals);
        }
    }

    /// Take `other`'s rows out (see [`Totals::remove`]): per day, the
    /// measures whose min or max is unknown from here.
    pub fn remove(&mut self, other: &DayTotals) -> BTreeMap<i32, Vec<usize>> {
        other
            .days
            .iter()
            .map(|(day, t)| (*day, self.day(*day).remove(t)))
            .filter(|(_, unknown)| !unknown.is_empty())
            .collect()
    }

    /// Fold a batch in: its `ts` values (microseconds) and its measure
    /// columns in declaration order (`Int64` or `Float64`). A batch of one
    /// day (what a merge reads, nearly always) is folded column by column;
    /// one spanning days is split by day first.
    pub fn add_batch(&mut self, ts: &[i64], measures: &[ArrayRef]) {
        let Some((&first, rest)) = ts.split_first() else {
            return;
        };
        let (lo, hi) = rest
            .iter()
            .fold((first, first), |(lo, hi), &t| (lo.min(t), hi.max(t)));
        if day_of(lo) == day_of(hi) {
            let totals = self.day(day_of(lo));
            for (i, m) in measures.iter().enumerate() {
                totals.add_array(i, m);
            }
            return;
        }
        let mut rows: BTreeMap<i32, Vec<u32>> = BTreeMap::new();
        for (row, &t) in ts.iter().enumerate() {
            rows.entry(day_of(t)).or_default().push(row as u32);
        }
        for (day, rows) in rows {
            let rows = UInt32Array::from(rows);
            let totals = self.day(day);
            for (i, m) in measures.iter().enumerate() {
                let part = arrow_select::take::take(m.as_ref(), &rows, None)
                    .expect("taking rows of a primitive column");
                totals.add_array(i, &part);
            }
        }
    }

    /// The totals over every day.
    pub fn all(&self) -> Totals {
        let mut all = self.empty.clone();
        for t in self.days.values() {
            all.absorb(t);
        }
        all
    }

    /// The first day and measure whose totals differ between `self` and
    /// `other` (a day only one side has compares with no rows): the day,
    /// the measure's name and both totals.
    pub fn differs(&self, other: &DayTotals) -> Option<(i32, String, Total, Total)> {
        let days: std::collections::BTreeSet<i32> =
            self.days.keys().chain(other.days.keys()).copied().collect();
        days.into_iter().find_map(|day| {
            let mine = self.days.get(&day).unwrap_or(&self.empty);
            let theirs = other.days.get(&day).unwrap_or(&self.empty);
            mine.differs(theirs).map(|(m, a, b)| (day, m, a, b))
        })
    }

    /// As JSON: `{"2026-03-02": {"requests": 12, ...}, ...}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Object(
            self.days
                .iter()
                .map(|(d, t)| {
                    (
                        date_of(*d).to_string(),
                        serde_json::Value::Object(t.by_name()),
                    )
                })
                .collect(),
        )
    }

    /// Read back what [`DayTotals::to_json`] wrote, for measures like
    /// `empty`'s (a measure the JSON lacks has no rows: it was added to the
    /// table later); `Err` says what does not parse.
    pub fn from_json(empty: &Totals, json: &str) -> Result<Self, String> {
        let value: serde_json::Value =
            serde_json::from_str(json).map_err(|e| format!("not JSON: {e}"))?;
        let days = value.as_object().ok_or("not a JSON object")?;
        let mut out = Self::new(empty);
        for (date, totals) in days {
            let date = NaiveDate::parse_from_str(date, "%Y-%m-%d")
                .map_err(|e| format!("day `{date}`: {e}"))?;
            let totals = totals
                .as_object()
                .ok_or_else(|| format!("day {date}: not a JSON object"))?;
            out.days
                .insert(day_of_date(date), Totals::from_by_name(empty, totals)?);
        }
        Ok(out)
    }
}

/// What one commit added or removed: totals by grain and by day, as its
/// snapshot summary records them, computed from the rows themselves as
/// they were written or read, never from file statistics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChangeTotals(pub BTreeMap<Grain, DayTotals>);

impl ChangeTotals {
    /// Fold rows of `grain` in.
    pub fn add(&mut self, grain: Grain, days: &DayTotals) {
        match self.0.get_mut(&grain) {
            Some(mine) => mine.absorb(days),
            None => {
                self.0.insert(grain, days.clone());
            }
        }
    }

    /// Fold all of `other` in.
    pub fn absorb(&mut self, other: &ChangeTotals) {
        for (grain, days) in &other.0 {
            self.add(*grain, days);
        }
    }

    /// Whether no rows were counted.
    pub fn is_empty(&self) -> bool {
        self.0.values().all(DayTotals::is_empty)
    }

    /// The totals by day, every grain together (`None` when empty).
    pub fn by_day(&self) -> Option<DayTotals> {
        let mut days = self.0.values().next()?.emptied();
        for d in self.0.values() {
            days.absorb(d);
        }
        Some(days)
    }

    /// The by-grain summary value: `{"minute": {"requests": 12, ...}, ...}`.
    pub fn by_grain_json(&self) -> String {
        serde_json::Value::Object(
            self.0
                .iter()
                .filter(|(_, d)| !d.is_empty())
                .map(|(g, d)| {
                    (
                        g.as_str().to_string(),
                        serde_json::Value::Object(d.all().by_name()),
                    )
                })
                .collect(),
        )
        .to_string()
    }

    /// The by-day summary value (see [`DayTotals::to_json`]).
    pub fn by_day_json(&self) -> String {
        self.by_day()
            .map_or(serde_json::json!({}), |d| d.to_json())
            .to_string()
    }
}

impl Totals {
    /// Totals read back from [`Totals::by_name`]'s JSON, for measures like
    /// `empty`'s.
    pub fn from_by_name(
        empty: &Totals,
        json: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Totals, String> {
        let mut out = empty.emptied();
        for (i, (name, _)) in empty.measures.iter().enumerate() {
            let Some(v) = json.get(name) else { continue };
            out.values[i] = match (out.values[i], v) {
                (_, serde_json::Value::Null) => continue,
                (Total::Long(_), serde_json::Value::Number(n)) => Total::Long(Some(
                    n.as_i64()
                        .map(i128::from)
                        .or_else(|| n.as_u64().map(i128::from))
                        .ok_or_else(|| format!("measure `{name}`: {n} is not an integer"))?,
                )),
                (Total::Long(_), serde_json::Value::String(s)) => {
                    Total::Long(Some(s.parse().map_err(|_| {
                        format!("measure `{name}`: `{s}` is not an integer")
                    })?))
                }
                (Total::Double(_), serde_json::Value::Number(n)) => {
                    let v = n
                        .as_f64()
                        .ok_or_else(|| format!("measure `{name}`: {n} is not a number"))?;
                    // The values' magnitudes are not recorded: the sum's
                    // own stands in for them.
                    out.magnitudes[i] = v.abs();
                    Total::Double(Some(v))
                }
                (_, other) => return Err(format!("measure `{name}`: unexpected {other}")),
            };
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::Int64Array;

    use super::*;
    use crate::rows::MeasureValue;
    use crate::schema::decl::TableDecl;

    fn empty() -> Totals {
        Totals::new(&TableDecl::example())
    }

    #[test]
    fn days_are_utc_days_and_read_back_as_dates() {
        assert_eq!(day_of(0), 0);
        assert_eq!(day_of(-1), -1);
        assert_eq!(day_of(MICROS_PER_DAY), 1);
        let d = NaiveDate::from_ymd_opt(2026, 3, 2).unwrap();
        assert_eq!(date_of(day_of_date(d)), d);
        assert_eq!(date_of(-1).to_string(), "1969-12-31");
    }

    #[test]
    fn a_batch_over_days_splits_as_rows_do_and_json_reads_back() {
        let e = empty();
        let ts = [
            5,
            MICROS_PER_DAY + 7,
            3,
            -4,
            2 * MICROS_PER_DAY,
            MICROS_PER_DAY,
        ];
        let vals = [
            Some(1),
            Some(i64::MAX),
            None,
            Some(-3),
            Some(9),
            Some(i64::MAX),
        ];
        let col: ArrayRef = Arc::new(Int64Array::from(vals.to_vec()));
        let mut by_batch = DayTotals::new(&e);
        by_batch.add_batch(&ts, &[col.clone(), col.clone(), col.clone(), col]);
        let mut by_row = DayTotals::new(&e);
        for (t, v) in ts.iter().zip(vals) {
            by_row.add_row(*t, &[MeasureValue::Long(v); 4]);
        }
        assert_eq!(by_batch.differs(&by_row), None);
        assert_eq!(by_batch.days.len(), 4);
        assert_eq!(
            by_batch.days[&1].values[1],
            Total::Long(Some(2 * i64::MAX as i128))
        );
        let back = DayTotals::from_json(&e, &by_batch.to_json().to_string()).unwrap();
        assert_eq!(back.differs(&by_batch), None);
        assert_eq!(back, by_batch);

        let mut one_day = DayTotals::new(&e);
        let col: ArrayRef = Arc::new(Int64Array::from(vec![1, 2]));
        one_day.add_batch(&[10, 20], &vec![col; 4]);
        let (day, measure, a, b) = one_day.differs(&by_row).unwrap();
        assert_eq!((day, measure.as_str()), (-1, "requests"));
        assert_eq!((a, b), (Total::Long(None), Total::Long(Some(-3))));
        assert!(DayTotals::from_json(&e, "{\"2026-13-01\": {}}").is_err());
        assert!(DayTotals::from_json(&e, "{\"2026-03-01\": {\"requests\": 1.5}}").is_err());
    }

    #[test]
    fn change_totals_sum_grains_by_day() {
        let e = empty();
        let mut minute = DayTotals::new(&e);
        minute.add_row(5, &[MeasureValue::Long(Some(2)); 4]);
        let mut hour = DayTotals::new(&e);
        hour.add_row(0, &[MeasureValue::Long(Some(3)); 4]);
        let mut change = ChangeTotals::default();
        change.add(Grain::Minute, &minute);
        change.add(Grain::Hour, &hour);
        let by_day = change.by_day().unwrap();
        assert_eq!(by_day.days[&0].values[0], Total::Long(Some(5)));
        assert_eq!(by_day.days[&0].values[3], Total::Long(Some(3)));
        let grains: serde_json::Value = serde_json::from_str(&change.by_grain_json()).unwrap();
        assert_eq!(grains["minute"]["requests"], 2);
        assert_eq!(grains["hour"]["requests"], 3);
        assert!(ChangeTotals::default().is_empty());
        assert_eq!(ChangeTotals::default().by_day_json(), "{}");
    }
}
