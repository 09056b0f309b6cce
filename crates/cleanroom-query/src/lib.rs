//! Privacy-enforcing analysis on Apache DataFusion.
//!
//! The path of a query: SQL text → DataFusion logical plan over *empty* tables (schemas only)
//! → [`check`]: a walk of the plan that refuses, naming the rule and the column, anything that
//! could emit row-level data or break an owner's rule, and otherwise yields a [`Spec`] →
//! [`calibrate`]: contribution bounds after joins, noise and group selection calibrated on
//! OpenDP, and what the release costs each dataset's people → [`rewrite`]: a new plan built
//! from the spec (bounding, clamping, thresholds) executed over the encrypted datasets →
//! [`release`]: private group selection, noise, post-processing.
//!
//! This crate knows no HTTP and no metadata store: the service decides who may run what,
//! charges budgets and stores releases. Every refusal is decided from the query, the schemas
//! and the policies, never from the data.

pub mod calibrate;
pub mod cascade;
pub mod catalog;
pub mod check;
mod engine;
mod error;
pub mod provider;
pub mod release;
pub mod rewrite;
pub mod segment;
pub mod spec;
pub mod spill;
pub mod templates;
pub mod total;

pub use calibrate::{Calibration, PrivacyRequest};
pub use catalog::{Catalog, QueryTable};
pub use engine::{
    Cluster, MemoryLimits, failure_kind, limit_memory, on_engine, spill_disk, use_cluster,
};
pub use error::QueryError;
pub use release::{Cell, ColumnKind, LeftOut, Released, ReleasedColumn};
pub use rewrite::RunOptions;
pub use spec::Spec;
pub use spill::SpillConfig;

/// A checked and calibrated query, ready to be charged for and run.
#[derive(Debug, Clone)]
pub struct Analysis {
    pub spec: Spec,
    pub calibration: Calibration,
    /// Identifies the query, the datasets and policy versions, and the privacy parameters:
    /// two analyses with the same fingerprint may share one release.
    pub fingerprint: String,
}

/// Checks `sql` against `catalog` and calibrates it for `request`.
pub async fn prepare(
    sql: &str,
    catalog: &Catalog,
    request: PrivacyRequest,
) -> Result<Analysis, QueryError> {
    let spec = check::check(sql, catalog).await?;
    prepare_spec(spec, catalog, request)
}

/// Calibrates an already checked spec.
pub fn prepare_spec(
    spec: Spec,
    catalog: &Catalog,
    request: PrivacyRequest,
) -> Result<Analysis, QueryError> {
    let calibration = calibrate::calibrate(&spec, catalog, request)?;
    let params = match calibration.request {
        Some(r) => format!("epsilon={:e};delta={:e}", r.epsilon, r.delta),
        None => "exact".to_owned(),
    };
    let fingerprint = spec.fingerprint(catalog, &params);
    Ok(Analysis {
        spec,
        calibration,
        fingerprint,
    })
}

/// Runs a prepared analysis over the data in `catalog` and releases its result. Every call
/// draws fresh noise: the caller must have charged the budget first.
pub async fn run(
    analysis: &Analysis,
    catalog: &Catalog,
    partitions: usize,
) -> Result<Released, QueryError> {
    let opts = RunOptions {
        bound_contributions: analysis.calibration.is_private(),
        partitions,
    };
    let (groups, formed) = rewrite::execute_counted(&analysis.spec, catalog, opts).await?;
    release::release(&analysis.spec, &analysis.calibration, groups, formed)
}
