//! Fault injection for the gauntlet: an [`ObjectStore`](object_store::ObjectStore)
//! wrapper ([`store::FaultStore`]) and a [`Catalog`](crate::catalog::Catalog)
//! wrapper ([`catalog::FaultCatalog`]) that fail, delay, hide or kill at the
//! operations a [`FaultPlan`] names. Never on by default: a plan comes only
//! from a `[faults]` section of the configuration or from the TOML file
//! `FIRN_FAULTS` names, and every process that runs with one logs so.
//!
//! A plan is a list of rules. Each rule matches operations by kind
//! (`put`, `part`, `complete`, `get`, `head`, `list`, `delete`, `copy`;
//! `load`, `swap`, `create` on the catalog), by the step of a commit the file
//! belongs to (`data`, `manifest`, `manifest_list`, `metadata`, ... judged from
//! its name) and by a substring of the path; it fires on the `nth` matching
//! operation (scripted) or with a `probability` (seeded), `count` times:
//!
//! ```toml
//! [faults]
//! seed = 7
//! trace = "/tmp/faults.jsonl"   # one JSON line per operation and per fault
//!
//! [[faults.rule]]
//! op = "swap"
//! fault = "lost_reply"          # the commit applies, the caller sees an error
//! nth = 2
//!
//! [[faults.rule]]
//! op = "put"
//! step = "data"
//! fault = "error"
//! probability = 0.02
//! ```
//!
//! Faults: `error` (fails before the operation takes effect), `lost_reply`
//! (takes effect, then fails: a timeout after the PUT landed),
//! `latency` (waits `latency` first), `hidden` (a listing misses keys younger
//! than `window`: an eventually consistent listing), `stale` (a catalog load
//! returns the metadata an earlier load saw), `kill` and `kill_after`
//! (SIGKILL the process before or after the operation takes effect: a crash
//! at exactly that step), and `drop_row` (op `merge`: a compaction or rollup
//! loses the last row of a merged batch — a wrong merge, which the
//! conservation check must refuse).

pub mod catalog;
pub mod store;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};

/// The environment variable naming a fault plan file (TOML, the `[faults]`
/// section's fields at top level).
pub const ENV: &str = "FIRN_FAULTS";

/// What a rule injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// Fail before the operation takes effect.
    Error,
    /// Let the operation take effect, then fail (the reply was lost).
    LostReply,
    /// Wait `latency`, then carry on.
    Latency,
    /// A listing leaves out keys modified within `window` (eventual listing).
    Hidden,
    /// A catalog load returns metadata an earlier load saw.
    Stale,
    /// SIGKILL the process before the operation.
    Kill,
    /// SIGKILL the process right after the operation took effect.
    KillAfter,
    /// Drop the last row of a merged batch: a wrong merge, which the
    /// conservation check must refuse to commit.
    DropRow,
}

/// An operation on the store or the catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// A single PUT.
    Put,
    /// One part of a multipart upload.
    Part,
    /// A multipart upload's completion.
    Complete,
    /// A GET (whole or ranges).
    Get,
    /// A HEAD.
    Head,
    /// A listing.
    List,
    /// A DELETE (each file of a batch is one operation).
    Delete,
    /// A copy or rename.
    Copy,
    /// A catalog load of a table's metadata.
    Load,
    /// A catalog compare-and-set of a table's metadata (the commit).
    Swap,
    /// A catalog table creation.
    Create,
    /// A batch a compaction or rollup merged, before it is written (only
    /// `drop_row` applies).
    Merge,
}

/// The part of a table a file is, judged from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// A Parquet data file.
    Data,
    /// A manifest (Avro, not a manifest list).
    Manifest,
    /// A manifest list (`snap-*.avro`).
    ManifestList,
    /// A table metadata file (`*.metadata.json`).
    Metadata,
    /// `version-hint.text`.
    VersionHint,
    /// A statistics or partition-statistics file (Puffin, `.stats`).
    Stats,
    /// The catalog (loads, swaps, creates).
    Catalog,
    /// Anything else (a listing's prefix, a folder).
    Other,
}

impl Step {
    /// The step a path belongs to, from its file name.
    pub fn of(path: &str) -> Self {
        let name = path.rsplit('/').next().unwrap_or(path);
        if name.ends_with(".parquet") {
            Step::Data
        } else if name.ends_with(".avro") && name.starts_with("snap-") {
            Step::ManifestList
        } else if name.ends_with(".avro") {
            Step::Manifest
        } else if name.ends_with(".metadata.json") || name.ends_with(".metadata.json.gz") {
            Step::Metadata
        } else if name == "version-hint.text" {
            Step::VersionHint
        } else if name.ends_with(".puffin") || name.ends_with(".stats") {
            Step::Stats
        } else {
            Step::Other
        }
    }
}

/// One rule of a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// What to inject.
    pub fault: Fault,
    /// Only this operation (any if absent).
    #[serde(default)]
    pub op: Option<Op>,
    /// Only files of this step (any if absent).
    #[serde(default)]
    pub step: Option<Step>,
    /// Only paths (or table names, for catalog operations) containing this.
    #[serde(default)]
    pub path: Option<String>,
    /// Only this table (`namespace.name`): its catalog operations and the
    /// files under its `namespace/name/` folder.
    #[serde(default)]
    pub table: Option<String>,
    /// Fire on the nth matching operation (1-based) and the `count - 1`
    /// after it.
    #[serde(default)]
    pub nth: Option<u64>,
    /// Fire on each matching operation with this probability (seeded).
    #[serde(default)]
    pub probability: Option<f64>,
    /// How many times the rule fires at most (1 with `nth`, unlimited with
    /// `probability`).
    #[serde(default)]
    pub count: Option<u64>,
    /// The wait of a `latency` fault.
    #[serde(default, with = "humantime_serde")]
    pub latency: Option<Duration>,
    /// How young a key a `hidden` listing leaves out (default 10 s).
    #[serde(default, with = "humantime_serde")]
    pub window: Option<Duration>,
}

/// A fault plan: the `[faults]` section, or the file `FIRN_FAULTS` names.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultPlan {
    /// Seed of the probabilities (0 if absent).
    #[serde(default)]
    pub seed: u64,
    /// Append one JSON line per operation, and per fault, to this file.
    #[serde(default)]
    pub trace: Option<PathBuf>,
    /// The rules, tried in order; the first that fires wins.
    #[serde(default, rename = "rule")]
    pub rules: Vec<Rule>,
}

impl FaultPlan {
    /// The plan in `path` (TOML).
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::new(
                ErrorKind::InvalidConfig,
                format!("reading the fault plan {}", path.display()),
            )
            .with_source(e)
        })?;
        let plan: FaultPlan = toml::from_str(&text).map_err(|e| {
            Error::new(
                ErrorKind::InvalidConfig,
                format!("{}: {}", path.display(), e.to_string().trim_end()),
            )
        })?;
        plan.validate(&path.display().to_string())?;
        Ok(plan)
    }

    /// The plan `FIRN_FAULTS` names, if it is set.
    pub fn from_env() -> Result<Option<Self>> {
        match std::env::var_os(ENV) {
            Some(p) if !p.is_empty() => Self::read(Path::new(&p)).map(Some),
            _ => Ok(None),
        }
    }

    /// Refuse rules that cannot fire or cannot mean anything.
    pub fn validate(&self, source: &str) -> Result<()> {
        for (i, r) in self.rules.iter().enumerate() {
            let bad = |why: &str| {
                Err(Error::new(
                    ErrorKind::InvalidConfig,
                    format!("{source}: fault rule {}: {why}", i + 1),
                ))
            };
            match (r.nth, r.probability) {
                (None, None) => return bad("give `nth` or `probability`"),
                (Some(0), _) => return bad("`nth` counts from 1"),
                (_, Some(p)) if !(0.0..=1.0).contains(&p) => {
                    return bad("`probability` must be between 0 and 1");
                }
                _ => {}
            }
            if r.fault == Fault::Latency && r.latency.is_none() {
                return bad("a latency fault needs `latency`");
            }
            if r.fault == Fault::Hidden && r.op.is_some_and(|op| op != Op::List) {
                return bad("`hidden` applies to listings (op = \"list\")");
            }
            if r.fault == Fault::Stale && r.op.is_some_and(|op| op != Op::Load) {
                return bad("`stale` applies to catalog loads (op = \"load\")");
            }
        }
        Ok(())
    }
}

/// A plan at work: rules with their counters, the seeded generator, the
/// trace, and what was injected.
#[derive(Debug)]
pub struct Faults {
    plan: FaultPlan,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    rng: StdRng,
    seen: Vec<u64>,
    fired: Vec<u64>,
    trace: Option<File>,
    injected: BTreeMap<(Fault, Op, Step), u64>,
}

/// What one operation meets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    /// Nothing: carry on.
    Pass,
    /// The fault to inject, with the rule that fired.
    Inject(Fault, RuleParams),
}

/// The parameters of the rule that fired.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RuleParams {
    /// A latency fault's wait.
    pub latency: Duration,
    /// A hidden listing's window.
    pub window: Duration,
}

impl Faults {
    /// Start `plan` (opening its trace file for appending).
    pub fn new(plan: FaultPlan) -> Result<Self> {
        let trace = match &plan.trace {
            Some(p) => Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| {
                        Error::new(
                            ErrorKind::Io,
                            format!("opening the fault trace {}", p.display()),
                        )
                        .with_source(e)
                    })?,
            ),
            None => None,
        };
        tracing::warn!(
            rules = plan.rules.len(),
            seed = plan.seed,
            "fault injection is ON: storage and catalog operations will fail as the plan says"
        );
        let n = plan.rules.len();
        Ok(Self {
            state: Mutex::new(State {
                rng: StdRng::seed_from_u64(plan.seed),
                seen: vec![0; n],
                fired: vec![0; n],
                trace,
                injected: BTreeMap::new(),
            }),
            plan,
        })
    }

    /// Decide what `op` on `path` meets, count it and trace it. A kill
    /// before the operation happens here.
    pub fn decide(&self, op: Op, step: Step, path: &str) -> Decision {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut decision = Decision::Pass;
        for (i, rule) in self.plan.rules.iter().enumerate() {
            if rule.op.is_some_and(|o| o != op)
                || rule.step.is_some_and(|s| s != step)
                || !rule.path.as_deref().is_none_or(|p| path.contains(p))
                || !rule.table.as_deref().is_none_or(|t| of_table(t, op, path))
                || !applies(rule.fault, op)
            {
                continue;
            }
            state.seen[i] += 1;
            let seen = state.seen[i];
            let fires = match (rule.nth, rule.probability) {
                (Some(nth), _) => seen >= nth && state.fired[i] < rule.count.unwrap_or(1),
                (None, Some(p)) => {
                    let roll = state.rng.random::<f64>() < p;
                    roll && rule.count.is_none_or(|c| state.fired[i] < c)
                }
                (None, None) => false,
            };
            if fires && decision == Decision::Pass {
                state.fired[i] += 1;
                decision = Decision::Inject(
                    rule.fault,
                    RuleParams {
                        latency: rule.latency.unwrap_or_default(),
                        window: rule.window.unwrap_or(Duration::from_secs(10)),
                    },
                );
            }
        }
        if let Decision::Inject(fault, _) = decision {
            *state.injected.entry((fault, op, step)).or_default() += 1;
        }
        let fault = match decision {
            Decision::Inject(f, _) => Some(f),
            Decision::Pass => None,
        };
        if let Some(file) = state.trace.as_mut() {
            let line = serde_json::json!({
                "pid": std::process::id(),
                "op": op,
                "step": step,
                "path": path,
                "fault": fault,
            });
            // One write per line: processes sharing a trace append whole lines.
            let _ = file.write_all(format!("{line}\n").as_bytes());
        }
        drop(state);
        if fault == Some(Fault::Kill) {
            kill_self(op, step, path);
        }
        decision
    }

    /// Meet the plan before `op` on `path`: `Err` with the message of a
    /// failure before the operation, else the decision to carry after it
    /// (a latency fault has waited).
    pub async fn before(&self, op: Op, step: Step, path: &str) -> Result<Decision, String> {
        let decision = self.decide(op, step, path);
        match decision {
            Decision::Inject(Fault::Error, _) => Err(injected_error(Fault::Error, op, path)),
            Decision::Inject(Fault::Latency, p) => {
                tokio::time::sleep(p.latency).await;
                Ok(decision)
            }
            _ => Ok(decision),
        }
    }

    /// After `op` on `path` ended (`done`: it took effect): a `kill_after`
    /// kills here; a lost reply is the message of the failure to report.
    pub fn after(
        &self,
        decision: Decision,
        op: Op,
        step: Step,
        path: &str,
        done: bool,
    ) -> Option<String> {
        if !done {
            return None;
        }
        match decision {
            Decision::Inject(Fault::KillAfter, _) => kill_self(op, step, path),
            Decision::Inject(Fault::LostReply, _) => {
                Some(injected_error(Fault::LostReply, op, path))
            }
            _ => None,
        }
    }

    /// Faults injected so far, by fault, operation and step.
    pub fn injected(&self) -> BTreeMap<(Fault, Op, Step), u64> {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .injected
            .clone()
    }
}

/// Whether `path` (a store key, or a table name for catalog operations)
/// belongs to `table` (`namespace.name`).
fn of_table(table: &str, op: Op, path: &str) -> bool {
    if matches!(op, Op::Load | Op::Swap | Op::Create) {
        return path == table;
    }
    let folder = format!("/{}/", table.replace('.', "/"));
    format!("/{path}/").contains(&folder)
}

/// Whether `fault` means anything for `op` (a rule without an `op` still
/// leaves listings alone unless it hides keys, and loads unless it is stale).
fn applies(fault: Fault, op: Op) -> bool {
    match fault {
        Fault::Hidden => op == Op::List,
        Fault::Stale => op == Op::Load,
        Fault::DropRow => op == Op::Merge,
        _ => op != Op::Merge,
    }
}

/// The error an injected failure returns, naming the operation and path.
pub fn injected_error(fault: Fault, op: Op, path: &str) -> String {
    match fault {
        Fault::LostReply => format!(
            "injected fault: the reply to {op:?} {path} was lost (the operation took effect)"
        ),
        _ => format!("injected fault: {op:?} {path} failed before taking effect"),
    }
}

fn kill_self(op: Op, step: Step, path: &str) -> ! {
    eprintln!("injected fault: killing the process at {op:?} {step:?} {path}");
    let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    std::process::abort()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(rules: &str) -> Faults {
        let plan: FaultPlan = toml::from_str(rules).unwrap();
        plan.validate("test").unwrap();
        Faults::new(plan).unwrap()
    }

    #[test]
    fn steps_are_judged_from_file_names() {
        let cases = [
            ("s3://b/t/data/ts_hour=1/00000-0-x.parquet", Step::Data),
            ("/w/t/metadata/snap-12-1-abc.avro", Step::ManifestList),
            ("/w/t/metadata/abc-m0.avro", Step::Manifest),
            ("/w/t/metadata/00003-abc.metadata.json", Step::Metadata),
            ("/w/t/metadata/version-hint.text", Step::VersionHint),
            ("/w/t/metadata/x.stats", Step::Stats),
            ("/w/t/metadata/", Step::Other),
        ];
        for (path, step) in cases {
            assert_eq!(Step::of(path), step, "{path}");
        }
    }

    #[test]
    fn a_scripted_rule_fires_on_its_nth_match_count_times() {
        let f = plan(
            r#"
            [[rule]]
            op = "put"
            step = "metadata"
            fault = "error"
            nth = 2
            count = 2
            "#,
        );
        let put = |path| f.decide(Op::Put, Step::of(path), path) != Decision::Pass;
        assert!(!put("/t/metadata/1.metadata.json"));
        assert!(!put("/t/data/a.parquet"), "another step does not count");
        assert!(put("/t/metadata/2.metadata.json"));
        assert!(put("/t/metadata/3.metadata.json"));
        assert!(!put("/t/metadata/4.metadata.json"), "count reached");
        assert_eq!(
            f.injected(),
            BTreeMap::from([((Fault::Error, Op::Put, Step::Metadata), 2)])
        );
    }

    #[test]
    fn a_table_rule_tells_a_table_from_its_rejects() {
        let f = plan(
            r#"
            [[rule]]
            table = "usage.http_requests"
            fault = "error"
            nth = 1
            count = 10
            "#,
        );
        let hit = |op, path: &str| f.decide(op, Step::of(path), path) != Decision::Pass;
        assert!(hit(Op::Swap, "usage.http_requests"));
        assert!(!hit(Op::Swap, "usage.http_requests_rejects"));
        assert!(hit(Op::Put, "w/usage/http_requests/data/a.parquet"));
        assert!(!hit(
            Op::Put,
            "w/usage/http_requests_rejects/data/a.parquet"
        ));
    }

    #[test]
    fn probabilities_are_seeded() {
        let rules = r#"
            seed = 42
            [[rule]]
            fault = "error"
            probability = 0.3
        "#;
        let run = || {
            let f = plan(rules);
            (0..200)
                .map(|i| {
                    f.decide(Op::Get, Step::Data, &format!("/d/{i}.parquet")) != Decision::Pass
                })
                .collect::<Vec<_>>()
        };
        let a = run();
        assert_eq!(a, run(), "same seed, same faults");
        let n = a.iter().filter(|x| **x).count();
        assert!((30..=90).contains(&n), "about 30% of 200 fired: {n}");
    }

    #[test]
    fn plans_that_cannot_fire_are_refused() {
        for (rules, why) in [
            ("[[rule]]\nfault = \"error\"", "give `nth` or `probability`"),
            ("[[rule]]\nfault = \"error\"\nnth = 0", "counts from 1"),
            ("[[rule]]\nfault = \"latency\"\nnth = 1", "needs `latency`"),
            (
                "[[rule]]\nfault = \"hidden\"\nop = \"put\"\nnth = 1",
                "applies to listings",
            ),
        ] {
            let plan: FaultPlan = toml::from_str(rules).unwrap();
            let e = plan.validate("plan.toml").unwrap_err().to_string();
            assert!(
                e.contains(why) && e.contains("plan.toml: fault rule 1"),
                "{e}"
            );
        }
        assert!(toml::from_str::<FaultPlan>("[[rule]]\nfault = \"melt\"\nnth = 1").is_err());
    }
}
