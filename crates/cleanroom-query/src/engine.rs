//! The one way a plan of this crate runs: a fresh DataFusion session, the analyzer, the last
//! check that every cast in the plan is total ([`crate::total::assert_total_plan`]), then
//! execution, with failures reported without the engine's text.
//!
//! An engine message can quote a row's value (`Cannot cast string 'madrid' …`), and whoever
//! sees it — the analyst, a receiver, the audit chain, the server log — would learn it. So a
//! failure while running is reduced here to its kind ([`failure_kind`]: the error variants,
//! never their text), and only that kind travels on.

use arrow::array::RecordBatch;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::QueryError;

/// A session with `partitions` target partitions and nothing registered.
pub(crate) fn session(partitions: usize) -> SessionContext {
    let config = SessionConfig::new()
        .with_target_partitions(partitions.max(1))
        .with_information_schema(false);
    SessionContext::new_with_config(config)
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
