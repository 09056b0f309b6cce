//! Differential privacy for the clean room, on OpenDP's vetted samplers.
//!
//! - [`budget`]: epsilon/delta amounts kept as integers, budgets, and the ledger that refuses to
//!   overspend (costs round up, grants round down, additions are checked).
//! - [`noise`]: calibrated discrete Laplace noise for counts and clamped integer sums, and the
//!   contribution bounds that give their sensitivities.
//! - [`partition`]: private group selection (noisy counts above a threshold derived from δ).
//!
//! Knows no IO, no async, no HTTP, no SQL. Each mechanism is built from its privacy parameters,
//! is immutable, and carries its cost.

pub mod budget;
mod error;
pub mod noise;
pub mod partition;

pub use error::PrivacyError;
