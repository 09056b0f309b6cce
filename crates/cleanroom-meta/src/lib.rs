//! The metadata store.
//!
//! [`MetaStore`] is the only way the service reaches metadata; [`SqliteStore`] implements it on
//! an embedded SQLite file. A PostgreSQL implementation adds a module here and a migrations
//! folder, and touches neither the domain nor the service. Only this crate knows SQL.

mod chain;
pub mod error;
mod policy_json;
mod rows;
pub mod sqlite;
mod store;

pub use error::MetaError;
pub use rows::now;
pub use sqlite::SqliteStore;
pub use store::{
    ActivationMove, ActivationRow, AnalysisRow, ApprovalRow, Authenticated, Charge, Grant,
    LedgerRow, MetaStore, NewAudit, StoredPolicy,
};
