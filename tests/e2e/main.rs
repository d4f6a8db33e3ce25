//! End-to-end tests against the real local stack. One test binary, so the
//! stack helpers compile once.

mod adversarial;
mod audit;
mod backfill;
mod commit;
mod common;
mod deploy;
mod drift_budget;
mod gauntlet;
mod group;
mod ingest;
mod invariant;
mod operate;
mod readers;
mod shared_lake;
mod shared_refs;
mod tiering;
mod upkeep;
