//! Domain vocabulary of `cleanroom`.
//!
//! Everything here is pure: no IO, no async, no HTTP, no SQL. Input is parsed into validated
//! newtypes at the edge (`DatasetName::parse`, `DatasetSchema::new`) so the rest of the code
//! never handles an unchecked name or schema.

pub mod audit;
pub mod entities;
pub mod error;
pub mod ids;
pub mod names;
pub mod party;
pub mod policy;
pub mod schema;

pub use error::CoreError;
