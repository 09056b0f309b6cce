//! Test support shared across the workspace, as a dev-dependency only: nothing here is part of
//! any crate's public API or of the server's build.
//!
//! - [`empirical`]: exact Clopper–Pearson intervals and the empirical lower bound on epsilon
//!   that the attack tests (`cleanroom-privacy`, `cleanroom-query`) hold the mechanisms to.
//! - [`net`]: a free loopback port for tests that start real servers.

pub mod empirical;
pub mod net;
