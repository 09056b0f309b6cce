//! Analyses executed on an Apache Ballista cluster, under the same privacy layer.
//!
//! The server keeps everything that decides privacy: checking, calibration, charging, the
//! rewrite into the exact plan, private group selection, noise, storing and delivering
//! releases. Through [`BallistaEngine`] (a [`cleanroom_query::Cluster`]) it hands only the
//! exact-aggregate plan to a Ballista scheduler ([`scheduler`]), whose executors
//! ([`executor`]) read the encrypted datasets from the room's store, decrypt them in memory
//! with keys that reach them wrapped under the cluster key ([`key`]), and return exact
//! aggregates to the server, which alone releases anything.
//!
//! What is encoded between them, and how: [`codec`] and [`scan`]; how they reach each other:
//! mutual TLS with one pinned certificate ([`tls`]).

pub mod codec;
pub mod engine;
mod error;
pub mod executor;
pub mod key;
pub mod scan;
pub mod scheduler;
pub mod tls;

pub use engine::BallistaEngine;
pub use error::ClusterError;
pub use executor::{ExecutorOptions, run_executor};
pub use key::ClusterKey;
pub use scan::Readers;
pub use scheduler::{SchedulerOptions, run_scheduler};
pub use tls::ClusterTls;
