//! One table's in-flight batch: the minute rows aggregated since the last
//! commit, the rejects, and the Kafka range each partition covers.

use std::collections::BTreeMap;

use iceberg::TableIdent;

use super::flush::FlushJob;
use crate::events::{Decoder, Origin, Scratch, TimeWindow};
use crate::rejects::RejectRecord;
use crate::rows::{MeasureSpec, RowMap};
use crate::schema::decl::TableDecl;

/// Where a partition's next batch starts, as the table held it when the
/// partition was assigned or last committed (`None`: the table had no offset).
pub type Positions = BTreeMap<i32, Option<i64>>;

/// A table fed by one topic, with its current batch.
#[derive(Debug)]
pub struct TableSink {
    /// The table.
    pub ident: TableIdent,
    /// Its rejects table.
    pub rejects_ident: TableIdent,
    /// Decoder for its declaration.
    pub decoder: Decoder,
    /// Measure layout.
    pub spec: MeasureSpec,
    /// Assigned partitions and where their current batch starts.
    pub positions: Positions,
    /// The batch.
    pub batch: Batch,
}

/// Rows, rejects and covered offsets since the last commit.
#[derive(Debug, Default)]
pub struct Batch {
    /// Aggregated minute rows.
    pub rows: RowMap,
    /// Rejected records.
    pub rejects: Vec<RejectRecord>,
    /// Next offset after the last record seen, per partition.
    pub to: BTreeMap<i32, i64>,
    /// Records in the batch.
    pub records: u64,
    /// Payload bytes in the batch.
    pub bytes: u64,
}

impl Batch {
    /// Whether nothing was consumed since the last commit.
    pub fn is_empty(&self) -> bool {
        self.to.is_empty()
    }
}

/// What happened to one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consumed {
    /// Aggregated into a row.
    Accepted,
    /// Sent to the rejects table.
    Rejected(&'static str),
    /// Already covered (a re-delivery before the seek took effect); ignored.
    Duplicate,
    /// From a partition this worker does not hold; ignored.
    NotAssigned,
}

impl TableSink {
    /// A sink for `decl`.
    pub fn new(decl: TableDecl, ident: TableIdent, rejects_ident: TableIdent) -> Self {
        Self {
            ident,
            rejects_ident,
            spec: MeasureSpec::new(&decl),
            decoder: Decoder::new(decl),
            positions: Positions::new(),
            batch: Batch::default(),
        }
    }

    /// The declaration.
    pub fn decl(&self) -> &TableDecl {
        self.decoder.decl()
    }

    /// Take one record into the batch.
    pub fn consume(
        &mut self,
        partition: i32,
        offset: i64,
        payload: &[u8],
        window: TimeWindow,
        now_micros: i64,
    ) -> Consumed {
        if let Some(skipped) = self.admit(partition, offset, payload.len()) {
            return skipped;
        }
        self.aggregate(partition, offset, payload, window, now_micros)
    }

    /// Count one record into the batch's range, unless it is a re-delivery
    /// or from a partition not held (then what it is). Its rows are
    /// aggregated by [`TableSink::aggregate`], here or on a shard thread.
    pub fn admit(&mut self, partition: i32, offset: i64, bytes: usize) -> Option<Consumed> {
        // The partition's place in the batch is found once a record.
        if let Some(to) = self.batch.to.get_mut(&partition) {
            if offset < *to {
                return Some(Consumed::Duplicate);
            }
            *to = offset + 1;
        } else {
            let Some(expected) = self.positions.get(&partition).copied() else {
                return Some(Consumed::NotAssigned);
            };
            if expected.is_some_and(|e| offset < e) {
                return Some(Consumed::Duplicate);
            }
            self.batch.to.insert(partition, offset + 1);
        }
        self.batch.records += 1;
        self.batch.bytes += bytes as u64;
        None
    }

    /// Decode an admitted record into the batch: a row, or a reject.
    fn aggregate(
        &mut self,
        partition: i32,
        offset: i64,
        payload: &[u8],
        window: TimeWindow,
        now_micros: i64,
    ) -> Consumed {
        // Decoded in place, not moved out of the decoder.
        let mut scratch = Scratch::default();
        match self.decoder.decode_into(payload, window, &mut scratch) {
            Ok(ev) => {
                self.batch
                    .rows
                    .add_event_ref(&self.spec, &ev.dims, ev.ts_micros, &ev.values);
                Consumed::Accepted
            }
            Err(reason) => {
                let origin = Origin::Kafka {
                    topic: &self.decl().topic,
                    partition,
                    offset,
                };
                let reject = RejectRecord::new(origin, payload, &reason, now_micros);
                self.batch.rejects.push(reject);
                Consumed::Rejected(reason.as_label())
            }
        }
    }

    /// Where each partition in the batch started.
    pub fn batch_from(&self) -> BTreeMap<i32, Option<i64>> {
        self.batch
            .to
            .keys()
            .map(|p| (*p, self.positions.get(p).copied().flatten()))
            .collect()
    }

    /// Take the batch out to be committed (`None` when it is empty): the
    /// next batch starts where it ends. If its commit fails, the caller
    /// discards what came after and re-reads from the table's offsets.
    pub fn take_flush(&mut self) -> Option<FlushJob> {
        if self.batch.is_empty() {
            return None;
        }
        let from = self.batch_from();
        let batch = std::mem::take(&mut self.batch);
        for (p, to) in &batch.to {
            if let Some(pos) = self.positions.get_mut(p) {
                *pos = Some(*to);
            }
        }
        Some(FlushJob {
            ident: self.ident.clone(),
            rejects_ident: self.rejects_ident.clone(),
            decl: self.decl().clone(),
            batch,
            from,
        })
    }

    /// After a fence: drop the batch; positions are reset by the caller from
    /// the table.
    pub fn discard(&mut self) -> Batch {
        std::mem::take(&mut self.batch)
    }
}

#[cfg(test)]
pub(crate) mod tests {

    use chrono::{TimeZone, Utc};

    use super::*;
    use crate::tables;

    pub(crate) fn sink() -> TableSink {
        let decl = TableDecl::example();
        let (i, r) = (
            tables::ident(&decl).unwrap(),
            tables::rejects_ident(&decl).unwrap(),
        );
        TableSink::new(decl, i, r)
    }

    #[test]
    fn tracks_ranges_rejects_and_duplicates() {
        let mut s = sink();
        let now = Utc.with_ymd_and_hms(2026, 11, 27, 12, 0, 0).unwrap();
        let w = TimeWindow::new(now, s.decl(), std::time::Duration::from_secs(3600));
        let good = br#"{"ts":"2026-11-27T11:59:00Z","account_id":1,"zone_id":2,"colo":"a","product":"p","bytes":5,"cpu_ms":1,"ttfb_ms":3}"#;
        assert_eq!(s.consume(0, 0, good, w, 0), Consumed::NotAssigned);
        s.positions.insert(0, Some(10));
        s.positions.insert(1, None);
        assert_eq!(s.consume(0, 9, good, w, 0), Consumed::Duplicate);
        assert_eq!(s.consume(0, 10, good, w, 0), Consumed::Accepted);
        assert_eq!(s.consume(0, 10, good, w, 0), Consumed::Duplicate);
        assert_eq!(s.consume(1, 0, b"{", w, 0), Consumed::Rejected("not_json"));
        assert_eq!(s.consume(0, 12, good, w, 0), Consumed::Accepted);
        assert_eq!(s.batch_from(), BTreeMap::from([(0, Some(10)), (1, None)]));
        assert_eq!(s.batch.to, BTreeMap::from([(0, 13), (1, 1)]));
        assert_eq!(s.batch.rows.len(), 1);
        assert_eq!(s.batch.rejects[0].offset, 0);
        let job = s.take_flush().expect("a batch");
        assert_eq!(job.from, BTreeMap::from([(0, Some(10)), (1, None)]));
        assert_eq!(job.batch.to, BTreeMap::from([(0, 13), (1, 1)]));
        assert!(s.batch.is_empty());
        assert!(s.take_flush().is_none());
        assert_eq!(s.positions, BTreeMap::from([(0, Some(13)), (1, Some(1))]));
        // The next batch starts where the one being committed ends.
        assert_eq!(s.consume(0, 12, good, w, 0), Consumed::Duplicate);
        assert_eq!(s.consume(0, 13, good, w, 0), Consumed::Accepted);
        assert_eq!(s.batch_from(), BTreeMap::from([(0, Some(13))]));
    }
}

#[cfg(test)]
mod fuzz {
    use std::sync::Arc;

    use chrono::{TimeZone, Utc};
    use proptest::prelude::*;
    use serde_json::Value;

    use super::*;
    use crate::rows::MeasureValue;
    use crate::schema::layout::{self, Grain};
    use crate::{rejects, write};

    const VALID: &str = r#"{"ts":"2026-11-27T11:59:00Z","account_id":1,"zone_id":2,"colo":"AMS","product":"cdn","bytes":5,"cpu_ms":1,"ttfb_ms":3}"#;

    /// Values a field of a mutated event may take.
    fn hostile() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("null".to_string()),
            Just("true".to_string()),
            Just("-0".to_string()),
            Just("1e400".to_string()),
            Just("1.5".to_string()),
            Just("9223372036854775807".to_string()),
            Just("9223372036854775808".to_string()),
            Just("-9223372036854775808".to_string()),
            Just("4611686018427387904".to_string()),
            Just(r#""2026-11-27T11:59:00+14:00""#.to_string()),
            Just(r#""2026-11-27T11:59:00-23:59""#.to_string()),
            Just(r#""\u0000\ud83c\udfd4""#.to_string()),
            Just(format!("{}1{}", "[".repeat(500), "]".repeat(500))),
            Just(r#"{"a":{"b":[1,2,{"c":null}]}}"#.to_string()),
            any::<i64>().prop_map(|n| n.to_string()),
            any::<f64>().prop_map(|f| serde_json::to_string(&f).unwrap_or_default()),
            ".{0,40}".prop_map(|s| serde_json::to_string(&s).unwrap()),
        ]
    }

    /// A valid event with fields replaced, dropped, doubled, or its bytes cut.
    fn mutated() -> impl Strategy<Value = Vec<u8>> {
        let fields = crate::events::tests::EXAMPLE_FIELDS;
        (
            prop::collection::vec((0..fields.len(), hostile(), 0..4u8), 0..4),
            any::<Option<(usize, u8)>>(),
        )
            .prop_map(move |(edits, cut)| {
                let mut text = VALID.to_string();
                for (i, raw, how) in edits {
                    let obj: serde_json::Map<String, Value> =
                        serde_json::from_str(&text).unwrap_or_default();
                    let rest: Vec<String> = obj
                        .iter()
                        .filter(|(k, _)| *k != fields[i] || how == 2)
                        .map(|(k, v)| format!("{}:{v}", Value::String(k.clone())))
                        .collect();
                    let mine = format!("\"{}\":{raw}", fields[i]);
                    text = match how {
                        1 => format!("{{{}}}", rest.join(",")),
                        _ => format!("{{{mine},{}}}", rest.join(",")),
                    };
                }
                let mut bytes = text.into_bytes();
                if let Some((at, b)) = cut {
                    let at = at % (bytes.len() + 1);
                    bytes.truncate(at);
                    bytes.push(b);
                }
                bytes
            })
    }

    fn long_sum(m: &[Option<MeasureValue>], i: usize) -> i128 {
        match m[i] {
            Some(MeasureValue::Long(Some(v))) => i128::from(v),
            _ => 0,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// Whatever arrives, each record is accepted with its exact values
        /// or rejected with a reason, once; nothing panics; the batch's rows
        /// and rejects still encode as a flush encodes them; and the rows
        /// hold exactly what the accepted events carried.
        #[test]
        fn any_payload_is_accepted_exactly_or_rejected(
            payloads in prop::collection::vec(
                prop_oneof![prop::collection::vec(any::<u8>(), 0..300), mutated()],
                1..40,
            )
        ) {
            let mut s = super::tests::sink();
            s.positions.insert(0, None);
            let now = Utc.with_ymd_and_hms(2026, 11, 27, 12, 0, 0).unwrap();
            let w = TimeWindow::new(now, s.decl(), std::time::Duration::from_secs(3600));
            let mut accepted = 0;
            let mut bytes_in = 0i128;
            for (offset, p) in payloads.iter().enumerate() {
                match s.consume(0, offset as i64, p, w, 0) {
                    Consumed::Accepted => {
                        accepted += 1;
                        let ev = s.decoder.decode(p, w).unwrap();
                        bytes_in += long_sum(&ev.values, 1);
                    }
                    Consumed::Rejected(label) => prop_assert!(!label.is_empty()),
                    other => prop_assert!(false, "{other:?}"),
                }
            }
            prop_assert_eq!(accepted + s.batch.rejects.len(), payloads.len());
            let decl = s.decl().clone();
            let schema = Arc::new(
                iceberg::arrow::schema_to_arrow_schema(&layout::initial_schema(&decl).unwrap()).unwrap(),
            );
            let batch = s.discard();
            let rows = batch.rows.into_sorted(&s.spec);
            let stored: i128 = rows
                .iter()
                .map(|(_, m)| long_sum(&m.0.iter().map(|v| Some(*v)).collect::<Vec<_>>(), 1))
                .sum();
            prop_assert_eq!(stored, bytes_in);
            prop_assert!(write::to_batches(&schema, &decl, Grain::Minute, &rows).is_ok());
            let rejects_schema = Arc::new(
                iceberg::arrow::schema_to_arrow_schema(&rejects::schema().unwrap()).unwrap(),
            );
            prop_assert!(rejects::to_batch(rejects_schema, &batch.rejects).is_ok());
        }
    }
}
