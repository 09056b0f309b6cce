//! The metadata store's conformance suite, run against every backend this crate has (SQLite
//! and PostgreSQL; a new backend adds one module like `sqlite.rs` and must pass all of it).
//!
//! Beyond the round trips, the suite attacks the races the service relies on the store to
//! settle: many concurrent charges against one ledger (never overspent), concurrent appends
//! to one audit chain (no gap, no fork, the head consistent), two uploads, two analyses'
//! endings and two activation moves out of the same state (exactly one wins).

mod conformance;
mod postgres;
mod sqlite;
