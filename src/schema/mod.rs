//! Table declarations and their Iceberg layout.

pub mod decl;
pub mod layout;
