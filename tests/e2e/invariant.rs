//! The one invariant as a property: random sequences of appends (late data
//! included), compactions, rollups, retention runs and clock moves; after
//! every step each measure's total (sum, count, min, max) per day equals what
//! was appended for that day, unless retention dropped the whole day — and
//! only days wholly past retention are ever dropped.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chrono::{DateTime, Duration as ChronoDuration, NaiveDate, TimeZone, Utc};
use firn::catalog::Catalog;
use firn::commit::{self, Change, FirnOperation, RetryPolicy};
use firn::maintain::{self, PlanOptions};
use firn::rows::{DimValue, MeasureSpec, MeasureValue, Measures, RowKey, RowMap};
use firn::schema::decl::TableDecl;
use firn::schema::layout::Grain;
use firn::{read, tables, write};
use proptest::prelude::*;

#[derive(Debug, Clone)]
struct Event {
    age_minutes: u32,
    key: u8,
    bytes: i64,
    ttfb: i64,
}

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<Event>),
    Compact,
    Rollup,
    Retention,
    AdvanceDays(u32),
}

fn event() -> impl Strategy<Value = Event> {
    // Mostly recent (the last three hours, so appends share partitions), some late (up to 399 days old: still inside retention).
    let age = prop_oneof![
        4 => 0u32..180,
        3 => 0u32..(3 * 1440),
        2 => 0u32..(30 * 1440),
        1 => 0u32..(399 * 1440),
    ];
    (age, 0u8..3, 0i64..1_000, 1i64..500).prop_map(|(age_minutes, key, bytes, ttfb)| Event {
        age_minutes,
        key,
        bytes,
        ttfb,
    })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => prop::collection::vec(event(), 1..30).prop_map(Op::Append),
        2 => Just(Op::Compact),
        2 => Just(Op::Rollup),
        1 => Just(Op::Retention),
        2 => (1u32..300).prop_map(Op::AdvanceDays),
    ]
}

struct World {
    _dir: tempfile::TempDir,
    catalog: Arc<dyn Catalog>,
    decl: TableDecl,
    spec: MeasureSpec,
    now: DateTime<Utc>,
    model: BTreeMap<NaiveDate, Measures>,
    dropped: BTreeSet<NaiveDate>,
}

impl World {
    async fn new() -> Self {
        let (dir, catalog, decl) = crate::common::local_lake().await;
        World {
            _dir: dir,
            catalog,
            spec: MeasureSpec::new(&decl),
            decl,
            now: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
            model: BTreeMap::new(),
            dropped: BTreeSet::new(),
        }
    }

    fn opts(&self) -> PlanOptions {
        PlanOptions {
            now: self.now,
            from: None,
            to: None,
            seal_delay: std::time::Duration::from_secs(3600),
            target_file_size: 128 << 20,
        }
    }

    fn cutoff(&self) -> DateTime<Utc> {
        self.now - ChronoDuration::from_std(self.decl.policy.retain).unwrap()
    }

    async fn apply(&mut self, op: &Op) {
        let ident = tables::ident(&self.decl).unwrap();
        let table = self.catalog.load(&ident).await.unwrap();
        let state = maintain::state::load(&table).await.unwrap();
        let policy = self.decl.policy;
        let tasks = match op {
            Op::Append(events) => {
                let mut rows = RowMap::default();
                for e in events {
                    let ts = self.now - ChronoDuration::minutes(e.age_minutes as i64 + 1);
                    let key = RowKey {
                        dims: vec![
                            DimValue::Long(e.key as i64),
                            DimValue::Long(7),
                            DimValue::Str(["AMS", "Zürich", ""][e.key as usize].into()),
                            DimValue::Str("cdn".into()),
                        ],
                        ts_micros: Grain::Minute.truncate(ts.timestamp_micros()),
                    };
                    let values = [
                        None,
                        Some(MeasureValue::Long(Some(e.bytes))),
                        Some(MeasureValue::Long(Some(e.bytes / 3))),
                        Some(MeasureValue::Long(Some(e.ttfb))),
                    ];
                    rows.add_event(&self.spec, key, &values);
                    let mut one = self.spec.empty();
                    self.spec.add_event_saturating(&mut one, &values);
                    let day = self
                        .model
                        .entry(ts.date_naive())
                        .or_insert_with(|| self.spec.empty());
                    self.spec.merge_saturating(day, &one);
                }
                let files = write::write_rows(
                    &table,
                    &self.decl,
                    Grain::Minute,
                    rows.sorted(&self.spec),
                    128 << 20,
                )
                .await
                .unwrap();
                commit::commit(
                    self.catalog.as_ref(),
                    &ident,
                    &Change::append(FirnOperation::Backfill, files),
                    RetryPolicy::default(),
                )
                .await
                .unwrap();
                return;
            }
            Op::AdvanceDays(d) => {
                self.now += ChronoDuration::days(*d as i64);
                return;
            }
            Op::Compact => maintain::plan_compaction(&state, &policy, &self.opts()),
            Op::Rollup => maintain::plan_rollup(&state, &policy, &self.opts()),
            Op::Retention => maintain::plan_retention(&state, &policy, &self.opts()),
        };
        let ctx = maintain::Context::new(self.catalog.as_ref(), self.now);
        let report = maintain::execute::run(&ctx, &self.decl, &tasks, 128 << 20)
            .await
            .unwrap();
        assert_eq!(report.failed, 0, "{op:?}: {report:?}");
        assert_eq!(report.committed, tasks.len(), "{op:?}: {report:?}");
    }

    async fn check(&mut self, after: &Op) {
        let ident = tables::ident(&self.decl).unwrap();
        let table = self.catalog.load(&ident).await.unwrap();
        let totals = read::totals(&table, &self.decl).await.unwrap();
        let cutoff = self.cutoff().date_naive();
        for (day, want) in &self.model {
            match totals.per_day.get(day) {
                Some(got) => assert_eq!(got, want, "day {day} after {after:?}"),
                None => {
                    assert!(
                        *day < cutoff,
                        "day {day} vanished after {after:?} though retention only drops before {cutoff}"
                    );
                    self.dropped.insert(*day);
                }
            }
        }
        for day in totals.per_day.keys() {
            assert!(
                self.model.contains_key(day),
                "day {day} appeared from nowhere after {after:?}"
            );
        }
        self.model.retain(|d, _| !self.dropped.contains(d));
        if matches!(after, Op::Retention) {
            // Anything whose month (the coarsest partition) ended before the
            // cutoff is gone.
            for day in totals.per_day.keys() {
                assert!(
                    *day >= cutoff - ChronoDuration::days(31),
                    "day {day} is past retention (cutoff {cutoff}) but still there"
                );
            }
        }
        // Whole-table totals: the sum of the surviving days.
        let mut all = self.spec.empty();
        for m in self.model.values() {
            self.spec.merge_saturating(&mut all, m);
        }
        assert_eq!(totals.all, all, "whole table after {after:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, max_shrink_iters: 50, ..ProptestConfig::default() })]
    #[test]
    fn no_operation_changes_any_total(ops in prop::collection::vec(op(), 1..16)) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut world = World::new().await;
            for op in &ops {
                world.apply(op).await;
                world.check(op).await;
            }
        });
    }
}
