//! Kafka offsets in the table's ledger: the table, not Kafka, owns them.
//!
//! Each consumer group has one ledger entry, `firn.offsets.<group>`, whose
//! value is JSON `{"topic": {"partition": next_offset}}`. Every firn commit
//! carries the whole ledger forward (see [`crate::ledger`] for where it is
//! found when other engines committed since).

use std::collections::{BTreeMap, HashMap};

use iceberg::spec::TableMetadata;

use crate::commit::summary::{OFFSETS_PREFIX, offsets_key};
use crate::error::{Error, ErrorKind, Result};
use crate::ledger::{Ledger, is_ledger_key};

/// Next offset to consume, per topic and partition.
pub type TopicOffsets = BTreeMap<String, BTreeMap<i32, i64>>;

/// Offsets of `group` in the table's ledger (empty if none).
pub fn read(metadata: &TableMetadata, group: &str) -> Result<TopicOffsets> {
    of_ledger(&Ledger::of(metadata), group)
}

/// Offsets of `group` in `ledger` (empty if none).
pub fn of_ledger(ledger: &Ledger, group: &str) -> Result<TopicOffsets> {
    parse(ledger.get(&offsets_key(group)), group)
}

/// Offsets of every group in the table's ledger.
pub fn read_all(metadata: &TableMetadata) -> Result<BTreeMap<String, TopicOffsets>> {
    Ledger::of(metadata)
        .with_prefix(OFFSETS_PREFIX)
        .map(|(g, v)| Ok((g.to_string(), parse(Some(v), g)?)))
        .collect()
}

fn parse(value: Option<&String>, group: &str) -> Result<TopicOffsets> {
    let Some(value) = value else {
        return Ok(TopicOffsets::new());
    };
    serde_json::from_str(value).map_err(|e| {
        Error::new(
            ErrorKind::Iceberg,
            format!(
                "ledger entry {} is not valid offsets JSON",
                offsets_key(group)
            ),
        )
        .with_source(e)
    })
}

/// Copy the base's ledger (every group's offsets, every backfill record,
/// every reset) into a new summary, under what the change itself sets.
pub fn carry_forward(base: &TableMetadata, props: &mut HashMap<String, String>) {
    for (k, v) in Ledger::of(base).entries {
        debug_assert!(is_ledger_key(&k));
        props.entry(k).or_insert(v);
    }
}

/// Encode a group's offsets as a summary value.
pub fn encode(offsets: &TopicOffsets) -> String {
    serde_json::to_string(offsets).unwrap_or_default()
}

/// A batch's claim on a range of one topic: where each partition started
/// (`None`: the table had no offset for it) and where it ends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OffsetAdvance {
    /// Consumer group.
    pub group: String,
    /// Topic.
    pub topic: String,
    /// Offset each partition's batch started from, as the worker believed the
    /// table held it.
    pub from: BTreeMap<i32, Option<i64>>,
    /// Next offset after the batch, per partition.
    pub to: BTreeMap<i32, i64>,
}

impl OffsetAdvance {
    /// The per-partition fence: every partition the batch covers must start
    /// exactly where the base snapshot says the group is. Otherwise another
    /// worker (or this one, before a rebalance) committed part of the range.
    pub fn check_fence(&self, base: &TopicOffsets) -> Result<()> {
        let held = base.get(&self.topic);
        for (partition, from) in &self.from {
            let table_at = held.and_then(|m| m.get(partition)).copied();
            if table_at != *from {
                return Err(Error::new(
                    ErrorKind::Fenced,
                    format!(
                        "fenced: {}/{partition} for group {} is at offset {} in the table, \
                         but this batch starts at {}; another worker committed this range",
                        self.topic,
                        self.group,
                        show(table_at),
                        show(*from)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// `base` with this batch's end offsets applied.
    pub fn apply(&self, mut base: TopicOffsets) -> TopicOffsets {
        let topic = base.entry(self.topic.clone()).or_default();
        for (p, to) in &self.to {
            topic.insert(*p, *to);
        }
        base
    }
}

fn show(offset: Option<i64>) -> String {
    offset.map_or_else(|| "<none>".to_string(), |o| o.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn advance(from: &[(i32, Option<i64>)], to: &[(i32, i64)]) -> OffsetAdvance {
        OffsetAdvance {
            group: "g".into(),
            topic: "t".into(),
            from: from.iter().copied().collect(),
            to: to.iter().copied().collect(),
        }
    }

    #[test]
    fn fence_passes_only_from_the_tables_position() {
        let mut base = TopicOffsets::new();
        let a = advance(&[(0, None)], &[(0, 10)]);
        a.check_fence(&base).unwrap();
        base = a.apply(base);
        assert_eq!(base["t"][&0], 10);
        // A zombie replaying the same batch is fenced.
        let e = a.check_fence(&base).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Fenced);
        assert!(
            e.to_string().contains("t/0 for group g is at offset 10"),
            "{e}"
        );
        // The next batch passes.
        advance(&[(0, Some(10))], &[(0, 20)])
            .check_fence(&base)
            .unwrap();
        // A batch that skipped ahead is fenced too.
        assert!(
            advance(&[(0, Some(15))], &[(0, 20)])
                .check_fence(&base)
                .is_err()
        );
    }

    #[test]
    fn encode_round_trips() {
        let o = advance(&[], &[(3, 7), (1, 2)]).apply(TopicOffsets::new());
        let s = encode(&o);
        assert_eq!(s, r#"{"t":{"1":2,"3":7}}"#);
        assert_eq!(parse(Some(&s), "g").unwrap(), o);
    }
}
