//! Where a consumer group starts when the table cannot say, and
//! `--reset-offsets`.
//!
//! The table owns the offsets (DESIGN.md). A table that holds data but no
//! offsets for the group in its ledger is refused at start-up: starting the
//! topic over would count every retained record twice. The operator chooses
//! instead, explicitly:
//!
//! - `earliest` / `latest`: partitions the ledger holds no offset for start
//!   at the topic's low / high watermark. Partitions it does hold are left
//!   alone, so a worker restarted with the same flag changes nothing.
//! - `TOPIC:PARTITION:OFFSET,...`: those partitions start there, whatever the
//!   ledger holds (to skip a range, or re-read one). Applied once: the spec is
//!   recorded in the ledger (`firn.reset.<group>`) and the same spec is not
//!   applied again.
//!
//! A reset is its own commit: an append of no files whose ledger holds the new
//! offsets and the spec, fenced like any batch (a racing worker's commit wins
//! and the reset is refused), and logged. Ingest then starts from the table as
//! always.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use iceberg::TableIdent;

use crate::catalog::Catalog;
use crate::commit::summary::{OFFSETS_PREFIX, reset_key};
use crate::commit::{self, Change, FirnOperation, RetryPolicy};
use crate::error::{Error, ErrorKind, Result};
use crate::kafka::{self, KafkaSource};
use crate::ledger::{self, Ledger};
use crate::offsets::{self, OffsetAdvance};

/// An operator's choice of where a group starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResetOffsets {
    /// Partitions without an offset in the table start at the low watermark.
    Earliest,
    /// Partitions without an offset in the table start at the high watermark.
    Latest,
    /// These partitions start at these offsets.
    Explicit(BTreeMap<String, BTreeMap<i32, i64>>),
}

impl FromStr for ResetOffsets {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim() {
            "earliest" => return Ok(Self::Earliest),
            "latest" => return Ok(Self::Latest),
            _ => {}
        }
        let mut out: BTreeMap<String, BTreeMap<i32, i64>> = BTreeMap::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            // Topic names may not hold ':', so the last two fields are
            // partition and offset.
            let mut fields = item.rsplitn(3, ':');
            let (Some(offset), Some(partition), Some(topic)) =
                (fields.next(), fields.next(), fields.next())
            else {
                return Err(format!(
                    "{item:?}: expected earliest, latest or TOPIC:PARTITION:OFFSET,..."
                ));
            };
            let partition: i32 = partition
                .parse()
                .map_err(|_| format!("{item:?}: partition {partition:?} is not a number"))?;
            let offset: i64 = offset.parse().ok().filter(|o| *o >= 0).ok_or_else(|| {
                format!("{item:?}: offset {offset:?} is not a non-negative number")
            })?;
            if topic.is_empty() {
                return Err(format!("{item:?}: the topic is empty"));
            }
            if out
                .entry(topic.to_string())
                .or_default()
                .insert(partition, offset)
                .is_some()
            {
                return Err(format!("{topic}:{partition} is given twice"));
            }
        }
        if out.is_empty() {
            return Err("expected earliest, latest or TOPIC:PARTITION:OFFSET,...".into());
        }
        Ok(Self::Explicit(out))
    }
}

impl fmt::Display for ResetOffsets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Earliest => f.write_str("earliest"),
            Self::Latest => f.write_str("latest"),
            Self::Explicit(map) => {
                let items: Vec<String> = map
                    .iter()
                    .flat_map(|(t, ps)| ps.iter().map(move |(p, o)| format!("{t}:{p}:{o}")))
                    .collect();
                f.write_str(&items.join(","))
            }
        }
    }
}

/// What [`prepare`] did for one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prepared {
    /// The table holds offsets (or is empty): nothing to decide.
    Ready,
    /// A reset was committed in this snapshot.
    Reset {
        /// The snapshot recording it.
        snapshot_id: i64,
        /// Partitions and the offsets they now start from.
        offsets: BTreeMap<i32, i64>,
    },
    /// The same explicit reset was applied before; not applied again.
    AlreadyApplied,
}

/// Before consuming `topic` into `ident` as `group`: refuse a table with data
/// and no offsets for the group, or apply the operator's `reset`.
pub async fn prepare(
    catalog: &dyn Catalog,
    ident: &TableIdent,
    topic: &str,
    group: &str,
    reset: Option<&ResetOffsets>,
    kafka_source: &KafkaSource,
    retry: RetryPolicy,
) -> Result<Prepared> {
    let table = catalog.load(ident).await?;
    let ledger = Ledger::of(&table.metadata);
    let held = offsets::of_ledger(&ledger, group)?
        .remove(topic)
        .unwrap_or_default();
    // An explicit reset that names other topics only says nothing about this one.
    let reset = reset.filter(|r| match r {
        ResetOffsets::Explicit(map) => map.contains_key(topic),
        _ => true,
    });
    let wanted: BTreeMap<i32, i64> = match reset {
        None if held.is_empty() && ledger::holds_data(&table.metadata) => {
            return Err(refusal(ident, topic, group, &ledger));
        }
        None => return Ok(Prepared::Ready),
        Some(ResetOffsets::Explicit(map)) => {
            let spec = reset.map(ToString::to_string).unwrap_or_default();
            if ledger.get(&reset_key(group)) == Some(&spec) {
                tracing::info!(
                    table = %ident, group, reset = %spec,
                    "--reset-offsets was applied before (recorded in the table); not applying it again"
                );
                return Ok(Prepared::AlreadyApplied);
            }
            let wanted = &map[topic];
            let marks = kafka::watermarks(kafka_source, topic).await?;
            for (p, o) in wanted {
                let Some((low, high)) = marks.get(p) else {
                    return Err(Error::new(
                        ErrorKind::InvalidInput,
                        format!(
                            "--reset-offsets names {topic}:{p}, but topic {topic} has no partition {p}"
                        ),
                    ));
                };
                if o < low || o > high {
                    return Err(Error::new(
                        ErrorKind::InvalidInput,
                        format!(
                            "--reset-offsets {topic}:{p}:{o} is outside what the partition holds \
                             (offsets {low} to {high})"
                        ),
                    ));
                }
            }
            let unnamed: Vec<String> = marks
                .keys()
                .filter(|p| !wanted.contains_key(p) && !held.contains_key(p))
                .map(|p| format!("{topic}:{p}"))
                .collect();
            if !unnamed.is_empty() && ledger::holds_data(&table.metadata) {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!(
                        "--reset-offsets leaves {} with no offset in {ident}, which holds data; \
                         name every partition the table holds no offset for",
                        unnamed.join(", ")
                    ),
                ));
            }
            wanted.clone()
        }
        Some(edge) => {
            let marks = kafka::watermarks(kafka_source, topic).await?;
            marks
                .into_iter()
                .filter(|(p, _)| !held.contains_key(p))
                .map(|(p, (low, high))| {
                    (
                        p,
                        if *edge == ResetOffsets::Earliest {
                            low
                        } else {
                            high
                        },
                    )
                })
                .collect()
        }
    };
    if wanted.is_empty() {
        tracing::info!(table = %ident, group, topic, "the table holds offsets for every partition; nothing to reset");
        return Ok(Prepared::Ready);
    }
    let spec = reset.map(ToString::to_string).unwrap_or_default();
    let change = Change::append(FirnOperation::ResetOffsets, Vec::new())
        .with_offsets(OffsetAdvance {
            group: group.to_string(),
            topic: topic.to_string(),
            from: wanted.keys().map(|p| (*p, held.get(p).copied())).collect(),
            to: wanted.clone(),
        })
        .with_property(reset_key(group), spec.clone());
    let committed = commit::commit(catalog, ident, &change, retry).await?;
    let moves: Vec<String> = wanted
        .iter()
        .map(|(p, o)| {
            let from = held.get(p).map_or("none".to_string(), |h| h.to_string());
            format!("{topic}/{p}: {from} -> {o}")
        })
        .collect();
    tracing::warn!(
        table = %ident, group, reset = %spec, snapshot_id = committed.snapshot_id,
        moves = %moves.join(", "),
        "offsets reset by the operator's --reset-offsets"
    );
    Ok(Prepared::Reset {
        snapshot_id: committed.snapshot_id,
        offsets: wanted,
    })
}

fn refusal(ident: &TableIdent, topic: &str, group: &str, ledger: &Ledger) -> Error {
    let others: Vec<&str> = ledger
        .with_prefix(OFFSETS_PREFIX)
        .map(|(g, _)| g)
        .filter(|g| *g != group)
        .collect();
    let hint = if others.is_empty() {
        String::new()
    } else {
        format!(
            " The table holds offsets for consumer group(s) {}; if this worker should be one \
             of them, run it with that --group.",
            others.join(", ")
        )
    };
    Error::new(
        ErrorKind::InvalidInput,
        format!(
            "refusing to ingest topic {topic} into {ident}: the table holds data but no offsets \
             for consumer group {group} (ledger read from {}). Starting the topic over would \
             count every record it still retains twice.{hint} To start anyway, choose where: \
             --reset-offsets earliest (re-read all the topic retains), latest (only records \
             produced from now on) or {topic}:PARTITION:OFFSET,...; the choice is recorded in \
             the table.",
            ledger.describe()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_print_back() {
        assert_eq!("earliest".parse(), Ok(ResetOffsets::Earliest));
        assert_eq!(" latest ".parse(), Ok(ResetOffsets::Latest));
        let r: ResetOffsets = "usage.events:0:10, usage.events:2:7,other:1:0"
            .parse()
            .unwrap();
        assert_eq!(
            r.to_string(),
            "other:1:0,usage.events:0:10,usage.events:2:7"
        );
        assert_eq!(r.to_string().parse(), Ok(r));
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        for (spec, says) in [
            ("t:0", "expected earliest"),
            ("t:x:1", "partition \"x\""),
            ("t:0:-1", "non-negative"),
            (":0:1", "topic is empty"),
            ("t:0:1,t:0:2", "given twice"),
            ("", "expected earliest"),
        ] {
            let e = spec.parse::<ResetOffsets>().unwrap_err();
            assert!(e.contains(says), "{spec}: {e}");
        }
    }
}
