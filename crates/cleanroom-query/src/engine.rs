//! The one way a plan of this crate runs: a fresh DataFusion session, the analyzer, the last
//! check that every cast in the plan is total ([`crate::total::assert_total_plan`]), then
//! execution, with failures reported without the engine's text.
//!
//! An engine message can quote a row's value (`Cannot cast string 'madrid' …`), and whoever
//! sees it — the analyst, a receiver, the audit chain, the server log — would learn it. So a
//! failure while running is reduced here to its kind ([`failure_kind`]: the error variants,
//! never their text), and only that kind travels on.

use std::sync::{Arc, OnceLock};

use arrow::array::RecordBatch;
use datafusion::error::DataFusionError;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::QueryError;

/// The runtime every analysis of this process shares, with its memory limit (`None`: none).
static RUNTIME: OnceLock<(Arc<RuntimeEnv>, Option<usize>)> = OnceLock::new();

/// A runtime that never writes to disk (so no operator can spill rows in the clear), with a
/// memory pool of `max_bytes` shared by every analysis when given.
fn build_runtime(max_bytes: Option<usize>) -> Result<Arc<RuntimeEnv>, QueryError> {
    let no_disk = DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled);
    let mut b = RuntimeEnvBuilder::new().with_disk_manager_builder(no_disk);
    if let Some(max) = max_bytes {
        b = b.with_memory_limit(max, 1.0);
    }
    b.build_arc()
        .map_err(|e| QueryError::Internal(format!("building the query runtime: {e}")))
}

fn runtime() -> &'static (Arc<RuntimeEnv>, Option<usize>) {
    RUNTIME.get_or_init(|| {
        let rt = build_runtime(None).unwrap_or_else(|_| {
            // Building a runtime without a memory pool or disk cannot fail; should it, the
            // engine's own default (which does not spill without memory pressure) serves.
            Arc::new(RuntimeEnv::default())
        });
        (rt, None)
    })
}

/// Sets how much memory all analyses of this process may hold together (`None`: no limit),
/// once, before the first analysis runs. An analysis that needs more fails with
/// [`QueryError::OutOfMemory`]; nothing ever spills to disk.
pub fn limit_memory(max_bytes: Option<usize>) -> Result<(), QueryError> {
    let rt = build_runtime(max_bytes)?;
    RUNTIME.set((rt, max_bytes)).map_err(|_| {
        QueryError::Internal(
            "the analysis memory limit is set once, before the first analysis".into(),
        )
    })
}

/// A session with `partitions` target partitions and nothing registered, on the shared
/// runtime.
pub(crate) fn session(partitions: usize) -> SessionContext {
    let config = SessionConfig::new()
        .with_target_partitions(partitions.max(1))
        .with_information_schema(false);
    SessionContext::new_with_config_rt(config, Arc::clone(&runtime().0))
}

/// Analyzes `plan` as DataFusion will, checks it, and returns the analyzed plan.
pub(crate) fn analyze(ctx: &SessionContext, plan: LogicalPlan) -> Result<LogicalPlan, QueryError> {
    let state = ctx.state();
    let analyzed = state
        .analyzer()
        .execute_and_check(plan, state.config_options(), |_, _| {})
        .map_err(|e| QueryError::Internal(format!("planning: {}", failure_kind(&e))))?;
    crate::total::assert_total_plan(&analyzed)?;
    Ok(analyzed)
}

/// Runs `plan` in `ctx` and collects its (aggregate) output.
pub(crate) async fn collect_in(
    ctx: &SessionContext,
    plan: LogicalPlan,
) -> Result<Vec<RecordBatch>, QueryError> {
    let analyzed = analyze(ctx, plan)?;
    let df = ctx
        .execute_logical_plan(analyzed)
        .await
        .map_err(|e| QueryError::Internal(format!("planning: {}", failure_kind(&e))))?;
    df.collect().await.map_err(run_failure)
}

/// Runs `plan` in a fresh session of `partitions` partitions.
pub(crate) async fn collect(
    plan: LogicalPlan,
    partitions: usize,
) -> Result<Vec<RecordBatch>, QueryError> {
    collect_in(&session(partitions), plan).await
}

/// A failure while running: reading the encrypted data (the table provider's own errors, which
/// carry no values) is the outside world's; anything else is reported by kind only.
pub(crate) fn run_failure(e: DataFusionError) -> QueryError {
    match root(&e) {
        DataFusionError::External(inner) if is_storage(inner.as_ref()) => {
            QueryError::Unavailable(inner.to_string())
        }
        DataFusionError::ResourcesExhausted(_) => {
            tracing::warn!(limit = ?runtime().1, "an analysis needed more memory than the limit");
            QueryError::OutOfMemory { limit: runtime().1 }
        }
        _ => {
            let kind = failure_kind(&e);
            tracing::error!(%kind, "an analysis failed while running (engine text withheld: it may quote values)");
            QueryError::Execution(kind)
        }
    }
}

fn is_storage(e: &(dyn std::error::Error + Send + Sync + 'static)) -> bool {
    e.downcast_ref::<cleanroom_storage::StorageError>()
        .is_some()
        || e.downcast_ref::<crate::provider::ReadFailure>().is_some()
}

fn root(e: &DataFusionError) -> &DataFusionError {
    match e {
        DataFusionError::Context(_, inner) | DataFusionError::Diagnostic(_, inner) => root(inner),
        DataFusionError::Shared(inner) => root(inner),
        DataFusionError::Collection(v) if !v.is_empty() => root(&v[0]),
        // An engine error carried through Arrow or an external boundary (a stream adapter).
        DataFusionError::External(inner) => match inner.downcast_ref::<DataFusionError>() {
            Some(df) => root(df),
            None => e,
        },
        DataFusionError::ArrowError(a, _) => match a.as_ref() {
            arrow::error::ArrowError::ExternalError(inner) => {
                match inner.downcast_ref::<DataFusionError>() {
                    Some(df) => root(df),
                    None => e,
                }
            }
            _ => e,
        },
        other => other,
    }
}

/// The kind of a DataFusion error, from its variants only (e.g. `arrow/cast`, `execution`,
/// `resources exhausted`): never the message, which can quote data.
pub fn failure_kind(e: &DataFusionError) -> String {
    use arrow::error::ArrowError as A;
    match root(e) {
        DataFusionError::ArrowError(a, _) => {
            let k = match a.as_ref() {
                A::CastError(_) => "cast",
                A::ComputeError(_) => "compute",
                A::DivideByZero => "divide by zero",
                A::ArithmeticOverflow(_) => "arithmetic overflow",
                A::InvalidArgumentError(_) => "invalid argument",
                A::ParseError(_) => "parse",
                A::MemoryError(_) => "memory",
                A::IoError(..) => "io",
                A::ExternalError(_) => "external",
                _ => "other",
            };
            format!("arrow/{k}")
        }
        DataFusionError::IoError(io) => format!("io/{:?}", io.kind()),
        DataFusionError::SQL(..) => "sql".into(),
        DataFusionError::NotImplemented(_) => "not implemented".into(),
        DataFusionError::Internal(_) => "internal".into(),
        DataFusionError::Plan(_) => "plan".into(),
        DataFusionError::Configuration(_) => "configuration".into(),
        DataFusionError::SchemaError(..) => "schema".into(),
        DataFusionError::Execution(_) => "execution".into(),
        DataFusionError::ExecutionJoin(_) => "task".into(),
        DataFusionError::ResourcesExhausted(_) => "resources exhausted".into(),
        DataFusionError::External(_) => "external".into(),
        DataFusionError::Substrait(_) => "substrait".into(),
        _ => "other".into(),
    }
}
