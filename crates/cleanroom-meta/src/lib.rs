//! The metadata store.
//!
//! [`MetaStore`] is the only way the service reaches metadata; [`SqliteStore`] implements it on
//! an embedded SQLite file and [`PgStore`] on PostgreSQL, each with its own migrations folder;
//! [`open`] picks one from a [`MetaSpec`]. Only this crate knows SQL.

mod chain;
pub mod error;
pub mod migrate;
mod open;
mod policy_json;
pub mod postgres;
mod rows;
pub mod sqlite;
mod store;

pub use error::MetaError;
pub use open::{MetaSpec, PgUrl, holds_room, open};
pub use postgres::PgStore;
pub use rows::{after_now, now};
pub use sqlite::SqliteStore;
pub use store::{
    ActivationMove, ActivationRow, AnalysisRow, ApprovalRow, Authenticated, Charge, Grant,
    LedgerRow, MetaStore, NewAudit, Orphaned, StoredPolicy,
};
