//! firn turns a Kafka stream of usage events into an Apache Iceberg lake that
//! stays exact, cheap and fast as it ages.
//!
//! The library holds everything; `src/main.rs` only parses the command line.
//! See DESIGN.md for the picture: ingest ([`ingest`]) appends minute rows
//! exactly once; every change to a table goes through one commit layer
//! ([`commit`]) over a catalog ([`catalog`]) and one storage stack
//! ([`storage`]).

pub mod backfill;
pub mod budget;
pub mod catalog;
pub mod clock;
pub mod commit;
pub mod config;
pub mod error;
pub mod events;
pub mod faults;
pub mod ingest;
pub mod kafka;
pub mod ledger;
pub mod maintain;
pub mod offsets;
pub mod produce;
pub mod read;
pub mod redact;
pub mod rejects;
pub mod retry;
pub mod rows;
pub mod schema;
pub mod status;
pub mod storage;
pub mod tables;
pub mod telemetry;
pub mod totals;
pub mod write;

pub use error::{Error, ErrorKind, Result};
