//! A backfill's progress record, `firn.backfill.<id>` in the table's ledger:
//! how far its committed chunks reach into its inputs and, for a Kafka
//! replay, the offsets its range resolved to when it first started. That is
//! all a rerun of the same command needs to resume exactly, whatever its
//! `--chunk-events`.
//!
//! Format 2 (written since): `{"v":2,"input":I,"at":N,"complete":B,
//! "ranges":[[PARTITION,START,END],...]}`. Format 1 (firn before it) held
//! `{"done":C,"complete":B}`: C chunks of a size it did not record, so an
//! unfinished format-1 record cannot be resumed exactly and is refused; a
//! finished one still marks its backfill as done.

use serde::{Deserialize, Serialize};

/// Where a backfill stands in its inputs: every input before `input` is
/// committed, and of input `input` every record before `at` (a file's lines
/// read, or a partition's next offset: [`super::source::Source::position`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub(super) struct Position {
    /// Index of the input (file, or partition range) in progress.
    pub input: usize,
    /// Records of that input before this index are committed.
    pub at: i64,
}

/// A format-2 progress record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Record {
    /// Format version (2).
    pub v: u32,
    /// How far the committed chunks reach.
    #[serde(flatten)]
    pub reached: Position,
    /// Whether the last chunk is in.
    pub complete: bool,
    /// A replay's partition ranges, `[partition, start, end)`, as first resolved.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ranges: Vec<(i32, i64, i64)>,
}

impl Record {
    /// The record of a backfill that reached `reached`.
    pub fn new(reached: Position, complete: bool, ranges: Vec<(i32, i64, i64)>) -> Self {
        Self {
            v: 2,
            reached,
            complete,
            ranges,
        }
    }

    /// As the ledger holds it.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The format-1 record firn wrote before format 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
struct Legacy {
    done: u64,
    complete: bool,
}

/// A progress record as read from the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Held {
    /// Format 2.
    Current(Record),
    /// Format 1: chunks committed, of a size it did not record.
    Legacy {
        /// Chunks committed.
        done: u64,
        /// Whether the last chunk is in.
        complete: bool,
    },
}

impl Held {
    /// Read a ledger value; `None` if it is neither format.
    pub fn parse(value: &str) -> Option<Self> {
        if let Ok(r) = serde_json::from_str::<Record>(value) {
            return Some(Self::Current(r));
        }
        let l = serde_json::from_str::<Legacy>(value).ok()?;
        Some(Self::Legacy {
            done: l.done,
            complete: l.complete,
        })
    }

    /// Whether the backfill finished.
    pub fn complete(&self) -> bool {
        match self {
            Self::Current(r) => r.complete,
            Self::Legacy { complete, .. } => *complete,
        }
    }

    /// How far a format-2 record reaches.
    pub fn reached(&self) -> Option<Position> {
        match self {
            Self::Current(r) => Some(r.reached),
            Self::Legacy { .. } => None,
        }
    }
}

/// The id of the `n`th run of the backfill `base`: the first is the
/// backfill's identity, each `--force` run after it `<identity>-<n>`.
pub(super) fn run_id(base: &str, n: u32) -> String {
    if n <= 1 {
        base.to_string()
    } else {
        format!("{base}-{n}")
    }
}

/// The run a backfill continues or starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Run {
    /// Start the run `id`: nothing is committed under it.
    Start(String),
    /// Resume the run `id` from its record (held as `raw`).
    Resume {
        /// The run's id.
        id: String,
        /// Its record.
        record: Record,
        /// The record as the ledger holds it (what the next commit is fenced on).
        raw: String,
    },
}

/// Why a backfill does not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Refused {
    /// The run `id` finished (held as `raw`); without `--force` nothing is
    /// added again. `forced_in_progress` names an unfinished forced run,
    /// which `--force` resumes.
    Finished {
        /// The newest finished run.
        id: String,
        /// Its record.
        raw: String,
        /// An unfinished `--force` run after it.
        forced_in_progress: Option<String>,
    },
    /// The run `id` was left unfinished by a firn that recorded `done`
    /// chunks but not their size.
    LegacyUnfinished {
        /// The run's id.
        id: String,
        /// Chunks it committed.
        done: u64,
    },
    /// The ledger value of run `id` is no progress record.
    Unreadable {
        /// The run's id.
        id: String,
        /// What the ledger holds.
        raw: String,
    },
}

impl Refused {
    /// The run it names.
    pub(super) fn id(&self) -> &str {
        match self {
            Refused::Finished { id, .. }
            | Refused::LegacyUnfinished { id, .. }
            | Refused::Unreadable { id, .. } => id,
        }
    }
}

/// Where the backfill `base` stands, from the ledger values of its runs:
/// an unfinished run resumes (with or without `force`); a finished one is
/// refused, or with `force` followed by the next run, which is resumed in
/// turn if a forced run was killed.
pub(super) fn standing(
    base: &str,
    force: bool,
    held: impl Fn(&str) -> Option<String>,
) -> Result<Run, Refused> {
    let mut finished: Option<(String, String)> = None;
    for n in 1.. {
        let id = run_id(base, n);
        let Some(raw) = held(&id) else {
            return match finished {
                Some((id, raw)) if !force => Err(Refused::Finished {
                    id,
                    raw,
                    forced_in_progress: None,
                }),
                _ => Ok(Run::Start(id)),
            };
        };
        match Held::parse(&raw) {
            None => return Err(Refused::Unreadable { id, raw }),
            Some(Held::Current(record)) if !record.complete => {
                return match finished {
                    Some((done_id, done_raw)) if !force => Err(Refused::Finished {
                        id: done_id,
                        raw: done_raw,
                        forced_in_progress: Some(id),
                    }),
                    _ => Ok(Run::Resume { id, record, raw }),
                };
            }
            Some(Held::Legacy {
                done,
                complete: false,
            }) if !force => return Err(Refused::LegacyUnfinished { id, done }),
            // Finished, or an unfinished format-1 run `force` gives up on.
            Some(h) => {
                if h.complete() {
                    finished = Some((id, raw));
                }
            }
        }
    }
    unreachable!("the run loop only ends by returning")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn ledger(entries: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let m: BTreeMap<String, String> = entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    fn record(input: usize, at: i64, complete: bool) -> String {
        Record::new(Position { input, at }, complete, vec![(0, 5, 90)]).encode()
    }

    #[test]
    fn format_two_round_trips_and_format_one_is_read() {
        let raw = record(2, 1500, false);
        assert_eq!(
            raw,
            r#"{"v":2,"input":2,"at":1500,"complete":false,"ranges":[[0,5,90]]}"#
        );
        let Some(Held::Current(r)) = Held::parse(&raw) else {
            panic!("{raw}")
        };
        assert_eq!(r.reached, Position { input: 2, at: 1500 });
        assert_eq!(
            Held::parse(r#"{"done":3,"complete":true}"#),
            Some(Held::Legacy {
                done: 3,
                complete: true
            })
        );
        assert_eq!(Held::parse("[1]"), None);
        assert!(Position { input: 1, at: 900 } < Position { input: 2, at: 0 });
    }

    #[test]
    fn runs_resume_finish_and_are_forced_in_generations() {
        let none = ledger(&[]);
        assert_eq!(standing("b", false, &none), Ok(Run::Start("b".into())));
        let half = record(0, 40, false);
        let done = record(3, 0, true);
        match standing("b", true, ledger(&[("b", &half)])) {
            Ok(Run::Resume { id, raw, .. }) => assert_eq!((id.as_str(), raw), ("b", half.clone())),
            s => panic!("{s:?}"),
        }
        let finished = ledger(&[("b", &done)]);
        assert!(matches!(
            standing("b", false, &finished),
            Err(Refused::Finished {
                forced_in_progress: None,
                ..
            })
        ));
        assert_eq!(standing("b", true, &finished), Ok(Run::Start("b-2".into())));
        // A killed forced run resumes when forced again; unforced, it is named.
        let killed = ledger(&[("b", &done), ("b-2", &half)]);
        assert!(matches!(standing("b", true, &killed), Ok(Run::Resume { id, .. }) if id == "b-2"));
        assert_eq!(
            standing("b", false, &killed),
            Err(Refused::Finished {
                id: "b".into(),
                raw: done.clone(),
                forced_in_progress: Some("b-2".into())
            })
        );
        let twice = ledger(&[("b", &done), ("b-2", &done)]);
        assert_eq!(standing("b", true, &twice), Ok(Run::Start("b-3".into())));
        assert!(
            matches!(standing("b", false, &twice), Err(Refused::Finished { id, .. }) if id == "b-2")
        );
    }

    #[test]
    fn format_one_records() {
        let unfinished = ledger(&[("b", r#"{"done":3,"complete":false}"#)]);
        assert_eq!(
            standing("b", false, &unfinished),
            Err(Refused::LegacyUnfinished {
                id: "b".into(),
                done: 3
            })
        );
        assert_eq!(
            standing("b", true, &unfinished),
            Ok(Run::Start("b-2".into()))
        );
        let finished = ledger(&[("b", r#"{"done":3,"complete":true}"#)]);
        assert!(matches!(
            standing("b", false, &finished),
            Err(Refused::Finished { .. })
        ));
        assert!(matches!(
            standing("b", false, ledger(&[("b", "nonsense")])),
            Err(Refused::Unreadable { .. })
        ));
    }
}
