//! Maintenance as plan → execute → commit: compaction, rollup and retention
//! share the same table state, planners ([`plan`]), merge ([`merge`]) and
//! the one commit layer; they differ only in their planner.

pub mod execute;
pub mod expire;
pub mod job;
pub mod manifests;
pub mod merge;
pub mod orphans;
pub mod paths;
pub mod plan;
pub mod reach;
pub mod refs;
pub mod state;

pub use execute::{RunReport, TaskOutcome, execute, run_plan};
pub use plan::{PlanOptions, Task, TaskKind, plan_compaction, plan_retention, plan_rollup};
