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
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::QueryError;
use crate::spill::{EncryptedSpill, SpillConfig};

/// The runtime every analysis of this process shares, and its limits.
static RUNTIME: OnceLock<Engine> = OnceLock::new();

struct Engine {
    runtime: Arc<RuntimeEnv>,
    /// The memory limit, `None`: none.
    limit: Option<usize>,
    /// The spill quota in bytes, `None`: spilling is off.
    spill_limit: Option<u64>,
}

/// How much memory the analyses of this process may hold together, and where and how much
/// they may spill (encrypted, see [`crate::spill`]) when they do not fit.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MemoryLimits {
    /// Bytes of memory all analyses may hold together; `None`: no limit (then nothing spills,
    /// as no operator is ever short of memory).
    pub max_bytes: Option<usize>,
    /// Where encrypted spill files go and how much they may hold; `None`: no spilling, an
    /// analysis that does not fit fails.
    pub spill: Option<SpillConfig>,
}

/// How a runtime's operators spill: through [`EncryptedSpill`] into a private directory under
/// `spill.dir` (never plaintext to disk), or not at all (`None`, or a quota of 0).
pub fn spill_disk(spill: Option<&SpillConfig>) -> Result<DiskManagerBuilder, QueryError> {
    Ok(match spill {
        Some(cfg) if cfg.max_bytes > 0 => {
            let spill = EncryptedSpill::new(cfg).map_err(|e| {
                QueryError::Internal(format!(
                    "creating the spill directory under {}: {e}",
                    cfg.dir.display()
                ))
            })?;
            DiskManagerBuilder::default().with_temp_file_factory(Arc::new(spill))
        }
        _ => DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
    })
}

/// A runtime with a memory pool of `limits.max_bytes` shared by every analysis, whose
/// operators spill only through [`EncryptedSpill`] (never plaintext to disk), or not at all.
fn build_runtime(limits: &MemoryLimits) -> Result<Engine, QueryError> {
    let internal = |e: &dyn std::fmt::Display| {
        QueryError::Internal(format!("building the query runtime: {e}"))
    };
    let disk = spill_disk(limits.spill.as_ref().filter(|_| limits.max_bytes.is_some()))?;
    let spill_limit = match (&limits.spill, limits.max_bytes) {
        (Some(cfg), Some(_)) if cfg.max_bytes > 0 => Some(cfg.max_bytes),
        _ => None,
    };
    let mut b = RuntimeEnvBuilder::new().with_disk_manager_builder(disk);
    if let Some(max) = limits.max_bytes {
        b = if spill_limit.is_some() {
            // Operators that can spill share the pool fairly, so one does not starve the
            // others (and the unspillable hash-join build sides) into failing.
            b.with_memory_pool(Arc::new(FairSpillPool::new(max)))
        } else {
            b.with_memory_limit(max, 1.0)
        };
    }
    let runtime = b.build_arc().map_err(|e| internal(&e))?;
    Ok(Engine {
        runtime,
        limit: limits.max_bytes,
        spill_limit,
    })
}

fn engine() -> &'static Engine {
    RUNTIME.get_or_init(|| {
        build_runtime(&MemoryLimits::default()).unwrap_or_else(|_| Engine {
            // Building a runtime without a memory pool or disk cannot fail; should it, the
            // engine's own default (which does not spill without memory pressure) serves.
            runtime: Arc::new(RuntimeEnv::default()),
            limit: None,
            spill_limit: None,
        })
    })
}

/// Sets how much memory all analyses of this process may hold together and how they spill,
/// once, before the first analysis runs. An analysis that needs more than memory and spill
/// space together fails with [`QueryError::OutOfMemory`].
pub fn limit_memory(limits: MemoryLimits) -> Result<(), QueryError> {
    let engine = build_runtime(&limits)?;
    RUNTIME.set(engine).map_err(|_| {
        QueryError::Internal(
            "the analysis memory limit is set once, before the first analysis".into(),
        )
    })
}

/// Somewhere else the exact-aggregate plans of this process can run: an analysis cluster
/// (the `cleanroom-cluster` crate implements it on Apache Ballista).
///
/// Only execution moves. Checking, calibration, charging, the rewrite into the exact plan,
/// private group selection, noise and releases all stay in this process: a cluster receives
/// the plan [`crate::rewrite`] built, runs it, and returns its exact aggregates here.
pub trait Cluster: Send + Sync + std::fmt::Debug {
    /// A session whose plans run on the cluster, from this process's `config` and `runtime`.
    fn session(
        &self,
        config: SessionConfig,
        runtime: Arc<RuntimeEnv>,
    ) -> Result<SessionContext, DataFusionError>;

    /// Where it is, for messages (`ballista://host:port`); never a secret.
    fn describe(&self) -> String;

    /// How long a plan may run there before it is given up as a cluster failure (`None`: no
    /// limit). A cluster that loses an executor may leave a job running that never ends;
    /// this bounds what the analysis waits for.
    fn deadline(&self) -> Option<std::time::Duration> {
        None
    }
}

/// Runs `f`, a plan's execution, within the current cluster's deadline, if any.
async fn within_deadline<T>(
    f: impl std::future::Future<Output = Result<T, QueryError>>,
) -> Result<T, QueryError> {
    let Some((c, d)) = current_cluster().and_then(|c| c.deadline().map(|d| (c, d))) else {
        return f.await;
    };
    match tokio::time::timeout(d, f).await {
        Ok(r) => r,
        Err(_) => {
            tracing::error!(cluster = %c.describe(), seconds = d.as_secs(), "the analysis cluster gave no answer within its deadline");
            Err(QueryError::Cluster {
                at: c.describe(),
                kind: format!("no answer within {} s", d.as_secs()),
            })
        }
    }
}

/// The cluster every analysis of this process runs on, when one is set.
static CLUSTER: OnceLock<Arc<dyn Cluster>> = OnceLock::new();

tokio::task_local! {
    /// The engine of the current task when [`on_engine`] chose one.
    static SCOPED: Option<Arc<dyn Cluster>>;
}

/// Runs every analysis of this process on `cluster`, from now on. Set once, at start-up.
pub fn use_cluster(cluster: Arc<dyn Cluster>) -> Result<(), QueryError> {
    CLUSTER
        .set(cluster)
        .map_err(|_| QueryError::Internal("the analysis cluster is set once, at start-up".into()))
}

/// Runs `f` with its analyses on `cluster` (`None`: in this process), whatever
/// [`use_cluster`] set: for tests and benchmarks that compare the two engines.
pub async fn on_engine<F: std::future::Future>(
    cluster: Option<Arc<dyn Cluster>>,
    f: F,
) -> F::Output {
    SCOPED.scope(cluster, f).await
}

fn current_cluster() -> Option<Arc<dyn Cluster>> {
    SCOPED
        .try_with(Clone::clone)
        .unwrap_or_else(|_| CLUSTER.get().cloned())
}

fn config(partitions: usize) -> SessionConfig {
    SessionConfig::new()
        .with_target_partitions(partitions.max(1))
        .with_information_schema(false)
}

/// A session with `partitions` target partitions and nothing registered: on the analysis
/// cluster when there is one, else in this process on the shared runtime.
pub(crate) fn session(partitions: usize) -> Result<SessionContext, QueryError> {
    let runtime = Arc::clone(&engine().runtime);
    match current_cluster() {
        None => Ok(SessionContext::new_with_config_rt(
            config(partitions),
            runtime,
        )),
        Some(c) => c
            .session(config(partitions), runtime)
            .map_err(|e| QueryError::Cluster {
                at: c.describe(),
                kind: failure_kind(&e),
            }),
    }
}

/// A session in this process whatever the engine: for plans over tables that exist only in
/// this process's memory (see `cascade`).
pub(crate) fn local_session(partitions: usize) -> SessionContext {
    SessionContext::new_with_config_rt(config(partitions), Arc::clone(&engine().runtime))
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
    within_deadline(async {
        dataframe(ctx, plan)
            .await?
            .collect()
            .await
            .map_err(run_failure)
    })
    .await
}

/// Runs `plan` in `ctx`, a [`local_session`], and collects its output.
pub(crate) async fn collect_local(
    ctx: &SessionContext,
    plan: LogicalPlan,
) -> Result<Vec<RecordBatch>, QueryError> {
    dataframe(ctx, plan)
        .await?
        .collect()
        .await
        .map_err(local_failure)
}

/// `plan`, analyzed and checked, ready to run in `ctx`.
async fn dataframe(
    ctx: &SessionContext,
    plan: LogicalPlan,
) -> Result<datafusion::dataframe::DataFrame, QueryError> {
    let analyzed = analyze(ctx, plan)?;
    ctx.execute_logical_plan(analyzed)
        .await
        .map_err(|e| QueryError::Internal(format!("planning: {}", failure_kind(&e))))
}

/// Runs `plan` in a fresh session of `partitions` partitions and hands each output batch to
/// `each` as it comes, so no more than one batch of output is held at a time.
pub(crate) async fn for_each_batch(
    plan: LogicalPlan,
    partitions: usize,
    mut each: impl FnMut(RecordBatch) -> Result<(), QueryError>,
) -> Result<(), QueryError> {
    use futures_util::StreamExt;
    within_deadline(async {
        let mut stream = dataframe(&session(partitions)?, plan)
            .await?
            .execute_stream()
            .await
            .map_err(run_failure)?;
        while let Some(batch) = stream.next().await {
            each(batch.map_err(run_failure)?)?;
        }
        Ok(())
    })
    .await
}

/// Runs `plan` in a fresh session of `partitions` partitions.
pub(crate) async fn collect(
    plan: LogicalPlan,
    partitions: usize,
) -> Result<Vec<RecordBatch>, QueryError> {
    collect_in(&session(partitions)?, plan).await
}

/// A failure while running: reading the encrypted data (the table provider's own errors, which
/// carry no values) is the outside world's; anything else is reported by kind only.
pub(crate) fn run_failure(e: DataFusionError) -> QueryError {
    if let Some(c) = current_cluster() {
        // A cluster's failures arrive as the scheduler's text (a task's error, a lost
        // executor, a refused connection): the kind is all that is kept of them.
        let kind = failure_kind(&e);
        tracing::error!(cluster = %c.describe(), %kind, "the analysis cluster failed to run a plan (its text withheld: it may quote values)");
        return QueryError::Cluster {
            at: c.describe(),
            kind,
        };
    }
    local_failure(e)
}

/// [`run_failure`] for a plan that ran in this process.
fn local_failure(e: DataFusionError) -> QueryError {
    match root(&e) {
        DataFusionError::External(inner) if is_storage(inner.as_ref()) => {
            QueryError::Unavailable(inner.to_string())
        }
        // The Parquet scan of an encrypted dataset: decryption, decoding or the backend's
        // reads failed. The storage's fault, not the query's; the reader's text names no value.
        DataFusionError::ParquetError(p) => {
            QueryError::Unavailable(format!("reading the encrypted data failed: {p}"))
        }
        // The same, met while decoding pages (the Parquet reader reports through Arrow).
        DataFusionError::ArrowError(a, _)
            if matches!(a.as_ref(), arrow::error::ArrowError::ParquetError(_)) =>
        {
            QueryError::Unavailable(format!("reading the encrypted data failed: {a}"))
        }
        DataFusionError::ResourcesExhausted(_) => out_of_memory(),
        DataFusionError::IoError(io) if crate::spill::is_spill_full(io) => out_of_memory(),
        DataFusionError::ArrowError(a, _) if matches!(a.as_ref(), arrow::error::ArrowError::IoError(_, io) if crate::spill::is_spill_full(io)) => {
            out_of_memory()
        }
        _ => {
            let kind = failure_kind(&e);
            tracing::error!(%kind, "an analysis failed while running (engine text withheld: it may quote values)");
            QueryError::Execution(kind)
        }
    }
}

fn out_of_memory() -> QueryError {
    let e = engine();
    tracing::warn!(limit = ?e.limit, spill_limit = ?e.spill_limit, "an analysis needed more memory than the limit");
    QueryError::OutOfMemory {
        limit: e.limit,
        spill_limit: e.spill_limit,
    }
}

fn is_storage(e: &(dyn std::error::Error + Send + Sync + 'static)) -> bool {
    e.downcast_ref::<cleanroom_storage::StorageError>()
        .is_some()
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
                A::ParquetError(_) => "parquet",
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
        DataFusionError::ParquetError(_) => "parquet".into(),
        DataFusionError::Substrait(_) => "substrait".into(),
        _ => "other".into(),
    }
}
