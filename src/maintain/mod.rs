//! Maintenance as plan → execute → commit. Each operation is defined once
//! ([`operation`]: its options, defaults and typed report) and run the same
//! way by its command and by a job file ([`job`]). Compaction, rollup and
//! retention ([`tier`]) share the same table state, planners ([`plan`]),
//! merge ([`merge`]) and the one commit layer; they differ only in their
//! planner.

pub mod audit;
pub mod execute;
pub mod expire;
pub mod job;
pub mod manifests;
pub mod merge;
pub mod operation;
pub mod orphans;
pub mod paths;
pub mod plan;
pub mod reach;
pub mod refs;
pub mod rejects;
pub mod state;
pub mod tally;
pub mod tier;

pub use execute::{RunReport, TaskOutcome};
pub use operation::{Context, Operation, OperationKind, Report, Shard, default_jobs};
pub use plan::{PlanOptions, Task, TaskKind, plan_compaction, plan_retention, plan_rollup};
