//! On-premises preparation of first-party data for the clean room (`cleanroom prepare`).
//!
//! Runs on the data owner's machine and needs no server: it reads a CSV or Parquet file,
//! [normalises](normalise) identifiers as the ad ecosystem does, [pseudonymises](pseudonym)
//! them with HMAC-SHA-256 under a secret the parties share and the server never receives,
//! [generalises](generalise) quasi-identifiers, drops every column the [configuration](config)
//! does not name, [assesses the re-identification risk](risk) and writes a Parquet file ready
//! for `cleanroom dataset upload` with its upload schema and a prep report.
//!
//! This crate knows no network, server or metadata store.

pub mod activation;
pub mod config;
pub mod error;
pub mod generalise;
pub mod normalise;
pub mod prepare;
pub mod pseudonym;
pub mod report;
pub mod risk;
pub mod transform;

pub use error::IdentityError;
