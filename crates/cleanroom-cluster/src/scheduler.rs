//! `cleanroom scheduler`: Ballista's scheduler with the room's codecs.
//!
//! The scheduler receives the exact-aggregate plans of a server, splits them into stages and
//! hands tasks to the executors that poll it (pull-based: it never dials an executor). It
//! holds no key: the plans it sees name datasets by id, with their keys wrapped under the
//! cluster key ([`crate::key`]), and it reads no data.

use std::sync::Arc;
use std::time::Duration;

use ballista_core::config::TaskSchedulingPolicy;
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_process::{create_scheduler, start_grpc_service_with_listener};
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};
use tokio::net::TcpListener;

use crate::ClusterError;
use crate::codec::{RoomLogicalCodec, RoomPhysicalCodec};

/// How a scheduler runs.
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    /// How long an executor may stay silent before its tasks are given to others.
    pub executor_timeout: Duration,
    /// How many times a task may fail (an executor lost with it, say) before its analysis
    /// fails.
    pub task_max_failures: usize,
    /// How long a job waits for an executor when none is registered before it fails.
    pub no_executors_grace: Duration,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        SchedulerOptions {
            executor_timeout: Duration::from_secs(30),
            task_max_failures: 4,
            no_executors_grace: Duration::from_secs(30),
        }
    }
}

/// Serves the scheduler on `listener` until the process ends.
pub async fn run_scheduler(
    listener: TcpListener,
    opts: SchedulerOptions,
) -> Result<(), ClusterError> {
    let addr = listener.local_addr().map_err(|source| ClusterError::Io {
        what: "the scheduler's address".into(),
        source,
    })?;
    let timeout = opts.executor_timeout.as_secs().max(2);
    let config = SchedulerConfig {
        bind_host: addr.ip().to_string(),
        bind_port: addr.port(),
        external_host: addr.ip().to_string(),
        scheduling_policy: TaskSchedulingPolicy::PullStaged,
        executor_timeout_seconds: timeout,
        expire_dead_executor_interval_seconds: (timeout / 3).max(1),
        no_executors_grace_period_seconds: opts.no_executors_grace.as_secs().max(timeout),
        task_max_failures: opts.task_max_failures.max(1),
        override_logical_codec: Some(Arc::new(RoomLogicalCodec::default())),
        override_physical_codec: Some(Arc::new(RoomPhysicalCodec::default())),
        ..SchedulerConfig::default()
    };
    config.validate()?;
    let cluster = BallistaCluster::new_from_config(&config).await?;
    let scheduler =
        create_scheduler::<LogicalPlanNode, PhysicalPlanNode>(cluster, Arc::new(config)).await?;
    tracing::info!(%addr, "analysis scheduler listening (executors poll it; it holds no key)");
    start_grpc_service_with_listener(listener, scheduler).await?;
    Ok(())
}
